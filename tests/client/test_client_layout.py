"""What bsclient reads of bscluster's config beyond addresses: ring, leaving, removed;
and what a leaving node means to a ClusterClient (puts never, reserves still)."""

from __future__ import annotations

import pytest
from bsclient import Client, ClusterClient, ConfigError, NodeAddress
from bsclient.config import layout_from_env, read_layout
from servers import start_bsnode


def write(tmp_path, text: str):
    path = tmp_path / "bscluster.toml"
    path.write_text(text)
    return path


def test_leaving_removed_and_ring_are_read(tmp_path):
    path = write(tmp_path, """
[cluster]
nodes = 4
ring = "ketama"
[nodes.node2]
leaving = true
weight = 2
[nodes.node3]
removed = true
""")
    layout = read_layout(path)
    assert layout.ring == "ketama"
    assert layout.nodes == (
        NodeAddress("node1", "127.0.0.1:11300"),
        NodeAddress("node2", "127.0.0.1:11301", 2, leaving=True),
        NodeAddress("node4", "127.0.0.1:11303"),  # node3's port is not given to node4
    )
    assert layout.placement().nodes == ("node1", "node4")
    env = {"BSCLUSTER_CONFIG": str(path), "BSCLUSTER_RING": "md5"}
    assert layout_from_env(env).ring == "md5"  # the environment wins, as in bscluster
    assert layout_from_env(env).nodes == layout.nodes


@pytest.mark.parametrize("text, words", [
    ('[cluster]\nnodes = 2\nring = "crc32"\n', "ring must be"),
    ("[cluster]\nnodes = 2\n[nodes.node1]\nleaving = 1\n", "leaving of node1 must be true"),
    ('[cluster]\nnodes = 2\n[nodes.node2]\nremoved = "yes"\n', "removed of node2 must be"),
    ("[cluster]\nnodes = 1\n[nodes.node1]\nremoved = true\n", "every node is marked removed"),
])
def test_bad_values_are_named(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        read_layout(write(tmp_path, text))


def test_every_node_leaving_is_an_error(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 1\n[nodes.node1]\nleaving = true\n")
    with pytest.raises(ConfigError, match="every node is leaving"):
        read_layout(path).placement()


def test_a_leaving_node_is_reserved_from_but_never_put_to():
    with start_bsnode() as a, start_bsnode() as b:
        nodes = {"node1": f"127.0.0.1:{a.port}",
                 "node2": {"address": f"127.0.0.1:{b.port}", "leaving": True}}
        with Client(nodes["node2"]["address"], use="old") as direct:
            direct.put(b"left on node2")  # put before node2 began to leave
        with ClusterClient(nodes, watch="old") as cc:
            assert cc.ring.nodes == ("node1",)
            handles = [cc.put(f"job {i}", tube=f"tube-{i}") for i in range(50)]
            assert {h.split("/")[0] for h in handles} == {"node1"}
            job = cc.reserve(timeout=5)  # node2 is a cold node: still asked
            assert (job.node, job.body) == ("node2", b"left on node2")
            cc.delete(job)
            with cc.clone() as twin:
                assert twin.ring.nodes == ("node1",) and twin.nodes == ("node1", "node2")
