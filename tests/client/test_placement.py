"""One placement rule: bscluster route, ClusterConfig.placement(), ClusterClient and
rebalance agree on where every tube's jobs go (issue 18: one config reader, one rule).

The config has it all: weights, a leaving node (reserved from, never put to), a
removed node (not a member at all), spread tubes, in both ring modes.
"""

from __future__ import annotations

import json

import pytest
from bsclient import Client, ClusterClient
from bsclient.config import read_layout
from bsclient.ring import placement
from bscluster.cli import cli
from bscluster.config import load_config
from bscluster.rebalance import execute, plan, survey
from bscluster.truth import cluster_view
from click.testing import CliRunner
from servers import start_bsnode

TUBES = [f"tube-{i}" for i in range(490)] + [f"hot{i}" for i in range(10)]
SPREAD = {f"hot{i}": 2 + i % 3 for i in range(10)}


def write_config(tmp_path, ring: str, ports: dict[str, int] | None = None):
    lines = ["[cluster]", "nodes = 6", "base_port = 31000", f'ring = "{ring}"',
             'data_dir = "data"', "",
             "[nodes.node2]", "weight = 3", "",
             "[nodes.node3]", "leaving = true", "",
             "[nodes.node5]", "removed = true", "",
             "[nodes.node6]", "weight = 2", ""]
    for tube, k in SPREAD.items():
        lines += [f"[tubes.{tube}]", f"spread = {k}", ""]
    path = tmp_path / "bscluster.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("BSCLUSTER_CONFIG", "BSCLUSTER_NODES", "BSCLUSTER_RING", "BSCLUSTER_HOST",
                "BSCLUSTER_BASE_PORT", "BSCLUSTER_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("ring", ["md5", "ketama"])
def test_route_config_and_client_agree(tmp_path, ring, clean_env):
    path = write_config(tmp_path, ring)
    r = CliRunner().invoke(cli, ["route", "--config", str(path), "--json", *TUBES])
    assert r.exit_code == 0, r.output
    routed = {row["tube"]: [row["node"], *row["failover"]] for row in json.loads(r.stdout)}
    config = load_config(path, env={})
    assert config.layout() == read_layout(path)  # both readers see the same cluster
    config_ring = config.placement()
    with ClusterClient.from_config(path) as client:
        assert client.nodes == ("node1", "node2", "node3", "node4", "node6")  # node5 removed
        assert client.ring.weights == {"node1": 1, "node2": 3, "node4": 1, "node6": 2}
        assert client.ring.ketama == (ring == "ketama")
        assert client.spread == SPREAD
        owners = set()
        for tube in TUBES:
            order = routed[tube]
            assert config_ring.preference(tube) == order, tube
            assert client.node_for(tube) == order[0], tube
            assert client.ring.preference(tube) == order, tube
            k = SPREAD.get(tube, 1)
            assert client._hot_nodes([tube]) == frozenset(order[:k]), tube
            owners.add(order[0])
    assert owners == {"node1", "node2", "node4", "node6"}  # never the leaving node3


def test_ketama_mode_really_differs_and_matches_the_ring(tmp_path, clean_env):
    """The two modes place differently, each as ``Ring(..., ketama=)`` over the
    non-leaving nodes does (so the agreement above is not md5 twice)."""
    md5 = ClusterClient.from_config(write_config(tmp_path, "md5"))
    ketama = ClusterClient.from_config(write_config(tmp_path, "ketama"))
    try:
        assert any(md5.node_for(t) != ketama.node_for(t) for t in TUBES)
        layout = read_layout(tmp_path / "bscluster.toml")
        assert [n.name for n in layout.nodes if n.leaving] == ["node3"]
        ring = placement(layout.nodes, "ketama")
        assert all(ketama.node_for(t) == ring.node_for(t) for t in TUBES)
        assert ClusterClient.from_config(tmp_path / "bscluster.toml",
                                         ketama=False).ring.ketama is False  # the argument wins
    finally:
        md5.close()
        ketama.close()


def test_clone_keeps_nodes_ring_and_spread(tmp_path, clean_env):
    with ClusterClient.from_config(write_config(tmp_path, "ketama"), op_timeout=3) as client:
        client.remove_node("node4")  # drained: still a member, off the put ring
        twin = client.clone()
        try:
            assert twin is not client
            assert twin.nodes == client.nodes
            assert twin.ring.weights == client.ring.weights
            assert twin.ring.ketama and twin.spread == client.spread
            assert twin.op_timeout == 3 and twin.policy == client.policy
            assert all(twin.node_for(t) == client.node_for(t) for t in TUBES)
        finally:
            twin.close()


def test_rebalance_keeps_a_spread_tube_on_its_first_k_nodes(tmp_path, clean_env):
    """Jobs of a tube spread over 2 nodes stay on either of its first 2 ring nodes;
    only the third node's go (to the first).  A plain tube keeps its owner only."""
    servers = [start_bsnode() for _ in range(3)]
    try:
        lines = ["[cluster]", "nodes = 3", 'data_dir = "data"', ""]
        for i, server in enumerate(servers, 1):
            lines += [f"[nodes.node{i}]", f"port = {server.address[1]}", ""]
        lines += ["[tubes.hot]", "spread = 2", ""]
        path = tmp_path / "bscluster.toml"
        path.write_text("\n".join(lines))
        config = load_config(path, env={})
        assert config.spread == {"hot": 2}
        first, second, third = config.placement().preference("hot")
        plain_owner, *plain_others = config.placement().preference("plain")
        by_name = {f"node{i}": s for i, s in enumerate(servers, 1)}
        for server in servers:
            with Client(server.address) as c:
                c.use("hot")
                for n in range(3):
                    c.put(f"hot {n}")
                c.use("plain")
                c.put("plain")
        moves = plan(survey(cluster_view(config)))
        assert sorted((m.source, m.tube, m.target) for m in moves) == sorted(
            [(third, "hot", first)] + [(n, "plain", plain_owner) for n in plain_others])
        execute(moves, {n: s.address for n, s in by_name.items()}, None)
        counts = {}
        for name, server in by_name.items():
            with Client(server.address) as c:
                counts[name] = {t: c.stats_tube(t)["current-jobs-ready"]
                                for t in ("hot", "plain") if t in c.list_tubes()}
        assert counts[first]["hot"] == 6 and counts[second]["hot"] == 3
        assert counts[third].get("hot", 0) == 0
        assert counts[plain_owner]["plain"] == 3
        assert plan(survey(cluster_view(config))) == []
    finally:
        for server in servers:
            server.stop()
