"""A tube: its ready queue, delayed heap, buried list and waiting reservers.

How this works
--------------
Ready jobs leave a tube by (priority, id) — beanstalkd's job_pri_less, so
jobs of equal priority come out oldest id first, even a job released back
after newer ones were put.  ``ReadyQueue`` keeps one bucket per priority in
use; a bucket is a deque that new jobs are appended to (ids only grow, so it
stays sorted) plus a small heap for the rare job that arrives out of id
order (released, kicked, promoted from delay).  Put and reserve are O(1) in
the common case and O(log n) otherwise, with no Python-level comparisons.

Removal from the middle (delete of a ready job, reserve-job) is lazy: the
store changes the job's state and the entry is dropped when it surfaces.
An entry is live while its job is READY at the bucket's priority; a job
that left and came back may be listed twice, and taking either copy is the
same job in the same place, so order stays exact.

Delayed jobs come out by (deadline, id): ``DelayQueue`` keeps a FIFO per
delay value (same delay, later put, later deadline) and a heap of the FIFO
heads, also lazily cleaned, and rebuilt when dead entries outnumber live
ones (put-with-delay then delete, over and over, stays bounded).
Buried jobs are an insertion-ordered dict: kick and peek-buried take the
oldest burial first, as beanstalkd's list does.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from itertools import compress

from bsclient.protocol import STATS_TUBE_FIELDS

from .lifecycle import DELAYED, READY

_MAX_IDLE_BUCKETS = 64
_COMPACT_SLACK = 1024  # dead entries tolerated (over 2x the live) before a rebuild


class ReadyQueue:
    __slots__ = ("count", "entries", "_buckets", "_prios")

    def __init__(self) -> None:
        self.count = 0
        self.entries = 0  # live and dead
        # pri -> [fifo deque, out-of-order heap of (id, job), listed in _prios]
        self._buckets: dict[int, list] = {}
        self._prios: list[int] = []

    def push(self, job) -> None:
        pri = job.pri
        b = self._buckets.get(pri)
        if b is None:
            if len(self._buckets) >= _MAX_IDLE_BUCKETS:
                self._drop_idle()
            b = self._buckets[pri] = [deque(), [], False]
        fifo = b[0]
        if not fifo or fifo[-1].id < job.id:
            fifo.append(job)
        else:
            heapq.heappush(b[1], (job.id, job))
        if not b[2]:
            b[2] = True
            heapq.heappush(self._prios, pri)
        self.count += 1
        self.entries += 1

    def discard(self, job) -> None:
        """The job leaves the queue; the caller changes its state.  Its entry
        stays until it surfaces, unless dead entries pile up (jobs deleted
        by id from a tube nobody reserves from): then the queue is compacted."""
        self.count -= 1
        if self.entries > 2 * self.count + _COMPACT_SLACK:
            self._compact()

    def peek(self):
        return self._head(False)

    def pop(self):
        job = self._head(True)
        if job is not None:
            self.count -= 1
        return job

    def _head(self, take: bool):
        prios = self._prios
        buckets = self._buckets
        while prios:
            pri = prios[0]
            b = buckets[pri]
            fifo, early = self._clean(pri, b)
            if fifo:
                if early and early[0][0] < fifo[0].id:
                    return self._take_early(early) if take else early[0][1]
                if not take:
                    return fifo[0]
                self.entries -= 1
                return fifo.popleft()
            if early:
                return self._take_early(early) if take else early[0][1]
            heapq.heappop(prios)
            b[2] = False
        return None

    def _clean(self, pri: int, b: list):
        """Drop dead entries from the heads of a bucket's fifo and heap."""
        fifo, early = b[0], b[1]
        while fifo and (fifo[0].state is not READY or fifo[0].pri != pri):
            fifo.popleft()
            self.entries -= 1
        while early and (early[0][1].state is not READY or early[0][1].pri != pri):
            heapq.heappop(early)
            self.entries -= 1
        return fifo, early

    def _take_early(self, early: list):
        self.entries -= 1
        return heapq.heappop(early)[1]

    def oldest(self):
        """The ready job with the smallest id (the first put), or None.

        Each bucket's fifo and heap are sorted by id, so this looks at two
        heads per priority in use, not at every job (for the metrics'
        oldest-ready age)."""
        best = None
        for pri, b in self._buckets.items():
            if not b[2]:
                continue
            fifo, early = self._clean(pri, b)
            for job in (fifo[0] if fifo else None, early[0][1] if early else None):
                if job is not None and (best is None or job.id < best.id):
                    best = job
        return best

    def _compact(self) -> None:
        """Keep only live entries (one per job), in order: O(entries)."""
        seen: set[int] = set()
        prios = []
        kept = 0
        for pri, b in self._buckets.items():
            if not b[2]:
                continue
            fifo = deque()
            for job in b[0]:
                if job.state is READY and job.pri == pri and job.id not in seen:
                    seen.add(job.id)
                    fifo.append(job)
            early = []
            for entry in b[1]:
                job = entry[1]
                if job.state is READY and job.pri == pri and job.id not in seen:
                    seen.add(job.id)
                    early.append(entry)
            heapq.heapify(early)
            b[0], b[1] = fifo, early
            kept += len(fifo) + len(early)
            if fifo or early:
                prios.append(pri)
            else:
                b[2] = False
        heapq.heapify(prios)
        self._prios = prios
        self.entries = kept

    def _drop_idle(self) -> None:
        for pri in [p for p, b in self._buckets.items() if not b[2]]:
            del self._buckets[pri]

    def jobs(self):
        """Live jobs, unordered (for stats and compaction)."""
        seen = set()
        for pri, (fifo, early, _) in self._buckets.items():
            for job in list(fifo) + [j for _, j in early]:
                if job.state is READY and job.pri == pri and job.id not in seen:
                    seen.add(job.id)
                    yield job


class Tube:
    __slots__ = (
        "name", "ready", "delayed", "delayed_count", "buried", "waiters", "refs",
        "using", "watching", "reserved", "urgent", "total_jobs", "deletes",
        "pause_count", "pause_secs", "paused_until", "pause_entry", "delay_entry",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = ReadyQueue()
        self.delayed = DelayQueue()
        self.delayed_count = 0
        self.buried: OrderedDict = OrderedDict()
        self.waiters: dict = {}  # sessions blocked in reserve, oldest first
        self.refs = 0  # jobs, users and watchers holding the tube alive
        self.using = 0
        self.watching = 0
        self.reserved = 0
        self.urgent = 0
        self.total_jobs = 0
        self.deletes = 0
        self.pause_count = 0
        self.pause_secs = 0
        self.paused_until = 0.0  # > now while paused
        self.pause_entry = None
        self.delay_entry = None  # scheduler entry for the earliest delayed job

    def is_paused(self, now: float) -> bool:
        return self.paused_until > now

    # delayed jobs ------------------------------------------------------
    def stats_fields(self, now: float) -> list[tuple[str, object]]:
        """The `stats-tube` reply: STATS_TUBE_FIELDS (bsclient.protocol) and
        this tube's values, in that order."""
        left = int(self.paused_until - now) if self.paused_until else 0
        return list(zip(STATS_TUBE_FIELDS, (
            self.name, self.urgent, self.ready.count, self.reserved, self.delayed_count,
            len(self.buried), self.total_jobs, self.using, self.watching, len(self.waiters),
            self.deletes, self.pause_count, self.pause_secs, max(left, 0)), strict=True))

    def push_delayed(self, job) -> None:
        self.delayed.push(job)
        self.delayed_count += 1

    def peek_delayed(self):
        return self.delayed.head(False)

    def pop_delayed(self):
        job = self.delayed.head(True)
        if job is not None:
            self.delayed_count -= 1
        return job

    def undelay(self) -> None:
        """A delayed job left early (deleted, kicked): its entry is now dead."""
        self.delayed_count -= 1
        if self.delayed.entries > 2 * self.delayed_count + _COMPACT_SLACK:
            self.delayed = self.delayed.rebuilt()

    def delayed_jobs(self):
        return self.delayed.jobs()


class DelayQueue:
    """Delayed jobs in (deadline, id) order, cheap for millions of them.

    A deadline is ``now + delay`` and delays are whole seconds, so jobs
    delayed by the same amount arrive in deadline order: each delay value
    gets a FIFO (two deques in step: deadlines and jobs, no tuple per job),
    and a small heap holds the head of each FIFO.  A job that would break
    its FIFO's order (restored from a binlog with an odd remainder) goes to
    a plain heap instead.  Removal is lazy, as in the ready queue: an entry
    is live while its job is DELAYED with that deadline.
    """

    __slots__ = ("_fifos", "_heads", "_odd", "entries")

    def __init__(self) -> None:
        self.entries = 0  # live and dead
        self._fifos: dict[int, tuple[deque, deque]] = {}
        self._heads: list[tuple] = []  # (deadline, id, delay) of each FIFO's head
        self._odd: list[tuple] = []  # heap of (deadline, id, job)

    def push(self, job) -> None:
        self.entries += 1
        d, key = job.deadline, job.delay
        f = self._fifos.get(key)
        if f is None:
            f = self._fifos[key] = (deque(), deque())
        times, jobs = f
        if times and (times[-1] > d or (times[-1] == d and jobs[-1].id > job.id)):
            heapq.heappush(self._odd, (d, job.id, job))
            return
        if not times:
            heapq.heappush(self._heads, (d, job.id, key))
        times.append(d)
        jobs.append(job)

    def _fifo_head(self):
        """The live head of the FIFO that comes first, with its heap entry."""
        heads, fifos = self._heads, self._fifos
        while heads:
            d, jid, key = heads[0]
            times, jobs = fifos[key]
            while times and (jobs[0].state is not DELAYED or jobs[0].deadline != times[0]):
                times.popleft()
                jobs.popleft()
                self.entries -= 1
            if not times:
                heapq.heappop(heads)
                del fifos[key]
            elif times[0] != d or jobs[0].id != jid:
                heapq.heapreplace(heads, (times[0], jobs[0].id, key))
            else:
                return heads[0]
        return None

    def head(self, take: bool):
        top = self._fifo_head()
        odd = self._odd
        while odd and (odd[0][2].state is not DELAYED or odd[0][2].deadline != odd[0][0]):
            heapq.heappop(odd)
            self.entries -= 1
        if odd and (top is None or odd[0][:2] < top[:2]):
            if not take:
                return odd[0][2]
            self.entries -= 1
            return heapq.heappop(odd)[2]
        if top is None:
            return None
        times, jobs = self._fifos[top[2]]
        if not take:
            return jobs[0]
        self.entries -= 1
        times.popleft()
        job = jobs.popleft()
        if times:
            heapq.heapreplace(self._heads, (times[0], jobs[0].id, top[2]))
        else:
            heapq.heappop(self._heads)
            del self._fifos[top[2]]
        return job

    def jobs(self) -> list:
        live = [j for times, jobs in self._fifos.values() for w, j in zip(times, jobs, strict=True)
                if j.state is DELAYED and j.deadline == w]
        live += [j for w, _, j in self._odd if j.state is DELAYED and j.deadline == w]
        return live

    def rebuilt(self) -> DelayQueue:
        """A new queue holding only the live entries, in O(entries): each
        FIFO is filtered in order (it stays sorted), the odd heap re-heaped."""
        fresh = DelayQueue()
        for key, (times, jobs) in self._fifos.items():
            live = [j.state is DELAYED and j.deadline == w
                    for w, j in zip(times, jobs, strict=True)]  # bools: nothing for the GC
            kept_jobs = deque(compress(jobs, live))
            if kept_jobs:
                kept_times = deque(compress(times, live))
                fresh._fifos[key] = (kept_times, kept_jobs)
                fresh._heads.append((kept_times[0], kept_jobs[0].id, key))
        heapq.heapify(fresh._heads)
        fresh._odd = [e for e in self._odd if e[2].state is DELAYED and e[2].deadline == e[0]]
        heapq.heapify(fresh._odd)
        fresh.entries = sum(len(t) for t, _ in fresh._fifos.values()) + len(fresh._odd)
        return fresh
