"""Writing the binlog's records: the store's put / update / delete, retries, fsync timers.

How this works
--------------
``LogWriter`` builds on ``binlog_space.SegmentFiles`` (the files and their
space) and appends records to the newest segment, ``cur``: a put writes the
job's FULL record, a state change (release, bury, kick) a small UPDATE, a
delete a DELETE; a reservation is not logged (as in beanstalkd).  Each
record is in the page cache (a memory map of cur, or pwrite) before the
store answers, so a killed process loses nothing; fsync follows beanstalkd
1.12: ``-f 0`` syncs before the reply, ``-f MS`` at most every MS ms on a
timer, on a thread of its own (so the last write before a quiet spell is
synced within MS), ``-F`` never.

Space.  Every live job owns a *slot*: room for its DELETE record in the
allocated, unwritten space of cur and the spares.  Invariant: free slots >=
live jobs.  A put first makes room for its record plus one more slot; if
the disk refuses, the put is answered OUT_OF_MEMORY and nothing is
acknowledged.  A delete only spends its own slot, so it never needs new
space.  A failed update or delete write is kept and retried on a timer
until it lands; failures are logged, never hidden.

``job.wal`` is a tuple of four ints: the home segment's number (the segment
of the job's latest FULL record), the job's index in ``home.order``, its
FULL frame's size and its last UPDATE frame's size.  (A tuple of ints, not
a list: the garbage collector stops tracking it, so a million jobs do not
make its collections longer.)

Fast path.  Put and delete are the costs every job pays, so each is
written out in one function that makes a single check: does ``_quick``
(bytes that may go into cur with no other check, worked out by
``_requick``) cover the record?  Everything that could make a check fire
sets ``_quick`` to -1 (a new cur or spare, a failure, a retry, a sync to
schedule, disk over the bound), and the next write takes the slow path,
which checks it all and works ``_quick`` out again.  A new job's FULL record
and every DELETE are built with ``struct`` (binlog_format.full_head,
DELETE_PAYLOAD).  Compaction (``binlog_compact``) supplies ``_grow`` and
``_collect``.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable

import msgpack

from . import binlog_format as F
from .binlog_io import OsIO
from .binlog_space import SLOT, Segment, SegmentFiles
from .tube import READY

log = logging.getLogger("bsnode")

RETRY_EVERY = 1.0  # seconds between retries of a failed write
REAP_POLL = 0.005  # seconds between looks at a background sync that old segments wait on
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
_INVALID = "invalid"  # the store's state of a deleted job
_RESERVED = "reserved"


class LogWriter(SegmentFiles):
    """Appends records to cur and keeps the live jobs' accounting."""

    def __init__(self, dirpath: str, segment_size: int, fsync_ms: int | None,
                 clock: Callable[[], float], sched, io: OsIO | None = None,
                 wall: Callable[[], float] = time.time, background_sync: bool = True) -> None:
        super().__init__(dirpath, segment_size, fsync_ms, io, background_sync)
        self._two_segments = 2 * self.seg_size
        self._sync_each = fsync_ms == 0
        self.group_sync = False  # -f 0 with the server grouping syncs (sync_later)
        self.synced = 0  # with group_sync: records_written when the last good sync began
        self.clock = clock
        self.sched = sched
        self.wall = wall
        self.live_count = 0  # jobs owning a slot
        self.live_bytes = 0  # their FULL + last UPDATE frames
        self.max_id = 0
        self.records_written = 0
        self._retry: dict[int, object] = {}  # jobs whose latest change is not on disk
        self._sync_entry = None
        self._retry_entry = None
        self._reap_entry = None
        self._last_sync = float("-inf")
        self._pack = msgpack.Packer().pack
        self._pwrite = self.io.pwrite
        self._wall_at = float("-inf")
        self._wall_off = 0.0
        # the store gives jobs put within the same millisecond one ``created``
        # float: its wall-clock milliseconds are worked out once for them all
        self._created_at: float | None = None
        self._created_ms = 0
        self._ready_tail = b""
        self._heads: dict[str, tuple] = {}  # tube name -> binlog_format.full_head(name)

    # --- hooks, supplied by compaction -------------------------------------------
    def _grow(self, n: int) -> None:
        """``n`` new bytes of records were written."""

    def _collect(self) -> bool:
        """The head segment may hold no live job now."""
        return True

    # --- the store's interface ------------------------------------------------
    def put(self, job, now: float) -> bool:
        # The hot path.  Checks that rarely fire (room in cur, the bound on
        # disk use, a sync to schedule, failures or retries pending) are
        # folded into ``_quick``; when it does not cover the record, the
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
        quick = self._quick - n - SLOT  # the record, and a slot for its DELETE
        if quick < 0:
            return self._put_checked(job, payload)
        self._quick = quick
        cur = self.cur
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
        """``put`` with every check, for when ``_quick`` does not cover it."""
        frame = _FRAME_PACK(_TAG, len(payload), _TAG, _crc32(payload)) + payload
        n = len(frame)
        if not self._room(n, self.live_count + 1) or not self._write(frame, "put"):
            return False
        cur = self.cur
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
        """Work out ``_quick``: the bytes put and delete may append to cur with
        no check, keeping a slot free for every live job (each fast put
        takes its record and one slot off it, each fast delete its record).
        -1 (everything takes the slow path) while cur is not mapped, ``-f 0``
        syncs every write, a sync is to be scheduled, a write failed or
        waits for a retry, or disk use is over the bound (every write then
        pays compaction)."""
        cur = self.cur
        if (cur is None or cur.map is None or self._sync_each or self._failures
                or self._retry or (self.fsync_ms and self._sync_entry is None)
                or self.disk > 2 * (self.live_bytes + self.live_count * SLOT)
                + self._two_segments):
            self._quick = -1
            return
        owed = self.live_count - self.spare_slots  # slots that must stay free in cur
        self._quick = cur.size - cur.used - (owed * SLOT if owed > 0 else 0)

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
        w = job.wal
        if w is None:
            return True
        quick = self._quick - _DEL_FRAME_SIZE  # the DELETE goes in the job's own slot
        if quick < 0:
            return self._delete_checked(job)
        self._quick = quick
        jid = job.id
        payload = _DEL_PACK(_DEL_MARK, jid)
        cur = self.cur
        at = cur.used
        m = cur.map
        _FRAME_PACK_INTO(m, at, _TAG, _DEL_SIZE, _TAG, _crc32(payload))
        m[at + _FS:at + _DEL_FRAME_SIZE] = payload
        cur.used = at + _DEL_FRAME_SIZE
        self.records_written += 1
        if jid > cur.max_id:
            cur.max_id = jid
        job.wal = None
        home = self.by_num[w[0]]
        home.order[w[1]] = None
        home.live -= 1
        self.live_count = live = self.live_count - 1
        self.live_bytes = live_bytes = self.live_bytes - w[2] - w[3]
        if self.disk > 2 * (live_bytes + live * SLOT) + self._two_segments:
            self._grow(_DEL_FRAME_SIZE)  # over the bound: compact (and leave the fast path)
        if not home.live and home is self.segments[0]:
            self._collect()
        return True

    def _delete_checked(self, job) -> bool:
        if self._write_delete(job):
            self._retry.pop(job.id, None)
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
        frame = F.delete(job.id)
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
        n = len(frame)
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
            self._write_failed(cur, n, at, what, e)
            return False
        cur.used = at + n
        self._quick -= n
        self.records_written += 1
        if self._failures or self._retry or (self._sync_entry is None and self.fsync_ms):
            self._after_write()
        return True

    def _write_failed(self, cur: Segment, n: int, at: int, what: str, err: OSError) -> None:
        """A write of ``n`` bytes at ``at`` failed: complain, and zero what it may have left."""
        self._complain(f"cannot write a {what} record to {cur.path}", err)
        try:  # leave no half frame behind; the next write goes here anyway
            if cur.map is not None:
                cur.map[at:at + n] = bytes(n)
            else:
                self._pwrite(cur.fd, bytes(n), at)
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
        self._sync_each = False
        self.synced = self.records_written  # each write so far was synced in it
        self._quick = -1
        return True

    def sync_start(self) -> tuple[int, int]:
        """A sync about to run covers every record written so far: returns
        (a duplicate of cur's descriptor, for the sync to use and close, so a
        segment roll meanwhile cannot close it; ``records_written``).
        Records in older segments were synced when those were closed."""
        return os.dup(self.cur.fd), self.records_written

    def sync_here(self) -> int:
        """Sync cur on this thread, for when ``sync_start`` has no descriptor
        to spare (EMFILE); returns ``records_written`` as it covers them."""
        upto = self.records_written
        self.io.fdatasync(self.cur.fd)
        return upto

    def sync_done(self, upto: int, err: OSError | None) -> None:
        if err is not None:
            self._complain(f"cannot sync {self.cur.path}", err)
        elif upto > self.synced:
            self.synced = upto

    # --- retries ------------------------------------------------------------------
    def _keep_for_retry(self, job) -> None:
        self._retry[job.id] = job
        self._quick = -1
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

    # --- fsync ----------------------------------------------------------------------
    def _sync_due(self, _arg, now: float) -> None:
        self._sync_entry = None
        self._quick = -1  # the next write schedules the next sync
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
