"""Writing the binlog's records: the store's put / update / delete, and retries.

How this works
--------------
``LogWriter`` appends records to the newest segment, ``cur``, of the files
it is given (``segments.SegmentFiles``): a put writes the job's FULL record,
a state change (release, bury, kick) a small UPDATE, a delete a DELETE; a
reservation is not logged (as in beanstalkd).  Each record is in the page
cache (a memory map of cur, or pwrite) before the store answers, so a
killed process loses nothing; when it reaches the disk is ``durability``'s
policy, which the writer tells of each write.

Space.  Every live job owns a *slot*: room for its DELETE record in the
allocated, unwritten space of cur and the spares.  Invariant: free slots >=
live jobs.  A put first makes room for its record plus one more slot; if
the disk refuses, the put is answered OUT_OF_MEMORY and nothing is
acknowledged.  A delete only spends its own slot, so it never needs new
space.  A failed update or delete write is kept and retried on a timer
until it lands; failures are logged, never hidden.  Whenever a write
brings disk use over the bound (``compactor.disk_bound``) the compactor
is told (``grow``), and when the oldest segment may have no live job left
it is asked to collect it.

``job.wal`` is a tuple of four ints: the home segment's number (the segment
of the job's latest FULL record), the job's index in ``home.order``, its
FULL frame's size and its last UPDATE frame's size.  (A tuple of ints, not
a list: the garbage collector stops tracking it, so a million jobs do not
make its collections longer.)

Fast path.  Put and delete are the costs every job pays, so each is
written out in one function that makes a single check: does the budget
``fastpath.FastPath.quick`` cover the record?  When it does not, the slow
path checks everything and refills the budget (``_requick``).  A new job's
FULL record and every DELETE are built with ``struct``
(format.full_head, DELETE_PAYLOAD).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

import msgpack

from ..lifecycle import INVALID, READY, RESERVED
from . import format as F
from .compactor import Compactor, disk_bound
from .durability import RETRY_EVERY, Durability
from .fastpath import FastPath
from .segments import SLOT, Segment, SegmentFiles

log = logging.getLogger("bsnode")

WALL_RESAMPLE = 1.0  # seconds between readings of the wall clock
MAX_HEADS = 1024  # tube names whose FULL record packer is kept

_FRAME_PACK = F.FRAME.pack
_FRAME_PACK_INTO = F.FRAME.pack_into
_FS = F.FRAME_SIZE
_TAG = F.FRAME_TAG
_crc32 = zlib.crc32
_STATE = F.STATE_CODES
_DELAYED = F.STATE_DELAYED
_TAIL_PACK = F.FULL_TAIL.pack
_FULL_MARK = F.FULL_MARK
_join = b"".join
_DEL_PACK = F.DELETE_PAYLOAD.pack
_DEL_MARK = F.DELETE_MARK
_DEL_SIZE = F.DELETE_PAYLOAD.size
_DEL_FRAME_SIZE = _FS + _DEL_SIZE


class LogWriter:
    """Appends records to cur and keeps the live jobs' accounting.
    ``compactor`` is set by the facade that builds both."""

    def __init__(self, files: SegmentFiles, fast: FastPath, durability: Durability,
                 clock: Callable[[], float], sched, wall: Callable[[], float]) -> None:
        self.files = files
        self.fast = fast
        self.durability = durability
        self.compactor: Compactor | None = None
        self.io = files.io
        self._seg_size = files.seg_size
        self.clock = clock
        self.sched = sched
        self.wall = wall
        self.live_count = 0  # jobs owning a slot
        self.live_bytes = 0  # their FULL + last UPDATE frames
        self.max_id = 0
        self.records_written = 0
        self.retry: dict[int, object] = {}  # jobs whose latest change is not on disk
        self._retry_entry = None
        self._pack = msgpack.Packer().pack
        self._pwrite = self.io.pwrite
        self._wall_at = float("-inf")
        self._wall_off = 0.0
        # the store gives jobs put within the same millisecond one ``created``
        # float: its wall-clock milliseconds are worked out once for them all
        self._created_at: float | None = None
        self._created_ms = 0
        self._ready_tail = b""
        self._heads: dict[str, tuple] = {}  # tube name -> format.full_head(name)

    # --- the store's interface ------------------------------------------------
    def put(self, job, now: float) -> bool:
        # The hot path.  Checks that rarely fire (room in cur, the bound on
        # disk use, a sync to schedule, failures or retries pending) are
        # folded into the fast-path budget; when it does not cover the record, the
        # slow path (_put_checked) does them all.
        if not 0.0 <= now - self._wall_at < WALL_RESAMPLE:
            self._sample_wall(now)
        created = job.created
        if created is not self._created_at:
            self._new_created(created)
        name = job.tube.name
        head = self._heads.get(name)
        if head is None:
            head = self._head(name)
        body = job.body
        jid = job.id
        if job.state is READY:
            tail = self._ready_tail
        else:
            tail = _TAIL_PACK(_DELAYED, 0xCF, int((self._wall_off + job.deadline) * 1000),
                              0xCF, self._created_ms)
        payload = _join((head[0](_FULL_MARK, jid, head[1], 0xCE, job.pri, 0xCE, job.delay,
                                 0xCE, job.ttr, 0xC6, len(body)), body, tail))
        size = len(payload)
        n = size + _FS
        fast = self.fast
        quick = fast.quick - n - SLOT  # the record, and a slot for its DELETE
        if quick < 0:
            return self._put_checked(job, payload)
        fast.quick = quick
        cur = self.files.cur
        at = cur.used
        m = cur.map  # the fast path writes into the page cache: no system call
        _FRAME_PACK_INTO(m, at, _TAG, size, _TAG, _crc32(payload))
        m[at + _FS:at + n] = payload
        cur.used = at + n
        order = cur.order
        job.wal = (cur.num, len(order), n, 0)
        order.append(job)
        cur.live += 1
        self.live_count += 1
        self.live_bytes += n
        self.records_written += 1
        if jid > cur.max_id:
            cur.max_id = jid
            if jid > self.max_id:
                self.max_id = jid
        return True

    def _put_checked(self, job, payload: bytes) -> bool:
        """``put`` with every check, for when the fast path does not cover it."""
        frame = _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload
        n = len(frame)
        if not self.files.room(n, self.live_count + 1) or not self.write(frame, "put"):
            return False
        cur = self.files.cur
        jid = job.id
        order = cur.order
        job.wal = (cur.num, len(order), n, 0)
        order.append(job)
        cur.live += 1
        if jid > cur.max_id:
            cur.max_id = jid
            if jid > self.max_id:
                self.max_id = jid
        self.live_count += 1
        self.live_bytes += n
        self._grow(n)
        self._requick()
        return True

    def _requick(self) -> None:
        """Refill the fast-path budget: the bytes put and delete may append to
        cur with no check, keeping a slot free for every live job (each fast
        put takes its record and one slot off it, each fast delete its
        record).  None (everything takes the slow path) while cur is not
        mapped, ``-f 0`` syncs every write, a sync is to be scheduled, a
        write failed or waits for a retry, or disk use is over the bound
        (every write then pays compaction)."""
        files = self.files
        cur = files.cur
        d = self.durability
        if (cur is None or cur.map is None or d.sync_each or files.failures or self.retry
                or d.timer_wanted()
                or files.disk > disk_bound(self.live_bytes, self.live_count, self._seg_size)):
            self.fast.invalidate()
            return
        self.fast.refill(cur.size - cur.used, self.live_count - files.spare_slots, SLOT)

    def _grow(self, n: int) -> None:
        """``n`` new bytes of records were written: over the bound, every
        write pays compaction until back under it."""
        if self.files.disk > disk_bound(self.live_bytes, self.live_count, self._seg_size):
            self.fast.invalidate()
            self.compactor.grow(n)

    def _head(self, name: str) -> tuple:
        heads = self._heads
        if len(heads) >= MAX_HEADS:  # tubes come and go: keep the cache small
            heads.clear()
        head = heads[name] = F.full_head(name)
        return head

    def _new_created(self, created: float) -> None:
        """Jobs put within the same millisecond share one ``created`` float:
        its wall-clock milliseconds, and the tail of a ready job's FULL
        record, are worked out once for them all."""
        self._created_at = created
        self._created_ms = ms = int((self._wall_off + created) * 1000)
        self._ready_tail = _TAIL_PACK(F.STATE_READY, 0xCF, 0, 0xCF, ms)

    def update(self, job, now: float) -> bool:
        if job.wal is None or job.state is RESERVED:
            # A reservation is not logged (as in beanstalkd): a reserved job
            # comes back in the state of its last record, so only the
            # reserves counter could change, and the next record carries it.
            return True
        if self._write_update(job, now):
            self.retry.pop(job.id, None)
            return True
        self._keep_for_retry(job)
        return False

    def delete(self, job) -> bool:
        w = job.wal
        if w is None:
            return True
        fast = self.fast
        quick = fast.quick - _DEL_FRAME_SIZE  # the DELETE goes in the job's own slot
        if quick < 0:
            return self._delete_checked(job)
        fast.quick = quick
        jid = job.id
        payload = _DEL_PACK(_DEL_MARK, jid)
        files = self.files
        cur = files.cur
        at = cur.used
        m = cur.map
        _FRAME_PACK_INTO(m, at, _TAG, _DEL_SIZE, _TAG, _crc32(payload))
        m[at + _FS:at + _DEL_FRAME_SIZE] = payload
        cur.used = at + _DEL_FRAME_SIZE
        self.records_written += 1
        if jid > cur.max_id:
            cur.max_id = jid
        job.wal = None
        home = files.by_num[w[0]]
        home.order[w[1]] = None
        home.live -= 1
        self.live_count = live = self.live_count - 1
        self.live_bytes = live_bytes = self.live_bytes - w[2] - w[3]
        if files.disk > disk_bound(live_bytes, live, self._seg_size):
            self._grow(_DEL_FRAME_SIZE)  # over the bound: compact (and leave the fast path)
        if not home.live and home is files.segments[0]:
            self.compactor.collect()
        return True

    def _delete_checked(self, job) -> bool:
        if self.write_delete(job):
            self.retry.pop(job.id, None)
            self._requick()
            return True
        self._keep_for_retry(job)
        return False

    def file_of(self, job) -> int:
        w = job.wal
        return w[0] if w is not None else 0

    # --- records ----------------------------------------------------------------
    def _wall_offset(self, now: float) -> float:
        """Wall-clock time minus store-clock time, sampled at most once a second."""
        if not 0.0 <= now - self._wall_at < WALL_RESAMPLE:
            self._sample_wall(now)
        return self._wall_off

    def _sample_wall(self, now: float) -> None:
        self._wall_at = now
        self._wall_off = self.wall() - now
        self._created_at = None  # milliseconds worked out with the old offset

    def full_frame(self, job, now: float) -> bytes:
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
        if not self.files.room(n, self.live_count) or not self.write(frame, "update"):
            return False
        self.live_bytes += n - w[3]
        job.wal = (w[0], w[1], w[2], n)
        cur = self.files.cur
        if job.id > cur.max_id:
            cur.max_id = job.id
        self._grow(n)
        return True

    def write_delete(self, job) -> bool:
        """Write ``job``'s DELETE (slow path); False if the disk says no."""
        frame = F.delete(job.id)
        files = self.files
        if not files.room(len(frame), self.live_count - 1) or not self.write(frame, "delete"):
            return False
        if job.id > files.cur.max_id:
            files.cur.max_id = job.id
        home = self._forget(job)
        self._grow(len(frame))
        if home is files.segments[0]:
            self.compactor.collect()
        return True

    def _forget(self, job) -> Segment:
        w = job.wal
        job.wal = None
        home = self.files.by_num[w[0]]
        home.order[w[1]] = None
        home.live -= 1
        self.live_count -= 1
        self.live_bytes -= w[2] + w[3]
        return home

    def write(self, frame: bytes, what: str) -> bool:
        """Append a frame to cur (room already made, ``files.room``) and count
        it; False if the disk says no."""
        cur = self.files.cur
        at = cur.used
        n = len(frame)
        d = self.durability
        try:
            if cur.map is not None:
                cur.map[at:at + n] = frame
            else:
                done = self._pwrite(cur.fd, frame, at)
                if done != n:
                    self.files.write_rest(cur.fd, frame, at, done)
            if d.sync_each:
                self.io.fdatasync(cur.fd)
        except OSError as e:
            self._write_failed(cur, n, at, what, e)
            return False
        cur.used = at + n
        self.fast.quick -= n
        self.records_written += 1
        if self.files.failures or self.retry or d.timer_wanted():
            self._after_write()
        return True

    def _write_failed(self, cur: Segment, n: int, at: int, what: str, err: OSError) -> None:
        """A write of ``n`` bytes at ``at`` failed: complain, and zero what it may have left."""
        self.files.complain(f"cannot write a {what} record to {cur.path}", err)
        try:  # leave no half frame behind; the next write goes here anyway
            if cur.map is not None:
                cur.map[at:at + n] = bytes(n)
            else:
                self._pwrite(cur.fd, bytes(n), at)
        except OSError:
            pass

    def _after_write(self) -> None:
        files = self.files
        if files.failures:
            log.warning("binlog: writing again after %d failed attempts", files.failures)
            files.failures = 0
        self.durability.wrote()
        if self.retry and self._retry_entry is None:
            self._retry_entry = self.sched.add(self.clock(), self._retry_due, None)

    # --- retries ------------------------------------------------------------------
    def _keep_for_retry(self, job) -> None:
        self.retry[job.id] = job
        self.fast.invalidate()
        if self._retry_entry is None:
            self._retry_entry = self.sched.add(self.clock() + RETRY_EVERY, self._retry_due, None)

    def _retry_due(self, _arg, now: float) -> None:
        self._retry_entry = None
        for jid, job in list(self.retry.items()):
            if job.wal is None:
                ok = True
            elif job.state is INVALID:
                ok = self.write_delete(job)
            else:
                ok = self._write_update(job, now)
            if not ok:
                break
            del self.retry[jid]
        if self.retry and self._retry_entry is None:
            self._retry_entry = self.sched.add(now + RETRY_EVERY, self._retry_due, None)

    def close(self) -> None:
        """Write what is still owed (logged if it cannot be), stop the retry timer."""
        if self.retry:
            self._retry_due(None, self.clock())
            if self.retry:
                log.error("binlog: %d changes could not be written before stopping",
                          len(self.retry))
        self.sched.cancel(self._retry_entry)
        self._retry_entry = None
