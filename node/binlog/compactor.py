"""Keeping the binlog bounded: compaction and the removal of old segments.

How this works
--------------
A job's *home* is the segment of its latest FULL record; a segment is needed
while it is home to a live job, or while an older one is (its DELETE records
must outlive the FULL records they cancel).  So segments are removed from
the oldest (the *head*) once it is home to no live job (``collect``), and
compaction empties the head by writing its live jobs' FULL records again
into ``cur`` (``migrate``; beanstalkd's migration).

It runs while disk use exceeds ``disk_bound``, ``2 x live + 2 segments``
(live = the jobs' latest records plus their slots; the one place the bound
is written), spending a migration budget of ``COMPACT_CREDIT`` bytes per
byte of new records, plus a background timer when writes stop; each step is
a few records, so no command waits on a big rewrite.  A segment is unlinked
only once the records that replaced it are synced (``durability.retire``),
and ``cur`` always carries the highest id issued (a MARK record) before
older segments go, so ids are never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..lifecycle import INVALID
from . import format as F
from .segments import SLOT, SegmentFiles

if TYPE_CHECKING:  # (the writer imports disk_bound from here)
    from .durability import Durability
    from .writer import LogWriter

COMPACT_CREDIT = 2  # bytes migrated per byte of new records, while over the bound
COMPACT_CREDIT_MAX = 4 << 20
COMPACT_TICK = 0.05  # seconds between background compaction steps
COMPACT_TICK_BYTES = 1 << 20


def disk_bound(live_bytes: int, live_count: int, seg_size: int) -> int:
    """The most disk the log may use before compaction runs: twice what the
    live jobs need (their latest records and their slots), plus two segments."""
    return 2 * (live_bytes + live_count * SLOT) + 2 * seg_size


class Compactor:
    """The rule that keeps the writer's disk use bounded.  Built by the
    facade with the files, the writer (``writer.LogWriter``) and the sync
    policy (``durability.Durability``)."""

    def __init__(self, files: SegmentFiles, writer: LogWriter, durability: Durability,
                 clock: Callable[[], float], sched) -> None:
        self.files = files
        self.writer = writer
        self.durability = durability
        self.clock = clock
        self.sched = sched
        self.records_migrated = 0
        self.credit = 0
        self._compacting = False
        self._compact_entry = None

    def live(self) -> int:
        """Bytes the live jobs need: their latest records and their slots."""
        w = self.writer
        return w.live_bytes + w.live_count * SLOT

    def bound(self) -> int:
        w = self.writer
        return disk_bound(w.live_bytes, w.live_count, self.files.seg_size)

    def _over(self) -> bool:
        """Over the bound, not counting segments already out of the log."""
        files = self.files
        return files.disk - files.doomed_bytes > self.bound()

    def grow(self, n: int) -> None:
        """``n`` new bytes of records were written while over the bound."""
        self.credit = min(self.credit + COMPACT_CREDIT * n, COMPACT_CREDIT_MAX)
        self.compact()

    def compact(self) -> None:
        """Empty the head segment, a budget's worth at a time."""
        if self._compacting:
            return
        self._compacting = True
        try:
            self._compact_steps()
        finally:
            self._compacting = False

    def _compact_steps(self) -> None:
        segments = self.files.segments
        while self.credit > 0 and len(segments) > 1 and self._over():
            head = segments[0]
            if head.live == 0:
                if not self.collect():
                    return
                continue
            order = head.order
            i = head.cursor
            while order[i] is None:
                i += 1
            head.cursor = i
            if not self.migrate(order[i]):
                return
        if len(segments) > 1 and self._over() and self._compact_entry is None:
            self._compact_entry = self.sched.add(
                self.clock() + COMPACT_TICK, self._compact_due, None)

    def _compact_due(self, _arg, now: float) -> None:
        self._compact_entry = None
        self.credit = max(self.credit, COMPACT_TICK_BYTES)
        self.compact()

    def migrate(self, job) -> bool:
        """Write ``job``'s FULL record again, in cur; its old home can then go."""
        w = self.writer
        if job.state is INVALID:  # deleted, its DELETE not written yet
            if not w.write_delete(job):
                return False
            w.retry.pop(job.id, None)
            return True
        files = self.files
        frame = w.full_frame(job, self.clock())
        n = len(frame)
        if not files.room(n, w.live_count) or not w.write(frame, "migrated"):
            return False
        wal = job.wal
        old = files.by_num[wal[0]]
        old.order[wal[1]] = None
        old.live -= 1
        cur = files.cur
        w.live_bytes += n - wal[2] - wal[3]
        job.wal = (cur.num, len(cur.order), n, 0)
        cur.order.append(job)
        cur.live += 1
        if job.id > cur.max_id:
            cur.max_id = job.id
        w.retry.pop(job.id, None)
        self.records_migrated += 1
        self.credit -= n
        return True

    def collect(self) -> bool:
        """Remove head segments home to no live job.  False if that must wait."""
        files = self.files
        segments = files.segments
        if len(segments) < 2 or segments[0].live:
            return True
        w = self.writer
        if files.cur.max_id < w.max_id:  # keep the highest id issued in the log
            frame = F.mark(w.max_id + 1)
            if not files.room(len(frame), w.live_count) or not w.write(frame, "mark"):
                return False
            files.cur.max_id = w.max_id
        # say which segments are still needed before any other goes: replay
        # tells a segment removed here from one that went missing by it
        first = next(seg for seg in segments if seg.live or seg is files.cur)
        frame = F.head(first.num)
        if not files.room(len(frame), w.live_count) or not w.write(frame, "head"):
            return False
        gone = []
        while segments[0] is not first:  # (a roll for the HEAD above may leave more)
            gone.append(segments.pop(0))
        self.durability.retire(gone)
        return True

    def close(self) -> None:
        self.sched.cancel(self._compact_entry)
        self._compact_entry = None
