"""One node resolver: every command finds the cluster's nodes through
``truth.ClusterView.layout()`` (config, environment, flags; the running cluster's
addresses when one runs), so `bscluster bench` honours BSCLUSTER_BASE_PORT like
`top`, `web` and `work` do.  No node is started: resolving opens no socket.
"""

from __future__ import annotations

import pytest
from bscluster import bench, monitor
from bscluster.config import load_config
from bscluster.truth import cluster_view

CONFIG = """\
[cluster]
nodes = 3
base_port = 20000

[nodes.node2]
weight = 3

[nodes.node3]
host = "0.0.0.0"
"""
WANT = {"node1": "127.0.0.1:34100", "node2": "127.0.0.1:34101", "node3": "127.0.0.1:34102"}


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    for key in ("BSCLUSTER_NODES", "BSCLUSTER_HOST", "BSCLUSTER_RING", "BSCLUSTER_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BSCLUSTER_DATA_DIR", str(tmp_path / "data"))  # no cluster runs there
    monkeypatch.setenv("BSCLUSTER_BASE_PORT", "34100")
    path = tmp_path / "bscluster.toml"
    path.write_text(CONFIG)
    return path


def test_bench_honours_base_port_from_the_environment(config_file):
    target = bench.resolve_nodes(None, None, str(config_file))
    assert target.nodes == WANT
    assert target.weights == {"node1": 1, "node2": 3, "node3": 1}


def test_bench_finds_the_config_through_bscluster_config(config_file, monkeypatch):
    monkeypatch.setenv("BSCLUSTER_CONFIG", str(config_file))
    assert bench.resolve_nodes(None, None, None).nodes == WANT


def test_every_command_resolves_the_same_nodes(config_file):
    layout = cluster_view(load_config(config_file, {})).layout()
    assert {n.name: n.address for n in layout.nodes} == WANT
    watched = monitor.resolve_nodes(str(config_file), None, ())  # top and web
    assert watched == layout.nodes
    assert {n.name: n.address for n in watched} == bench.resolve_nodes(
        None, None, str(config_file)).nodes


def test_a_flag_still_names_one_server(config_file):
    assert bench.resolve_nodes("127.0.0.1", 34199, None).nodes == {"node": "127.0.0.1:34199"}
