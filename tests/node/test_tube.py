"""The tube's queues on their own: DelayQueue order and its bound on dead entries."""

from __future__ import annotations

import pytest
from bsnode import tube as tube_module
from bsnode.lifecycle import DELAYED, INVALID, READY
from bsnode.tube import DelayQueue, Tube
from hypothesis import given, settings
from hypothesis import strategies as st


class FakeJob:
    __slots__ = ("id", "deadline", "delay", "state", "pri")

    def __init__(self, job_id: int, deadline: float, delay: int) -> None:
        self.id = job_id
        self.deadline = deadline
        self.delay = delay
        self.state = DELAYED
        self.pri = 0


def drain(q: DelayQueue) -> list[int]:
    out = []
    while (job := q.head(True)) is not None:
        out.append(job.id)
    return out


def test_same_delay_comes_out_in_put_order_and_across_delays_by_deadline():
    q = DelayQueue()
    jobs = [FakeJob(1, 10.0, 10), FakeJob(2, 5.5, 5), FakeJob(3, 10.5, 10), FakeJob(4, 6.0, 5)]
    for j in jobs:
        q.push(j)
    assert q.head(False).id == 2
    assert drain(q) == [2, 4, 1, 3]
    assert q.entries == 0


def test_out_of_order_push_within_one_delay_still_comes_out_in_order():
    # a job restored from a binlog may carry a remainder that breaks its FIFO
    q = DelayQueue()
    for j in [FakeJob(5, 20.0, 10), FakeJob(6, 12.0, 10), FakeJob(7, 20.0, 10), FakeJob(1, 20.0, 10)]:
        q.push(j)
    assert drain(q) == [6, 1, 5, 7]


# each op: (kind, job index or delay, seconds since the previous op)
ops = st.lists(
    st.tuples(st.sampled_from(["push", "push", "push", "odd", "remove", "pop", "rebuild"]),
              st.integers(0, 5), st.integers(0, 3)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_a_sorted_model(script):
    q = DelayQueue()
    live: dict[int, FakeJob] = {}
    now, next_id = 0.0, 1
    for kind, arg, dt in script:
        now += dt
        if kind == "push":
            job = FakeJob(next_id, now + arg, arg)
            next_id += 1
            q.push(job)
            live[job.id] = job
        elif kind == "odd":  # out of its FIFO's order, as a job restored from a binlog
            job = FakeJob(next_id, now + arg - 0.5, arg)
            next_id += 1
            q.push(job)
            live[job.id] = job
        elif kind == "rebuild":  # what Tube.undelay does when dead entries pile up
            q = q.rebuilt()
            assert q.entries == len(live)
        elif kind == "remove" and live:
            job = sorted(live.values(), key=lambda j: j.id)[arg % len(live)]
            job.state = INVALID
            del live[job.id]
        elif kind == "pop":
            want = min(live.values(), key=lambda j: (j.deadline, j.id)) if live else None
            got = q.head(True)
            assert got is want
            if got is not None:
                del live[got.id]
        assert sorted(j.id for j in q.jobs()) == sorted(live)
    assert drain(q) == [j.id for j in sorted(live.values(), key=lambda j: (j.deadline, j.id))]


def test_put_with_delay_then_delete_forever_stays_bounded():
    t = Tube("t")
    keep = FakeJob(0, 1e9, 3600)
    t.push_delayed(keep)
    for i in range(1, 20_001):
        job = FakeJob(i, i + 3600.0, 3600)
        t.push_delayed(job)
        t.undelay()
        job.state = INVALID
        assert t.delayed.entries <= 2 * t.delayed_count + 1024 + 1
    assert t.delayed_count == 1
    assert [j.id for j in t.delayed_jobs()] == [0]
    assert t.pop_delayed() is keep


def test_kicked_job_is_not_promoted_again():
    t = Tube("t")
    a, b = FakeJob(1, 5.0, 5), FakeJob(2, 6.0, 5)
    t.push_delayed(a)
    t.push_delayed(b)
    t.undelay()
    a.state = READY
    assert t.peek_delayed() is b
    assert t.pop_delayed() is b
    assert t.pop_delayed() is None
    assert t.delayed_count == 0


class ReadyJob(FakeJob):
    __slots__ = ()

    def __init__(self, job_id: int, pri: int) -> None:
        super().__init__(job_id, 0.0, 0)
        self.state = READY
        self.pri = pri


def test_oldest_ready_is_the_smallest_live_id_across_priorities():
    t = Tube("t")
    jobs = {i: ReadyJob(i, pri) for i, pri in [(5, 10), (3, 20), (9, 0), (4, 20)]}
    for j in jobs.values():
        t.ready.push(j)
    assert t.ready.oldest() is jobs[3]
    jobs[3].state = INVALID  # deleted: a dead entry in its bucket
    t.ready.discard(jobs[3])
    assert t.ready.oldest() is jobs[4]
    assert t.ready.pop() is jobs[9]  # the reserve order is untouched
    jobs[4].state = INVALID
    t.ready.discard(jobs[4])
    assert t.ready.oldest() is jobs[5]
    assert t.ready.pop() is jobs[5]
    assert t.ready.oldest() is None


ready_ops = st.lists(
    st.tuples(st.sampled_from(["push", "push", "back", "remove", "pop", "oldest"]),
              st.integers(0, 3), st.integers(0, 50)),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ready_ops, st.sampled_from([1024, -(10**9)]))
def test_ready_queue_matches_a_sorted_model(script, slack):
    """With a hugely negative slack the queue compacts at every removal."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tube_module, "_COMPACT_SLACK", slack)
        run_ready_script(script)


def run_ready_script(script) -> None:
    q = Tube("t").ready
    live: dict[int, ReadyJob] = {}
    gone: list[ReadyJob] = []  # left the queue; may come back (released, kicked)
    next_id = 1
    for kind, pri, pick in script:
        if kind == "push":
            job = ReadyJob(next_id, pri)
            next_id += 1
            q.push(job)
            live[job.id] = job
        elif kind == "back" and gone:  # comes back, maybe at another priority
            job = gone.pop(pick % len(gone))
            job.state, job.pri = READY, pri
            q.push(job)
            live[job.id] = job
        elif kind == "remove" and live:  # deleted or reserved by id
            job = sorted(live.values(), key=lambda j: j.id)[pick % len(live)]
            q.discard(job)
            job.state = INVALID
            del live[job.id]
            gone.append(job)
        elif kind == "pop":
            want = min(live.values(), key=lambda j: (j.pri, j.id)) if live else None
            got = q.pop()
            assert got is want
            if got is not None:
                got.state = INVALID
                del live[got.id]
                gone.append(got)
        elif kind == "oldest":
            assert q.oldest() is (min(live.values(), key=lambda j: j.id) if live else None)
        assert q.count == len(live)
        assert sorted(j.id for j in q.jobs()) == sorted(live)


def test_ready_jobs_deleted_by_id_from_an_unreserved_tube_stay_bounded():
    q = Tube("t").ready
    keep = ReadyJob(0, 5)
    q.push(keep)
    for i in range(1, 20_001):
        job = ReadyJob(i, i % 3)
        q.push(job)
        q.discard(job)
        job.state = INVALID
        assert q.entries <= 2 * q.count + 1024 + 1
    assert q.count == 1 and list(q.jobs()) == [keep]
    assert q.pop() is keep and q.pop() is None
