"""The two ways a Worker runs its slots: OS threads or gevent greenlets.

How this works
--------------
``bsclient.worker`` only ever spawns tasks, makes events and locks, joins,
kills and installs signal handlers through a ``Runtime``, so the same slot
code runs in both modes.  ``Threads`` uses the threading module (daemon
threads, so a forced stop can leave a running handler behind and still
exit); ``Greenlets`` uses gevent, and refuses to start unless ``socket`` is
monkey-patched, since a blocking socket would stall every greenlet.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable


class Runtime:
    """Threads or greenlets: the primitives a Worker needs."""

    name = ""

    def spawn(self, fn: Callable[[], None], name: str):
        raise NotImplementedError

    def event(self):
        raise NotImplementedError

    def lock(self):
        raise NotImplementedError

    def join(self, tasks: list, timeout: float | None) -> bool:
        """Wait for ``tasks`` to end; True if they all did within ``timeout``."""
        raise NotImplementedError

    def kill(self, tasks: list) -> None:
        """End ``tasks`` now where the mode can (greenlets); threads cannot be."""

    def on_signal(self, signum: int, fn: Callable[[int], None]) -> Callable[[], None]:
        """Call ``fn(signum)`` on ``signum``; returns a function that undoes this."""
        raise NotImplementedError


class Threads(Runtime):
    name = "thread"

    def spawn(self, fn, name):
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()
        return thread

    def event(self):
        return threading.Event()

    def lock(self):
        return threading.Lock()

    def join(self, tasks, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        for task in tasks:
            task.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(task.is_alive() for task in tasks)

    def on_signal(self, signum, fn):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Worker.run() handles signals only in the main thread; "
                               "call run(signals=False) elsewhere and stop() it yourself")
        old = signal.signal(signum, lambda sig, frame: fn(sig))
        return lambda: signal.signal(signum, old)


class Greenlets(Runtime):
    name = "gevent"

    def __init__(self) -> None:
        import gevent
        import gevent.event
        import gevent.lock
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            raise RuntimeError(
                "gevent mode needs gevent.monkey.patch_all() at the start of the program, "
                "before other imports (`bscluster work --mode gevent` does it); without it "
                "one blocking socket would stall every greenlet")
        self._gevent = gevent

    def spawn(self, fn, name):
        greenlet = self._gevent.spawn(fn)
        greenlet.name = name
        return greenlet

    def event(self):
        return self._gevent.event.Event()

    def lock(self):
        return self._gevent.lock.Semaphore(1)

    def join(self, tasks, timeout):
        done = self._gevent.joinall(tasks, timeout=timeout)
        return len(done) == len(tasks)

    def kill(self, tasks):
        self._gevent.killall(tasks, block=False)

    def on_signal(self, signum, fn):
        return self._gevent.signal_handler(signum, fn, signum).cancel


RUNTIMES: dict[str, type[Runtime]] = {Threads.name: Threads, Greenlets.name: Greenlets}


def make_runtime(mode: str) -> Runtime:
    try:
        cls = RUNTIMES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(RUNTIMES)}, not {mode!r}") from None
    return cls()
