"""Fresh, untouched servers for transcripts, one booting ahead of need.

How this works
--------------
Every transcript gets its own server process, so no state leaks between
transcripts and global stats (cmd-*, total-connections, ...) start at zero.
A server must also be *pristine*: nobody may have connected to it, or
``total-connections`` would count the probe.  bsnode reports its port on
stderr (tests/servers.py waits for that); for beanstalkd we watch
/proc/net/tcp for its listening socket instead of probing with a connect.

Starting bsnode costs a few tenths of a second of CPU, so ``ServerPool``
keeps the next ``SPARES`` default-flag servers booting in background threads
while the current transcript runs, and stops used servers in the background
too.  Servers with extra flags start on demand.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from servers import BEANSTALKD, START_DEADLINE, Server, _drain, free_port, start_bsnode

_PROC_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def _listening(port: int, everything: bool = False) -> bool:
    """Is 127.0.0.1:port in LISTEN state?  Linux lists listening sockets
    first, so unless ``everything`` the scan stops at the first other line
    (the table can hold thousands of TIME_WAIT lines in a long test run)."""
    want = f"0100007F:{port:04X}"
    with _PROC_TCP.open() as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != _LISTEN and not everything:
                return False
            if fields[1] == want and fields[3] == _LISTEN:
                return True
    return False


def start_pristine_beanstalkd(*flags: str) -> Server:
    """beanstalkd on a free loopback port, ready, with no connection made."""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [BEANSTALKD, "-l", "127.0.0.1", "-p", str(port), *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        lines: deque = deque(maxlen=200)
        threading.Thread(
            target=_drain, args=(proc.stderr, lines, threading.Event(), []), daemon=True
        ).start()
        deadline = time.monotonic() + START_DEADLINE
        while proc.poll() is None and not _listening(port):
            if time.monotonic() > deadline:
                if _listening(port, everything=True):
                    break
                proc.kill()
                proc.wait()
                raise RuntimeError("beanstalkd did not listen: " + " | ".join(lines))
            time.sleep(0.002)
        if proc.poll() is None:
            return Server("beanstalkd", proc, port, lines)
        proc.wait()  # lost the port to a racer: try another
    raise RuntimeError("beanstalkd did not start: " + " | ".join(lines))


STARTERS = {"beanstalkd": start_pristine_beanstalkd, "bsnode": start_bsnode}
SPARES = int(os.environ.get("BSDIFF_SPARES", "2"))  # servers booting ahead


class ServerPool:
    """Hands out fresh servers of one kind; ``give_back`` each, then ``close``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._start = STARTERS[kind]
        self._exec = ThreadPoolExecutor(max_workers=SPARES, thread_name_prefix=f"pool-{kind}")
        self._stopper = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stop-{kind}")
        self._spares: deque[Future] = deque()
        self._stopping: list[Future] = []

    def take(self, flags: tuple[str, ...] = ()) -> Server:
        if flags:
            return self._start(*flags)
        while len(self._spares) < SPARES:
            self._spares.append(self._exec.submit(self._start))
        return self._spares.popleft().result()

    def give_back(self, server: Server) -> None:
        self._stopping = [f for f in self._stopping if not f.done()]
        self._stopping.append(self._stopper.submit(server.stop))

    def close(self) -> None:
        for f in self._stopping:
            f.result()
        while self._spares:
            try:
                self._spares.popleft().result().stop()
            except Exception:  # a spare that failed to boot has nothing to stop
                pass
        self._exec.shutdown(wait=True)
        self._stopper.shutdown(wait=True)
