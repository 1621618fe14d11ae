"""What a running cluster leaves in its data dir, and how to read it back.

How this works
--------------
The supervisor owns a few files in the data dir (all owner-only)::

    bscluster.lock    flock()ed by the live supervisor for its whole life
    bscluster.json    its state: own pid, each node's state/pid/port/...,
                      rewritten atomically (write + rename) on every change
    wanted.json       the configuration it should run; `up` rewrites it
                      and sends SIGHUP to add nodes
    requests/         one JSON file per request (`restart node2`), read
                      and deleted by the supervisor on SIGHUP
    bscluster.log     the supervisor's output when detached
    nodeI.log         nodeI's output when detached
    nodeI/            nodeI's binlog directory

The lock, not the pid, says whether a supervisor is alive: the kernel
drops it when the process dies however it dies.  Node pids are checked
against their start time in /proc, so a reused pid is never mistaken for a
node, and a zombie counts as dead.  A clean stop removes the lock, the
state, wanted.json and requests/; logs and binlogs stay.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STATE_FILE = "bscluster.json"
LOCK_FILE = "bscluster.lock"
WANTED_FILE = "wanted.json"
REQUESTS_DIR = "requests"
SUPERVISOR_LOG = "bscluster.log"
DIR_MODE = 0o700
FILE_MODE = 0o600
STATE_VERSION = 1


@dataclass(frozen=True)
class Paths:
    data_dir: Path

    @property
    def state(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def lock(self) -> Path:
        return self.data_dir / LOCK_FILE

    @property
    def wanted(self) -> Path:
        return self.data_dir / WANTED_FILE

    @property
    def requests(self) -> Path:
        return self.data_dir / REQUESTS_DIR

    @property
    def log(self) -> Path:
        return self.data_dir / SUPERVISOR_LOG

    def node_log(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"

    def runtime_files(self) -> list[Path]:
        return [self.state, self.wanted, self.lock]


# --- files -----------------------------------------------------------------
def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) owner-only; tighten it if it exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, DIR_MODE)


def write_json(path: Path, doc: dict) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a file from something else; treat as absent


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    return os.open(path, flags, FILE_MODE)


def log_stamp() -> str:
    """The time that starts every line bscluster writes to a log (ISO 8601, ms)."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


# --- the supervisor lock -----------------------------------------------------
class Lock:
    """The supervisor's exclusive flock on bscluster.lock."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        os.set_inheritable(fd, False)
        self.fd = fd
        return True

    def release(self, remove: bool = True) -> None:
        if self.fd is None:
            return
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None


def supervisor_alive(paths: Paths) -> bool:
    """True while some process holds the supervisor lock."""
    if not paths.lock.exists():
        return False
    probe = Lock(paths.lock)
    if probe.acquire():
        probe.release(remove=False)
        return False
    return True


# --- processes ---------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces or ')'
    return raw[raw.rindex(")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), if known."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """Is ``pid`` a live (non-zombie) process, and the same one that started at
    ``start_time`` when that is given?"""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    fields = _proc_stat(pid)
    if fields is None:
        return not os.path.exists("/proc/self/stat")  # no /proc: trust kill()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def wait_gone(pids: dict[int, int | None], timeout: float) -> bool:
    """Poll until none of ``{pid: start_time}`` is alive; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p, t) for p, t in pids.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def signal_pid(pid: int, sig: int, start_time: int | None = None) -> bool:
    """Send ``sig`` only if ``pid`` is still the process we mean."""
    if not pid_alive(pid, start_time):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_pids(pids: dict[int, int | None], timeout: float) -> None:
    """SIGTERM each, then SIGKILL whatever is left after ``timeout``."""
    for pid, start in pids.items():
        signal_pid(pid, signal.SIGTERM, start)
    if not wait_gone(pids, timeout):
        for pid, start in pids.items():
            signal_pid(pid, signal.SIGKILL, start)
        wait_gone(pids, 5.0)
