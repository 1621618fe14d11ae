"""The proxy as a child of the supervisor (`bscluster up --proxy ADDR`).

How this works
--------------
The supervisor owns one ``ProxyProc`` when the config sets ``proxy``.  It is
started as ``[sys.executable, "-m", "bscluster", "proxy", ...]`` (this
installation's bscluster, never one found on PATH), reading the exact
configuration the supervisor runs (its wanted.json).  The supervisor's loop
reaps every child with ``waitpid(-1, WNOHANG)``; it hands the proxy's exit
to ``exited`` and calls ``tick`` each round, which restarts a dead proxy after
a back-off that doubles from ``RESTART_FIRST`` to ``RESTART_MAX`` seconds
(and resets once a proxy has stayed up ``RESTART_RESET`` seconds).  When the
supervisor takes a changed wanted.json, ``reload`` sends the proxy SIGHUP, and
it applies the new node set without a restart (a proxy still starting applies it
once it can: it is started with SIGHUP blocked).  Its stderr goes to the
supervisor's output (or log) as is.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

RESTART_FIRST = 0.5
RESTART_MAX = 30.0
RESTART_RESET = 60.0


class ProxyProc:
    def __init__(self, listen: str, wanted: Path, say: Callable[[str], None],
                 clock: Callable[[], float]) -> None:
        self.listen = listen
        self.wanted = wanted
        self.say = say
        self.clock = clock
        self.popen: subprocess.Popen | None = None
        self.stopping = False
        self.backoff = RESTART_FIRST
        self.started_at = 0.0
        self.restart_at: float | None = 0.0  # start at the first tick

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bscluster", "proxy", "--listen", self.listen,
                "--wanted", str(self.wanted)]

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.returncode is None

    def tick(self, now: float, env: dict) -> None:
        if self.stopping or self.alive() or self.restart_at is None or now < self.restart_at:
            return
        # the child starts with SIGHUP blocked and unblocks it once its handler is in
        # place (proxy.serve): a reload sent while it starts waits for it, not kills it
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            self.say(f"proxy: cannot start {self.argv[0]}: {e.strerror or e}")
            self.restart_at = now + RESTART_MAX
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.started_at = now
        self.restart_at = None
        self.say(f"proxy starting on {self.listen} (pid {self.popen.pid})")

    def exited(self, pid: int, code: int) -> bool:
        """The supervisor reaped ``pid``; True if it was the proxy."""
        if self.popen is None or pid != self.popen.pid:
            return False
        self.popen.returncode = code
        if self.stopping:
            self.say(f"proxy stopped (exit {code})")
            return True
        now = self.clock()
        if now - self.started_at >= RESTART_RESET:
            self.backoff = RESTART_FIRST
        self.restart_at = now + self.backoff
        self.say(f"proxy exited ({code}); restarting in {self.backoff:g}s")
        self.backoff = min(self.backoff * 2, RESTART_MAX)
        return True

    def reload(self) -> None:
        """wanted.json changed: SIGHUP makes a running proxy apply it (proxy_reload).
        A proxy not running reads it when it starts; one still starting gets the
        signal once its handler is in place (see ``tick``)."""
        if self.alive() and not self.stopping:
            try:
                self.popen.send_signal(signal.SIGHUP)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.stopping = True
        if self.alive():
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
