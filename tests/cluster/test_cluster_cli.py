"""`bscluster` parsing, precedence and error messages, through click's CliRunner.

Nothing here starts a node: either the command fails before it would, or the
node cannot start (its port is taken) and the supervisor gives up at once.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
from bsclient import ClusterClient
from bscluster.cli import cli
from bscluster.config import load_config
from click.testing import CliRunner


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("BSCLUSTER_"):
            monkeypatch.delenv(key)
    return CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lines_of(output: str) -> dict[str, str]:
    """`bscluster config` output as {key: "value  # source"}."""
    out = {}
    for line in output.splitlines():
        if " = " in line and not line.startswith("#"):
            key, _, rest = line.partition(" = ")
            out[key] = rest
    return out


# --- init ---------------------------------------------------------------------------
def test_init_writes_a_config_that_loads_and_refuses_to_overwrite(runner, tmp_path):
    r = runner.invoke(cli, ["init", "--nodes", "6", "--base-port", "30000"])
    assert r.exit_code == 0, r.output
    assert "wrote bscluster.toml: 6 nodes on 127.0.0.1, ports 30000-30005" in r.output
    assert "bscluster up" in r.output
    text = (tmp_path / "bscluster.toml").read_text()
    assert text.count("\n#") > 10  # commented
    c = load_config(tmp_path / "bscluster.toml", env={})
    assert len(c.nodes) == 6 and c.base_port == 30000
    r = runner.invoke(cli, ["init"])
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    r = runner.invoke(cli, ["init", "--force"])
    assert r.exit_code == 0 and len(load_config(env={}).nodes) == 4


def test_init_to_a_named_path(runner, tmp_path):
    r = runner.invoke(cli, ["init", "etc.toml"])
    assert r.exit_code == 0
    assert "bscluster up --config etc.toml" in r.output
    assert (tmp_path / "etc.toml").exists()


def test_init_rejects_bad_values_and_leaves_no_file(runner, tmp_path):
    r = runner.invoke(cli, ["init", "--nodes", "0"])
    assert r.exit_code == 1 and "nodes = 0" in r.output
    assert not (tmp_path / "bscluster.toml").exists()


# --- precedence, as `bscluster config` shows it ------------------------------------------
def test_precedence_flag_env_file_default(runner, tmp_path):
    (tmp_path / "bscluster.toml").write_text(
        "[cluster]\nnodes = 3\nbase_port = 21000\nfsync_ms = 7\nmax_job_size = 1000\n")
    env = {"BSCLUSTER_BASE_PORT": "22000", "BSCLUSTER_FSYNC_MS": "8"}
    r = runner.invoke(cli, ["config", "--fsync-ms", "9"], env=env)
    assert r.exit_code == 0, r.output
    got = lines_of(r.output)
    assert got["fsync_ms"] == "9  # flag --fsync-ms"
    assert got["base_port"] == "22000  # env BSCLUSTER_BASE_PORT"
    assert got["max_job_size"].startswith("1000  # file ")
    assert got["binlog_size"] == "10485760  # default"
    assert got["nodes"].startswith("3  # file")
    assert "# node3: 127.0.0.1:22002" in r.output


def test_config_option_and_env_name_the_file(runner, tmp_path):
    (tmp_path / "a.toml").write_text("[cluster]\nnodes = 2\n")
    r = runner.invoke(cli, ["config"], env={"BSCLUSTER_CONFIG": "a.toml"})
    assert lines_of(r.output)["nodes"].startswith("2  # file a.toml")
    r = runner.invoke(cli, ["config", "-c", "a.toml", "--nodes", "5"])
    assert lines_of(r.output)["nodes"] == "5  # flag --nodes"


def test_binlog_switch(runner):
    r = runner.invoke(cli, ["config", "--no-binlog"], env={"BSCLUSTER_BINLOG": "yes"})
    assert lines_of(r.output)["binlog"] == "false  # flag --binlog"
    r = runner.invoke(cli, ["config"], env={"BSCLUSTER_BINLOG": "no"})
    assert lines_of(r.output)["binlog"] == "false  # env BSCLUSTER_BINLOG"


# --- errors a user can cause ------------------------------------------------------------
def test_typo_in_config_names_the_key(runner, tmp_path):
    (tmp_path / "bscluster.toml").write_text("[cluster]\nfsync_msec = 5\n")
    for command in (["up"], ["status"], ["stats"], ["down"], ["config"]):
        r = runner.invoke(cli, command)
        assert r.exit_code == 1, command
        assert "unknown key 'fsync_msec' in [cluster] (did you mean 'fsync_ms'?)" in r.output


def test_bad_flag_value_is_a_usage_error(runner):
    r = runner.invoke(cli, ["up", "--nodes", "four"])
    assert r.exit_code == 2 and "Invalid value for '--nodes'" in r.output


def test_bad_env_value_names_the_variable(runner):
    r = runner.invoke(cli, ["up"], env={"BSCLUSTER_BASE_PORT": "eleven"})
    assert r.exit_code == 1 and "BSCLUSTER_BASE_PORT='eleven': expected a whole number" in r.output


def test_missing_named_config(runner):
    r = runner.invoke(cli, ["up", "--config", "nope.toml"])
    assert r.exit_code == 1
    assert "config file nope.toml does not exist; create one with `bscluster init nope.toml`" \
        in r.output


def test_data_dir_that_is_a_file(runner, tmp_path):
    (tmp_path / "data").write_text("x")
    r = runner.invoke(cli, ["up", "--data-dir", "data"])
    assert r.exit_code == 1 and "exists and is not a directory" in r.output


# The interpreter may live where nobody cannot read it, so the child starts as
# root, loads the CLI, then drops to nobody before the command runs.
AS_NOBODY_IF_ROOT = """
import os, pwd, sys
from bscluster.cli import cli
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
cli.main(args=sys.argv[1:], prog_name="bscluster")
"""


def test_data_dir_not_writable():
    """Root can write anywhere, so as root (CI) `up` runs as user nobody."""
    import shutil
    import subprocess
    import sys
    import tempfile

    top = tempfile.mkdtemp(prefix="bscluster-ro-")  # pytest's tmp is root-only
    try:
        os.chmod(top, 0o755)
        ro = os.path.join(top, "ro")
        os.mkdir(ro, mode=0o555)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BSCLUSTER_")}
        r = subprocess.run([sys.executable, "-c", AS_NOBODY_IF_ROOT, "up", "--data-dir",
                            os.path.join(ro, "data")], cwd=top, env=env, capture_output=True,
                           text=True, timeout=60)
    finally:
        shutil.rmtree(top)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot create data dir" in r.stdout + r.stderr
    assert "permission denied" in r.stdout + r.stderr


def test_port_taken_for_every_node_fails_fast_with_the_reason(runner, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        r = runner.invoke(cli, ["up", "--nodes", "1", "--base-port", str(port),
                                "--node-command", "/bin/false"])
    assert r.exit_code == 1
    assert f"127.0.0.1:{port} is already in use by another program" in r.output
    assert "no node could start" in r.output
    # no help on connecting to a cluster that is not there: what to do instead
    assert "none of the 1 nodes could start" in r.output
    assert "connect from Python" not in r.output and "telnet" not in r.output
    assert "fix what each line above names" in r.output
    data = tmp_path / "bscluster-data"
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in data.iterdir()) == []  # state, lock, wanted: gone


# --- commands with no cluster running ----------------------------------------------------
def test_status_with_nothing_running(runner):
    port = free_port()
    r = runner.invoke(cli, ["status", "--json"], env={"BSCLUSTER_BASE_PORT": str(port),
                                                     "BSCLUSTER_NODES": "2"})
    assert r.exit_code == 4  # no cluster: no supervisor, and no node answers
    doc = json.loads(r.output)
    assert doc["exit"] == 4
    assert doc["supervisor"] is None
    assert [(n["node"], n["up"]) for n in doc["nodes"]] == [("node1", False), ("node2", False)]
    r = runner.invoke(cli, ["status"], env={"BSCLUSTER_BASE_PORT": str(port)})
    assert "supervisor: not running" in r.output and "DOWN" in r.output


def test_stats_json_with_nothing_running(runner):
    r = runner.invoke(cli, ["stats", "--json"], env={"BSCLUSTER_BASE_PORT": str(free_port())})
    assert r.exit_code == 4  # 0 of 4 nodes up is no cluster, not success
    doc = json.loads(r.output)
    assert doc["totals"]["nodes-up"] == 0 and doc["totals"]["nodes"] == 4


def test_down_and_restart_with_nothing_running(runner, tmp_path):
    r = runner.invoke(cli, ["down"])
    assert r.exit_code == 0 and "no cluster is running in" in r.output
    r = runner.invoke(cli, ["restart", "node1"])
    assert r.exit_code == 4 and "no cluster is running" in r.output and "bscluster up" in r.output


def test_help_lists_every_command(runner):
    r = runner.invoke(cli, ["--help"])
    for command in ("init", "up", "status", "stats", "restart", "down", "config"):
        assert f"  {command} " in r.output
    assert "supervise" not in r.output  # internal


def test_listening_beyond_loopback_warns(runner):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        r = runner.invoke(cli, ["up", "--nodes", "1", "--host", "0.0.0.0", "--base-port",
                                str(port), "--node-command", "/bin/false"])
    assert r.exit_code == 1
    assert "warning: nodes listen on 0.0.0.0; the beanstalkd protocol has no authentication" \
        in r.output


# --- route: the ring, for clients in other languages ----------------------------------
ROUTE_CONFIG = """
[cluster]
nodes = 4
base_port = 21000
[nodes.node3]
host = "127.0.0.3"
weight = 3
"""
TUBES = [f"tube-{i}" for i in range(200)]


def _routes(runner, *args) -> list[dict]:
    r = runner.invoke(cli, ["route", "--json", *args, *TUBES])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_route_is_the_mapping_cluster_clients_use(runner, tmp_path):
    (tmp_path / "bscluster.toml").write_text(ROUTE_CONFIG)
    for ketama, flags in ((False, ()), (True, ("--ketama",))):
        cc = ClusterClient.from_config(tmp_path / "bscluster.toml", ketama=ketama)
        try:
            routes = _routes(runner, *flags)
            assert [r["tube"] for r in routes] == TUBES
            for r in routes:
                assert r["node"] == cc.node_for(r["tube"])
                assert r["address"] == {"node1": "127.0.0.1:21000", "node2": "127.0.0.1:21001",
                                        "node3": "127.0.0.3:21002",
                                        "node4": "127.0.0.1:21003"}[r["node"]]
                assert sorted([r["node"], *r["failover"]]) == ["node1", "node2", "node3", "node4"]
            owners = [r["node"] for r in routes]
            assert owners.count("node3") > max(owners.count(n) for n in ("node1", "node2", "node4"))
        finally:
            cc.close()
    assert _routes(runner) != _routes(runner, "--ketama")  # two different rings


def test_route_text_and_flags_without_a_config_file(runner):
    r = runner.invoke(cli, ["route", "--nodes", "2", "--base-port", "30000", "emails", "thumbs"])
    assert r.exit_code == 0, r.output
    header, *rows = r.output.splitlines()
    assert header.split() == ["TUBE", "NODE", "ADDRESS", "FAILOVER"]
    assert [row.split()[0] for row in rows] == ["emails", "thumbs"]
    for row in rows:
        tube, node, address, other = row.split()
        assert address == {"node1": "127.0.0.1:30000", "node2": "127.0.0.1:30001"}[node]
        assert {node, other} == {"node1", "node2"}


@pytest.mark.parametrize("bad", ["-starts-with-dash", "has space", "x" * 201, "tab\there"])
def test_route_refuses_a_name_no_node_would_take(runner, bad):
    r = runner.invoke(cli, ["route", "--nodes", "2", "--", "fine", bad])
    assert r.exit_code == 2
    assert "is not a valid tube name" in r.output
    assert "FAILOVER" not in r.output  # nothing routed before the refusal
