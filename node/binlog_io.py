"""The file operations of the binlog, in one replaceable object, and its directory lock.

Everything the binlog does to the disk goes through an ``OsIO``: tests hand
the binlog a subclass that fails on cue (disk full, I/O error) to prove the
node refuses puts, keeps serving and recovers.  Segment files are created
owner-only (0600) and their space is allocated up front, so writes inside a
segment cannot fail for lack of disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

LOCK_NAME = "lock"
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
                os.pwrite(fd, _ZEROS[:min(len(_ZEROS), size - off)], off)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        n = os.pwrite(fd, data, offset)
        if n == len(data):
            return
        view = memoryview(data)[n:]
        offset += n
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

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
    so the node's event loop runs on meanwhile.
    """

    def __init__(self, io: OsIO) -> None:
        self.io = io
        self.requested = 0
        self.done = 0
        self.error: OSError | None = None
        self._want: tuple[int, int] | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="binlog-fsync", daemon=True)
        self._thread.start()

    def request(self, fd: int) -> int:
        dup = os.dup(fd)  # the caller may close its fd (segment roll) while we sync
        with self._cond:
            if self._want is not None:
                os.close(self._want[0])
            self.requested += 1
            self._want = (dup, self.requested)
            self._cond.notify()
            return self.requested

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
            except OSError as e:
                with self._cond:
                    self.error = e
                    self._cond.notify_all()
                continue
            finally:
                os.close(fd)
            with self._cond:
                self.done = max(self.done, number)
                self._cond.notify_all()
