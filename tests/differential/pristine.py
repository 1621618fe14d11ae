"""Fresh, untouched servers for transcripts.

How this works
--------------
Every transcript gets its own server process, so no state leaks between
transcripts and global stats (cmd-*, total-connections, ...) start at zero.
A server must also be *pristine*: nobody may have connected to it, or
``total-connections`` would count the probe.  bsnode reports its port on
stderr; for beanstalkd we watch /proc/net/tcp for its listening socket
instead of probing with a connect.

Servers are started from worker threads while pytest's main thread keeps
changing os.environ (PYTEST_CURRENT_TEST).  CPython spawns with vfork() and
the child reads the process environment during execve; a concurrent putenv
made that fail with EFAULT ("Bad address").  So every spawn is given a copy
of the environment taken once, at import, on the main thread.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from servers import (
    BEANSTALKD,
    START_DEADLINE,
    Server,
    _drain,
    free_port,
    start_bsnode,
)

_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
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


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=_ENV,
    )


def start_pristine_bsnode(*flags: str) -> Server:
    """bsnode on a port of its choosing (it reports it on stderr: no probe)."""
    return start_bsnode(*flags, env=_ENV)


def start_pristine_beanstalkd(*flags: str) -> Server:
    """beanstalkd on a free loopback port, ready, with no connection made."""
    for _ in range(5):
        port = free_port()
        proc = _spawn([BEANSTALKD, "-l", "127.0.0.1", "-p", str(port), *flags])
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


STARTERS = {"beanstalkd": start_pristine_beanstalkd, "bsnode": start_pristine_bsnode}
