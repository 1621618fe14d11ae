"""bscluster's config: defaults, precedence, per-node overrides, errors, argv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from bscluster.config import (
    CLUSTER_DEFAULTS,
    ClusterConfig,
    ConfigError,
    load_config,
)
from bscluster.template import render_config


def write(tmp_path: Path, text: str, name: str = "bscluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in an empty directory with no BSCLUSTER_* settings."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("BSCLUSTER_"):
            monkeypatch.delenv(key)


# --- defaults -------------------------------------------------------------------
def test_no_file_gives_defaults_in_current_directory(tmp_path):
    c = load_config(env={})
    assert c.path is None
    assert [n.name for n in c.nodes] == ["node1", "node2", "node3", "node4"]
    assert [n.port for n in c.nodes] == [11300, 11301, 11302, 11303]
    assert all(n.host == "127.0.0.1" for n in c.nodes)
    assert c.data_dir == tmp_path / "bscluster-data"
    assert c.nodes[2].data_dir == tmp_path / "bscluster-data" / "node3"
    assert (c.binlog, c.fsync_ms, c.max_job_size, c.binlog_size) == (True, 50, 65535, 10485760)
    # this installation's bsnode, not whatever PATH finds
    assert c.node_command == (sys.executable, "-m", "bsnode")
    assert set(c.sources.values()) == {"default"}


def test_argv_uses_beanstalkd_flags():
    c = load_config(flags={"nodes": 2, "base_port": 20000}, env={})
    assert c.nodes[1].argv(("bsnode",)) == [
        "bsnode", "-l", "127.0.0.1", "-p", "20001", "-z", "65535",
        "-b", str(c.data_dir / "node2"), "-s", "10485760", "-f", "50",
    ]


def test_never_fsync_maps_to_capital_f_and_no_binlog_drops_binlog_flags():
    c = load_config(flags={"fsync_ms": -1}, env={})
    argv = c.nodes[0].argv(("bsnode",))
    assert "-F" in argv and "-f" not in argv
    c = load_config(flags={"binlog": False}, env={})
    argv = c.nodes[0].argv(("bsnode",))
    assert not {"-b", "-f", "-F", "-s"} & set(argv)


# --- precedence: flag > env > file > default --------------------------------------
FILE = """
[cluster]
nodes = 3
base_port = 21000
fsync_ms = 10
host = "127.0.0.2"
"""


def test_file_beats_default(tmp_path):
    write(tmp_path, FILE)
    c = load_config(env={})
    assert (len(c.nodes), c.base_port, c.fsync_ms, c.host) == (3, 21000, 10, "127.0.0.2")
    assert c.sources["base_port"].startswith("file ")
    assert c.sources["max_job_size"] == "default"


def test_env_beats_file(tmp_path):
    write(tmp_path, FILE)
    c = load_config(env={"BSCLUSTER_BASE_PORT": "22000", "BSCLUSTER_BINLOG": "off"})
    assert c.base_port == 22000 and c.nodes[0].port == 22000
    assert c.binlog is False
    assert c.sources["base_port"] == "env BSCLUSTER_BASE_PORT"
    assert c.fsync_ms == 10  # untouched: still the file's


def test_flag_beats_env(tmp_path):
    write(tmp_path, FILE)
    c = load_config(flags={"base_port": 23000, "nodes": None},
                    env={"BSCLUSTER_BASE_PORT": "22000"})
    assert c.base_port == 23000
    assert c.sources["base_port"] == "flag --base-port"
    assert len(c.nodes) == 3  # a None flag means "not given"


def test_empty_env_value_is_unset(tmp_path):
    write(tmp_path, FILE)
    assert load_config(env={"BSCLUSTER_BASE_PORT": ""}).base_port == 21000


def test_config_path_from_env_and_flag(tmp_path):
    other = write(tmp_path, "[cluster]\nnodes = 2\n", "other.toml")
    write(tmp_path, FILE)
    assert len(load_config(env={"BSCLUSTER_CONFIG": str(other)}).nodes) == 2
    assert load_config(other, env={}).path == other


def test_node_command_is_split_like_a_shell(tmp_path):
    c = load_config(env={"BSCLUSTER_NODE_COMMAND": "python -m bsnode"})
    assert c.node_command == ("python", "-m", "bsnode")


def test_relative_data_dir_in_file_is_relative_to_the_file(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    write(sub, '[cluster]\ndata_dir = "state"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(sub / "bscluster.toml", env={})
    assert c.data_dir == sub / "state"
    # ...but one given as a flag is relative to where the command runs
    c = load_config(sub / "bscluster.toml", {"data_dir": "mine"}, env={})
    assert c.data_dir == elsewhere / "mine"


# --- per-node overrides --------------------------------------------------------------
def test_per_node_overrides(tmp_path):
    write(tmp_path, """
[cluster]
nodes = 3
base_port = 21000
[nodes.node2]
host = "127.0.0.3"
port = 25000
weight = 2
fsync_ms = -1
data_dir = "/srv/bs2"
""")
    c = load_config(env={})
    n1, n2, n3 = c.nodes
    assert (n2.host, n2.port, n2.weight, n2.fsync_ms) == ("127.0.0.3", 25000, 2, -1)
    assert n2.data_dir == Path("/srv/bs2")
    assert (n1.port, n3.port, n1.weight, n1.fsync_ms) == (21000, 21002, 1, 50)
    assert c.addresses == {"node1": "127.0.0.1:21000", "node2": "127.0.0.3:25000",
                           "node3": "127.0.0.1:21002"}


def test_node_lookup_suggests():
    c = load_config(flags={"nodes": 2}, env={})
    assert c.node("node2").port == 11301
    with pytest.raises(ConfigError, match="no node named 'nod2'.*did you mean 'node2'"):
        c.node("nod2")


# --- errors --------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("[cluster]\nbase_prot = 1\n", r"unknown key 'base_prot' in \[cluster\] \(did you mean 'base_port'\?\)"),
    ("[cluster]\nport = 1\n", r"unknown key 'port' in \[cluster\] \(port, weight and host"),
    ("[clustr]\nnodes = 1\n", r"unknown table \[clustr\] \(did you mean 'cluster'\?\)"),
    ("[nodes.node1]\nwieght = 2\n", r"unknown key 'wieght' in \[nodes.node1\] \(did you mean 'weight'\?\)"),
    ("[nodes.node1]\nbase_port = 2\n", r"'base_port' in \[nodes.node1\] \(nodes, base_port"),
    ("[nodes.nod1]\nport = 2\n", r"\[nodes.nod1\]: nodes are named node1, node2, ... \(did you mean 'node1'\?\)"),
    ("[nodes.node9]\nport = 2\n", r"\[nodes.node9\] is configured but the cluster has 4 nodes"),
    ("[cluster]\nnodes = 0\n", r"nodes = 0 \(from file .*\) is not valid: expected between 1 and 1000"),
    ("[cluster]\nnodes = \"4\"\n", r"nodes = '4' .* expected between 1 and 1000 \(a whole number, without quotes\)"),
    ("[cluster]\nnodes = \"three\"\n", r"nodes = 'three' .* expected between 1 and 1000 \(a whole number, without quotes\)"),
    ("[cluster]\nbinlog = 1\n", r"binlog = 1 .* expected true or false"),
    ("[cluster]\nfsync_ms = -2\n", r"fsync_ms = -2 .* -1 to never fsync"),
    ("[cluster]\nmax_job_size = 2000000000\n", r"max_job_size .* between 1 and 1073741824"),
    ("[cluster]\nproxy_busy_poll = -1\n", r"proxy_busy_poll = -1 .* microseconds from 0 \(off\) to 10000"),
    ("[cluster]\nbase_port = 65534\n", r"node3 would listen on port 65536"),
    ("[cluster]\nhost = \"unix:/tmp/s\"\n", r"host = 'unix:/tmp/s' .* IP address"),
    ("[nodes.node2]\nport = 11300\n", r"node1 and node2 would both listen on 127.0.0.1:11300"),
    ("[nodes.node2]\nweight = 0\n", r"weight = 0 \(from \[nodes.node2\] .*\) .* >= 1"),
    ("[nodes.node2]\ndata_dir = \"bscluster-data/node1\"\n", r"node1 and node2 share the binlog directory"),
    ("cluster = 3\n", r"cluster must be a table"),
    ("[cluster\n", r"is not valid TOML"),
])
def test_file_errors_name_the_problem(tmp_path, text, message):
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_config(env={})


@pytest.mark.parametrize("env, message", [
    ({"BSCLUSTER_NODES": "four"}, r"BSCLUSTER_NODES='four': expected a whole number"),
    ({"BSCLUSTER_NODES": "node1=127.0.0.1:1"}, r"list form of BSCLUSTER_NODES is for clients"),
    ({"BSCLUSTER_BINLOG": "maybe"}, r"BSCLUSTER_BINLOG='maybe': expected true or false"),
    ({"BSCLUSTER_BASE_PORT": "70000"}, r"base_port = 70000 \(from env BSCLUSTER_BASE_PORT\)"),
    ({"BSCLUSTER_CONFIG": "missing.toml"}, r"config file missing.toml does not exist; create one with `bscluster init missing.toml`"),
    ({"BSCLUSTER_NODE_COMMAND": "  "}, r"node_command is empty"),
])
def test_env_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_unknown_flag_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown setting 'node' .*did you mean 'nodes'"):
        load_config(flags={"node": 3}, env={})


def test_missing_default_file_is_fine_but_named_file_is_not(tmp_path):
    assert load_config(env={}).path is None
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_directory_as_config_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path / "d", env={})


# --- the template and serialisation ------------------------------------------------------
def test_template_parses_back_to_the_defaults(tmp_path):
    path = write(tmp_path, render_config())
    c = load_config(path, env={})
    for key, default in CLUSTER_DEFAULTS.items():
        if key == "nodes":
            assert len(c.nodes) == default
        elif key == "data_dir":
            assert c.data_dir == tmp_path / default
        elif key == "node_command":
            assert c.node_command == default
        else:
            assert getattr(c, key) == default, key
    assert set(c.sources.values()) - {"default"}  # the file set them


def test_template_with_values(tmp_path):
    path = write(tmp_path, render_config(nodes=6, base_port=30000, binlog=False))
    c = load_config(path, env={})
    assert (len(c.nodes), c.nodes[-1].port, c.binlog) == (6, 30005, False)


def test_template_is_read_by_the_client_too(tmp_path):
    from bsclient import config
    path = write(tmp_path, render_config(nodes=3, base_port=30000))
    ours = load_config(path, env={}).addresses
    theirs = {n.name: n.address for n in config.read_config_file(path)}
    assert theirs == ours


def test_round_trip_through_dict():
    c = load_config(flags={"nodes": 2, "fsync_ms": 0, "node_command": "beanstalkd -V"}, env={})
    back = ClusterConfig.from_dict(c.to_dict())
    assert back == c


def test_relative_node_command_path_is_made_absolute(tmp_path):
    c = load_config(env={"BSCLUSTER_NODE_COMMAND": "./bin/node -V"})
    assert c.node_command == (str(tmp_path / "bin" / "node"), "-V")
    assert load_config(env={"BSCLUSTER_NODE_COMMAND": "bsnode"}).node_command == ("bsnode",)
