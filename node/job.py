"""What the store keeps per job and per connection.

``Job`` is the most numerous object in a node (a million of them is normal),
so it is small: slots only, and the four counters that stay 0 for most jobs
(timeouts, releases, buries, kicks) live in one list made on first use.
``Session`` is one client connection as the store sees it.
"""

from __future__ import annotations

from collections.abc import Callable

from .lifecycle import READY
from .tube import Tube


def _rare_counter(i: int) -> property:
    """timeouts/releases/buries/kicks: 0 for most jobs, so kept in one lazily
    made list (``_rare``) instead of four slots (24 bytes a job)."""

    def get(job) -> int:
        rare = job._rare
        return rare[i] if rare is not None else 0

    def set_(job, value: int) -> None:
        if job._rare is None:
            job._rare = [0, 0, 0, 0]
        job._rare[i] = value

    return property(get, set_)


class Job:
    __slots__ = (
        "id", "tube", "pri", "delay", "ttr", "body", "state", "created", "deadline",
        "reserver", "timer", "reserves", "_rare", "wal",
    )
    timeouts = _rare_counter(0)
    releases = _rare_counter(1)
    buries = _rare_counter(2)
    kicks = _rare_counter(3)

    def __init__(self, job_id, tube, pri, delay, ttr, body, created):
        self.id = job_id
        self.tube = tube
        self.pri = pri
        self.delay = delay
        self.ttr = ttr
        self.body = body
        self.state = READY
        self.created = created
        self.deadline = 0.0
        self.reserver = None
        self.timer = None
        self.reserves = 0
        self._rare = None
        self.wal = None  # the binlog's bookkeeping for this job

    def __lt__(self, other):  # heap ties between two entries of one job
        return self.id < other.id


class Session:
    """What the store knows of one client connection."""

    __slots__ = (
        "use", "watch", "reserved", "soonest", "waiting", "wait_until", "wait_entry",
        "producer", "worker", "wake", "put_id",
    )

    def __init__(self, wake: Callable[[bytes], None] | None) -> None:
        self.use: Tube | None = None
        self.watch: list[Tube] = []
        self.reserved: dict[int, Job] = {}
        self.soonest: Job | None = None  # cached reserved job with the earliest deadline
        self.waiting = False
        self.wait_until: float | None = None
        self.wait_entry = None
        self.producer = False
        self.worker = False
        self.wake = wake  # called with a reply when a blocked reserve resolves
        self.put_id: int | None = None  # id of a put whose body is still to come

