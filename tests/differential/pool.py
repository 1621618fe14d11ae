"""Fresh, untouched servers for transcripts, one booting ahead of need.

How this works
--------------
Every transcript gets its own server process, so no state leaks between
transcripts and global stats (cmd-*, total-connections, ...) start at zero.
A server must also be *pristine*: nobody may have connected to it, or
``total-connections`` would count the probe.  bsnode reports its port on
stderr (tests/servers.py waits for that); for beanstalkd we watch
/proc/net/tcp for its listening socket instead of probing with a connect.

Starting bsnode costs a few tenths of a second, so ``ServerPool`` keeps the
next default-flag server booting in a background thread while the current
transcript runs.  Servers with extra flags start on demand.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from servers import BEANSTALKD, START_DEADLINE, Server, _drain, free_port, start_bsnode

_PROC_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def _listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with _PROC_TCP.open() as f:
        next(f)
        return any(
            fields[1] == want and fields[3] == _LISTEN
            for fields in (line.split() for line in f)
        )


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
                proc.kill()
                proc.wait()
                raise RuntimeError("beanstalkd did not listen: " + " | ".join(lines))
            time.sleep(0.002)
        if proc.poll() is None:
            return Server("beanstalkd", proc, port, lines)
        proc.wait()  # lost the port to a racer: try another
    raise RuntimeError("beanstalkd did not start: " + " | ".join(lines))


STARTERS = {"beanstalkd": start_pristine_beanstalkd, "bsnode": start_bsnode}


class ServerPool:
    """Hands out fresh servers of one kind; call ``close`` when done."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._start = STARTERS[kind]
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pool-{kind}")
        self._spare: Future | None = None

    def take(self, flags: tuple[str, ...] = ()) -> Server:
        if flags:
            return self._start(*flags)
        spare, self._spare = self._spare, None
        server = spare.result() if spare is not None else self._start()
        self._spare = self._exec.submit(self._start)
        return server

    def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                spare.result().stop()
            except Exception:  # a spare that failed to boot has nothing to stop
                pass
        self._exec.shutdown(wait=True)
