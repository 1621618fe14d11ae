"""The fast-path budget of the binlog's writer: one owner for it.

How this works
--------------
Put and delete are the costs every job pays, so the writer makes a single
check on them: does ``quick`` (bytes that may go into the segment being
written with no other check) cover the record?  Anything that could make one
of the skipped checks fire (a new segment or spare, a failure, a retry, a
sync to schedule, disk use over the bound, closing) calls ``invalidate``, and
the next write takes the slow path, which checks everything and calls
``refill`` with what it found.  Nothing else sets ``quick`` except the fast
path itself, spending it.
"""

from __future__ import annotations


class FastPath:
    __slots__ = ("quick",)

    def __init__(self) -> None:
        self.quick = -1  # bytes the writer may append to cur with no check; -1: check all

    def invalidate(self) -> None:
        """Something changed: the next write checks everything."""
        self.quick = -1

    def refill(self, free: int, owed_slots: int, slot: int) -> None:
        """All checks passed: ``free`` bytes are left in cur, of which
        ``owed_slots`` slots of ``slot`` bytes must stay free (the live jobs'
        DELETE records that the spares cannot take)."""
        self.quick = free - (owed_slots * slot if owed_slots > 0 else 0)
