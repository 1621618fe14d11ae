"""What the CLI says about a running cluster is what runs; drain; logs.

Integration, with a real detached 2-node bsnode cluster:
* `up -d` with other ports or another fsync setting for running nodes is
  refused with the differences, and nothing changes;
* `status`, `config`, `route` run without the flags the cluster was started
  with still show where its nodes listen, and say what is pending;
* `drain` makes a node refuse puts (DRAINING in `status`), a restart by the
  supervisor keeps it drained, `undrain` ends it;
* exit codes: 0 all up, 3 a node down, 4 the supervisor gone;
* a FATAL reason comes from this run, not an older line of the log;
* `logs` shows timestamped supervisor and node lines, `-n`, and a bad node name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from bscluster.runtime import pid_alive
from bscluster.states import STOP_TIMEOUT
from clusters import Cluster
from servers import poll

pytestmark = pytest.mark.integration
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    yield c
    c.cleanup()


def put(port: int, body: bytes = b"x") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"put 0 0 60 %d\r\n%s\r\n" % (len(body), body))
        return s.recv(100)


def test_changed_settings_for_running_nodes_are_refused(cluster):
    c = cluster
    before = c.state()["nodes"]
    r = c.run("up", "-d", "--nodes", "3", "--base-port", str(c.base_port + 100))
    assert r.returncode == 1
    assert "node1: port" in r.stderr and "bscluster down" in r.stderr, r.stderr
    r = c.run("up", "-d", "--fsync-ms", "0")
    assert r.returncode == 1 and "fsync_ms 50 -> 0" in r.stderr, r.stderr
    assert c.state()["nodes"] == before  # nothing was added or changed
    assert c.run("status").returncode == 0


def test_looking_commands_describe_the_running_cluster(cluster):
    c = cluster
    env = {k: v for k, v in c.env.items() if k != "BSCLUSTER_BASE_PORT"}
    c.env, full = env, c.env  # as a user who forgot the --base-port the cluster runs with
    try:
        r = c.run("status")
        assert r.returncode == 0, r.stdout
        assert f"127.0.0.1:{c.base_port}" in r.stdout and "pending: node1" in r.stdout
        r = c.run("config")
        assert f"# node1: 127.0.0.1:{c.base_port} " in r.stdout
        assert "# pending: node1: the config changes" in r.stdout, r.stdout
        r = c.run("route", "--json", "emails")
        (row,) = json.loads(r.stdout)
        port = c.base_port + int(row["node"][4:]) - 1
        assert row["address"] == f"127.0.0.1:{port}"
        assert "pending:" in r.stderr
    finally:
        c.env = full


def test_drain_survives_a_restart_and_undrain_ends_it(cluster):
    c = cluster
    port2 = c.node("node2")["port"]
    assert put(port2).startswith(b"INSERTED")
    r = c.run("drain", "node2")
    assert r.returncode == 0, r.stderr
    assert put(port2) == b"DRAINING\r\n"
    r = c.run("status", "--json")
    rows = {row["node"]: row for row in json.loads(r.stdout)["nodes"]}
    assert rows["node2"]["state"] == "DRAINING" and rows["node1"]["state"] == "RUNNING"
    assert re.search(r"^node2\s+DRAINING", c.run("status").stdout, re.M)
    r = c.run("restart", "node2")
    assert r.returncode == 0, r.stderr
    poll(lambda: put(c.node("node2")["port"]) == b"DRAINING\r\n", 10, "node2 drained again")
    r = c.run("undrain", "node2")
    assert r.returncode == 0, r.stderr
    assert put(c.node("node2")["port"]).startswith(b"INSERTED")
    assert c.run("drain", "node9").returncode == 1


def test_exit_codes_for_scripts(cluster):
    c = cluster
    assert c.run("stats").returncode == 0
    state = c.state()
    node1 = state["nodes"]["node1"]
    os.kill(node1["pid"], signal.SIGSTOP)  # hung: the supervisor still thinks it runs
    try:
        r = c.run("status")
        assert r.returncode == 3, r.stdout
        assert c.run("stats").returncode == 3
    finally:
        os.kill(node1["pid"], signal.SIGCONT)
    sup = state["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    poll(lambda: not pid_alive(sup), 10, "the supervisor to die")
    r = c.run("status")
    assert r.returncode == 4 and "GONE" in r.stdout, r.stdout
    assert c.run("stats").returncode == 4


def test_a_hung_node_restarts_and_stops_at_once_with_its_jobs(cluster):
    """SIGSTOP stands for a hung node: SIGTERM alone would wait in its queue until
    STOP_TIMEOUT and SIGKILL; followed by SIGCONT (as systemd does) the node wakes,
    stops cleanly and keeps its jobs.  `down` wakes a hung supervisor the same way (it
    used to wait 20 s and give up)."""
    c = cluster
    node2 = c.node("node2")
    for i in range(3):
        assert put(node2["port"], b"job %d" % i).startswith(b"INSERTED")
    os.kill(node2["pid"], signal.SIGSTOP)
    began = time.monotonic()
    r = c.run("restart", "node2")
    took = time.monotonic() - began
    assert r.returncode == 0, r.stdout + r.stderr
    assert took < STOP_TIMEOUT and "killed" not in r.stdout, (took, r.stdout)
    assert c.node("node2")["pid"] != node2["pid"]
    stats = json.loads(c.run("stats", "--json").stdout)
    assert stats["nodes"]["node2"]["stats"]["current-jobs-ready"] == 3
    pids = [e["pid"] for e in c.state()["nodes"].values()] + [c.state()["supervisor"]["pid"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()
    r = c.run("down")
    assert r.returncode == 0 and time.monotonic() - began < STOP_TIMEOUT, r.stdout + r.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert "did not stop" not in c.run("logs").stdout


def test_logs_have_timestamps(cluster):
    c = cluster
    r = c.run("logs")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines and all(re.match(ISO, ln) for ln in lines), lines
    assert any("node1 RUNNING" in ln for ln in lines)
    r = c.run("logs", "node1", "-n", "2")
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(re.match(ISO, ln) for ln in lines), lines
    assert "listening on" in lines[-1]
    r = c.run("logs", "node7")
    assert r.returncode == 1 and "no node named 'node7'" in r.stderr
    follow = subprocess.Popen([sys.executable, "-m", "bscluster", "logs", "-f", "-n", "1"],
                              env=c.env, cwd=c.dir, stdout=subprocess.PIPE, text=True)
    try:
        assert re.match(ISO, follow.stdout.readline())  # the last line: it has started
        assert c.run("restart", "node1").returncode == 0
        seen = [follow.stdout.readline()]
        while seen[-1] and "restarting node1" not in seen[-1]:
            seen.append(follow.stdout.readline())  # -f prints what is appended
        assert re.match(ISO, seen[-1]) and "restarting node1" in seen[-1], seen
    finally:
        follow.terminate()
        follow.wait(10)
        follow.stdout.close()


def test_fatal_reason_comes_from_this_run(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 1)
    c.data_dir.mkdir(mode=0o700)
    (c.data_dir / "bscluster.log").write_text(
        "2026-01-01T00:00:00.000+00:00 bscluster | node1 FATAL: an old reason from before\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        r = c.run("up", "-d", "--web", f"127.0.0.1:{taken.getsockname()[1]}")
        assert r.returncode == 1
        assert "dashboard" in r.stderr and "old reason" not in r.stderr, r.stderr
    finally:
        taken.close()
        c.cleanup()


SLOW_NODE = r'''
import os, pathlib, socket, sys, time
args = sys.argv[1:]
host, port = args[args.index("-l") + 1], int(args[args.index("-p") + 1])
print("bsnode[1]: binlog: replaying 40.0 MB", file=sys.stderr, flush=True)
print("bsnode[1]: binlog: replayed 40% (1000 records, 1.0 s)", file=sys.stderr, flush=True)
go = pathlib.Path(os.environ["SLOW_GO"])
while not go.exists():  # a replay that takes as long as the test wants
    time.sleep(0.02)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
while True:
    s.accept()[0].close()
'''


def test_replay_progress_shows_in_up_and_status(tmp_path):
    script = tmp_path / "slow_node.py"
    script.write_text(SLOW_NODE)
    go = tmp_path / "go"
    c = Cluster(tmp_path, f"{sys.executable} {script}", 1, {"SLOW_GO": str(go)})
    up = subprocess.Popen([sys.executable, "-m", "bscluster", "up", "-d"], env=c.env,
                          cwd=c.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def starting_with_progress():
            r = c.run("status", "--json")
            rows = json.loads(r.stdout)["nodes"] if r.stdout else []
            # (until the node reports progress, the reason is the probe's "connection refused")
            if not rows or rows[0]["state"] != "STARTING":
                return None
            reason = rows[0]["reason"] or ""
            return reason if reason.startswith("binlog") else None
        assert poll(starting_with_progress, 20, "status to show the replay") == \
            "binlog replayed 40%"
        assert "node1: binlog replayed 40%" in c.run("status").stdout
        go.touch()
        out, err = up.communicate(timeout=60)
        assert up.returncode == 0, out + err
        assert "node1 STARTING: binlog replayed 40%" in err
    finally:
        go.touch()
        if up.poll() is None:
            up.kill()
            up.communicate()
        c.cleanup()


def test_remove_of_a_hung_node_stops_and_can_be_run_again(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    for key in ("BSCLUSTER_NODES", "BSCLUSTER_BASE_PORT", "BSCLUSTER_DATA_DIR"):
        del c.env[key]
    config = tmp_path / "bscluster.toml"
    config.write_text(f'[cluster]\nnodes = 2\nbase_port = {c.base_port}\ndata_dir = "data"\n')
    try:
        assert c.run("up", "-d").returncode == 0
        node2 = c.node("node2")
        for i in range(20):
            assert put(node2["port"], b"job %d" % i).startswith(b"INSERTED")
        os.kill(node2["pid"], signal.SIGSTOP)  # hung: its jobs cannot be counted
        try:
            r = c.run("remove", "node2", "--timeout", "1")
            assert r.returncode == 1, r.stdout + r.stderr
            assert "node2: no answer (timed out); it drains as soon as it runs again" \
                in r.stderr, r.stderr
            assert "leaving = true" in config.read_text()  # clients already keep away
            assert "node2" in c.state()["nodes"]
        finally:
            os.kill(node2["pid"], signal.SIGCONT)
        r = c.run("remove", "node2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "20 jobs moved" in r.stdout and "nodes = 1" in r.stdout
        stats = json.loads(c.run("stats", "--json").stdout)
        assert stats["totals"]["current-jobs-ready"] == 20
        assert list(c.state()["nodes"]) == ["node1"]
        assert "[nodes.node2]" not in config.read_text()
    finally:
        c.cleanup()


def test_fatal_reason_quotes_the_node_without_its_timestamps(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)  # node2 keeps the supervisor up
    binlog = c.data_dir / "node1"
    binlog.mkdir(parents=True, mode=0o700)
    (binlog / "binlog.1").write_bytes(b"not a binlog at all\n" * 10)
    try:
        r = c.run("up", "-d")
        assert r.returncode == 1
        reason = c.state()["nodes"]["node1"]["reason"]
        assert "bsnode[" in reason and not re.search(ISO, reason), reason
        lines = c.run("logs", "node1").stdout.splitlines()
        assert any(re.match(ISO + r".* bsnode\[", ln) for ln in lines), lines  # the log keeps them
    finally:
        c.cleanup()


def test_a_cluster_started_from_flags_alone_is_what_the_looking_commands_see(tmp_path):
    """`up -d -n 2 --base-port P` with no file and no BSCLUSTER_*: status, route,
    rebalance and config see its two nodes where they listen (not the defaults' four at 11300,
    nor 'pending' advice about them), also after the supervisor was killed."""
    from clusters import free_base_port

    base = free_base_port(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSCLUSTER_")}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bscluster", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=90)

    pids = []
    try:
        assert run("up", "-d", "-n", "2", "--base-port", str(base)).returncode == 0
        status = json.loads(run("status", "--json").stdout)
        pids = [row["pid"] for row in status["nodes"]]
        assert [(r["node"], r["address"], r["up"]) for r in status["nodes"]] == \
            [("node1", f"127.0.0.1:{base}", True), ("node2", f"127.0.0.1:{base + 1}", True)]
        assert status["pending"] == [] and status["exit"] == 0
        routes = json.loads(run("route", "--json", *[f"t{i}" for i in range(8)]).stdout)
        assert {(r["node"], r["address"]) for r in routes} == \
            {("node1", f"127.0.0.1:{base}"), ("node2", f"127.0.0.1:{base + 1}")}
        r = run("rebalance", "--dry-run")
        assert r.returncode == 0 and "nothing to move" in r.stdout, r.stdout + r.stderr
        shown = run("config").stdout
        assert "nodes = 2  # as started" in shown and f"base_port = {base}  #" in shown, shown
        assert f"# node2: 127.0.0.1:{base + 1} " in shown and "node3" not in shown, shown
        os.kill(status["supervisor"]["pid"], signal.SIGKILL)
        orphaned = json.loads(run("status", "--json").stdout)
        assert [(r["node"], r["address"], r["up"]) for r in orphaned["nodes"]] == \
            [("node1", f"127.0.0.1:{base}", True), ("node2", f"127.0.0.1:{base + 1}", True)]
    finally:
        run("down")
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
