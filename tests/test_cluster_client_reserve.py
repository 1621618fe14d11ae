"""ClusterClient.reserve over uneven backlogs: which nodes are asked, and how often.

The nodes' own ``cmd-reserve-with-timeout`` counters show every reserve the
client sent, so these tests count round trips instead of timing them.  The
client runs on a clock that only the test moves, so that "found empty less
than EMPTY_SKIP_SECONDS ago" holds however slow the machine is; the time
bound itself is tested by moving that clock.
"""

from __future__ import annotations

import itertools

import pytest
from bsclient import Client, ClusterClient, TimedOutError
from bsclient.consume import EMPTY_SKIP_ROUNDS, EMPTY_SKIP_SECONDS
from test_cluster_client import FakeClock, running_nodes

pytestmark = pytest.mark.integration
NAMES = ("node1", "node2", "node3", "node4")
_tubes = itertools.count()


@pytest.fixture(scope="module")
def nodes4():
    with running_nodes(4) as (_, nodes):
        yield nodes


@pytest.fixture
def tube() -> str:
    return f"backlog{next(_tubes)}"


@pytest.fixture
def clock():
    return FakeClock()


def put_on(nodes: dict, name: str, tube: str, count: int, body: bytes = b"x") -> None:
    with Client(nodes[name], use=tube) as c:
        for _ in range(count):
            c.put(body)


def reserve_counts(nodes: dict) -> dict[str, int]:
    out = {}
    for name in NAMES:
        with Client(nodes[name]) as c:
            out[name] = c.stats()["cmd-reserve-with-timeout"]
    return out


def asked(before: dict, after: dict) -> dict[str, int]:
    return {n: after[n] - before[n] for n in NAMES}


def take(cc: ClusterClient, count: int) -> list[str]:
    """Reserve and delete ``count`` jobs; the nodes they came from."""
    got = []
    for _ in range(count):
        job = cc.reserve(timeout=0)
        got.append(job.node)
        cc.delete(job)
    return got


def test_the_node_with_the_backlog_is_asked_alone(nodes4, tube, clock):
    put_on(nodes4, "node3", tube, 3 * EMPTY_SKIP_ROUNDS)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        before = reserve_counts(nodes4)
        assert take(cc, 2) == ["node3", "node3"]  # these rounds find the others empty
        warm = reserve_counts(nodes4)
        assert asked(before, warm) == {"node1": 1, "node2": 1, "node3": 2, "node4": 1}
        steady = EMPTY_SKIP_ROUNDS - 2
        assert take(cc, steady) == ["node3"] * steady
        after = reserve_counts(nodes4)
        # one round trip per job, and only to the node that has them
        assert asked(warm, after) == {"node1": 0, "node2": 0, "node3": steady, "node4": 0}
        # then the others are asked again (a job may have come), once
        assert take(cc, 2) == ["node3", "node3"]
        again = asked(after, reserve_counts(nodes4))
        assert again["node3"] == 2 and again["node1"] == again["node2"] == 1


def test_a_whole_drain_costs_little_more_than_one_round_trip_per_job(nodes4, tube, clock):
    jobs = 4 * EMPTY_SKIP_ROUNDS
    put_on(nodes4, "node1", tube, jobs)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        before = reserve_counts(nodes4)
        assert take(cc, jobs) == ["node1"] * jobs
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=0)
        spent = asked(before, reserve_counts(nodes4))
    assert spent["node1"] == jobs + 1
    # the old poll round asked every node for every job: 3 * jobs here
    for name in ("node2", "node3", "node4"):
        assert 1 <= spent[name] <= jobs // EMPTY_SKIP_ROUNDS + 2


def test_a_node_that_gets_jobs_meanwhile_is_served_within_the_skip_rounds(nodes4, tube, clock):
    put_on(nodes4, "node1", tube, 3 * EMPTY_SKIP_ROUNDS)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        take(cc, 3)  # node2..node4 are now known empty
        put_on(nodes4, "node2", tube, 5)
        got = take(cc, EMPTY_SKIP_ROUNDS + 1)
        assert "node2" in got
        got = got[got.index("node2"):] + take(cc, 6)
        # once found, the two nodes with jobs take turns
        assert got[:6] == ["node2", "node1"] * 3


def test_a_node_found_empty_is_asked_again_after_the_skip_seconds(nodes4, tube, clock):
    put_on(nodes4, "node1", tube, 10)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        take(cc, 3)
        put_on(nodes4, "node2", tube, 1)
        assert take(cc, 1) == ["node1"]  # node2 is still skipped
        clock.now += EMPTY_SKIP_SECONDS
        assert take(cc, 1) == ["node2"]  # the round starts after node1


def test_two_busy_nodes_alternate_and_the_empty_ones_are_not_asked(nodes4, tube, clock):
    put_on(nodes4, "node1", tube, 10)
    put_on(nodes4, "node3", tube, 10)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        before = reserve_counts(nodes4)
        got = take(cc, 20)
        spent = asked(before, reserve_counts(nodes4))
    assert got == ["node1", "node3"] * 10
    assert spent["node1"] == spent["node3"] == 10
    assert spent["node2"] == spent["node4"] == 1


def test_zero_timeout_still_asks_a_node_known_empty(nodes4, tube, clock):
    put_on(nodes4, "node1", tube, 3)
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        take(cc, 2)
        put_on(nodes4, "node4", tube, 1, b"late")
        # node1 still has a job, so it comes first; then node4's, though skipped
        assert take(cc, 2) == ["node1", "node4"]
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=0)


def test_a_new_watch_list_forgets_which_nodes_were_empty(nodes4, tube, clock):
    other = tube + "b"
    put_on(nodes4, "node1", tube, 10)
    put_on(nodes4, "node2", other, 1, b"other")
    with ClusterClient(nodes4, watch=tube, clock=clock) as cc:
        take(cc, 3)  # node2 was empty for [tube]
        cc.watch(other)
        job = cc.reserve(timeout=0)  # the round starts at node2, no longer skipped
        assert (job.node, job.body) == ("node2", b"other")
        cc.delete(job)
