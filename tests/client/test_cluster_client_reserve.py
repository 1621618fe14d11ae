"""ClusterClient.reserve: which nodes it waits on, what waiting costs, how soon jobs come.

The nodes' own counters (``cmd-reserve-with-timeout``, ``current-waiting``)
show every reserve the client sent, so most of these tests count commands
instead of timing them; the time bounds they do check are loose upper
bounds (bench/bench_pickup.py measures the milliseconds).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from bsclient import Client, ClusterClient, TimedOutError
from bsclient.consume import SWEEP_SECONDS
from test_cluster_client import running_nodes, tube_owned_by, wait_until

pytestmark = pytest.mark.integration
NAMES = ("node1", "node2", "node3", "node4")
_tubes = itertools.count()


@pytest.fixture(scope="module")
def nodes4():
    with running_nodes(4) as (_, nodes):
        yield nodes


@pytest.fixture
def prefix() -> str:
    return f"r{next(_tubes)}-"


def put_on(nodes: dict, name: str, tube: str, count: int, body: bytes = b"x") -> None:
    with Client(nodes[name], use=tube) as c:
        for _ in range(count):
            c.put(body)


def node_stats(nodes: dict, key: str) -> dict[str, int]:
    out = {}
    for name in NAMES:
        with Client(nodes[name]) as c:
            out[name] = c.stats()[key]
    return out


def reserves(nodes: dict) -> dict[str, int]:
    return node_stats(nodes, "cmd-reserve-with-timeout")


def in_thread(fn):
    """Run fn in a thread; returns (thread, results list, errors list)."""
    results, errors = [], []

    def run():
        try:
            results.append(fn())
        except BaseException as e:  # reported by the test
            errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, results, errors


def test_an_idle_consumer_waits_on_the_owner_only(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tube = tube_owned_by(probe, "node3", prefix)
    with ClusterClient(nodes4, watch=[tube]) as cc:
        t, got, errors = in_thread(lambda: cc.reserve(timeout=3))
        wait_until(lambda: node_stats(nodes4, "current-waiting")["node3"] == 1,
                   what="a reserve waiting on node3")
        waiting = node_stats(nodes4, "current-waiting")
        assert waiting == {"node1": 0, "node2": 0, "node3": 1, "node4": 0}
        put_on(nodes4, "node3", tube, 1, b"here")
        t.join(10)
        assert not errors and [j.body for j in got] == [b"here"]
        cc.delete(got[0])


def test_waiting_costs_a_hot_node_one_command_and_a_cold_one_a_few_per_second(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tube = tube_owned_by(probe, "node1", prefix)
    with ClusterClient(nodes4, watch=[tube]) as cc:
        before = reserves(nodes4)
        started = time.monotonic()
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=2)
        seconds = time.monotonic() - started
        spent = {n: c - before[n] for n, c in reserves(nodes4).items()}
    assert 2.0 <= seconds < 3.5
    assert spent["node1"] == 1  # one blocking reserve for the whole wait
    for name in ("node2", "node3", "node4"):  # polled every SWEEP_SECONDS
        assert 1 <= spent[name] <= seconds / SWEEP_SECONDS + 2


def test_a_job_on_a_hot_node_wakes_a_consumer_waiting_on_four(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tubes = [tube_owned_by(probe, n, prefix) for n in NAMES]
    with ClusterClient(nodes4, watch=tubes) as cc:
        for name, tube in zip(NAMES, tubes, strict=True):
            t, got, errors = in_thread(lambda: cc.reserve(timeout=10))
            wait_until(lambda n=name: node_stats(nodes4, "current-waiting")[n] >= 1,
                       what=f"a reserve waiting on {name}")
            started = time.monotonic()
            put_on(nodes4, name, tube, 1, name.encode())
            t.join(10)
            took = time.monotonic() - started
            assert not errors and [j.body for j in got] == [name.encode()]
            assert took < 1.0  # ms in practice (bench/bench_pickup.py); not a slice
            cc.delete(got[0])


def test_a_job_on_a_non_owner_is_picked_up_within_a_sweep(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tube = tube_owned_by(probe, "node1", prefix)
    with ClusterClient(nodes4, watch=[tube]) as cc:
        t, got, errors = in_thread(lambda: cc.reserve(timeout=10))
        wait_until(lambda: node_stats(nodes4, "current-waiting")["node1"] == 1,
                   what="a reserve waiting on node1")
        started = time.monotonic()
        put_on(nodes4, "node4", tube, 1, b"stray")
        t.join(10)
        took = time.monotonic() - started
        assert not errors and [j.body for j in got] == [b"stray"]
        assert took < SWEEP_SECONDS + 1.0
        cc.delete(got[0])


def test_a_backlog_on_a_non_owner_drains_at_one_round_trip_per_job(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tube = tube_owned_by(probe, "node1", prefix)
    jobs = 60
    put_on(nodes4, "node3", tube, jobs)
    with ClusterClient(nodes4, watch=[tube]) as cc:
        before = reserves(nodes4)
        got = []
        for _ in range(jobs):
            job = cc.reserve(timeout=5)
            got.append(job.node)
            cc.delete(job)
        spent = {n: c - before[n] for n, c in reserves(nodes4).items()}
    assert got == ["node3"] * jobs
    assert jobs <= spent["node3"] <= jobs + 2  # asked again every round while it gives jobs
    assert spent["node1"] <= 2  # the owner: a blocking reserve, kept across calls


def test_zero_timeout_asks_every_node_once(nodes4, prefix):
    probe = ClusterClient(nodes4)
    tube = tube_owned_by(probe, "node2", prefix)
    with ClusterClient(nodes4, watch=[tube]) as cc:
        before = reserves(nodes4)
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=0)
        assert {n: c - before[n] for n, c in reserves(nodes4).items()} == dict.fromkeys(NAMES, 1)
        for name in NAMES:  # a ready job anywhere is found by one poll
            put_on(nodes4, name, tube, 1, name.encode())
            job = cc.reserve(timeout=0)
            assert job.body == name.encode()
            cc.delete(job)


def test_ignore_ends_the_waits_for_the_old_watch_list(nodes4, prefix):
    probe = ClusterClient(nodes4)
    old = tube_owned_by(probe, "node1", prefix + "old")
    new = tube_owned_by(probe, "node2", prefix + "new")
    with ClusterClient(nodes4, watch=[old]) as cc:
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=1)  # leaves a blocking reserve on node1 for [old]
        cc.watch(new)
        cc.ignore(old)
        put_on(nodes4, "node1", old, 1, b"ignored")
        put_on(nodes4, "node2", new, 1, b"wanted")
        job = cc.reserve(timeout=5)
        assert job.body == b"wanted"
        cc.delete(job)
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=1)
    with Client(nodes4["node1"], watch=[old]) as c:
        c.delete(c.reserve(timeout=0))  # still there, never taken
