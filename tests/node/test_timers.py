"""Everything timed, on a fake clock: the scheduler, delays, TTR, DEADLINE_SOON,
reserve timeouts and paused tubes.  No test sleeps; ``Node.advance`` moves the
clock and runs ``store.tick()`` as the server's clock loop would.
"""

from __future__ import annotations

import pytest
from bsclient import protocol as P
from bsnode.timers import Scheduler
from test_store import Node, parse_yaml, reply_id

EPS = 0.001


@pytest.fixture
def node() -> Node:
    return Node()


def state_of(c, job_id: int) -> str:
    return parse_yaml(c.cmd("stats-job", job_id))["state"]


# --- the scheduler ---------------------------------------------------------------
def test_scheduler_runs_due_entries_in_time_then_insertion_order():
    s = Scheduler()
    ran = []
    for when, tag in ((5, "c"), (1, "a"), (5, "d"), (3, "b"), (9, "late")):
        s.add(when, lambda arg, now: ran.append((arg, now)), tag)
    assert len(s) == 5
    assert s.next_deadline() == 1
    assert s.run_due(0.5) == 0
    assert s.run_due(5) == 4
    assert ran == [("a", 5), ("b", 5), ("c", 5), ("d", 5)]
    assert s.next_deadline() == 9
    assert len(s) == 1


def test_a_callback_that_raises_is_logged_once_and_retried_without_stopping_the_clock(caplog):
    """Issue 19, case 1: an exception in one timer (EMFILE in the fsync
    timer's dup) killed the loop that runs every timer."""
    from bsnode.timers import RETRY_AFTER

    s = Scheduler()
    ran, calls = [], []

    def flaky(arg, now):
        calls.append(now)
        if len(calls) <= 3:
            raise OSError(24, "Too many open files")

    entry = s.add(1, flaky, None)
    s.add(1, lambda arg, now: ran.append(now), None)
    with caplog.at_level("ERROR", logger="bsnode"):
        assert s.run_due(1) == 2  # the other entry due at the same time ran too
        assert ran == [1]
        assert s.next_deadline() == 1 + RETRY_AFTER  # the failed one comes back
        s.run_due(1 + RETRY_AFTER)
        s.run_due(1 + 2 * RETRY_AFTER)
        s.run_due(1 + 3 * RETRY_AFTER)  # succeeds this time, and is gone
    assert calls == [1, 1 + RETRY_AFTER, 1 + 2 * RETRY_AFTER, 1 + 3 * RETRY_AFTER]
    assert s.failures == 3 and len(s) == 0
    lines = [r.getMessage() for r in caplog.records if "flaky" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0], lines  # rate-limited
    # an entry retried after a failure can still be cancelled by its holder
    calls.clear()
    entry = s.add(10, flaky, None)
    s.run_due(10)
    s.cancel(entry)
    assert s.next_deadline() is None


def test_scheduler_cancel_and_skip_dead_entries():
    s = Scheduler()
    ran = []
    e1 = s.add(1, lambda a, n: ran.append(a), 1)
    s.add(2, lambda a, n: ran.append(a), 2)
    s.cancel(e1)
    s.cancel(e1)  # twice is harmless
    s.cancel(None)
    assert len(s) == 1
    assert s.next_deadline() == 2
    assert s.run_due(10) == 1
    assert ran == [2]
    assert s.next_deadline() is None


def test_scheduler_cancel_after_run_is_a_no_op():
    s = Scheduler()
    e = s.add(1, lambda a, n: None, None)
    s.run_due(1)
    s.cancel(e)
    assert len(s) == 0


def test_scheduler_compacts_when_mostly_dead():
    s = Scheduler()
    entries = [s.add(i, lambda a, n: None, None) for i in range(3000)]
    for e in entries[:2500]:
        s.cancel(e)
    assert len(s) == 500
    assert len(s._heap) < 3000  # rebuilt: dead entries do not pile up
    assert s.next_deadline() == 2500
    assert s.run_due(10**6) == 500


def test_scheduler_entry_added_while_running_runs_if_due():
    s = Scheduler()
    ran = []

    def first(arg, now):
        ran.append("first")
        s.add(now, lambda a, n: ran.append("second"), None)

    s.add(1, first, None)
    assert s.run_due(1) == 2
    assert ran == ["first", "second"]


def test_scheduler_on_earlier_wakes_the_shell():
    s = Scheduler()
    calls = []
    s.on_earlier = calls.append
    s.add(10, lambda a, n: None, None)
    s.armed = 10
    s.add(20, lambda a, n: None, None)  # later than armed: no call
    s.add(5, lambda a, n: None, None)
    assert calls == [10, 5]
    assert s.armed == 5


def test_tick_reports_time_to_next_deadline(node):
    c = node.client()
    assert node.store.tick() is None
    c.put(delay=30)
    c.put(delay=10)
    assert node.store.tick() == pytest.approx(10)
    assert node.advance(4) == pytest.approx(6)
    assert node.advance(6) == pytest.approx(20)
    assert node.advance(20) is None


# --- delays ------------------------------------------------------------------------
def test_delayed_job_promoted_exactly_when_due(node):
    c = node.client()
    j = c.put(delay=10)
    assert state_of(c, j) == "delayed"
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    node.advance(10 - EPS)
    assert state_of(c, j) == "delayed"
    assert parse_yaml(c.cmd("stats-job", j))["time-left"] == "0"
    node.advance(EPS)
    assert state_of(c, j) == "ready"
    assert c.reserve_id() == j


def test_stats_job_time_left_counts_down(node):
    c = node.client()
    j = c.put(delay=100)
    node.advance(30.5)
    assert parse_yaml(c.cmd("stats-job", j))["time-left"] == "69"
    assert parse_yaml(c.cmd("stats-job", j))["age"] == "30"


def test_delayed_jobs_promoted_in_deadline_order_across_tubes(node):
    c = node.client()
    c.cmd("watch", "b")
    a3 = c.put(delay=3, pri=1)
    c.cmd("use", "b")
    b1 = c.put(delay=1, pri=1)
    b2 = c.put(delay=2, pri=1)
    node.advance(1)
    assert [c.reserve_id(), c.reserve_id()] == [b1, None]
    node.advance(1)
    assert c.reserve_id() == b2
    node.advance(1)
    assert c.reserve_id() == a3


def test_promotion_many_at_once_keeps_priority_order(node):
    c = node.client()
    ids = [c.put(delay=d, pri=p) for d, p in ((5, 9), (1, 9), (3, 1), (2, 5))]
    node.advance(100)
    assert [c.reserve_id() for _ in ids] == [ids[2], ids[3], ids[0], ids[1]]


def test_deleting_the_earliest_delayed_job_keeps_the_rest_on_time(node):
    c = node.client()
    first = c.put(delay=1)
    second = c.put(delay=5)
    c.cmd("delete", first)
    node.advance(1)
    assert state_of(c, second) == "delayed"
    node.advance(4)
    assert state_of(c, second) == "ready"


def test_kicked_delayed_job_is_not_promoted_again(node):
    c = node.client()
    j = c.put(delay=5)
    assert c.cmd("kick-job", j) == P.KICKED
    assert c.reserve_id() == j
    node.advance(6)  # its old deadline passes while it is reserved
    assert state_of(c, j) == "reserved"
    st = node.stats()
    assert (st["current-jobs-ready"], st["current-jobs-delayed"]) == ("0", "0")


def test_release_with_delay(node):
    c = node.client()
    j = c.put()
    assert c.reserve_id() == j
    assert c.cmd("release", j, 5, 20) == P.RELEASED
    st = parse_yaml(c.cmd("stats-job", j))
    assert (st["state"], st["delay"], st["time-left"], st["releases"]) == (
        "delayed", "20", "20", "1")
    node.advance(19)
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    node.advance(1)
    assert c.reserve_id() == j


def test_delayed_job_wakes_a_waiting_reserver(node):
    p, w = node.client(), node.client()
    j = p.put(delay=3)
    assert w.cmd("reserve") is None
    node.advance(2)
    assert w.woken == []
    node.advance(1)
    assert [reply_id(r) for r in w.woken] == [j]


# --- TTR -----------------------------------------------------------------------------
def test_ttr_expiry_puts_the_job_back_with_counters(node):
    a, b = node.client(), node.client()
    j = a.put(ttr=5)
    assert a.reserve_id() == j
    node.advance(5 - EPS)
    assert state_of(b, j) == "reserved"
    assert parse_yaml(b.cmd("stats-job", j))["time-left"] == "0"
    node.advance(2 * EPS)
    st = parse_yaml(b.cmd("stats-job", j))
    assert (st["state"], st["reserves"], st["timeouts"]) == ("ready", "1", "1")
    assert node.stats()["job-timeouts"] == "1"
    assert node.stats()["current-jobs-reserved"] == "0"
    assert a.cmd("release", j, 1, 0) == P.NOT_FOUND  # no longer a's
    assert b.reserve_id() == j
    assert parse_yaml(b.cmd("stats-job", j))["reserves"] == "2"


def test_ttr_zero_becomes_one(node):
    c = node.client()
    j = c.put(ttr=0)
    assert parse_yaml(c.cmd("stats-job", j))["ttr"] == "1"
    assert c.reserve_id() == j
    node.advance(1 + EPS)
    assert state_of(c, j) == "ready"


def test_touch_restarts_the_ttr(node):
    c = node.client()
    j = c.put(ttr=10)
    assert c.reserve_id() == j
    node.advance(8)
    assert c.cmd("touch", j) == P.TOUCHED
    assert parse_yaml(c.cmd("stats-job", j))["time-left"] == "10"
    node.advance(9)
    assert state_of(c, j) == "reserved"
    node.advance(1 + EPS)
    assert state_of(c, j) == "ready"


def test_expired_job_goes_to_a_waiting_session(node):
    a, w = node.client(), node.client()
    j = a.put(ttr=2)
    assert a.reserve_id() == j
    assert w.cmd("reserve") is None
    node.advance(2 + EPS)
    assert [reply_id(r) for r in w.woken] == [j]


def test_released_job_after_expiry_is_not_found(node):
    c = node.client()
    j = c.put(ttr=1)
    assert c.reserve_id() == j
    node.advance(2)
    assert c.cmd("release", j, 1, 0) == P.NOT_FOUND
    assert c.cmd("touch", j) == P.NOT_FOUND
    assert c.cmd("bury", j, 1) == P.NOT_FOUND


# --- DEADLINE_SOON -----------------------------------------------------------------------
def test_deadline_soon_only_in_the_last_second(node):
    c = node.client()
    j = c.put(ttr=3)
    assert c.reserve_id() == j
    node.advance(2 - EPS)
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    node.advance(EPS)
    assert c.cmd("reserve-with-timeout", 0) == P.DEADLINE_SOON
    assert c.cmd("reserve") == P.DEADLINE_SOON  # answered at once, no wait
    assert node.stats()["current-waiting"] == "0"


def test_deadline_soon_not_while_a_watched_tube_has_a_ready_job(node):
    c = node.client()
    j = c.put(ttr=2, pri=0)
    k = c.put(pri=5)
    assert c.reserve_id() == j
    node.advance(1.5)
    assert c.reserve_id() == k  # a ready job wins over DEADLINE_SOON
    assert c.cmd("reserve-with-timeout", 0) == P.DEADLINE_SOON


def test_deadline_soon_with_ready_jobs_only_in_a_paused_tube(node):
    c = node.client()
    c.cmd("watch", "p")
    j = c.put(ttr=1)
    c.cmd("use", "p")
    c.put()
    assert c.reserve_id() == j
    c.cmd("pause-tube", "p", 60)
    # a watched tube has a ready job, so the reserve waits; with timeout 0
    # the wait ends at once, and the reason is the deadline
    assert c.cmd("reserve-with-timeout", 0) == P.DEADLINE_SOON


def test_deadline_soon_ends_a_blocked_reserve(node):
    c = node.client()
    j = c.put(ttr=5)
    assert c.reserve_id() == j
    assert c.cmd("reserve") is None
    assert node.stats()["current-waiting"] == "1"
    node.advance(4 - EPS)
    assert c.woken == []
    node.advance(EPS)
    assert c.woken == [P.DEADLINE_SOON]
    assert node.stats()["current-waiting"] == "0"
    assert state_of(c, j) == "reserved"  # the job is still held


def test_deadline_soon_before_the_reserve_timeout(node):
    c = node.client()
    j = c.put(ttr=4)
    assert c.reserve_id() == j
    assert c.cmd("reserve-with-timeout", 10) is None
    node.advance(3)
    assert c.woken == [P.DEADLINE_SOON]


def test_reserve_timeout_before_the_deadline(node):
    c = node.client()
    j = c.put(ttr=100)
    assert c.reserve_id() == j
    assert c.cmd("reserve-with-timeout", 10) is None
    node.advance(10)
    assert c.woken == [P.TIMED_OUT]


def test_job_arriving_before_deadline_soon_is_reserved(node):
    c, p = node.client(), node.client()
    j = c.put(ttr=10)
    assert c.reserve_id() == j
    assert c.cmd("reserve") is None
    node.advance(5)
    k = p.put()
    assert [reply_id(r) for r in c.woken] == [k]
    node.advance(4)  # the deadline-soon time of the first job passes quietly
    assert len(c.woken) == 1


# --- reserve with timeout -------------------------------------------------------------
def test_reserve_with_timeout_zero(node):
    c = node.client()
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    j = c.put()
    assert c.reserve_id(0) == j
    assert node.stats()["current-waiting"] == "0"


def test_reserve_with_timeout_expires(node):
    c = node.client()
    assert c.cmd("reserve-with-timeout", 3) is None
    node.advance(3 - EPS)
    assert c.woken == []
    node.advance(EPS)
    assert c.woken == [P.TIMED_OUT]
    assert node.stats()["current-waiting"] == "0"
    assert parse_yaml(c.cmd("stats-tube", "default"))["current-waiting"] == "0"


def test_reserve_with_negative_timeout_waits_forever(node):
    c, p = node.client(), node.client()
    assert c.cmd("reserve-with-timeout", -1) is None
    node.advance(10**6)
    assert c.woken == []
    j = p.put()
    assert [reply_id(r) for r in c.woken] == [j]


def test_timed_out_waiter_does_not_take_a_later_job(node):
    c, p = node.client(), node.client()
    assert c.cmd("reserve-with-timeout", 1) is None
    node.advance(1)
    j = p.put()
    assert c.woken == [P.TIMED_OUT]
    assert reply_id(p.cmd("peek-ready")) == j


def test_waiters_with_timeouts_time_out_independently(node):
    a, b, p = node.client(), node.client(), node.client()
    assert a.cmd("reserve-with-timeout", 5) is None
    assert b.cmd("reserve-with-timeout", 2) is None
    node.advance(2)
    assert (a.woken, b.woken) == ([], [P.TIMED_OUT])
    j = p.put()
    assert [reply_id(r) for r in a.woken] == [j]


# --- paused tubes ------------------------------------------------------------------------
def test_pause_skips_the_tube_then_resumes(node):
    c = node.client()
    j = c.put()
    assert c.cmd("pause-tube", "default", 10) == P.PAUSED
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    st = parse_yaml(c.cmd("stats-tube", "default"))
    assert (st["pause"], st["pause-time-left"], st["cmd-pause-tube"]) == ("10", "10", "1")
    assert reply_id(c.cmd("peek-ready")) == j  # peek ignores the pause
    node.advance(10)
    st = parse_yaml(c.cmd("stats-tube", "default"))
    assert (st["pause"], st["pause-time-left"]) == ("0", "0")
    assert c.reserve_id() == j


def test_waiter_on_a_paused_tube_is_served_when_it_resumes(node):
    p, w = node.client(), node.client()
    p.cmd("pause-tube", "default", 5)
    assert w.cmd("reserve") is None
    j = p.put()
    assert w.woken == []
    node.advance(4)
    assert w.woken == []
    node.advance(1)
    assert [reply_id(r) for r in w.woken] == [j]


def test_pause_skips_only_that_tube(node):
    c = node.client()
    c.cmd("watch", "p")
    c.cmd("use", "p")
    urgent = c.put(pri=0)
    c.cmd("use", "default")
    normal = c.put(pri=100)
    c.cmd("pause-tube", "p", 30)
    assert c.reserve_id() == normal
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    node.advance(30)
    assert c.reserve_id() == urgent


def test_pause_zero_does_not_block(node):
    c = node.client()
    j = c.put()
    assert c.cmd("pause-tube", "default", 0) == P.PAUSED
    node.advance(EPS)
    assert c.reserve_id() == j
    assert parse_yaml(c.cmd("stats-tube", "default"))["pause"] == "0"


def test_pause_again_moves_the_end(node):
    c = node.client()
    j = c.put()
    c.cmd("pause-tube", "default", 10)
    node.advance(5)
    c.cmd("pause-tube", "default", 10)
    node.advance(6)
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT
    node.advance(4)
    assert c.reserve_id() == j
    assert parse_yaml(c.cmd("stats-tube", "default"))["cmd-pause-tube"] == "2"


def test_pause_unknown_tube(node):
    assert node.client().cmd("pause-tube", "nope", 1) == P.NOT_FOUND


def test_paused_tube_that_disappears_comes_back_unpaused(node):
    c = node.client()
    c.cmd("use", "gone")
    c.cmd("pause-tube", "gone", 100)
    c.cmd("use", "default")
    assert c.cmd("stats-tube", "gone") == P.NOT_FOUND
    c.cmd("use", "gone")
    assert parse_yaml(c.cmd("stats-tube", "gone"))["pause"] == "0"
    node.advance(200)  # the old pause's timer must not touch anything
    assert parse_yaml(c.cmd("stats-tube", "gone"))["cmd-pause-tube"] == "0"
