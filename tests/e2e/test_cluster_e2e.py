"""A real `bscluster up --nodes 4` in a temp dir, as a user would run it.

Runs once with bsnode and once with /usr/bin/beanstalkd as the node program
(same flags), on free loopback ports, from a config file that `bscluster
init` wrote.  One scenario per node kind: round trip through every node
(raw sockets, and ClusterClient), `status` and `stats` show the jobs, kill -9
of a node is repaired within 2 seconds with its jobs (binlog), `restart` keeps
the jobs, and `down` leaves no process and no socket behind.  Every node runs
with its binlog (`bscluster init` writes `binlog = true`): a node that cannot
start with -b fails `up`, and a job lost to kill -9 fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from bsclient import ClusterClient
from bscluster.runtime import pid_alive
from clusters import Cluster, free_base_port, port_free
from servers import BEANSTALKD, HAVE_BEANSTALKD, poll

pytestmark = pytest.mark.integration
NODES = 4


@pytest.fixture(params=["bsnode", "beanstalkd"])
def cluster(request, tmp_path):
    kind = request.param
    if kind == "beanstalkd":
        if not HAVE_BEANSTALKD:
            pytest.skip("/usr/bin/beanstalkd is not installed")
        command = BEANSTALKD
    else:
        command = f"{sys.executable} -m bsnode"
    c = Cluster(tmp_path, command, NODES)
    for key in ("BSCLUSTER_NODES", "BSCLUSTER_BASE_PORT", "BSCLUSTER_DATA_DIR"):
        del c.env[key]  # this cluster is described by its config file only
    c.kind = kind
    yield c
    c.cleanup()


def send(port: int, data: bytes, replies: int) -> list[bytes]:
    """Send commands to a node and read ``replies`` reply lines (with bodies)."""
    from bsclient.protocol import ReplyReader
    reader, out = ReplyReader(), []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        while len(out) < replies:
            chunk = s.recv(65536)
            assert chunk, "connection closed"
            out += reader.feed(chunk)
    return [b" ".join(words) + (b" " + body if body is not None else b"") for words, body in out]


def tube_counts(port: int, tube: str) -> dict:
    from bscluster.probe import parse_yaml
    (reply,) = send(port, f"stats-tube {tube}\r\n".encode(), 1)
    assert reply.startswith(b"OK "), reply
    return parse_yaml(reply.split(b" ", 2)[2])


def put_jobs(port: int, tube: str) -> None:
    """3 ready jobs and 1 buried one in ``tube``."""
    cmds = f"use {tube}\r\n".encode()
    for i in range(4):
        body = f"{tube}-job{i}".encode()
        cmds += b"put 100 0 60 %d\r\n%s\r\n" % (len(body), body)
    replies = send(port, cmds, 5)
    assert all(r.startswith(b"INSERTED") for r in replies[1:]), replies
    first_id = replies[1].split()[1].decode()
    replies = send(port, f"watch {tube}\r\nreserve-job {first_id}\r\nbury {first_id} 5\r\n"
                   .encode(), 3)
    assert replies[2] == b"BURIED", replies


def jobs_of(port: int, tube: str) -> tuple[int, int]:
    c = tube_counts(port, tube)
    return c["current-jobs-ready"], c["current-jobs-buried"]


def test_up_use_kill_restart_down(cluster, tmp_path):
    c = cluster
    base = free_base_port(NODES + 1)
    c.run("init", "--nodes", str(NODES), "--base-port", str(base), "--data-dir", "data",
          check=True)
    assert "binlog = true" in (tmp_path / "bscluster.toml").read_text()

    # --- up ------------------------------------------------------------------
    r = c.run("up", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{NODES} of {NODES} nodes running" in r.stdout
    for i in range(NODES):
        assert f"node{i + 1}  127.0.0.1:{base + i}" in r.stdout
    assert f"telnet 127.0.0.1 {base}" in r.stdout
    assert f'ClusterClient.from_config("{tmp_path / "bscluster.toml"}")' in r.stdout
    ports = {f"node{i + 1}": base + i for i in range(NODES)}

    # --- round trip through every node, raw ------------------------------------
    for name, port in ports.items():
        put_jobs(port, f"e2e-{name}")
        assert jobs_of(port, f"e2e-{name}") == (3, 1)

    # --- ... and through ClusterClient -------------------------------------------
    client = ClusterClient.from_config(tmp_path / "bscluster.toml")
    try:
        owned = {}
        for i in range(10_000):
            owned.setdefault(client.node_for(f"cc-{i}"), f"cc-{i}")
            if len(owned) == NODES:
                break
        assert set(owned) == set(ports), "some node owns no tube in 10,000 names"
        for name, tube in owned.items():
            client.use(tube)
            assert client.put(f"via {name}".encode()).startswith(f"{name}/")
            client.watch(tube)
        client.ignore("default")
        got = {}
        for _ in range(NODES):
            job = client.reserve(timeout=5)
            got[job.node] = job.body
            client.delete(job)
        assert got == {name: f"via {name}".encode() for name in ports}
    finally:
        client.close()

    # --- status and stats show the jobs ---------------------------------------------
    r = c.run("status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["node"]: row for row in json.loads(r.stdout)["nodes"]}
    for name in ports:
        assert rows[name]["state"] == "RUNNING" and rows[name]["up"]
        assert (rows[name]["ready"], rows[name]["buried"]) == (3, 1), rows[name]
    assert "RUNNING" in c.run("status").stdout
    r = c.run("stats", "--json")
    doc = json.loads(r.stdout)
    assert doc["totals"]["current-jobs-ready"] == 3 * NODES
    assert doc["totals"]["current-jobs-buried"] == NODES
    for name in ports:
        row = doc["tubes"][f"e2e-{name}"]
        assert (row["current-jobs-ready"], row["nodes"].keys()) == (3, {name})
    text = c.run("stats").stdout
    assert f"{NODES}/{NODES} nodes up" in text and "e2e-node3" in text

    # --- kill -9 one node: back at once (under 2 s on an idle machine), with its jobs ---
    victim = c.node("node2")
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    back = poll(lambda: (n := c.node("node2")).get("state") == "RUNNING"
                and n["pid"] != victim["pid"] and n, timeout=20.0, what="node2 back")
    print(f"node2 back {time.monotonic() - t0:.2f} s after kill -9")
    assert back["port"] == ports["node2"]
    assert _has_tube(ports["node2"]), "node2 lost its tube (and its jobs) to kill -9"
    assert jobs_of(ports["node2"], "e2e-node2") == (3, 1), "node2 lost jobs to kill -9"

    # --- restart (one node, through the supervisor) keeps the jobs too -------------------
    r = c.run("restart", "node3")
    assert r.returncode == 0 and "node3 restarted" in r.stdout, r.stdout + r.stderr
    assert _has_tube(ports["node3"]), "node3 lost its tube (and its jobs) to restart"
    assert jobs_of(ports["node3"], "e2e-node3") == (3, 1), "node3 lost jobs to restart"

    # --- down: no process, no socket -----------------------------------------------------
    state = c.state()
    pids = [state["supervisor"]["pid"]] + [e["pid"] for e in state["nodes"].values()]
    r = c.run("down")
    assert r.returncode == 0 and f"stopped {NODES} nodes" in r.stdout, r.stdout + r.stderr
    alive = [(p, _proc_status(p)) for p in pids if pid_alive(p)]
    assert alive == []
    assert all(port_free(p) for p in ports.values())
    data = tmp_path / "data"
    leftovers = [p for p in data.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
    assert leftovers == []
    assert not {"bscluster.json", "bscluster.lock", "wanted.json", "requests"} & \
        {p.name for p in data.iterdir()}
    assert oct(data.stat().st_mode & 0o777) == "0o700"


def _has_tube(port: int) -> bool:
    (reply,) = send(port, b"list-tubes\r\n", 1)
    return b"- e2e-" in reply


def _proc_status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().splitlines()[:3]
    except OSError:
        return "gone"
