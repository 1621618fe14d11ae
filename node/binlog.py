"""bsnode's binlog (``-b DIR``): every job on disk, in a log that stays bounded.

How this works
--------------
The log is a directory of segment files ``binlog.N``; the format (a header
with magic and version, then msgpack records framed with length and CRC-32)
is documented in ``binlog_format`` and docs/BINLOG.md.  The job is split by
layer, each a class on top of the one before:

* ``binlog_space.SegmentFiles``: the files and the disk space they hold;
* ``binlog_writer.LogWriter``: the store's put / update / delete as records
  appended to the newest segment, retries of failed writes, fsync timers;
* ``binlog_compact.Compactor``: the bound on disk use (compaction, removal
  of old segments);
* ``Binlog`` (here): start-up, stats and shutdown; and ``attach``, which
  locks the directory, replays the log (``binlog_replay``: torn tails cut
  and saved beside the log, corruption in the middle refused with its file
  and offset), hands the jobs to the store and starts a new segment.

The store sees ``store.wal``: ``put``, ``update``, ``delete``, ``file_of``,
``stats``, ``usage`` and ``close``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable

from . import binlog_format as F
from .binlog_compact import COMPACT_CREDIT, Compactor
from .binlog_io import DirLock, DirLockedError, OsIO
from .binlog_replay import CorruptLog, IncompleteLog, LogError, Replay, replay, save_damage
from .binlog_space import MIN_SEGMENT_SIZE, SLOT, Segment
from .binlog_writer import RETRY_EVERY

log = logging.getLogger("bsnode")

DEFAULT_SEGMENT_SIZE = 10485760
RECOVER_ENV = "BSNODE_BINLOG_RECOVER"

# names the tests and tools use from here
__all__ = ["COMPACT_CREDIT", "DEFAULT_SEGMENT_SIZE", "RECOVER_ENV", "RETRY_EVERY", "SLOT",
           "Binlog", "BinlogError", "attach", "lock_dir"]


class BinlogError(Exception):
    """The binlog cannot be opened; the message says what to do.

    ``exit_code`` is what beanstalkd exits with in the same case: 10 when
    the directory is locked by another process, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Binlog(Compactor):
    """The store's write-ahead log (``store.wal``)."""

    enabled = True

    def __init__(self, dirpath: str, segment_size: int, fsync_ms: int | None,
                 clock: Callable[[], float], sched, io: OsIO | None = None,
                 wall: Callable[[], float] = time.time, background_sync: bool = True) -> None:
        super().__init__(dirpath, segment_size, fsync_ms, clock, sched, io, wall,
                         background_sync)
        self.max_size = segment_size
        self.lock: DirLock | None = None
        self._idle_old: list[Segment] = []  # old segments with no job records

    def stats(self) -> dict:
        return {
            "oldest_index": self.segments[0].num if self.segments else 0,
            "current_index": self.cur.num if self.cur else 0,
            "records_migrated": self.records_migrated,
            "records_written": self.records_written,
            "max_size": self.max_size,
        }

    def usage(self) -> dict:
        """Figures for tests and operators: what is on disk and what is needed."""
        return {"disk": self.disk, "live": self._live(), "live_jobs": self.live_count,
                "segments": len(self.segments) + len(self._doomed) + len(self.spares),
                "bound": self._bound(), "pending": len(self._retry)}

    def close(self) -> None:
        """Write what is still owed, sync, finish removals, drop spares, unlock."""
        self._quick = -1  # from here on every write checks the files are still there
        if self._retry:
            self._retry_due(None, self.clock())
            if self._retry:
                log.error("binlog: %d changes could not be written before stopping",
                          len(self._retry))
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        if self.cur is not None and self.cur.fd >= 0:
            try:
                if self.fsync_ms is not None:
                    self.io.fdatasync(self.cur.fd)
                self._unlink_doomed(everything=True)
            except OSError as e:
                log.error("binlog: closing %s: %s", self.cur.path, e)
        for seg in self.spares:
            self._discard(seg)
        self.spares = []
        for seg in self.segments:
            if seg.map is not None:
                seg.map.close()
                seg.map = None
            if seg.fd >= 0:
                self.io.close(seg.fd)
                seg.fd = -1
        for entry in (self._sync_entry, self._compact_entry, self._retry_entry,
                      self._reap_entry):
            self.sched.cancel(entry)
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- start-up ---------------------------------------------------------------------
    def adopt(self, r: Replay, store) -> int:
        """Hand the replayed jobs to the store, then start a new segment.

        Returns the number of jobs restored."""
        wall = self.wall()
        dropped = {d.index for d in r.torn if d.whole_file}
        segs = []
        by_index: list[Segment | None] = []
        for index, info in enumerate(r.segments):
            self.next_num = max(self.next_num, info.num + 1)
            seg = None
            if index not in dropped:
                seg = Segment(info.num, info.path, -1, info.size, info.end)
                seg.max_id = info.max_id
                self.by_num[seg.num] = seg
                if info.records == info.marks:  # no job records: left by a restart
                    self._idle_old.append(seg)
                else:  # only the idle ones after the last with jobs go (see _start_segment)
                    self._idle_old = []
                segs.append(seg)
            by_index.append(seg)
        restore = store.restore
        # by state code: reserved comes back ready; delayed is decided below
        names = [None, "ready", "delayed", "buried", "ready"]
        delayed = F.STATE_DELAYED
        live_bytes = 0
        for jid, e in r.live.items():
            rec = e[0]
            code = rec[7]
            remaining = 0.0
            if code == delayed:
                remaining = rec[8] / 1000 - wall
                state = "delayed" if remaining > 0 else "ready"
            else:
                state = names[code]
            age = wall - rec[9] / 1000
            job = restore(jid, rec[2], rec[3], rec[4], rec[5], rec[6], state, remaining,
                          rec[10:15], age if age > 0 else 0.0)
            home = by_index[e[3]]
            order = home.order
            job.wal = (home.num, len(order), e[1], e[2])
            order.append(job)
            live_bytes += e[1] + e[2]
        for seg in segs:
            seg.live = len(seg.order)
        self.live_count = len(r.live)
        self.live_bytes = live_bytes
        self.max_id = r.max_id
        self._shrink_old(segs)
        self.segments = segs
        self.disk += sum(s.size for s in segs)
        self._start_segment()
        return self.live_count

    def _shrink_old(self, segs: list[Segment]) -> None:
        """Give back the unused (zero) tail of the segment the last run was writing."""
        for seg in segs:
            if seg.size > seg.used:
                fd = os.open(seg.path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, seg.used)
                finally:
                    os.close(fd)
                seg.size = seg.used

    def _start_segment(self) -> None:
        # Segments holding nothing but MARKs and HEADs (a start and a stop
        # with no job written) after the last segment with jobs cancel
        # nothing, so they go: restarts do not pile up files.  The new
        # segment links to the last one kept, so no link names them.
        idle = self._idle_old
        kept = [seg for seg in self.segments if seg not in idle]
        try:
            cur = self._open_segment(self.seg_size)
        except OSError as e:
            raise BinlogError(f"cannot create a binlog segment in {self.dir}: {e}") from None
        self.segments.append(cur)
        self._make_current(cur, kept[-1] if kept else None)
        for seg in idle:
            self.segments.remove(seg)
            del self.by_num[seg.num]
            self._doomed.append((0, seg))
            self.doomed_bytes += seg.size
        self._idle_old = []
        # cur carries the highest id issued and the first segment still needed
        for frame, what in ((F.mark(self.max_id + 1), "mark"),
                            (F.head(self.segments[0].num), "head")):
            if not self._room(len(frame), self.live_count) or not self._write(frame, what):
                raise BinlogError(
                    f"not enough disk in {self.dir} to start a segment and reserve room for "
                    f"deleting {self.live_count} jobs")
        self.cur.max_id = self.max_id
        if self.fsync_ms:
            self.io.fdatasync(self.cur.fd)
        self._collect()
        self._unlink_doomed(everything=True)
        self.credit = 0
        self._compact()

    def rewrite_all(self) -> None:
        """Move every live job into the segments begun at this start and drop
        every older segment (after recovery)."""
        first_new = self.cur  # cur may roll on while the jobs move in
        while self.segments[0] is not first_new:
            head = self.segments[0]
            for job in head.order:
                if job is not None and not self._migrate(job):
                    raise BinlogError(f"cannot rewrite the binlog in {self.dir}")
            head.cursor = len(head.order)
            if self.fsync_ms:
                self.io.fdatasync(self.cur.fd)
            if not self._collect():
                raise BinlogError(f"cannot rewrite the binlog in {self.dir}")
            self._unlink_doomed(everything=True)


# --- attaching to a store -----------------------------------------------------------
def lock_dir(dirpath: str) -> DirLock:
    """Create ``dirpath`` if needed and lock it: one node per binlog directory."""
    try:
        os.makedirs(dirpath, mode=0o700, exist_ok=True)
        return DirLock(dirpath)
    except DirLockedError as e:
        raise BinlogError(str(e), exit_code=10) from None
    except OSError as e:
        raise BinlogError(f"cannot use binlog directory {dirpath}: {e}") from None


def attach(store, dirpath: str, segment_size: int = DEFAULT_SEGMENT_SIZE,
           fsync_ms: int | None = 50, recover: bool | None = None,
           io: OsIO | None = None, wall: Callable[[], float] = time.time,
           background_sync: bool = True, lock: DirLock | None = None) -> Binlog:
    """Lock ``dirpath`` (unless ``lock`` holds it already), replay its binlog
    into ``store`` and set ``store.wal``.

    ``recover`` (default: the BSNODE_BINLOG_RECOVER environment variable)
    skips damage in the middle of the log instead of refusing to start.
    Raises BinlogError with a sentence an operator can act on.
    """
    if recover is None:
        recover = os.environ.get(RECOVER_ENV, "") not in ("", "0")
    started = time.monotonic()
    if lock is None:
        lock = lock_dir(dirpath)
    wal = None
    gc_was_on = gc.isenabled()
    gc.disable()  # a million new objects would trigger ever longer collections
    try:
        biggest = max(segment_size, MIN_SEGMENT_SIZE,
                      F.HEADER_SIZE + F.FRAME_SIZE + F.MAX_PAYLOAD + SLOT)
        try:
            r = replay(dirpath, recover, biggest)
        except (CorruptLog, IncompleteLog) as e:
            raise BinlogError(
                f"{e}. To start anyway, skipping what is damaged or missing (jobs in it are "
                f"lost and deleted jobs may come back), start bsnode with --binlog-recover "
                f"or set {RECOVER_ENV}=1") from None
        except LogError as e:
            raise BinlogError(str(e)) from None
        except OSError as e:
            raise BinlogError(f"cannot read the binlog in {dirpath}: {e}") from None
        sync = fsync_ms is not None
        save_damage(r.torn, "torn", truncate=True, sync=sync)
        save_damage(r.skipped, "damaged", truncate=False, sync=sync)
        wal = Binlog(dirpath, segment_size, fsync_ms, store.clock, store.sched, io, wall,
                     background_sync)
        wal.lock = lock
        count = wal.adopt(r, store)
        if r.skipped or r.lost:  # start the next time from a whole log
            wal.rewrite_all()
        if r.max_id >= store.next_id:
            store.next_id = r.max_id + 1
    except BaseException:
        if wal is not None and wal._syncer is not None:
            wal._syncer.stop()
        lock.release()
        raise
    finally:
        if gc_was_on:
            gc.freeze()  # what was restored lives long: keep it out of later collections
            gc.enable()
    store.wal = wal
    if r.records or count:
        log.info("binlog: %d jobs restored from %d records in %d files (%.2f s)",
                 count, r.records, len(r.segments), time.monotonic() - started)
    return wal
