"""One scheduler for every deadline in a node.

How this works
--------------
All timed work (a delayed job becoming ready, a reserved job's TTR running
out, a blocked reserve timing out or entering DEADLINE_SOON, a paused tube
resuming) is an entry in one binary heap.  Nothing owns a greenlet or an
OS timer of its own: the network shell asks ``next_deadline()``, sleeps
until then, and calls ``run_due(now)``.  This is beanstalkd's prottick().

Entries are cancelled in O(1) by clearing their callback; dead entries are
skipped when they surface, and the heap is rebuilt once more than half of
it is dead (asyncio's trick), so cancelled timers never pile up.

A callback that raises is a bug or a fault of the machine (no descriptor
left, no memory): it must not stop the clock, so the exception is logged
(rate-limited) and the same entry runs again ``RETRY_AFTER`` seconds later;
whoever holds the entry can still cancel it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from itertools import count

from .ratelog import Complaints

_WHEN, _SEQ, _FN, _ARG = range(4)
_COMPACT_MIN = 1024
RETRY_AFTER = 1.0  # seconds before a callback that raised runs again

log = logging.getLogger("bsnode")


class Scheduler:
    """A heap of ``[when, seq, fn, arg]`` entries; ``fn(arg, now)`` runs when due."""

    __slots__ = ("_heap", "_seq", "_dead", "on_earlier", "armed", "failures", "_complaints")

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._seq = count()
        self._dead = 0
        self.failures = 0  # callbacks that raised
        self._complaints = Complaints(log)
        # The shell sleeps until ``armed``; an entry due before that calls
        # ``on_earlier`` so the shell can wake up early.
        self.armed = float("inf")
        self.on_earlier: Callable[[float], None] | None = None

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def add(self, when: float, fn: Callable, arg) -> list:
        entry = [when, next(self._seq), fn, arg]
        heapq.heappush(self._heap, entry)
        if when < self.armed:
            self.armed = when
            if self.on_earlier is not None:
                self.on_earlier(when)
        return entry

    def cancel(self, entry: list | None) -> None:
        if entry is None or entry[_FN] is None:
            return
        entry[_FN] = None
        entry[_ARG] = None
        self._dead += 1
        if self._dead > _COMPACT_MIN and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[_FN] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][_FN] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][_WHEN] if heap else None

    def run_due(self, now: float) -> int:
        """Run every entry due at ``now``; returns how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][_WHEN] <= now:
            entry = heapq.heappop(heap)
            fn = entry[_FN]
            if fn is None:
                self._dead -= 1
                continue
            entry[_FN] = None
            try:
                fn(entry[_ARG], now)
            except Exception as e:  # noqa: BLE001 - the clock must outlive any callback
                self._retry(entry, fn, now, e)
            ran += 1
        return ran

    def _retry(self, entry: list, fn: Callable, now: float, err: Exception) -> None:
        """``entry``'s callback raised: log it, and run it again later."""
        self.failures += 1
        name = getattr(fn, "__qualname__", repr(fn))
        self._complaints.error(f"timer {name}", "timer %s failed: %s: %s; retrying in %.0f s",
                               name, type(err).__name__, err, RETRY_AFTER)
        entry[_WHEN] = now + RETRY_AFTER
        entry[_SEQ] = next(self._seq)
        entry[_FN] = fn
        heapq.heappush(self._heap, entry)
