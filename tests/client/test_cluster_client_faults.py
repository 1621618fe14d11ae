"""ClusterClient with a hung node (SIGSTOP) and a draining node (SIGUSR1), on real nodes.

A SIGSTOPped node keeps its socket: connects succeed (the kernel accepts),
nothing is ever answered, nothing is reset.  Every test here SIGCONTs it in
teardown before the node is killed.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager

import pytest
from bsclient import Client, ClusterClient, NoNodeAvailableError, TimedOutError
from test_cluster_client import running_nodes, tube_owned_by, wait_until

pytestmark = pytest.mark.integration
OP_TIMEOUT = 1.0


@contextmanager
def stopped(server):
    server.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.signal(signal.SIGCONT)


@pytest.fixture
def cluster3():
    with running_nodes(3) as (servers, nodes):
        try:
            yield servers, nodes
        finally:
            for s in servers:  # never leave a stopped process behind
                if s.proc.poll() is None:
                    s.signal(signal.SIGCONT)


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_a_hung_node_does_not_slow_tubes_owned_by_others(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        t1, t3 = tube_owned_by(cc, "node1"), tube_owned_by(cc, "node3")
        for t in (t1, t3):
            cc.watch(t)
        cc.ignore("default")
        with stopped(servers[1]):
            slowest = 0.0
            for i in range(200):
                handle, took = timed(lambda i=i: cc.put(b"%d" % i, tube=(t1, t3)[i % 2]))
                assert handle.split("/")[0] in ("node1", "node3")
                slowest = max(slowest, took)
                job, took2 = timed(lambda: cc.reserve(timeout=2))
                cc.delete(job)
                slowest = max(slowest, took2)
            # no call waited for the hung node (each is a round trip or two)
            assert slowest < 0.5
            assert cc.stats()["nodes-unavailable"] == ["node2"]


def test_a_put_whose_owner_hangs_fails_over_within_the_op_timeout(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        tube = tube_owned_by(cc, "node2")
        with stopped(servers[1]):
            handle, took = timed(lambda: cc.put(b"first", tube=tube))
            # `use` was not answered: the put itself was never sent, so it moved on
            assert handle.split("/")[0] == cc.ring.preference(tube)[1]
            assert took < OP_TIMEOUT + 1.0
            assert "node2" in cc.dead_nodes()
            handle, took = timed(lambda: cc.put(b"second", tube=tube))
            assert handle.split("/")[0] != "node2" and took < 0.5  # no second wait


def test_a_put_sent_to_a_node_that_then_hangs_says_it_was_sent(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        tube = tube_owned_by(cc, "node2")
        cc.put(b"warm", tube=tube)  # the connection now uses the tube
        with stopped(servers[1]):
            started = time.monotonic()
            with pytest.raises(NoNodeAvailableError) as err:
                cc.put(b"maybe", tube=tube)
            assert time.monotonic() - started < OP_TIMEOUT + 1.0
            assert err.value.sent is True and err.value.node == "node2"


def test_reserve_on_a_hung_owner_keeps_its_timeout(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        tube = tube_owned_by(cc, "node2")
        cc.watch(tube)
        with stopped(servers[1]):
            for timeout in (0, 1, 2):
                started = time.monotonic()
                with pytest.raises(TimedOutError):
                    cc.reserve(timeout=timeout)
                assert time.monotonic() - started < timeout + 1.0
        # back: its jobs are reserved again
        with Client(nodes["node2"], use=tube) as c:
            c.put(b"after")
        job = cc.reserve(timeout=OP_TIMEOUT + 12)  # after the dead timeout at worst
        assert job.body == b"after"
        cc.delete(job)


def test_a_blocked_reserve_returns_a_job_from_a_healthy_node_while_another_hangs(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        t1, t2 = tube_owned_by(cc, "node1"), tube_owned_by(cc, "node2")
        cc.watch(t1)
        cc.watch(t2)
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=0)  # every node asked: connections are up
        with stopped(servers[1]):
            with Client(nodes["node1"], use=t1) as c:
                c.put(b"healthy")
            job, took = timed(lambda: cc.reserve(timeout=5))
            assert job.body == b"healthy" and took < 0.5
            cc.delete(job)


def test_a_draining_node_sends_puts_to_the_next_node_and_still_gets_emptied(cluster3):
    servers, nodes = cluster3
    with ClusterClient(nodes) as cc:
        tube = tube_owned_by(cc, "node1")
        cc.watch(tube)
        before = [cc.put(b"before-%d" % i, tube=tube) for i in range(3)]
        assert {h.split("/")[0] for h in before} == {"node1"}
        servers[0].signal(signal.SIGUSR1)
        with Client(nodes["node1"]) as c:
            wait_until(lambda: c.stats()["draining"], what="node1 draining")
        after = [cc.put(b"after-%d" % i, tube=tube) for i in range(3)]
        assert {h.split("/")[0] for h in after} == {cc.ring.preference(tube)[1]}
        got = set()
        for _ in range(6):
            job = cc.reserve(timeout=5)
            got.add(job.body)
            cc.delete(job)
        assert got == {b"before-%d" % i for i in range(3)} | {b"after-%d" % i for i in range(3)}


def test_fan_outs_do_not_answer_for_a_node_that_does_not_answer(cluster3):
    """Jobs only on the hung node: a peek or kick that found nothing on the others raises
    NoNodeAvailableError naming it (NOT_FOUND or 0 would be a guess); pause-tube raises
    after pausing the others; stats and stats-tube name it."""
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        t2, t1 = tube_owned_by(cc, "node2"), tube_owned_by(cc, "node1")
        cc.use(t2)
        cc.put(b"ready")
        cc.put(b"delayed", delay=60)
        cc.watch(t2)
        cc.bury(cc.reserve(timeout=1))
        cc.use(t1)
        cc.put(b"elsewhere")
        with stopped(servers[1]):
            cc.use(t2)
            for call in (cc.peek_ready, cc.peek_delayed, cc.peek_buried, lambda: cc.kick(5),
                         lambda: cc.pause_tube(t2, 1)):
                with pytest.raises(NoNodeAvailableError) as e:
                    call()
                assert e.value.node == "node2"
            # (the peeks' `use` made the tube on the others: their zeros, and who is missing)
            assert cc.stats_tube(t2)["nodes-unavailable"] == ["node2"]
            cc.use(t1)  # what the answering nodes hold is still answered
            assert cc.peek_ready().body == b"elsewhere"
            tube_stats = cc.stats_tube(t1)
            assert tube_stats["current-jobs-ready"] == 1
            assert tube_stats["nodes-unavailable"] == ["node2"]
            with pytest.raises(NoNodeAvailableError):
                cc.pause_tube(t1, 1)  # node1 paused; node2 might have the tube too
            assert Client(nodes["node1"]).stats_tube(t1)["pause"] == 1
        assert cc.stats()["nodes-unavailable"] == ["node2"]  # (still marked dead)


def test_a_fan_out_asks_hung_nodes_at_once_one_timeout_not_one_per_node(cluster3):
    """Two of three nodes hung: stats answers for the third within one op_timeout (the
    nodes are asked at once) and names both; with every node hung, the first fan-out
    also takes one op_timeout and marks them dead; the next asks only one of them."""
    from contextlib import ExitStack

    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc, ExitStack() as hung:
        cc.stats()  # connected to every node
        hung.enter_context(stopped(servers[0]))
        hung.enter_context(stopped(servers[2]))
        stats, took = timed(cc.stats)
        assert stats["nodes-unavailable"] == ["node1", "node3"]
        assert list(stats["nodes"]) == ["node2"]
        assert OP_TIMEOUT * 0.9 <= took < 1.6 * OP_TIMEOUT
        hung.enter_context(stopped(servers[1]))
        with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as fresh:  # none marked dead
            _, first = timed(lambda: pytest.raises(NoNodeAvailableError, fresh.stats))
            _, again = timed(lambda: pytest.raises(NoNodeAvailableError, fresh.list_tubes))
        assert OP_TIMEOUT * 0.9 <= first < 1.6 * OP_TIMEOUT
        assert again < 1.5 * OP_TIMEOUT
        assert fresh.dead_nodes() == ["node1", "node2", "node3"]


def test_fail_fast_fan_out_raises_for_the_first_node_after_counting_every_failure(cluster3):
    """fail_fast, node1 and node3 hung: stats raises naming node1 (member order) after one
    op_timeout, and node3's failure was counted too (both were asked at once)."""
    servers, nodes = cluster3
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT, policy="fail_fast") as cc:
        cc.stats()
        with stopped(servers[0]), stopped(servers[2]):
            error, took = timed(lambda: pytest.raises(NoNodeAvailableError, cc.stats))
        assert error.value.node == "node1"
        assert OP_TIMEOUT * 0.9 <= took < 1.6 * OP_TIMEOUT
        failures = [cc._pool.members[n].failures for n in ("node1", "node2", "node3")]
        assert failures[0] == failures[2] > 0 == failures[1]  # (hung: counted as such)
        assert cc.stats()["nodes-unavailable"] == []  # both back: reconnected


def _buried_on_every_node(nodes: dict, tube: str) -> None:
    for address in nodes.values():
        with Client(address, use=tube, watch=tube) as c:
            c.put(b"buried")
            c.put(b"ready")
            c.bury(c.reserve(timeout=0))


def test_a_kicks_follow_up_commands_go_to_the_nodes_at_once(cluster3, monkeypatch):
    """Two nodes hang between kick's look (stats-tube everywhere) and its kicks: the kick
    answers within one op_timeout with the third node's job (one after another: two)."""
    from bsclient import fanout

    servers, nodes = cluster3
    _buried_on_every_node(nodes, "kicked")
    real_spread = fanout.spread

    def spread_then_hang(bound, counts):  # (between the look and the kicks)
        servers[0].signal(signal.SIGSTOP)
        servers[2].signal(signal.SIGSTOP)
        return real_spread(bound, counts)

    monkeypatch.setattr(fanout, "spread", spread_then_hang)
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        cc.use("kicked")
        kicked, took = timed(lambda: cc.kick(10))
    assert kicked == 1
    assert OP_TIMEOUT * 0.9 <= took < 1.6 * OP_TIMEOUT
    assert cc.dead_nodes() == ["node1", "node3"]


def test_a_peeks_follow_up_commands_go_to_the_nodes_at_once(cluster3, monkeypatch):
    """Two nodes hang right after answering peek-ready: their stats-job (to rank the
    candidates) is asked of all at once, so the peek answers within one op_timeout."""
    from bsclient import fanout

    servers, nodes = cluster3
    _buried_on_every_node(nodes, "peeked")
    real_with_used = fanout.with_used

    def with_used_then_hang(tube, fn):
        run = real_with_used(tube, fn)

        def peek_then_hang(client, *args):
            job = run(client, *args)
            if client.name in ("node1", "node3"):
                servers[int(client.name[4:]) - 1].signal(signal.SIGSTOP)
            return job
        return peek_then_hang

    monkeypatch.setattr(fanout, "with_used", with_used_then_hang)
    with ClusterClient(nodes, op_timeout=OP_TIMEOUT) as cc:
        cc.use("peeked")
        job, took = timed(cc.peek_ready)
    assert job.node == "node2" and job.body == b"ready"
    assert OP_TIMEOUT * 0.9 <= took < 1.6 * OP_TIMEOUT
