"""Where ClusterClient finds its nodes: a dict, the bscluster TOML file, the environment."""

from __future__ import annotations

import pytest
from bsclient import ClusterClient, ConfigError, NodeAddress
from bsclient.config import nodes_from_env, nodes_from_mapping, read_config_file


def write(tmp_path, text: str):
    path = tmp_path / "bscluster.toml"
    path.write_text(text)
    return path


def test_mapping_forms():
    nodes = nodes_from_mapping({
        "node1": "127.0.0.1:11300",
        "node2": ("10.0.0.2", 11301),
        "node3": {"address": "h3:7", "weight": 3},
        "node4": {"host": "h4", "port": 8},
        "node5": "unix:/run/bs.sock",
    })
    assert nodes == (
        NodeAddress("node1", "127.0.0.1:11300"),
        NodeAddress("node2", "10.0.0.2:11301"),
        NodeAddress("node3", "h3:7", 3),
        NodeAddress("node4", "h4:8"),
        NodeAddress("node5", "unix:/run/bs.sock"),
    )


@pytest.mark.parametrize("bad", [{}, {"a/b": "h:1"}, {"n": {"address": "h:1", "weight": 0}},
                                 {"n": "h:notaport"}])
def test_bad_mappings(bad):
    with pytest.raises(ConfigError):
        nodes_from_mapping(bad)


def test_config_file_defaults(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 3\n")
    assert read_config_file(path) == (
        NodeAddress("node1", "127.0.0.1:11300"),
        NodeAddress("node2", "127.0.0.1:11301"),
        NodeAddress("node3", "127.0.0.1:11302"),
    )


def test_config_file_overrides_and_unrelated_keys(tmp_path):
    path = write(tmp_path, """
[cluster]
nodes = 3
host = "10.1.1.1"
base_port = 12000
data_dir = "./data"      # bscluster's business, ignored here
fsync_ms = 50

[nodes.node2]
host = "10.2.2.2"
port = 13000
weight = 2
data_dir = "/srv/bs2"
""")
    assert read_config_file(path) == (
        NodeAddress("node1", "10.1.1.1:12000"),
        NodeAddress("node2", "10.2.2.2:13000", 2),
        NodeAddress("node3", "10.1.1.1:12002"),
    )
    cc = ClusterClient.from_config(path)
    assert cc.nodes == ("node1", "node2", "node3")
    assert cc.ring.weights == {"node1": 1, "node2": 2, "node3": 1}
    assert cc.client("node2").address == "10.2.2.2:13000"


@pytest.mark.parametrize("text, words", [
    ("", "[cluster]"),
    ("[cluster]\nhost = 'h'\n", "nodes"),
    ("[cluster]\nnodes = 0\n", "nodes must be >= 1"),
    ("[cluster]\nnodes = 'four'\n", "integer"),
    ("[cluster]\nnodes = 2\n[nodes.node3]\nport = 1\n", "node1..node2"),
    ("[cluster]\nnodes = 2\n[nodes.web]\nport = 1\n", "nodes.web"),
    ("[cluster]\nnodes = 2\n[nodes.node2]\nport = 70000\n", "port of node2"),
    ("[cluster]\nnodes = 2\n[nodes.node1]\nweight = 0\n", "weight of node1"),
    ("[cluster\n", "not valid TOML"),
])
def test_config_file_errors_say_what_is_wrong(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        read_config_file(write(tmp_path, text))
    assert words in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; create one with `bscluster init"):
        read_config_file(tmp_path / "nope.toml")


@pytest.mark.parametrize("text", [None, "[cluster\n"])
def test_bsclient_and_bscluster_read_the_file_alike(tmp_path, text):
    """One reader of the TOML file (bsclient.config.read_toml): the same refusal from
    both, and bscluster's ConfigError is a bsclient ConfigError."""
    from bscluster.config import ConfigError as ClusterConfigError
    from bscluster.config import read_file

    path = tmp_path / "cluster.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as client_error:
        read_config_file(path)
    with pytest.raises(ClusterConfigError) as cluster_error:
        read_file(path, required=True)
    assert isinstance(cluster_error.value, ConfigError)
    assert str(client_error.value) == str(cluster_error.value)


def test_env_node_list():
    env = {"BSCLUSTER_NODES": "node1=127.0.0.1:11300, node2=10.0.0.2:11400@2,"}
    assert nodes_from_env(env) == (
        NodeAddress("node1", "127.0.0.1:11300"),
        NodeAddress("node2", "10.0.0.2:11400", 2),
    )
    cc = ClusterClient.from_env(env)
    assert cc.nodes == ("node1", "node2")


def test_env_count_as_bscluster_reads_it():
    env = {"BSCLUSTER_NODES": "2", "BSCLUSTER_BASE_PORT": "12000"}
    assert nodes_from_env(env) == (
        NodeAddress("node1", "127.0.0.1:12000"),
        NodeAddress("node2", "127.0.0.1:12001"),
    )


def test_env_falls_back_to_the_config_file(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 1\nbase_port = 15000\n")
    assert nodes_from_env({"BSCLUSTER_CONFIG": str(path)}) == (
        NodeAddress("node1", "127.0.0.1:15000"),)


@pytest.mark.parametrize("env", [{}, {"BSCLUSTER_NODES": "node1"},
                                 {"BSCLUSTER_NODES": "node1=h:1@x"}])
def test_env_errors(env):
    with pytest.raises(ConfigError):
        nodes_from_env(env)


def test_same_file_same_ring_for_every_client(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 4\n[nodes.node3]\nweight = 2\n")
    a, b = ClusterClient.from_config(path), ClusterClient.from_config(path)
    tubes = [f"t{i}" for i in range(1000)]
    assert [a.node_for(t) for t in tubes] == [b.node_for(t) for t in tubes]


def test_cluster_client_argument_checks():
    with pytest.raises(ValueError):
        ClusterClient({"node1": "h:1"}, policy="pray")
    with pytest.raises(ValueError):
        ClusterClient({"node1": "h:1"}, failure_threshold=0)
    with pytest.raises(ConfigError):
        ClusterClient({})


# --- BSCLUSTER_NODES as a count: the same addresses bscluster would use -------------
FILE_WITH_OVERRIDES = """
[cluster]
nodes = 3
host = "10.1.1.1"
base_port = 12000

[nodes.node2]
host = "10.2.2.2"
port = 13000
weight = 2
"""


@pytest.mark.parametrize("env", [
    {"BSCLUSTER_NODES": "3"},
    {"BSCLUSTER_NODES": "2", "BSCLUSTER_HOST": "10.9.9.9", "BSCLUSTER_BASE_PORT": "14000"},
    {"BSCLUSTER_CONFIG": "FILE"},
    {"BSCLUSTER_CONFIG": "FILE", "BSCLUSTER_NODES": "5"},
    {"BSCLUSTER_CONFIG": "FILE", "BSCLUSTER_BASE_PORT": "15000"},
    {"BSCLUSTER_CONFIG": "FILE", "BSCLUSTER_NODES": "4", "BSCLUSTER_HOST": "10.3.3.3"},
])
def test_env_count_and_file_give_the_addresses_bscluster_uses(tmp_path, monkeypatch, env):
    from bscluster.config import load_config

    monkeypatch.chdir(tmp_path)  # bscluster would read ./bscluster.toml; keep it ours
    path = write(tmp_path, FILE_WITH_OVERRIDES)
    env = {k: str(path) if v == "FILE" else v for k, v in env.items()}
    if "BSCLUSTER_CONFIG" not in env:
        path.unlink()  # no file anywhere: both use the environment and the defaults
    cluster = load_config(env=env)
    ours = nodes_from_env(env)
    assert {n.name: n.address for n in ours} == cluster.addresses
    assert {n.name: n.weight for n in ours} == {s.name: s.weight for s in cluster.nodes}


def test_env_count_with_the_file_keeps_its_node_tables(tmp_path):
    path = write(tmp_path, FILE_WITH_OVERRIDES)
    env = {"BSCLUSTER_CONFIG": str(path), "BSCLUSTER_NODES": "4", "BSCLUSTER_BASE_PORT": "16000"}
    assert nodes_from_env(env) == (
        NodeAddress("node1", "10.1.1.1:16000"),
        NodeAddress("node2", "10.2.2.2:13000", 2),
        NodeAddress("node3", "10.1.1.1:16002"),
        NodeAddress("node4", "10.1.1.1:16003"),
    )


@pytest.mark.parametrize("env, words", [
    ({"BSCLUSTER_NODES": "0"}, "nodes must be >= 1"),
    ({"BSCLUSTER_NODES": "3", "BSCLUSTER_BASE_PORT": "65534"}, "port of node3 must be 1..65535"),
    ({"BSCLUSTER_NODES": "2", "BSCLUSTER_BASE_PORT": "x"}, "BSCLUSTER_BASE_PORT='x'"),
    ({"BSCLUSTER_NODES": "node1=h:99999"}, "from 1 to 65535"),
    ({}, "BSCLUSTER_NODES (node1=host:port,... or a node count)"),
])
def test_env_errors_say_what_is_wrong(env, words):
    with pytest.raises(ConfigError) as info:
        nodes_from_env(env)
    assert words in str(info.value)


def test_env_count_too_small_for_the_files_node_tables(tmp_path):
    path = write(tmp_path, FILE_WITH_OVERRIDES)
    with pytest.raises(ConfigError, match=r"\[nodes.node2\] does not name one of node1..node1"):
        nodes_from_env({"BSCLUSTER_CONFIG": str(path), "BSCLUSTER_NODES": "1"})
