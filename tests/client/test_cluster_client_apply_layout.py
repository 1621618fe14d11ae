"""ClusterClient.apply_layout: a running client takes a changed config's node set.

The first tests need no server (connections are lazy); the last ones use real
bsnodes to show which connections and reserved jobs survive the change.
"""

from __future__ import annotations

import pytest
from bsclient import Client, ClusterClient, ConfigError, NodeAddress, TimedOutError
from bsclient.config import ClusterLayout
from bsclient.pool import FAILOVER, NodePool
from bsclient.ring import placement
from servers import start_bsnode

TUBES = [f"t{i}" for i in range(400)]


def layout(*nodes: NodeAddress, ring: str = "md5", spread=None) -> ClusterLayout:
    return ClusterLayout(tuple(nodes), ring, spread or {})


def addr(i: int) -> str:
    return f"127.0.0.1:{40000 + i}"  # never connected to in the unit tests


THREE = layout(*(NodeAddress(f"node{i}", addr(i)) for i in (1, 2, 3)))


def test_add_leave_remove_reweigh_respread_follow_placement():
    new = layout(NodeAddress("node1", addr(1), weight=3),
                 NodeAddress("node2", addr(2), leaving=True),
                 NodeAddress("node4", addr(4)),
                 ring="ketama", spread={"hot": 2})
    with ClusterClient.from_layout(THREE) as cc:
        cc.apply_layout(new)
        assert cc.nodes == ("node1", "node2", "node4")  # node2 leaving: still a member
        ring = placement(new.nodes, "ketama")
        assert cc.ring.weights == ring.weights == {"node1": 3, "node4": 1}
        assert cc.ring.ketama and cc.spread == {"hot": 2}
        assert all(cc.node_for(t) == ring.node_for(t) for t in TUBES)
        twin = cc.clone()  # what the client now is, seen from outside
        try:
            assert twin.nodes == cc.nodes and twin.ring.weights == ring.weights
        finally:
            twin.close()
        cc.apply_layout(THREE)  # and back
        assert cc.nodes == ("node1", "node2", "node3") and not cc.ring.ketama
        assert cc.spread == {}
        assert all(cc.node_for(t) == placement(THREE.nodes).node_for(t) for t in TUBES)


def test_vnodes_are_kept():
    with ClusterClient(THREE.nodes, vnodes=40) as cc:
        cc.apply_layout(layout(*THREE.nodes, NodeAddress("node4", addr(4))))
        assert cc.ring.vnodes == 40


@pytest.mark.parametrize("bad, error", [
    (layout(), ValueError),
    (layout(*(NodeAddress(n.name, n.address, leaving=True) for n in THREE.nodes)), ValueError),
    (layout(*THREE.nodes, spread={"hot": 0}), ConfigError),
    (layout(*THREE.nodes, ring="crc32"), ValueError),
])
def test_a_bad_layout_changes_nothing(bad, error):
    with ClusterClient.from_layout(THREE) as cc:
        ring = cc.ring
        with pytest.raises(error):
            cc.apply_layout(bad)
        assert cc.ring is ring and cc.nodes == ("node1", "node2", "node3")


def test_a_moved_node_is_a_new_member_that_old_failures_do_not_touch():
    """A command in flight on a moved node's old connection fails once the move
    closes it; that failure must not mark the node at its new address dead."""
    pool = NodePool(policy=FAILOVER, failure_threshold=2, dead_timeout=10.0,
                    connect_timeout=1.0, op_timeout=1.0, encoding=None, clock=lambda: 5.0)
    pool.add("node1", addr(1), weight=2)
    old = pool.members["node1"]
    pool.failed(old)
    pool.move("node1", addr(9))
    pool.failed(old, hung=True)  # the old connection's command, failing late
    new = pool.members["node1"]
    assert (new.address, new.weight, new.failures) == (addr(9), 2, 0)
    assert pool.dead_nodes() == [] and old.dead_until > 0


# --- with real nodes ---------------------------------------------------------------------
@pytest.fixture
def nodes():
    servers = [start_bsnode() for _ in range(4)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def at(server) -> str:
    return f"127.0.0.1:{server.port}"


def owned(ring, node: str) -> str:
    return next(t for t in TUBES if ring.node_for(t) == node)


def test_new_node_gets_its_tubes_and_held_jobs_survive(nodes):
    two = layout(NodeAddress("node1", at(nodes[0])), NodeAddress("node2", at(nodes[1])))
    three = layout(*two.nodes, NodeAddress("node3", at(nodes[2])))
    tube = owned(placement(three.nodes), "node3")
    with ClusterClient.from_layout(two, watch=tube) as cc:
        cc.put(b"before", tube=tube)  # on node1 or node2
        held = cc.reserve(timeout=1)
        cc.apply_layout(three)
        handle = cc.put(b"after", tube=tube)
        assert handle.startswith("node3/")
        with Client(at(nodes[2])) as direct:
            direct.use(tube)
            assert direct.peek_ready().body == b"after"
        cc.delete(held)  # on the connection that reserved it, kept across the change
        assert cc.reserve(timeout=1).body == b"after"


def test_moved_node_reconnects_and_removed_node_is_forgotten(nodes):
    three = layout(*(NodeAddress(f"node{i}", at(nodes[i - 1])) for i in (1, 2, 3)))
    tube = owned(placement(three.nodes), "node2")
    with ClusterClient.from_layout(three, use=tube, watch=tube) as cc:
        assert cc.put(b"old home").startswith("node2/")
        with Client(at(nodes[2])) as node3:
            node3.use(tube)
            node3.put(b"on node3")  # a watched tube's job on the node about to go
        moved = layout(three.nodes[0], NodeAddress("node2", at(nodes[3])))  # node3 removed
        cc.apply_layout(moved)
        assert cc.nodes == ("node1", "node2")
        assert cc.put(b"new home").startswith("node2/")
        with Client(at(nodes[3])) as new, Client(at(nodes[1])) as old:
            new.use(tube)
            old.use(tube)
            assert new.peek_ready().body == b"new home"
            assert old.stats_tube(tube)["current-jobs-ready"] == 1  # only the old job
        got = cc.reserve(timeout=1)
        assert got.body == b"new home"
        cc.delete(got)
        with pytest.raises(TimedOutError):  # neither node3 nor node2's old address is asked
            cc.reserve(timeout=0)
