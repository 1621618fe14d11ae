"""Supervision, for real: processes started, killed, adopted and stopped.

The nodes here are a tiny fake node program (written to tmp_path) so each
behaviour can be forced: serve, fail at start, or serve and say hello.  It
takes beanstalkd's -l/-p flags like bsnode.  Every cluster runs on free
loopback ports in tmp_path and is taken down by the fixture, which also
kills anything the state file still names.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bscluster.runtime import pid_alive
from bscluster.states import START_RETRIES
from clusters import DEADLINE, Cluster, port_free
from servers import poll

pytestmark = pytest.mark.integration

FAKE_NODE = r'''
import os, signal, socket, sys
args = sys.argv[1:]
host = args[args.index("-l") + 1]
port = int(args[args.index("-p") + 1])
mode = os.environ.get("FAKE_MODE", "serve")
with open(os.environ["FAKE_COUNT"], "a") as f:
    f.write(f"{port}\n")
if mode == "fail" or (mode == "fail-port" and str(port) == os.environ.get("FAKE_FAIL_PORT")):
    print("fake: cannot open binlog in /nowhere: Permission denied", file=sys.stderr)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print(f"fake node says hello on {port}", flush=True)
print(f"listening on {host}:{s.getsockname()[1]}", file=sys.stderr, flush=True)
while True:
    c, _ = s.accept()
    c.close()
'''

@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    counter = tmp_path / "spawns"
    counter.touch()
    made = []

    def make(nodes: int = 2, **env) -> Cluster:
        c = Cluster(tmp_path, f"{sys.executable} {script}", nodes,
                    {"FAKE_COUNT": str(counter), **env})
        made.append(c)
        return c
    yield make
    for c in made:
        c.cleanup()


def spawns(tmp_path: Path) -> list[str]:
    return (tmp_path / "spawns").read_text().split()


# --- foreground ------------------------------------------------------------------
def test_foreground_prefixes_output_and_ctrl_c_stops_everything(fake):
    c = fake(nodes=2)
    proc = c.start_foreground()
    poll(lambda: "2 of 2 nodes running" in c.output(), what="the banner")
    out = c.output()
    stamp = r"\d\d:\d\d:\d\d\.\d{3} "  # every line starts with the time of day
    assert re.search(rf"^{stamp}node1 +\| fake node says hello on {c.base_port}$", out, re.M)
    assert re.search(rf"^{stamp}node2 +\| fake node says hello on {c.base_port + 1}$", out, re.M)
    assert re.search(rf"^{stamp}bscluster +\| ", out, re.M)
    assert f"telnet 127.0.0.1 {c.base_port}" in out
    assert 'ClusterClient({"node1": "127.0.0.1:' in out
    pids = [c.node(n)["pid"] for n in ("node1", "node2")]
    assert all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(DEADLINE) == 0
    assert not any(pid_alive(p) for p in pids)
    assert port_free(c.base_port) and port_free(c.base_port + 1)
    assert "all nodes stopped" in c.output()
    assert sorted(p.name for p in c.data_dir.iterdir()) == ["node1", "node2"]


def test_port_in_use_is_fatal_with_the_reason_and_others_keep_running(fake):
    c = fake(nodes=2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", c.base_port + 1))
        squatter.listen(1)
        proc = c.start_foreground()
        node2 = c.wait_state("node2", "FATAL")
        assert "already in use by another program" in node2["reason"]
        c.wait_state("node1", "RUNNING")
        status = c.run("status")
        assert status.returncode == 3  # node2 does not answer... as ours
        assert "FATAL" in status.stdout and "already in use" in status.stdout
        again = c.run("up", "-d")  # a script making sure the cluster is up: not while FATAL
        assert again.returncode == 1 and "already running" in again.stdout, again.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    assert spawns(c.dir) == [str(c.base_port)]  # node2 was never even tried


# --- detached ------------------------------------------------------------------------
def test_node_that_cannot_start_goes_fatal_after_retries_not_forever(fake):
    c = fake(nodes=1, FAKE_MODE="fail")
    r = c.run("up", "--detach")
    assert r.returncode == 1
    # the supervisor gave up, said why, and stopped: nothing left to supervise
    assert "the nodes could not start:\n  node1: could not start after" in r.stderr
    assert "fake: cannot open binlog in /nowhere: Permission denied" in r.stderr
    assert len(spawns(c.dir)) == START_RETRIES + 1
    log = (c.data_dir / "bscluster.log").read_text()
    assert "node1 FATAL: could not start after" in log
    assert "no node could start" in log


def test_one_failing_node_is_fatal_the_rest_run(fake):
    c = fake(nodes=2, FAKE_MODE="fail-port")
    c.env["FAKE_FAIL_PORT"] = str(c.base_port + 1)
    r = c.run("up", "-d")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "node1" in r.stdout and "RUNNING" in r.stdout
    assert "FATAL" in r.stdout and "Permission denied" in r.stdout
    status = c.run("status")
    assert status.returncode == 3
    assert "node2: exited with status 3 while starting: fake: cannot open binlog" in status.stdout
    assert c.run("down").returncode == 0


def test_crashed_node_is_back_within_two_seconds(fake):
    c = fake(nodes=2)
    c.run("up", "-d", check=True)
    old = c.node("node2")
    os.kill(old["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    new = poll(lambda: (n := c.node("node2")).get("state") == "RUNNING"
               and n["pid"] != old["pid"] and n, timeout=2.0, what="node2 back")
    assert time.monotonic() - t0 < 2.0
    assert new["restarts"] == 1 and new["port"] == old["port"]
    assert c.node("node1")["restarts"] == 0
    assert "node2 was killed by SIGKILL unexpectedly; restarting" in \
        (c.data_dir / "bscluster.log").read_text()


def test_killed_supervisor_leaves_nodes_that_up_adopts_without_duplicates(fake):
    c = fake(nodes=2)
    c.run("up", "-d", check=True)
    before = {n: c.node(n)["pid"] for n in ("node1", "node2")}
    sup = c.state()["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    poll(lambda: not pid_alive(sup), what="supervisor gone")
    assert all(pid_alive(p) for p in before.values())
    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    after = c.state()
    assert after["supervisor"]["pid"] != sup
    assert {n: after["nodes"][n]["pid"] for n in before} == before
    assert all(after["nodes"][n]["adopted"] for n in before)
    assert len(spawns(c.dir)) == 2  # nothing was started twice
    # an adopted node that dies is restarted as a child of the new supervisor
    os.kill(before["node1"], signal.SIGKILL)
    back = poll(lambda: (n := c.node("node1")).get("state") == "RUNNING"
                and n["pid"] != before["node1"] and n, what="node1 back")
    assert back["adopted"] is False
    r = c.run("down")
    assert r.returncode == 0
    assert not any(pid_alive(p) for p in [*before.values(), back["pid"]])


def test_down_after_supervisor_was_killed_stops_the_orphans(fake):
    c = fake(nodes=2)
    c.run("up", "-d", check=True)
    state = c.state()
    pids = [e["pid"] for e in state["nodes"].values()]
    os.kill(state["supervisor"]["pid"], signal.SIGKILL)
    poll(lambda: not pid_alive(state["supervisor"]["pid"]), what="supervisor gone")
    r = c.run("restart", "node1")  # needs a supervisor: says what to do, not "no cluster"
    assert r.returncode == 4 and "is gone (killed?) and its nodes run unsupervised: " \
        "`bscluster up -d` adopts them, then run `bscluster restart` again" in r.stderr, r.stderr
    r = c.run("down")
    assert "stopped 2 leftover node process(es)" in r.stdout
    assert not any(pid_alive(p) for p in pids)
    assert not (c.data_dir / "bscluster.json").exists()


def test_up_again_in_the_default_data_dir_hints_commands_without_flags(fake):
    """The banner of a second `up` names the same commands as the first: `status`, not
    `status --data-dir ...` (the running cluster's settings it keeps are not flags)."""
    c = fake(nodes=2)
    flags = c.by_hand()
    first = c.run("up", "-d", *flags, check=True).stdout
    again = c.run("up", "-d", "--nodes", "3", *flags[2:], check=True).stdout
    for out in (first, again):
        assert "look: bscluster status | bscluster stats | bscluster top\n" in out, out
        assert "stop: bscluster down\n" in out, out


def test_up_with_more_nodes_adds_them_and_restart_replaces_one(fake):
    c = fake(nodes=2)
    c.run("up", "-d", check=True)
    node1 = c.node("node1")["pid"]
    r = c.run("up", "-d", "--nodes", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adding node3" in r.stdout
    assert c.node("node3")["port"] == c.base_port + 2
    assert c.node("node1")["pid"] == node1  # untouched
    r = c.run("up", "--nodes", "2")
    assert r.returncode == 1 and "only adds nodes" in r.stderr
    r = c.run("restart", "node2")
    assert r.returncode == 0, r.stderr
    assert "node2 restarted" in r.stdout
    assert c.node("node2")["restarts"] == 1 and c.node("node1")["pid"] == node1
    r = c.run("restart", "node7")
    assert r.returncode == 1 and "no node named 'node7'" in r.stderr


def test_restart_without_binlog_needs_force(fake):
    c = fake(nodes=1)
    c.run("up", "-d", "--no-binlog", check=True)
    r = c.run("restart")
    assert r.returncode == 1 and "without a binlog" in r.stderr and "--force" in r.stderr
    r = c.run("restart", "--force")
    assert r.returncode == 0 and "node1 restarted" in r.stdout


def test_bad_node_data_dir_is_fatal_with_the_reason(fake, tmp_path):
    (tmp_path / "afile").write_text("not a dir")
    config = tmp_path / "bscluster.toml"
    config.write_text(f'[nodes.node2]\ndata_dir = "{tmp_path / "afile"}"\n')
    c = fake(nodes=2)
    r = c.run("up", "-d", "--config", str(config))
    assert r.returncode == 1
    assert f"data dir {tmp_path / 'afile'} exists and is not a directory" in r.stdout


def test_second_supervisor_for_the_same_data_dir_is_refused(fake):
    c = fake(nodes=1)
    c.run("up", "-d", check=True)
    r = c.run("supervise", "--data-dir", str(c.data_dir))
    assert r.returncode == 1 and "already running" in r.stderr


def test_down_stops_the_server_a_wrapper_runs_without_exec(tmp_path):
    """A node_command that is a shell script running bsnode as its child (no exec):
    SIGTERM goes to the node's process group, so `down` leaves no server behind and
    the next `up` finds its ports free."""
    wrapper = tmp_path / "wrap.sh"
    wrapper.write_text(f'#!/bin/sh\n{sys.executable} -m bsnode "$@"\n')
    wrapper.chmod(0o755)
    c = Cluster(tmp_path, str(wrapper), 2)
    try:
        c.run("up", "-d", check=True)
        ports = [e["port"] for e in c.state()["nodes"].values()]
        assert not any(port_free(p) for p in ports)
        c.run("down", check=True)
        poll(lambda: all(port_free(p) for p in ports) or None, 10, "the servers to stop")
        c.run("up", "-d", check=True)  # (it failed: "already in use by another program")
    finally:
        c.run("down")
        c.cleanup()


def test_closing_the_terminal_of_a_foreground_up_stops_the_cluster(fake):
    """The kernel's SIGHUP when the terminal goes away ends a foreground `up` (as Ctrl-C
    does) instead of being taken for a reload: no headless cluster with no log."""
    import fcntl
    import pty
    import termios

    c = fake(nodes=2)
    master, slave = pty.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    up = subprocess.Popen([sys.executable, "-m", "bscluster", "up"], env=c.env, cwd=c.dir,
                          stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    try:
        c.wait_state("node1", "RUNNING")
        state = c.wait_state("node2", "RUNNING") and c.state()
        pids = [e["pid"] for e in state["nodes"].values()]
        os.close(master)  # the terminal closes
        master = None
        assert up.wait(DEADLINE) == 0
        assert not any(pid_alive(p) for p in pids)
        assert port_free(c.base_port) and port_free(c.base_port + 1)
    finally:
        if master is not None:
            os.close(master)
        if up.poll() is None:
            up.kill()
            up.wait()
