"""bsnode's binlog (``-b DIR``): every job on disk, in a log that stays bounded.

How this works
--------------
The log is a directory of segment files ``binlog.N``; the format (a header
with magic and version, then msgpack records framed with length and CRC-32)
is documented in ``binlog_format`` and docs/BINLOG.md; the files and their
space are ``binlog_space``'s.  Records are only ever appended, to the newest
segment (``cur``); a put writes the job's FULL record, a state change
(release, bury, kick) a small UPDATE, a delete a DELETE; a reservation is
not logged (as in beanstalkd).  Each record is in the page cache (a memory
map of cur, or pwrite) before the store answers, so a killed process loses
nothing; fsync follows beanstalkd 1.12: ``-f 0`` syncs before the reply,
``-f MS`` at most every MS ms on a timer, on a thread of its own (so the
last write before a quiet spell is synced within MS), ``-F`` never.

Space.  Every live job owns a *slot*: room for its DELETE record in the
allocated, unwritten space of cur and the spares.  Invariant: free slots >=
live jobs.  A put first makes room for its record plus one more slot
(allocating a spare if needed); if the disk refuses, the put is answered
OUT_OF_MEMORY and nothing is acknowledged.  A delete only spends its own
slot, so it never needs new space.  A failed update or delete write is
retried on a timer until it lands; failures are logged, never hidden.

Bounded disk.  A job's *home* is the segment of its latest FULL record; a
segment is needed while it is home to a live job, or while an older one is
(its DELETE records must outlive the FULL records they cancel).  So
segments are removed from the oldest (the *head*) once it is home to no
live job, and compaction empties the head by writing its live jobs' FULL
records again into ``cur`` (beanstalkd's migration).  It runs while disk
use exceeds ``2 x live + 2 segments`` (live = the jobs' latest records plus
their slots), spending a migration budget of ``COMPACT_CREDIT`` bytes per
byte of new records, plus a background timer when writes stop; each step
is a few records, so no command waits on a big rewrite.  A segment is
unlinked only once the records that replaced it are synced, and ``cur``
always carries the highest id issued (a MARK record) before older segments
go, so ids are never reused.

On start (``attach``) the directory is locked, the log replayed (see
``binlog_replay``: torn tails cut and saved beside the log, corruption in
the middle refused with its file and offset), the jobs handed to the store
and a new segment started.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import zlib
from collections.abc import Callable

import msgpack

from . import binlog_format as F
from .binlog_io import DirLock, DirLockedError, OsIO
from .binlog_replay import CorruptLog, LogError, Replay, replay, save_damage
from .binlog_space import MIN_SEGMENT_SIZE, SLOT, Segment, SegmentFiles

log = logging.getLogger("bsnode")

DEFAULT_SEGMENT_SIZE = 10485760
COMPACT_CREDIT = 2  # bytes migrated per byte of new records, while over the bound
COMPACT_CREDIT_MAX = 4 << 20
COMPACT_TICK = 0.05  # seconds between background compaction steps
COMPACT_TICK_BYTES = 1 << 20
RETRY_EVERY = 1.0  # seconds between retries of a failed write
REAP_POLL = 0.005  # seconds between looks at a background sync that old segments wait on
RECOVER_ENV = "BSNODE_BINLOG_RECOVER"

_FRAME_PACK = F.FRAME.pack
_TAG = F.FRAME_TAG
_crc32 = zlib.crc32
_STATE = F.STATE_CODES
_DELAYED = F.STATE_DELAYED
_INVALID = "invalid"  # the store's state of a deleted job
_RESERVED = "reserved"


class BinlogError(Exception):
    """The binlog cannot be opened; the message says what to do.

    ``exit_code`` is what beanstalkd exits with in the same case: 10 when
    the directory is locked by another process, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Binlog(SegmentFiles):
    """The store's write-ahead log (``store.wal``).

    ``job.wal`` is a tuple of four ints: the home segment's number, the job's
    index in ``home.order``, its FULL frame's size and its last UPDATE
    frame's size.  (A tuple of ints, not a list: the garbage collector stops
    tracking it, so a million jobs do not make its collections longer.)
    """

    enabled = True

    def __init__(self, dirpath: str, segment_size: int, fsync_ms: int | None,
                 clock: Callable[[], float], sched, io: OsIO | None = None,
                 wall: Callable[[], float] = time.time, background_sync: bool = True) -> None:
        super().__init__(dirpath, segment_size, fsync_ms, io, background_sync)
        self.max_size = segment_size
        self._two_segments = 2 * self.seg_size
        self._sync_each = fsync_ms == 0
        self.clock = clock
        self.sched = sched
        self.wall = wall
        self.lock: DirLock | None = None
        self.live_count = 0  # jobs owning a slot
        self.live_bytes = 0  # their FULL + last UPDATE frames
        self.max_id = 0
        self.records_written = 0
        self.records_migrated = 0
        self.credit = 0
        self._compacting = False
        self._idle_old: list[Segment] = []  # old segments with no job records
        self._reap_entry = None
        self._retry: dict[int, object] = {}  # jobs whose latest change is not on disk
        self._sync_entry = None
        self._compact_entry = None
        self._retry_entry = None
        self._last_sync = float("-inf")
        self._pack = msgpack.Packer().pack
        self._put_rec = [F.FULL, 0, "", 0, 0, 0, b"", 0, 0, 0, 0, 0, 0, 0, 0]
        self._pwrite = self.io.pwrite
        self._wall_at = float("-inf")
        self._wall_off = 0.0

    # --- the store's interface ------------------------------------------------
    def put(self, job, now: float) -> bool:
        # The hot path: _full_frame, _room and _write inlined for a new job.
        if not 0.0 <= now - self._wall_at < 1.0:
            self._sample_wall(now)
        off = self._wall_off
        jid = job.id
        state = _STATE[job.state]
        rec = self._put_rec  # reused: no new container for the collector to track
        rec[1] = jid
        rec[2] = job.tube.name
        rec[3] = job.pri
        rec[4] = job.delay
        rec[5] = job.ttr
        rec[6] = job.body
        rec[7] = state
        rec[8] = int((off + job.deadline) * 1000) if state == _DELAYED else 0
        rec[9] = int((off + now) * 1000)
        payload = self._pack(rec)
        frame = _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload
        n = len(frame)
        cur = self.cur
        live = self.live_count
        left = cur.size - cur.used - n
        if left < 0 or left // SLOT + self.spare_slots <= live:
            if not self._room(n, live + 1):
                return False
            cur = self.cur
        at = cur.used
        try:
            if cur.map is not None:
                cur.map[at:at + n] = frame
            else:
                done = self._pwrite(cur.fd, frame, at)
                if done != n:
                    self._write_rest(cur.fd, frame, at, done)
            if self._sync_each:
                self.io.fdatasync(cur.fd)
        except OSError as e:
            self._write_failed(cur, frame, at, "put", e)
            return False
        cur.used = at + n
        self.records_written += 1
        if self._failures or self._retry or (self._sync_entry is None and self.fsync_ms):
            self._after_write()
        order = cur.order
        job.wal = (cur.num, len(order), n, 0)
        order.append(job)
        cur.live += 1
        if jid > cur.max_id:
            cur.max_id = jid
            if jid > self.max_id:
                self.max_id = jid
        self.live_count = live = live + 1
        self.live_bytes = live_bytes = self.live_bytes + n
        if self.disk > 2 * (live_bytes + live * SLOT) + self._two_segments:
            self._grow(n)
        return True

    def update(self, job, now: float) -> bool:
        if job.wal is None or job.state == _RESERVED:
            # A reservation is not logged (as in beanstalkd): a reserved job
            # comes back in the state of its last record, so only the
            # reserves counter could change, and the next record carries it.
            return True
        if self._write_update(job, now):
            self._retry.pop(job.id, None)
            return True
        self._keep_for_retry(job)
        return False

    def delete(self, job) -> bool:
        if job.wal is None:
            return True
        if self._write_delete(job):
            self._retry.pop(job.id, None)
            return True
        self._keep_for_retry(job)
        return False

    def file_of(self, job) -> int:
        w = job.wal
        return w[0] if w is not None else 0

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

    # --- records ----------------------------------------------------------------
    def _wall_offset(self, now: float) -> float:
        """Wall-clock time minus store-clock time, sampled at most once a second."""
        if not 0.0 <= now - self._wall_at < 1.0:
            self._sample_wall(now)
        return self._wall_off

    def _sample_wall(self, now: float) -> None:
        self._wall_at = now
        self._wall_off = self.wall() - now

    def _full_frame(self, job, now: float) -> bytes:
        off = self._wall_offset(now)
        state = _STATE[job.state]
        deadline = int((off + job.deadline) * 1000) if state == _DELAYED else 0
        payload = self._pack((
            F.FULL, job.id, job.tube.name, job.pri, job.delay, job.ttr, job.body, state,
            deadline, int((off + job.created) * 1000),
            job.reserves, job.timeouts, job.releases, job.buries, job.kicks))
        return _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload

    def _update_frame(self, job, now: float) -> bytes:
        state = _STATE[job.state]
        deadline = int((self._wall_offset(now) + job.deadline) * 1000) \
            if state == _DELAYED else 0
        payload = self._pack((
            F.UPDATE, job.id, job.pri, job.delay, state, deadline,
            job.reserves, job.timeouts, job.releases, job.buries, job.kicks))
        return _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload

    def _write_update(self, job, now: float) -> bool:
        w = job.wal
        frame = self._update_frame(job, now)
        n = len(frame)
        if not self._room(n, self.live_count) or not self._write(frame, "update"):
            return False
        self.live_bytes += n - w[3]
        job.wal = (w[0], w[1], w[2], n)
        if job.id > self.cur.max_id:
            self.cur.max_id = job.id
        self._grow(n)
        return True

    def _write_delete(self, job) -> bool:
        payload = self._pack((F.DELETE, job.id))
        frame = _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload
        if not self._room(len(frame), self.live_count - 1) or not self._write(frame, "delete"):
            return False
        if job.id > self.cur.max_id:
            self.cur.max_id = job.id
        home = self._forget(job)
        self._grow(len(frame))
        if home is self.segments[0]:
            self._collect()
        return True

    def _forget(self, job) -> Segment:
        w = job.wal
        job.wal = None
        home = self.by_num[w[0]]
        home.order[w[1]] = None
        home.live -= 1
        self.live_count -= 1
        self.live_bytes -= w[2] + w[3]
        return home

    def _write(self, frame: bytes, what: str) -> bool:
        """Append a frame to cur (room already made); False if the disk says no."""
        cur = self.cur
        at = cur.used
        try:
            if cur.map is not None:
                cur.map[at:at + len(frame)] = frame
            else:
                done = self._pwrite(cur.fd, frame, at)
                if done != len(frame):
                    self._write_rest(cur.fd, frame, at, done)
            if self._sync_each:
                self.io.fdatasync(cur.fd)
        except OSError as e:
            self._write_failed(cur, frame, at, what, e)
            return False
        cur.used = at + len(frame)
        self.records_written += 1
        if self._failures or self._retry or (self._sync_entry is None and self.fsync_ms):
            self._after_write()
        return True

    def _write_failed(self, cur: Segment, frame: bytes, at: int, what: str,
                      err: OSError) -> None:
        self._complain(f"cannot write a {what} record to {cur.path}", err)
        try:  # leave no half frame behind; the next write goes here anyway
            if cur.map is not None:
                cur.map[at:at + len(frame)] = bytes(len(frame))
            else:
                self._pwrite(cur.fd, bytes(len(frame)), at)
        except OSError:
            pass

    def _after_write(self) -> None:
        if self._failures:
            log.warning("binlog: writing again after %d failed attempts", self._failures)
            self._failures = 0
        if self.fsync_ms and self._sync_entry is None:
            now = self.clock()
            self._sync_entry = self.sched.add(
                max(now, self._last_sync + self.fsync_ms / 1000), self._sync_due, None)
        if self._retry and self._retry_entry is None:
            self._retry_entry = self.sched.add(self.clock(), self._retry_due, None)

    def _keep_for_retry(self, job) -> None:
        self._retry[job.id] = job
        if self._retry_entry is None:
            self._retry_entry = self.sched.add(self.clock() + RETRY_EVERY, self._retry_due, None)

    def _retry_due(self, _arg, now: float) -> None:
        self._retry_entry = None
        for jid, job in list(self._retry.items()):
            if job.wal is None:
                ok = True
            elif job.state == _INVALID:
                ok = self._write_delete(job)
            else:
                ok = self._write_update(job, now)
            if not ok:
                break
            del self._retry[jid]
        if self._retry and self._retry_entry is None:
            self._retry_entry = self.sched.add(now + RETRY_EVERY, self._retry_due, None)

    # --- compaction ---------------------------------------------------------------
    def _live(self) -> int:
        return self.live_bytes + self.live_count * SLOT

    def _bound(self) -> int:
        return 2 * (self.live_bytes + self.live_count * SLOT) + 2 * self.seg_size

    def _over(self) -> bool:
        """Over the bound, not counting segments already out of the log."""
        return self.disk - self.doomed_bytes > self._bound()

    def _grow(self, n: int) -> None:
        """``n`` new bytes of records were written: compact if over the bound."""
        if self.disk > 2 * (self.live_bytes + self.live_count * SLOT) + 2 * self.seg_size:
            self.credit = min(self.credit + COMPACT_CREDIT * n, COMPACT_CREDIT_MAX)
            self._compact()

    def _compact(self) -> None:
        """Empty the head segment, a budget's worth at a time."""
        if self._compacting:
            return
        self._compacting = True
        try:
            self._compact_steps()
        finally:
            self._compacting = False

    def _compact_steps(self) -> None:
        segments = self.segments
        while self.credit > 0 and len(segments) > 1 and self._over():
            head = segments[0]
            if head.live == 0:
                if not self._collect():
                    return
                continue
            order = head.order
            i = head.cursor
            while order[i] is None:
                i += 1
            head.cursor = i
            if not self._migrate(order[i]):
                return
        if len(segments) > 1 and self._over() and self._compact_entry is None:
            self._compact_entry = self.sched.add(
                self.clock() + COMPACT_TICK, self._compact_due, None)

    def _compact_due(self, _arg, now: float) -> None:
        self._compact_entry = None
        self.credit = max(self.credit, COMPACT_TICK_BYTES)
        self._compact()

    def _migrate(self, job) -> bool:
        """Write ``job``'s FULL record again, in cur; its old home can then go."""
        if job.state == _INVALID:  # deleted, its DELETE not written yet
            if not self._write_delete(job):
                return False
            self._retry.pop(job.id, None)
            return True
        frame = self._full_frame(job, self.clock())
        n = len(frame)
        if not self._room(n, self.live_count) or not self._write(frame, "migrated"):
            return False
        w = job.wal
        old = self.by_num[w[0]]
        old.order[w[1]] = None
        old.live -= 1
        cur = self.cur
        self.live_bytes += n - w[2] - w[3]
        job.wal = (cur.num, len(cur.order), n, 0)
        cur.order.append(job)
        cur.live += 1
        if job.id > cur.max_id:
            cur.max_id = job.id
        self._retry.pop(job.id, None)
        self.records_migrated += 1
        self.credit -= n
        return True

    def _collect(self) -> bool:
        """Remove head segments home to no live job.  False if that must wait."""
        segments = self.segments
        if len(segments) < 2 or segments[0].live:
            return True
        cur = self.cur
        if cur.max_id < self.max_id:  # keep the highest id issued in the log
            frame = F.mark(self.max_id + 1)
            if not self._room(len(frame), self.live_count) or not self._write(frame, "mark"):
                return False
            self.cur.max_id = self.max_id
        # Unlinked once what replaced them is on disk: after the next sync
        # (-f MS), now (-f 0: already synced; -F: never synced anyway).
        syncer = self._syncer
        number = syncer.requested + 1 if syncer is not None else 0
        while len(segments) > 1 and not segments[0].live:
            seg = segments.pop(0)
            del self.by_num[seg.num]
            self._doomed.append((number, seg))
            self.doomed_bytes += seg.size
        if self.fsync_ms:
            if self._sync_entry is None:
                self._sync_entry = self.sched.add(self.clock(), self._sync_due, None)
        else:
            self._unlink_doomed()
        return True

    # --- fsync ----------------------------------------------------------------------
    def _sync_due(self, _arg, now: float) -> None:
        self._sync_entry = None
        self._last_sync = now
        syncer = self._syncer
        if syncer is None:
            try:
                self.io.fdatasync(self.cur.fd)
            except OSError as e:
                self._sync_failed(e, now)
                return
            self._unlink_doomed()
            return
        if syncer.error is not None:
            self._sync_failed(syncer.error, now)
            syncer.error = None
        syncer.request(self.cur.fd)
        if self._doomed and self._reap_entry is None:
            self._reap_entry = self.sched.add(now + REAP_POLL, self._reap_due, None)

    def _sync_failed(self, err: OSError, now: float) -> None:
        self._complain(f"cannot sync {self.cur.path}", err)
        if self._sync_entry is None:
            self._sync_entry = self.sched.add(now + RETRY_EVERY, self._sync_due, None)

    def _reap_due(self, _arg, now: float) -> None:
        """Unlink the segments whose replacement the background sync has made durable."""
        self._reap_entry = None
        syncer = self._syncer
        if syncer.error is not None:
            self._sync_failed(syncer.error, now)
            syncer.error = None
        self._unlink_doomed()
        if self._doomed:  # look again soon; after a failure, when the sync is retried
            wait = REAP_POLL if syncer.done < syncer.requested else RETRY_EVERY
            self._reap_entry = self.sched.add(now + wait, self._reap_due, None)

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
        try:
            cur = self._open_segment(self.seg_size)
        except OSError as e:
            raise BinlogError(f"cannot create a binlog segment in {self.dir}: {e}") from None
        self.segments.append(cur)
        self._make_current(cur)
        frame = F.mark(self.max_id + 1)
        if not self._room(len(frame), self.live_count) or not self._write(frame, "mark"):
            raise BinlogError(
                f"not enough disk in {self.dir} to start a segment and reserve room for "
                f"deleting {self.live_count} jobs")
        self.cur.max_id = self.max_id
        if self.fsync_ms:
            self.io.fdatasync(self.cur.fd)
        self._collect()
        # Segments holding nothing but MARKs (a start and a stop with no job
        # written) cancel nothing, so they can go from anywhere in the log:
        # restarts do not pile up files.  cur now carries the highest id.
        for seg in self._idle_old:
            if seg in self.segments:
                self.segments.remove(seg)
                del self.by_num[seg.num]
                self._doomed.append((0, seg))
                self.doomed_bytes += seg.size
        self._idle_old = []
        self._unlink_doomed(everything=True)
        self.credit = 0
        self._compact()

    def rewrite_all(self) -> None:
        """Move every live job into cur and drop every older segment (after recovery)."""
        while len(self.segments) > 1:
            head = self.segments[0]
            for job in head.order:
                if job is not None and not self._migrate(job):
                    raise BinlogError(f"cannot rewrite the binlog in {self.dir}")
            head.cursor = len(head.order)
            if self.fsync_ms:
                self.io.fdatasync(self.cur.fd)
            self._collect()
            self._unlink_doomed(everything=True)


# --- attaching to a store -----------------------------------------------------------
def attach(store, dirpath: str, segment_size: int = DEFAULT_SEGMENT_SIZE,
           fsync_ms: int | None = 50, recover: bool | None = None,
           io: OsIO | None = None, wall: Callable[[], float] = time.time,
           background_sync: bool = True) -> Binlog:
    """Lock ``dirpath``, replay its binlog into ``store`` and set ``store.wal``.

    ``recover`` (default: the BSNODE_BINLOG_RECOVER environment variable)
    skips damage in the middle of the log instead of refusing to start.
    Raises BinlogError with a sentence an operator can act on.
    """
    if recover is None:
        recover = os.environ.get(RECOVER_ENV, "") not in ("", "0")
    started = time.monotonic()
    try:
        os.makedirs(dirpath, mode=0o700, exist_ok=True)
        lock = DirLock(dirpath)
    except DirLockedError as e:
        raise BinlogError(str(e), exit_code=10) from None
    except OSError as e:
        raise BinlogError(f"cannot use binlog directory {dirpath}: {e}") from None
    wal = None
    gc_was_on = gc.isenabled()
    gc.disable()  # a million new objects would trigger ever longer collections
    try:
        biggest = max(segment_size, MIN_SEGMENT_SIZE,
                      F.HEADER_SIZE + F.FRAME_SIZE + F.MAX_PAYLOAD + SLOT)
        try:
            r = replay(dirpath, recover, biggest)
        except CorruptLog as e:
            raise BinlogError(
                f"{e}. To start anyway, skipping the damaged bytes (jobs in them are lost "
                f"and deleted jobs may come back), set {RECOVER_ENV}=1") from None
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
        if r.skipped:
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
