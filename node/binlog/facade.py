"""bsnode's binlog (``-b DIR``): every job on disk, in a log that stays bounded.

How this works
--------------
The log is a directory of segment files ``binlog.N``; the format (a header
with magic, version and links, then msgpack records framed with length and
CRC-32) is documented in ``format`` and docs/BINLOG.md.  ``Binlog`` is a
small facade that owns one collaborator per job, each the one owner of its
facts, and wires them together:

* ``segments.SegmentFiles``: the files and the disk space they hold;
* ``writer.LogWriter``: the store's put / update / delete as records
  appended to the newest segment, and retries of failed writes;
* ``compactor.Compactor``: the bound on disk use (``disk_bound``),
  compaction and the removal of old segments;
* ``durability.Durability``: every fsync policy (-f MS on a thread, -f 0
  per write or grouped by the server, -F), and when removed segments may
  be unlinked;
* ``fastpath.FastPath``: the writer's fast-path budget, which each of them
  invalidates through its one method;
* ``fileio``: the file operations (the fault-injection seam) and the lock.

``attach`` locks the directory, replays the log (``replay``: torn tails cut
and saved beside the log, corruption in the middle refused with its file
and offset), hands the jobs to the store (``adopt``) and starts a new
segment.  The store and the server see the ``wal.Wal`` protocol.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable

from ..defaults import DEFAULT_BINLOG_SIZE
from ..lifecycle import BURIED, DELAYED, READY
from . import format as F
from .compactor import COMPACT_CREDIT, Compactor
from .durability import RETRY_EVERY, Durability, syncs_files
from .fastpath import FastPath
from .fileio import DirLock, DirLockedError, OsIO
from .replay import CorruptLog, IncompleteLog, LogError, Replay, replay, save_damage
from .segments import MIN_SEGMENT_SIZE, SLOT, Segment, SegmentFiles
from .writer import LogWriter

log = logging.getLogger("bsnode")

DEFAULT_SEGMENT_SIZE = DEFAULT_BINLOG_SIZE  # bsnode -s; its owner is node/defaults.py
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


class Binlog:
    """The store's write-ahead log (``store.wal``; implements ``wal.Wal``)."""

    def __init__(self, dirpath: str, segment_size: int, fsync_ms: int | None,
                 clock: Callable[[], float], sched, io: OsIO | None = None,
                 wall: Callable[[], float] = time.time, background_sync: bool = True) -> None:
        io = io or OsIO()
        self.dir = dirpath
        self.io = io
        self.clock = clock
        self.wall = wall
        self.max_size = segment_size
        self.fast = fast = FastPath()
        self.files = files = SegmentFiles(dirpath, segment_size, io, fast,
                                          syncs_files(fsync_ms))
        self.durability = d = Durability(fsync_ms, io, files, fast, clock, sched,
                                         background_sync)
        self.writer = w = LogWriter(files, fast, d, clock, sched, wall)
        self.compactor = c = Compactor(files, w, d, clock, sched)
        d.writer = w
        w.compactor = c
        # the store's calls go straight to the writer: no layer on the hot path
        self.put = w.put
        self.update = w.update
        self.delete = w.delete
        self.file_of = w.file_of
        self.lock: DirLock | None = None
        self._idle_old: list[Segment] = []  # old segments with no job records

    # --- wal.Wal ------------------------------------------------------------------------
    def reply_sync(self) -> Durability | None:
        """Under ``-f 0``, replies wait for a sync the server groups
        (``Durability.sync_later``); under any other policy, nothing."""
        d = self.durability
        return d if d.sync_later() or d.group_sync else None

    def stats(self) -> dict:
        files = self.files
        return {
            "oldest_index": files.segments[0].num if files.segments else 0,
            "current_index": files.cur.num if files.cur else 0,
            "records_migrated": self.compactor.records_migrated,
            "records_written": self.writer.records_written,
            "max_size": self.max_size,
        }

    def usage(self) -> dict:
        """Figures for tests and operators: what is on disk and what is needed."""
        files = self.files
        return {"disk": files.disk, "live": self.compactor.live(),
                "live_jobs": self.writer.live_count,
                "segments": len(files.segments) + len(files.doomed) + len(files.spares),
                "bound": self.compactor.bound(), "pending": len(self.writer.retry)}

    def close(self) -> None:
        """Write what is still owed, sync, finish removals, drop spares, unlock."""
        self.fast.invalidate()  # from here on every write checks the files are still there
        self.writer.close()
        synced = self.durability.close()
        self.compactor.close()
        self.files.close(unlink=synced)
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- for tests and tools: the collaborators' figures -----------------------------
    cur = property(lambda self: self.files.cur)
    segments = property(lambda self: self.files.segments)
    spares = property(lambda self: self.files.spares)
    spare_slots = property(lambda self: self.files.spare_slots)
    _doomed = property(lambda self: self.files.doomed)
    live_count = property(lambda self: self.writer.live_count)
    records_written = property(lambda self: self.writer.records_written)
    records_migrated = property(lambda self: self.compactor.records_migrated)
    synced = property(lambda self: self.durability.synced)
    _syncer = property(lambda self: self.durability.syncer)
    _quick = property(lambda self: self.fast.quick)

    def sync_later(self) -> bool:
        return self.durability.sync_later()

    # --- start-up ---------------------------------------------------------------------
    def adopt(self, r: Replay, store) -> int:
        """Hand the replayed jobs to the store, then start a new segment.

        Returns the number of jobs restored."""
        wall = self.wall()
        files = self.files
        dropped = {d.index for d in r.torn if d.whole_file}
        segs = []
        by_index: list[Segment | None] = []
        for index, info in enumerate(r.segments):
            files.next_num = max(files.next_num, info.num + 1)
            seg = None
            if index not in dropped:
                seg = Segment(info.num, info.path, -1, info.size, info.end)
                seg.max_id = info.max_id
                files.by_num[seg.num] = seg
                if info.records == info.marks:  # no job records: left by a restart
                    self._idle_old.append(seg)
                else:  # only the idle ones after the last with jobs go (see _start_segment)
                    self._idle_old = []
                segs.append(seg)
            by_index.append(seg)
        restore = store.restore
        # by state code: reserved comes back ready; delayed is decided below
        names = [None, READY, DELAYED, BURIED, READY]
        delayed = F.STATE_DELAYED
        live_bytes = 0
        for jid, e in r.live.items():
            rec = e[0]
            code = rec[7]
            remaining = 0.0
            if code == delayed:
                remaining = rec[8] / 1000 - wall
                state = DELAYED if remaining > 0 else READY
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
        w = self.writer
        w.live_count = len(r.live)
        w.live_bytes = live_bytes
        w.max_id = r.max_id
        self._shrink_old(segs)
        files.segments = segs
        files.disk += sum(s.size for s in segs)
        self._start_segment()
        return w.live_count

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
        files, w, c = self.files, self.writer, self.compactor
        kept = [seg for seg in files.segments if seg not in idle]
        try:
            cur = files.open_segment(files.seg_size)
        except OSError as e:
            raise BinlogError(f"cannot create a binlog segment in {self.dir}: {e}") from None
        files.segments.append(cur)
        files.make_current(cur, kept[-1] if kept else None)
        for seg in idle:
            files.segments.remove(seg)
            files.doom(seg, 0)
        self._idle_old = []
        # cur carries the highest id issued and the first segment still needed
        for frame, what in ((F.mark(w.max_id + 1), "mark"),
                            (F.head(files.segments[0].num), "head")):
            if not files.room(len(frame), w.live_count) or not w.write(frame, what):
                raise BinlogError(
                    f"not enough disk in {self.dir} to start a segment and reserve room for "
                    f"deleting {w.live_count} jobs")
        files.cur.max_id = w.max_id
        self.durability.flush()
        c.collect()
        files.unlink_doomed(float("inf"))
        c.credit = 0
        c.compact()

    def rewrite_all(self) -> None:
        """Move every live job into the segments begun at this start and drop
        every older segment (after recovery)."""
        files, c = self.files, self.compactor
        first_new = files.cur  # cur may roll on while the jobs move in
        while files.segments[0] is not first_new:
            head = files.segments[0]
            for job in head.order:
                if job is not None and not c.migrate(job):
                    raise BinlogError(f"cannot rewrite the binlog in {self.dir}")
            head.cursor = len(head.order)
            self.durability.flush()
            if not c.collect():
                raise BinlogError(f"cannot rewrite the binlog in {self.dir}")
            files.unlink_doomed(float("inf"))


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
        if wal is not None:
            wal.durability.stop_thread()
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
