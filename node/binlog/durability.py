"""When the binlog's records reach the disk: every fsync policy, in one place.

How this works
--------------
Every record is in the page cache before the store answers (``writer``), so
a killed process loses nothing; what a policy decides is when the disk has
it.  beanstalkd 1.12's three, chosen with ``-f`` / ``-F``:

* ``-f MS`` (``fsync_ms`` > 0): at most every MS ms, on a timer that the
  first write after a sync schedules; the fdatasync itself runs on a thread
  of its own (``Syncer``), so the event loop never waits for the disk and
  the last write before a quiet spell is synced within MS.
* ``-f 0``: before the reply.  Alone (tools, tests) each write is synced as
  it is made (``sync_each``).  Under a server, ``sync_later`` hands the
  syncs to the server's group commit (``wal.GroupSync``): a reply waits
  until ``synced`` covers ``records_written``, and one fdatasync
  (``sync_start`` / ``sync_here``, then ``sync_done``) covers every write
  made while the one before it ran.  The server only waits and runs the
  sync on a worker thread; what is synced, and when a reply may leave, is
  decided here.
* ``-F`` (``fsync_ms`` None): never; files are not synced either
  (``syncs_files``).

Segments that compaction removes from the log are unlinked only once what
replaced them is on disk: ``retire`` numbers them with the next sync (or
syncs at once under group commit) and ``unlink_synced`` unlinks those whose
sync has completed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..ratelog import Complaints
from .fastpath import FastPath
from .fileio import OsIO
from .segments import Segment, SegmentFiles

if TYPE_CHECKING:  # (the writer asks this module; the facade wires them)
    from .writer import LogWriter

log = logging.getLogger("bsnode")

RETRY_EVERY = 1.0  # seconds between retries of a failed write or sync
REAP_POLL = 0.005  # seconds between looks at a background sync that old segments wait on


def syncs_files(fsync_ms: int | None) -> bool:
    """Whether new, finished and removed files are synced (all but ``-F``)."""
    return fsync_ms is not None


class Durability:
    """The sync policy of one binlog.  ``writer`` (for ``records_written``)
    is set by the facade that builds both."""

    def __init__(self, fsync_ms: int | None, io: OsIO, files: SegmentFiles, fast: FastPath,
                 clock: Callable[[], float], sched, background_sync: bool) -> None:
        self.fsync_ms = fsync_ms
        self.io = io
        self.files = files
        self.fast = fast
        self.clock = clock
        self.sched = sched
        self.writer: LogWriter | None = None
        self.sync_each = fsync_ms == 0  # -f 0 with no server grouping syncs
        self.group_sync = False  # -f 0 with the server grouping syncs (sync_later)
        self.synced = 0  # with group_sync: records_written when the last good sync began
        self.syncer = Syncer(io) if fsync_ms and background_sync else None
        self.sync_entry = None
        self.reap_entry = None
        self.last_sync = float("-inf")

    @property
    def records_written(self) -> int:
        return self.writer.records_written

    # --- what the writer asks -------------------------------------------------------
    def timer_wanted(self) -> bool:
        """-f MS and no sync scheduled: the next write must schedule one."""
        return bool(self.fsync_ms) and self.sync_entry is None

    def wrote(self) -> None:
        """A record was written: schedule the timed sync if none is."""
        if self.fsync_ms and self.sync_entry is None:
            now = self.clock()
            self.sync_entry = self.sched.add(
                max(now, self.last_sync + self.fsync_ms / 1000), self._sync_due, None)

    def flush(self) -> None:
        """Sync cur now under -f MS (start-up, rewrite); under -f 0 each
        write was synced already, under -F nothing is."""
        if self.fsync_ms:
            self.io.fdatasync(self.files.cur.fd)

    # --- old segments ----------------------------------------------------------------
    def retire(self, segs: list[Segment]) -> None:
        """``segs`` left the log: unlink them once what replaced them is on
        disk: after the next sync (-f MS), now (-f 0: already synced, or
        synced here when the server groups syncs; -F: never synced anyway)."""
        syncer = self.syncer
        number = syncer.requested + 1 if syncer is not None else 0
        for seg in segs:
            self.files.doom(seg, number)
        if self.fsync_ms:
            if self.sync_entry is None:
                self.sync_entry = self.sched.add(self.clock(), self._sync_due, None)
            return
        if self.group_sync:
            cur = self.files.cur
            try:
                self.io.fdatasync(cur.fd)
            except OSError as e:  # the old segments stay until the next collection
                self.files.complain(f"cannot sync {cur.path}", e)
                return
        self.unlink_synced()

    def unlink_synced(self) -> None:
        """Unlink the retired segments whose sync has completed."""
        syncer = self.syncer
        self.files.unlink_doomed(syncer.done if syncer is not None else float("inf"))

    # --- -f 0 under a server: one sync for many writes ------------------------------
    def sync_later(self) -> bool:
        """With ``-f 0``, stop syncing inside each write: the server syncs
        before it answers instead (``sync_start`` / ``sync_done``), so one
        fdatasync covers every write made while the one before it ran: a
        group commit.  An answer still leaves only once what it acknowledges
        is on disk.  False, and nothing changes, under any other policy."""
        if self.fsync_ms != 0 or self.group_sync:
            return False
        self.group_sync = True
        self.sync_each = False
        self.synced = self.records_written  # each write so far was synced in it
        self.fast.invalidate()
        return True

    def sync_start(self) -> tuple[int, int]:
        """A sync about to run covers every record written so far: returns
        (a duplicate of cur's descriptor, for the sync to use and close, so a
        segment roll meanwhile cannot close it; ``records_written``).
        Records in older segments were synced when those were closed."""
        return os.dup(self.files.cur.fd), self.records_written

    def sync_here(self) -> int:
        """Sync cur on this thread, for when ``sync_start`` has no descriptor
        to spare (EMFILE); returns ``records_written`` as it covers them."""
        upto = self.records_written
        self.io.fdatasync(self.files.cur.fd)
        return upto

    def sync_done(self, upto: int, err: OSError | None) -> None:
        if err is not None:
            self.files.complain(f"cannot sync {self.files.cur.path}", err)
        elif upto > self.synced:
            self.synced = upto

    # --- -f MS: the timer -------------------------------------------------------------
    def _sync_due(self, _arg, now: float) -> None:
        self.sync_entry = None
        self.fast.invalidate()  # the next write schedules the next sync
        self.last_sync = now
        syncer = self.syncer
        if syncer is None:
            try:
                self.io.fdatasync(self.files.cur.fd)
            except OSError as e:
                self._sync_failed(e, now)
                return
            self.unlink_synced()
            return
        if syncer.error is not None:
            self._sync_failed(syncer.error, now)
            syncer.error = None
        syncer.request(self.files.cur.fd)
        if self.files.doomed and self.reap_entry is None:
            self.reap_entry = self.sched.add(now + REAP_POLL, self._reap_due, None)

    def _sync_failed(self, err: OSError, now: float) -> None:
        self.files.complain(f"cannot sync {self.files.cur.path}", err)
        if self.sync_entry is None:
            self.sync_entry = self.sched.add(now + RETRY_EVERY, self._sync_due, None)

    def _reap_due(self, _arg, now: float) -> None:
        """Unlink the segments whose replacement the background sync has made durable."""
        self.reap_entry = None
        syncer = self.syncer
        if syncer.error is not None:
            self._sync_failed(syncer.error, now)
            syncer.error = None
        self.unlink_synced()
        if self.files.doomed:  # look again soon; after a failure, when the sync is retried
            wait = REAP_POLL if syncer.done < syncer.requested else RETRY_EVERY
            self.reap_entry = self.sched.add(now + wait, self._reap_due, None)

    # --- stopping ---------------------------------------------------------------------
    def stop_thread(self) -> None:
        if self.syncer is not None:
            self.syncer.stop()
            self.syncer = None

    def close(self) -> bool:
        """Stop the thread and the timers, sync cur a last time.  False if
        cur is closed already or the sync failed (logged)."""
        self.stop_thread()
        self.sched.cancel(self.sync_entry)
        self.sched.cancel(self.reap_entry)
        self.sync_entry = self.reap_entry = None
        cur = self.files.cur
        if cur is None or cur.fd < 0:
            return False
        if self.fsync_ms is not None:
            try:
                self.io.fdatasync(cur.fd)
            except OSError as e:
                log.error("binlog: closing %s: %s", cur.path, e)
                return False
        return True


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
