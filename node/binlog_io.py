"""The file operations of the binlog, in one replaceable object, and its directory lock.

Everything the binlog does to the disk goes through an ``OsIO``: tests hand
the binlog a subclass that fails on cue (disk full, I/O error) to prove the
node refuses puts, keeps serving and recovers.  Segment files are created
owner-only (0600) and their space is allocated up front, so writes inside a
segment cannot fail for lack of disk.

Records are written into the segment being filled through a shared memory
map when the filesystem is one where allocated space stays allocated
(``MAP_FILESYSTEMS``): a copy into the page cache, with no system call, and
just as safe against a killed process as ``pwrite`` (the kernel owns the
dirty pages); fdatasync makes them durable the same way.  Elsewhere (copy-
on-write or network filesystems, where a write into a mapping could meet a
full disk as SIGBUS) ``map`` returns None and records go through pwrite.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import pwd
import re
import threading

from .ratelog import Complaints

log = logging.getLogger("bsnode")

LOCK_NAME = "lock"
MAP_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
_ZEROS = bytes(1 << 16)


class OsIO:
    """Plain os calls; subclass and override to inject faults."""

    def create(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def allocate(self, fd: int, size: int) -> None:
        """Reserve ``size`` bytes of disk for the file (zero-filled)."""
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            for off in range(0, size, len(_ZEROS)):  # no fallocate here: write zeros
                chunk = _ZEROS[:min(len(_ZEROS), size - off)]
                if os.pwrite(fd, chunk, off) != len(chunk):
                    raise OSError(errno.ENOSPC, "short write while allocating") from None

    # os.pwrite itself (no wrapper on the hot path): returns the bytes written,
    # which the binlog checks.
    pwrite = staticmethod(os.pwrite)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def map(self, fd: int, size: int, dirpath: str):
        """A writable shared map of the file, or None to write with pwrite."""
        if filesystem_type(dirpath) not in MAP_FILESYSTEMS:
            return None
        return mmap.mmap(fd, size)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def sync_dir(self, dirpath: str) -> None:
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/self/mountinfo).

    Read as bytes and unescaped by hand: no codec is looked up, so nothing is
    imported (bsnode may have dropped privileges by now, see ``-u``)."""
    target = os.fsencode(os.path.realpath(path))
    best, kind = b"", None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                left, _, right = line.partition(b" - ")
                point = _OCTAL_ESCAPE.sub(_unescape, left.split()[4])
                inside = target == point or target.startswith(point.rstrip(b"/") + b"/")
                if inside and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    except (OSError, IndexError):
        return None
    return None if kind is None else kind.decode("ascii", "replace")


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(m: re.Match) -> bytes:
    return bytes((int(m.group(1), 8),))


class DirLockedError(Exception):
    pass


class DirLock:
    """One node per binlog directory: an exclusive lock on ``DIR/lock``.

    Both lock kinds are taken: flock (which also excludes a second binlog
    in this same process) and a POSIX record lock, the kind beanstalkd's
    own ``-b`` takes, so bsnode and beanstalkd exclude each other too.
    """

    def __init__(self, dirpath: str) -> None:
        self.path = os.path.join(dirpath, LOCK_NAME)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = -1
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DirLockedError(
                    f"binlog directory {dirpath} is in use by another process "
                    f"(bsnode or beanstalkd holds {self.path})") from None
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, b"%d\n" % os.getpid(), 0)

    def give_to(self, user: str) -> None:
        """Make the lock file ``user``'s, for a node about to become ``user``
        (-u): taken before privileges are dropped, it is the only binlog file
        the node creates as root."""
        try:
            pw = pwd.getpwnam(user)
            os.fchown(self.fd, pw.pw_uid, pw.pw_gid)
        except (KeyError, OSError):
            pass  # an unknown user is reported by -u itself

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops both locks
            self.fd = -1


class Syncer:
    """fdatasync on a thread of its own, so the event loop never waits for the disk.

    ``request(fd)`` asks for a sync of everything written to the file so far
    and returns the request's number; a request not yet started is replaced
    by the newer one (one sync covers both).  ``done`` is the highest number
    whose sync completed; ``error`` the last failure, for the caller to report
    and clear.  The thread is a plain OS thread: fdatasync releases the GIL,
    so the node's event loop runs on meanwhile.  When no descriptor is left
    for the hand-off (EMFILE), the request is synced on the caller's thread.
    """

    def __init__(self, io: OsIO) -> None:
        self.io = io
        self.requested = 0
        self.done = 0
        self.error: OSError | None = None
        self.inline = 0  # syncs run on the caller's thread, for want of a descriptor
        self.complaints = Complaints(log)
        self._want: tuple[int, int] | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="binlog-fsync", daemon=True)
        self._thread.start()

    def request(self, fd: int) -> int:
        try:
            dup = os.dup(fd)  # the caller may close its fd (segment roll) while we sync
        except OSError as e:  # no descriptor to spare (EMFILE): sync here, not never
            return self._sync_here(fd, e)
        with self._cond:
            if self._want is not None:
                os.close(self._want[0])
            self.requested += 1
            self._want = (dup, self.requested)
            self._cond.notify()
            return self.requested

    def _sync_here(self, fd: int, why: OSError) -> int:
        """Sync ``fd`` on the caller's thread: the hand-off to the thread
        needs a descriptor of its own, and there is none (a node at its
        descriptor limit).  The event loop waits for the disk meanwhile,
        which is better than persistence silently off."""
        self.inline += 1
        with self._cond:
            self.requested += 1
            number = self.requested
        try:
            self.io.fdatasync(fd)
        except OSError as e:
            with self._cond:
                self.error = e
                self._cond.notify_all()
            return number
        with self._cond:
            self.done = max(self.done, number)
            self._cond.notify_all()
        self.complaints.error("sync hand-off", "binlog: cannot hand a sync to its thread (%s); "
                              "syncing in the event loop meanwhile", why.strerror or why)
        return number

    def wait(self, number: int, timeout: float) -> bool:
        """Block until request ``number`` is done (True) or failed / timed out."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.done >= number or self.error is not None, timeout) \
                and self.done >= number

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._want is None and not self._stop:
                    self._cond.wait()
                if self._want is None:
                    return
                fd, number = self._want
                self._want = None
            try:
                self.io.fdatasync(fd)
            except Exception as e:  # noqa: BLE001 - reported by the binlog, never fatal here
                with self._cond:
                    self.error = e if isinstance(e, OSError) else OSError(str(e))
                    self._cond.notify_all()
                continue
            finally:
                os.close(fd)
            with self._cond:
                self.done = max(self.done, number)
                self._cond.notify_all()
