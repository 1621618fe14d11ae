"""Keeping the binlog bounded: compaction and the removal of old segments.

How this works
--------------
A job's *home* is the segment of its latest FULL record; a segment is needed
while it is home to a live job, or while an older one is (its DELETE records
must outlive the FULL records they cancel).  So segments are removed from
the oldest (the *head*) once it is home to no live job (``_collect``), and
compaction empties the head by writing its live jobs' FULL records again
into ``cur`` (``_migrate``; beanstalkd's migration).

It runs while disk use exceeds ``2 x live + 2 segments`` (live = the jobs'
latest records plus their slots), spending a migration budget of
``COMPACT_CREDIT`` bytes per byte of new records, plus a background timer
when writes stop; each step is a few records, so no command waits on a big
rewrite.  A segment is unlinked only once the records that replaced it are
synced, and ``cur`` always carries the highest id issued (a MARK record)
before older segments go, so ids are never reused.
"""

from __future__ import annotations

from . import binlog_format as F
from .binlog_space import SLOT
from .binlog_writer import LogWriter

COMPACT_CREDIT = 2  # bytes migrated per byte of new records, while over the bound
COMPACT_CREDIT_MAX = 4 << 20
COMPACT_TICK = 0.05  # seconds between background compaction steps
COMPACT_TICK_BYTES = 1 << 20
_INVALID = "invalid"  # the store's state of a deleted job


class Compactor(LogWriter):
    """The writer, plus the rule that keeps its disk use bounded."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.records_migrated = 0
        self.credit = 0
        self._compacting = False
        self._compact_entry = None

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
            self._quick = -1  # every write pays compaction until back under the bound
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
        # say which segments are still needed before any other goes: replay
        # tells a segment removed here from one that went missing by it
        first = next(seg for seg in segments if seg.live or seg is self.cur)
        frame = F.head(first.num)
        if not self._room(len(frame), self.live_count) or not self._write(frame, "head"):
            return False
        # Unlinked once what replaced them is on disk: after the next sync
        # (-f MS), now (-f 0: already synced, or synced here when the server
        # groups syncs; -F: never synced anyway).
        syncer = self._syncer
        number = syncer.requested + 1 if syncer is not None else 0
        while segments[0] is not first:  # (a roll for the HEAD above may leave more)
            seg = segments.pop(0)
            del self.by_num[seg.num]
            self._doomed.append((number, seg))
            self.doomed_bytes += seg.size
        if self.fsync_ms:
            if self._sync_entry is None:
                self._sync_entry = self.sched.add(self.clock(), self._sync_due, None)
            return True
        if self.group_sync:
            try:
                self.io.fdatasync(self.cur.fd)
            except OSError as e:  # the old segments stay until the next collection
                self._complain(f"cannot sync {self.cur.path}", e)
                return True
        self._unlink_doomed()
        return True
