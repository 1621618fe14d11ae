"""The node state machine, the retry policy, and status/stats formatting (no processes)."""

from __future__ import annotations

import itertools

import pytest
from bscluster.probe import NodeReport, parse_yaml
from bscluster.report import cluster_stats, human_duration, render_stats, render_status, status_rows
from bscluster.states import (
    CRASH_BACKOFF_MAX,
    START_RETRIES,
    TRANSITIONS,
    BadTransition,
    Event,
    State,
    crash_delay,
    next_state,
    start_retry_delay,
)


def test_happy_path_and_crash_path():
    s = State.STOPPED
    for event, want in [(Event.SPAWN, State.STARTING), (Event.READY, State.RUNNING),
                        (Event.EXIT, State.BACKOFF), (Event.SPAWN, State.STARTING),
                        (Event.EXIT, State.BACKOFF), (Event.GIVE_UP, State.FATAL),
                        (Event.SPAWN, State.STARTING), (Event.STOP, State.STOPPING),
                        (Event.EXIT, State.STOPPED)]:
        s = next_state(s, event)
        assert s is want


def test_every_pair_is_a_row_or_a_bug():
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) in State
        else:
            with pytest.raises(BadTransition):
                next_state(state, event)


def test_running_never_goes_fatal_directly_and_stopping_never_restarts():
    assert (State.RUNNING, Event.GIVE_UP) not in TRANSITIONS
    assert all(TRANSITIONS[(State.STOPPING, e)] in (State.STOPPED, State.STOPPING)
               for e in Event if (State.STOPPING, e) in TRANSITIONS)


def test_start_retries_grow_then_give_up():
    delays = [start_retry_delay(n) for n in range(1, START_RETRIES + 1)]
    assert all(d is not None and d > 0 for d in delays)
    assert delays == sorted(delays) and delays[0] < delays[-1]
    assert start_retry_delay(START_RETRIES + 1) is None


def test_first_crash_restarts_at_once_then_backs_off_to_a_cap():
    assert crash_delay(0) == 0
    delays = [crash_delay(n) for n in range(1, 20)]
    assert delays == sorted(delays) and delays[0] > 0
    assert max(delays) == CRASH_BACKOFF_MAX


# --- parsing what beanstalkd says -------------------------------------------------------
def test_parse_yaml_dict_and_list():
    body = b'---\ncurrent-jobs-ready: 3\nversion: "1.12"\nrusage-utime: 0.010\nname: a-b\n'
    assert parse_yaml(body) == {"current-jobs-ready": 3, "version": "1.12",
                                "rusage-utime": "0.010", "name": "a-b"}
    assert parse_yaml(b"---\n- default\n- t(1)\n") == ["default", "t(1)"]


# --- status and stats from made-up reports -------------------------------------------------
def _report(ready, reserved, tubes):
    stats = {"current-jobs-ready": ready, "current-jobs-reserved": reserved,
             "current-jobs-delayed": 0, "current-jobs-buried": 1, "total-jobs": ready + 5,
             "current-connections": 2, "uptime": 3700, "pid": 42}
    return NodeReport(up=True, stats=stats, tubes=tubes)


def _tube(ready):
    return {"current-jobs-ready": ready, "current-jobs-reserved": 0, "current-jobs-delayed": 0,
            "current-jobs-buried": 0, "total-jobs": ready, "current-watching": 1}


REPORTS = {
    "node1": _report(3, 1, {"default": _tube(1), "emails": _tube(2)}),
    "node2": _report(4, 0, {"default": _tube(4)}),
    "node3": NodeReport(up=False, error="connection refused (nothing listening)"),
}
ADDRESSES = {"node1": "127.0.0.1:1", "node2": "127.0.0.1:2", "node3": "127.0.0.1:3"}


def test_cluster_stats_sums_over_nodes_that_answer():
    s = cluster_stats(ADDRESSES, REPORTS)
    t = s["totals"]
    assert (t["current-jobs-ready"], t["current-jobs-reserved"], t["current-jobs-buried"]) == (7, 1, 2)
    assert (t["nodes-up"], t["nodes"], t["current-tubes"]) == (2, 3, 2)
    assert s["tubes"]["default"]["current-jobs-ready"] == 5
    assert set(s["tubes"]["default"]["nodes"]) == {"node1", "node2"}
    assert s["nodes"]["node3"]["up"] is False
    text = render_stats(s)
    assert "2/3 nodes up" in text and "node3 (127.0.0.1:3): connection refused" in text
    assert any(line.split()[:2] == ["default", "5"] for line in text.splitlines())


def test_status_rows_merge_supervisor_and_node():
    nodes = {"node1": {"address": "127.0.0.1:1", "state": "RUNNING", "pid": 42, "restarts": 1},
             "node2": {"address": "127.0.0.1:2"},
             "node3": {"address": "127.0.0.1:3", "state": "FATAL", "pid": None,
                       "reason": "127.0.0.1:3 is already in use"}}
    rows = status_rows(nodes, REPORTS)
    assert [r["state"] for r in rows] == ["RUNNING", "UP", "FATAL"]
    assert rows[0]["ready"] == 3 and rows[0]["uptime"] == 3700 and rows[2]["ready"] is None
    text = render_status(rows)
    assert "node3: 127.0.0.1:3 is already in use" in text
    assert "1h01m" in text


@pytest.mark.parametrize("secs, text", [(None, "-"), (5, "5s"), (65, "1m05s"),
                                        (3700, "1h01m"), (90000, "1d01h")])
def test_human_duration(secs, text):
    assert human_duration(secs) == text


def test_entering_a_state_resets_what_it_owns(tmp_path):
    """NodeProc.fire applies the entry effects (the supervisor sets none by hand)."""
    from bscluster.config import NodeSpec
    from bscluster.nodeproc import NodeProc

    spec = NodeSpec("node1", "127.0.0.1", 1, 1, tmp_path, False, 50, 65535, 1 << 20)
    node = NodeProc(spec, ("true",), None)
    node.fire(Event.SPAWN)
    node.reason, node.failed_starts, node.wake_at = "exited with status 3", 2, 5.0
    node.fire(Event.EXIT)  # BACKOFF keeps the reason, the count and the retry time
    assert (node.state, node.reason, node.failed_starts, node.wake_at) == \
        (State.BACKOFF, "exited with status 3", 2, 5.0)
    node.fire(Event.SPAWN)  # a fresh attempt: no reason yet
    assert node.state is State.STARTING and node.reason is None
    node.restart_requested, node.wake_at = True, 9.0
    node.fire(Event.READY)
    assert (node.failed_starts, node.wake_at, node.reason, node.restart_requested) == \
        (0, None, None, False)
    node.wake_at = 3.0
    node.fire(Event.EXIT)
    node.fire(Event.GIVE_UP)  # FATAL: nothing is due
    assert node.state is State.FATAL and node.wake_at is None
