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
node, and a zombie counts as dead.  "Cannot tell" is never "dead": when
/proc cannot be read (no descriptor left, say) a pid that ``kill(pid, 0)``
finds is alive (``pid_state`` says UNKNOWN, ``pid_alive`` True), so nothing
is left running unsignalled because the supervisor was short of files.
A clean stop removes the lock, the state, wanted.json and requests/; logs
and binlogs stay.

``raise_fd_limit`` lifts the process's soft descriptor limit towards the
hard one, and ``RateLimitedLog`` says each kind of recurring trouble at
most once a minute, counting the repeats.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

STATE_FILE = "bscluster.json"
LOCK_FILE = "bscluster.lock"
WANTED_FILE = "wanted.json"
REQUESTS_DIR = "requests"
SUPERVISOR_LOG = "bscluster.log"
DIR_MODE = 0o700
FILE_MODE = 0o600
STATE_VERSION = 1
FD_LIMIT_CAP = 65536  # raise_fd_limit goes no higher than this
LOG_EVERY = 60.0  # seconds between two reports of the same trouble


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
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


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


def os_error_text(e: OSError) -> str:
    """An OSError as a person reads it: its errno's text ("Address already in use"),
    without what a library appended (gevent adds the address it tried)."""
    return os.strerror(e.errno) if e.errno else str(e)


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
class Liveness(Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"  # it exists, but /proc could not be read to tell more


def _proc_stat(pid: int) -> list[str]:
    """Fields after the command name of /proc/PID/stat; raises OSError."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # the command name is in parentheses and may itself hold spaces or ')'
    return raw[raw.rindex(")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), if known."""
    try:
        fields = _proc_stat(pid)
    except OSError:
        return None
    return int(fields[19]) if len(fields) > 19 else None


def process_args(pid: int) -> list[str] | None:
    """The command line ``pid`` runs (None when /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def pid_state(pid: int | None, start_time: int | None = None) -> Liveness:
    """Is ``pid`` a live (non-zombie) process, and the same one that started at
    ``start_time`` when that is given?  UNKNOWN when the process exists but
    /proc could not say more (no /proc, or no descriptor to read it with)."""
    if not pid or pid <= 0:
        return Liveness.DEAD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness.DEAD
    except PermissionError:
        pass  # exists, someone else's
    try:
        fields = _proc_stat(pid)
    except FileNotFoundError:
        # gone since kill(), or no /proc at all (then kill() is all we know)
        return Liveness.UNKNOWN if not os.path.isdir("/proc/self") else Liveness.DEAD
    except (OSError, ValueError):
        return Liveness.UNKNOWN  # EMFILE, EACCES, ...: cannot tell is not dead
    if fields[0] in ("Z", "X"):
        return Liveness.DEAD
    if start_time is None or len(fields) <= 19:
        return Liveness.ALIVE
    return Liveness.ALIVE if int(fields[19]) == start_time else Liveness.DEAD


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True unless ``pid`` is known to be dead (or to be another process now)."""
    return pid_state(pid, start_time) is not Liveness.DEAD


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


def ask_to_stop(send: Callable[[int], object]) -> None:
    """SIGTERM, then SIGCONT, through ``send(sig)``.  A stopped process (SIGSTOP, a
    debugger, a terminal's ^Z: a hung node in our tests) acts on SIGTERM only once it
    runs again; continued, it stops cleanly now instead of being killed when the
    stop timeout ends.  systemd sends the same pair."""
    send(signal.SIGTERM)
    send(signal.SIGCONT)


def stop_pids(pids: dict[int, int | None], timeout: float) -> None:
    """SIGTERM (and SIGCONT) each, then SIGKILL whatever is left after ``timeout``."""
    for pid, start in pids.items():
        ask_to_stop(lambda sig: signal_pid(pid, sig, start))  # noqa: B023 (called at once)
    if not wait_gone(pids, timeout):
        for pid, start in pids.items():
            signal_pid(pid, signal.SIGKILL, start)
        wait_gone(pids, 5.0)


def raise_fd_limit(cap: int = FD_LIMIT_CAP) -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit (at most ``cap``); returns
    (before, after).  Never lowers it; a refusal leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, want
    return soft, soft


class RateLimitedLog:
    """Says each kind of recurring trouble at most once per ``every`` seconds.

    ``log(kind, message)``: the first message of a kind is said at once; the
    ones within ``every`` seconds after it are counted, and the next one said
    carries the count.  Thread-safe.
    """

    def __init__(self, say: Callable[[str], None], every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every, self.clock = say, every, clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str) -> bool:
        """Log ``message`` unless ``kind`` was logged recently; True if it was said."""
        now = self.clock()
        with self._lock:
            last, skipped = self._seen.get(kind, (None, 0))
            if last is not None and now - last < self.every:
                self._seen[kind] = (last, skipped + 1)
                return False
            self._seen[kind] = (now, 0)
        self.say(message + (f" ({skipped} more like this since the last report)"
                            if skipped else ""))
        return True
