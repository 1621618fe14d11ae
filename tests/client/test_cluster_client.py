"""ClusterClient on real node processes: routing, reserve semantics, fan-out, failover.

Nodes are bsnode processes.  ``BSCLIENT_TEST_NODE=beanstalkd`` runs the same
tests on beanstalkd processes instead (a check that the expectations are
beanstalkd's, not bsnode's).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager

import pytest
from bsclient import (
    FAIL_FAST,
    Client,
    ClusterClient,
    DeadlineSoonError,
    Job,
    NoNodeAvailableError,
    NotFoundError,
    NotIgnoredError,
    TimedOutError,
)
from bsclient.fanout import spread
from servers import BEANSTALKD, START_DEADLINE, Server, start, start_bsnode, wait_connectable

pytestmark = pytest.mark.integration
NODE_KIND = os.environ.get("BSCLIENT_TEST_NODE", "bsnode")


# --- helpers shared with test_cluster_client_load.py ---------------------------
def start_node(*flags: str) -> Server:
    return start(NODE_KIND, *flags)


def restart_node(port: int, *flags: str) -> Server:
    """Start a node on a given port (after a kill), e.g. with the same -b dir."""
    if NODE_KIND == "bsnode":
        return start_bsnode("-p", str(port), *flags)
    proc = subprocess.Popen([BEANSTALKD, "-l", "127.0.0.1", "-p", str(port), *flags],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_connectable(port, time.monotonic() + START_DEADLINE, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server("beanstalkd", proc, port, None)


@contextmanager
def running_nodes(n: int, flags=lambda i: ()):
    """Start n nodes; yields (servers, {"node1": "127.0.0.1:port", ...})."""
    with ExitStack() as stack:
        servers = [stack.enter_context(start_node(*flags(i))) for i in range(1, n + 1)]
        yield servers, {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(servers, 1)}


def tube_owned_by(cc: ClusterClient, node: str, prefix: str = "t") -> str:
    for i in range(10_000):
        if cc.node_for(f"{prefix}{i}") == node:
            return f"{prefix}{i}"
    raise AssertionError(f"no tube maps to {node}")


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# --- fixtures -------------------------------------------------------------------
@pytest.fixture
def cluster3():
    with running_nodes(3) as (servers, nodes):
        yield servers, nodes


@pytest.fixture
def cc(cluster3):
    with ClusterClient(cluster3[1]) as c:
        yield c


def direct(nodes: dict, name: str, **kw) -> Client:
    return Client(nodes[name], name=name, **kw)


# --- routing -----------------------------------------------------------------------
def test_put_goes_to_the_owner_and_returns_a_handle(cc, cluster3):
    nodes = cluster3[1]
    for name in ("node1", "node2", "node3"):
        tube = tube_owned_by(cc, name)
        cc.use(tube)
        handle = cc.put(b"x")
        owner, _, job_id = handle.partition("/")
        assert owner == name
        with direct(nodes, name) as c:
            assert c.stats_job(int(job_id))["tube"] == tube


def test_job_handles_route_every_by_id_command(cc):
    tube = tube_owned_by(cc, "node2")
    cc.use(tube)
    cc.watch(tube)
    handle = cc.put(b"payload", priority=9)
    assert cc.peek(handle) == Job(int(handle.split("/")[1]), b"payload", "node2")
    assert cc.stats_job(handle)["pri"] == 9
    job = cc.reserve(timeout=0)
    assert job.handle == handle
    cc.touch(job)
    cc.bury(job)
    assert cc.stats_job(handle)["state"] == "buried"
    cc.kick_job(handle)
    assert cc.reserve_job(handle).id == job.id
    cc.release(job, delay=100)
    assert cc.stats_job(job)["state"] == "delayed"
    cc.delete(handle)
    with pytest.raises(NotFoundError):
        cc.peek(handle)


def test_bare_ids_and_bad_handles_are_refused(cc):
    with pytest.raises(TypeError):
        cc.delete(17)
    with pytest.raises(ValueError):
        cc.delete("node2-17")
    with pytest.raises(ValueError):
        cc.delete("node9/17")


def test_use_watch_ignore_are_local(cc):
    assert cc.use("a") == "a" and cc.list_tube_used() == "a"
    assert cc.watch("a") == 2 and cc.watch("b") == 3 and cc.ignore("default") == 2
    assert cc.list_tubes_watched() == ["a", "b"]
    cc.ignore("a")
    with pytest.raises(NotIgnoredError):
        cc.ignore("b")


# --- reserve -----------------------------------------------------------------------
def test_reserve_finds_jobs_on_every_node_without_blocking(cc):
    tubes = [tube_owned_by(cc, n) for n in ("node1", "node2", "node3")]
    for t in tubes:
        cc.watch(t)
    cc.use(tubes[2])
    cc.put(b"only on node3")
    started = time.monotonic()
    job = cc.reserve(timeout=10)
    assert (job.node, job.body) == ("node3", b"only on node3")
    assert time.monotonic() - started < 0.5


def test_blocked_consumer_wakes_for_a_job_on_another_node(cc, cluster3):
    nodes = cluster3[1]
    tubes = [tube_owned_by(cc, n) for n in ("node1", "node2", "node3")]
    for t in tubes:
        cc.watch(t)
    got = []
    consumer = threading.Thread(target=lambda: got.append(cc.reserve(timeout=20)))
    consumer.start()
    probes = [Client(a) for a in nodes.values()]
    try:  # wait until it blocks on some node
        wait_until(lambda: any(p.stats()["current-waiting"] for p in probes), what="a waiter")
    finally:
        for p in probes:
            p.close()
    # put on each node in turn, so at least one is not the node it blocks on
    started = time.monotonic()
    with direct(nodes, "node2", use=tubes[1]) as producer:
        producer.put(b"wake up")
    consumer.join(10)
    assert [j.body for j in got] == [b"wake up"]
    # one blocking slice at most, plus a poll round
    assert time.monotonic() - started < 3.0


def test_no_node_is_starved(cc):
    t1, t2 = tube_owned_by(cc, "node1"), tube_owned_by(cc, "node2")
    for t in (t1, t2):
        cc.watch(t)
        cc.use(t)
        for i in range(10):
            cc.put(b"%d" % i)
    nodes = []
    for _ in range(10):
        job = cc.reserve(timeout=0)
        nodes.append(job.node)
        cc.delete(job)
    assert Counter(nodes) == {"node1": 5, "node2": 5}


def test_priority_is_exact_within_a_node(cc):
    tube = tube_owned_by(cc, "node1")
    cc.use(tube)
    cc.watch(tube)
    cc.ignore("default")
    for pri in (50, 10, 30, 20, 40):
        cc.put(b"%d" % pri, priority=pri)
    got = []
    for _ in range(5):
        job = cc.reserve(timeout=0)
        got.append(int(job.body))
        cc.delete(job)
    assert got == [10, 20, 30, 40, 50]


def test_reserve_timeout_is_honoured_and_nothing_stays_reserved(cc):
    started = time.monotonic()
    with pytest.raises(TimedOutError):
        cc.reserve(timeout=0)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    with pytest.raises(TimedOutError):
        cc.reserve(timeout=2)
    assert 1.5 < time.monotonic() - started < 3.5
    assert cc.stats()["current-jobs-reserved"] == 0


def test_jobs_reserved_ahead_are_handed_out_next_and_given_back_on_close(cc, cluster3):
    # reserve(timeout=0) asks every node at once: two jobs may come back
    # together; the ones the caller did not get yet are kept for this
    # thread's next reserve (docs/CLIENT.md, "Jobs reserved ahead")
    tubes = [tube_owned_by(cc, n) for n in ("node1", "node2", "node3")]
    for t in tubes:
        cc.watch(t)
        cc.put(b"j", tube=t)
    job = cc.reserve(timeout=0)
    assert cc.stats()["current-jobs-reserved"] == 3  # 1 handed out + 2 ahead
    probes = [direct(cluster3[1], n) for n in ("node1", "node2", "node3")]
    try:
        asked = sum(p.stats()["cmd-reserve-with-timeout"] for p in probes)
        rest = {cc.reserve(timeout=0).node, cc.reserve(timeout=0).node}
        # handed out from what was reserved ahead: no further reserve sent
        assert sum(p.stats()["cmd-reserve-with-timeout"] for p in probes) == asked
        assert rest | {job.node} == {"node1", "node2", "node3"}
        cc.close()  # every job the thread held goes back to ready
        assert cc.stats()["current-jobs-reserved"] == 0
        assert cc.stats()["current-jobs-ready"] == 3
    finally:
        for p in probes:
            p.close()


def test_return_buffered_gives_back_only_what_the_caller_does_not_have(cc):
    tubes = [tube_owned_by(cc, n) for n in ("node1", "node2", "node3")]
    for t in tubes:
        cc.watch(t)
        cc.put(b"j", priority=7, tube=t)
    job = cc.reserve(timeout=0)
    assert cc.return_buffered() == 2
    stats = cc.stats()
    assert stats["current-jobs-reserved"] == 1 and stats["current-jobs-ready"] == 2
    cc.delete(job)  # still ours
    others = [cc.reserve(timeout=0) for _ in range(2)]
    assert {j.node for j in others} | {job.node} == {"node1", "node2", "node3"}
    assert all(cc.stats_job(j)["pri"] == 7 for j in others)  # priority kept


def test_deadline_soon_only_when_no_node_has_a_job(cc):
    t1, t2 = tube_owned_by(cc, "node1"), tube_owned_by(cc, "node2")
    cc.watch(t1)
    cc.watch(t2)
    cc.use(t1)
    cc.put(b"short", ttr=1)
    short = cc.reserve(timeout=0)
    with pytest.raises(DeadlineSoonError):
        cc.reserve(timeout=2)
    cc.use(t2)
    cc.put(b"other")
    assert cc.reserve(timeout=2).body == b"other"  # a ready job beats DEADLINE_SOON
    cc.delete(short)


# --- fan-out -----------------------------------------------------------------------
def test_stats_sum_with_per_node_detail(cc):
    for n in ("node1", "node2", "node3"):
        cc.use(tube_owned_by(cc, n))
        cc.put(b"a")
        cc.put(b"b")
    stats = cc.stats()
    assert stats["current-jobs-ready"] == 6 and stats["cmd-put"] == 6
    assert sorted(stats["nodes"]) == ["node1", "node2", "node3"]
    assert all(s["current-jobs-ready"] == 2 for s in stats["nodes"].values())
    assert stats["nodes-unavailable"] == [] and stats["draining"] is False
    assert "pid" not in stats


def test_list_tubes_is_the_union(cc):
    tubes = [tube_owned_by(cc, n) for n in ("node1", "node2", "node3")]
    for t in tubes:
        cc.use(t)
        cc.put(b"x")
    assert cc.list_tubes() == sorted({"default", *tubes})


@pytest.fixture
def split_tube(cc, cluster3):
    """One tube with jobs on two nodes, as after a ring change."""
    nodes = cluster3[1]
    tube = tube_owned_by(cc, "node1")
    cc.use(tube)
    with direct(nodes, "node1", use=tube) as a, direct(nodes, "node2", use=tube) as b:
        yield tube, a, b


def test_stats_tube_sums_over_nodes(cc, split_tube):
    tube, a, b = split_tube
    a.put(b"1")
    b.put(b"2")
    b.put(b"3")
    stats = cc.stats_tube(tube)
    assert stats["name"] == tube and stats["current-jobs-ready"] == 3
    assert {n: s["current-jobs-ready"] for n, s in stats["nodes"].items()} == {
        "node1": 1, "node2": 2}
    with pytest.raises(NotFoundError):
        cc.stats_tube("never-used")


def test_peek_ready_delayed_buried_best_across_nodes(cc, split_tube):
    tube, a, b = split_tube
    a.put(b"a-low", priority=500)
    b.put(b"b-high", priority=5)
    assert cc.peek_ready().body == b"b-high"
    a.put(b"a-soon", delay=50)
    b.put(b"b-later", delay=500)
    job = cc.peek_delayed()
    assert (job.body, job.node) == (b"a-soon", "node1")
    with pytest.raises(NotFoundError):
        cc.peek_buried()
    b.watch(tube)
    b.bury(b.reserve(timeout=0))
    assert cc.peek_buried().node == "node2"


def test_kick_spreads_over_nodes_and_prefers_buried(cc, split_tube):
    tube, a, b = split_tube
    for c in (a, b):
        c.watch(tube)
        for _ in range(4):
            c.put(b"x")
        for _ in range(4):
            c.bury(c.reserve(timeout=0))
    a.put(b"delayed", delay=100)
    assert cc.kick(4) == 4
    assert a.stats_tube(tube)["current-jobs-buried"] == 2
    assert b.stats_tube(tube)["current-jobs-buried"] == 2
    assert a.stats_tube(tube)["current-jobs-delayed"] == 1  # buried first
    assert cc.kick(100) == 4
    assert cc.kick(100) == 1  # now the delayed one


def test_spread():
    assert spread(4, {"a": 10, "b": 10}) == {"a": 2, "b": 2}
    assert spread(5, {"a": 1, "b": 10, "c": 0}) == {"a": 1, "b": 4}
    assert spread(100, {"a": 3, "b": 4}) == {"a": 3, "b": 4}
    assert spread(0, {"a": 3}) == {}


def test_pause_tube_on_every_node_holding_it(cc, split_tube):
    tube, a, b = split_tube
    a.put(b"1")
    b.put(b"2")
    cc.pause_tube(tube, 100)
    assert a.stats_tube(tube)["pause"] == b.stats_tube(tube)["pause"] == 100
    cc.watch(tube)
    with pytest.raises(TimedOutError):
        cc.reserve(timeout=0)
    with pytest.raises(NotFoundError):
        cc.pause_tube("never-used", 1)


# --- dead nodes ----------------------------------------------------------------------
def test_failover_puts_to_next_node_and_retries_after_dead_timeout(cluster3):
    servers, nodes = cluster3
    clock = FakeClock()
    cc = ClusterClient(nodes, failure_threshold=2, dead_timeout=5, clock=clock)
    tube = tube_owned_by(cc, "node2")
    fallback = cc.ring.preference(tube)[1]
    cc.use(tube)
    cc.watch(tube)
    assert cc.put(b"before").startswith("node2/")
    servers[1].kill()
    first = cc.put(b"during-1")  # owner refused: next node in ring order
    assert first.startswith(fallback + "/") and cc.dead_nodes() == []
    assert cc.put(b"during-2").startswith(fallback + "/")
    assert cc.dead_nodes() == ["node2"]  # second failure: marked dead
    assert cc.put(b"during-3").startswith(fallback + "/")
    # consumers keep reaching the failover node
    got = {cc.reserve(timeout=0).body for _ in range(3)}
    assert got == {b"during-1", b"during-2", b"during-3"}
    with pytest.raises(NoNodeAvailableError) as info:
        cc.peek(f"node2/{1}")
    assert info.value.node == "node2" and "node2" in str(info.value)
    # the owner comes back; after the dead timeout it gets its tubes back
    with restart_node(servers[1].port) as again:
        assert again.port == servers[1].port
        assert cc.put(b"still-dead-window").startswith(fallback + "/")
        clock.now += 6
        assert cc.put(b"after").startswith("node2/")
        assert cc.dead_nodes() == []
        got = {cc.reserve(timeout=0).body for _ in range(2)}
        assert got == {b"still-dead-window", b"after"}  # both nodes reached
    cc.close()


def test_fail_fast_names_the_node(cluster3):
    servers, nodes = cluster3
    cc = ClusterClient(nodes, policy=FAIL_FAST)
    tube = tube_owned_by(cc, "node3")
    cc.use(tube)
    cc.put(b"ok")
    servers[2].kill()
    for _ in range(3):  # never marked dead, never failed over
        with pytest.raises(NoNodeAvailableError) as info:
            cc.put(b"no")
        assert info.value.node == "node3" and info.value.sent is False
    with pytest.raises(NoNodeAvailableError):
        cc.reserve(timeout=0)
    with pytest.raises(NoNodeAvailableError):
        cc.stats()
    cc.close()


def test_failover_fan_out_skips_a_dead_node(cluster3):
    servers, nodes = cluster3
    cc = ClusterClient(nodes, failure_threshold=1)
    cc.use(tube_owned_by(cc, "node1"))
    cc.put(b"x")
    servers[2].kill()
    stats = cc.stats()
    assert stats["nodes-unavailable"] == ["node3"] and stats["current-jobs-ready"] == 1
    cc.watch(cc.using)
    assert cc.reserve(timeout=1).body == b"x"
    cc.close()


def test_all_nodes_down_is_a_clear_error():
    with running_nodes(2) as (servers, nodes):
        cc = ClusterClient(nodes)
        for s in servers:
            s.kill()
        with pytest.raises(NoNodeAvailableError) as info:
            cc.put(b"x")
        assert info.value.node in nodes
        with pytest.raises(NoNodeAvailableError):
            cc.reserve(timeout=1)
        cc.close()


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import json, sys, time, gevent
from bsclient import ClusterClient
nodes = json.loads(sys.argv[1])
tube = sys.argv[2]
consumer, producer = ClusterClient(nodes, watch=tube), ClusterClient(nodes, use=tube)
started = time.monotonic()
waiter = gevent.spawn(consumer.reserve, 10)
while producer.stats()["current-waiting"] < 1:  # the consumer blocks in a slice
    gevent.sleep(0.01)
producer.put(b"from another greenlet")
job = waiter.get(timeout=10)
assert job.body == b"from another greenlet", job
assert time.monotonic() - started < 5
print("ok")
"""


def test_cluster_client_under_gevent(cluster3):
    import json
    import sys
    nodes = cluster3[1]
    with ClusterClient(nodes) as cc:
        tube = tube_owned_by(cc, "node3")
    out = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, json.dumps(nodes), tube],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_removed_node_is_drained_not_stranded(cc):
    tube = tube_owned_by(cc, "node1")
    cc.use(tube)
    cc.watch(tube)
    old = cc.put(b"left on node1")
    cc.remove_node("node1")
    assert "node1" not in cc.ring.nodes and "node1" in cc.nodes
    new = cc.put(b"after removal")
    assert old.startswith("node1/") and not new.startswith("node1/")
    got = {cc.reserve(timeout=0).body for _ in range(2)}
    assert got == {b"left on node1", b"after removal"}
    cc.remove_node("node1", drain=False)
    assert cc.nodes == ("node2", "node3")


def test_encoding_reaches_cluster_jobs(cluster3):
    with ClusterClient(cluster3[1], encoding="utf-8", use="enc", watch="enc") as cc:
        handle = cc.put("naïve")
        job = cc.reserve(timeout=0)
        assert job.body == "naïve" and job.handle == handle
