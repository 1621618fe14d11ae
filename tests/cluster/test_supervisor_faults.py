"""Supervisor faults with real bsnode processes and binlogs.

* A node that cannot start (its binlog is damaged) is retried a few times,
  then FATAL with bsnode's own explanation, in the state file and in
  `bscluster status`; the other nodes run on.  (Found here: the supervisor
  took an open port for readiness while bsnode listened before replaying,
  so such a node crash-looped as RUNNING; bsnode now listens after replay.)
* A node that starts and then keeps dying is restarted with growing delays
  (it never spins), then given up on: FATAL after ``crash_limit`` crashes
  within ``crash_window``, with one log line and a `status` reason naming
  the exits; `bscluster restart` brings it back.
* The supervisor itself SIGKILLed: its nodes keep serving; the next
  `bscluster up -d` adopts the live ones and replaces the dead one from its
  binlog, and even two `up -d` racing each other leave exactly one process
  listening on each node's port.

Clusters run in tmp_path on free loopback ports (tests/clusters.py's
``Cluster``) and are taken down, with every pid they ever had, at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from bsclient import Client
from bscluster.runtime import pid_alive
from bscluster.states import START_RETRIES
from clusters import Cluster
from servers import bsnode_command, poll

pytestmark = pytest.mark.integration

BSNODE = " ".join(bsnode_command())
CRASHER = r'''
import signal, subprocess, sys, time
node = subprocess.Popen(sys.argv[1:])
def stop(*_):
    node.kill()
    node.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)  # never leave the real node behind
time.sleep(float(__import__("os").environ.get("CRASH_AFTER", "1.0")))
node.kill()
node.wait()
sys.exit(3)
'''


@pytest.fixture
def cluster(tmp_path):
    made: list[Cluster] = []

    def make(nodes: int = 2, command: str = BSNODE, **env) -> Cluster:
        c = Cluster(tmp_path, command, nodes, env)
        made.append(c)
        return c
    yield make
    for c in made:
        c.cleanup()


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for line in f if line.split()[1] == want and line.split()[3] == "0A")


def node_processes(port: int) -> list[int]:
    """Pids of bsnode processes started for this port."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"bsnode" in a for a in argv) and str(port).encode() in argv:
            found.append(int(pid))
    return found


def client(c: Cluster, node: str) -> Client:
    e = c.node(node)
    return Client(f"127.0.0.1:{e['port']}", timeout=5)


# --- nodes that cannot start, and nodes that keep dying -------------------------------
def damaged_log(path: Path, records: int = 50000) -> bytes:
    """A segment of valid records, damage, then one more valid record (so it
    is corruption, not a torn tail): bsnode reads it all, then refuses."""
    from bsnode.binlog import format as F
    now = int(time.time() * 1000)
    good = [F.frame(msgpack.packb([F.FULL, i, "t", 0, 0, 60, b"x" * 40, F.STATE_READY, 0,
                                   now, 0, 0, 0, 0, 0])) for i in range(1, records + 1)]
    data = F.header(1) + b"".join(good) + b"\xce damaged \xce" + good[0]
    path.write_bytes(data)
    return data


def test_a_node_whose_binlog_is_damaged_goes_fatal_with_bsnodes_reason(cluster):
    c = cluster(nodes=2)
    bad = c.data_dir / "node2"
    bad.mkdir(parents=True, mode=0o700)
    data = damaged_log(bad / "binlog.1")
    r = c.run("up", "-d")
    assert r.returncode == 1, r.stdout + r.stderr
    node2 = c.wait_state("node2", "FATAL")
    assert "while starting" in node2["reason"], node2["reason"]
    assert "FATAL" in r.stdout, r.stdout
    assert "node2 FATAL: could not start after" in (c.data_dir / "bscluster.log").read_text()
    assert "binlog.1" in node2["reason"] and "damaged at offset" in node2["reason"], \
        node2["reason"]
    assert node2["restarts"] == START_RETRIES  # the first start, then the retries
    assert c.node("node1")["state"] == "RUNNING"
    with client(c, "node1") as cl:
        assert cl.put(b"still served") > 0
    status = c.run("status")
    assert status.returncode == 3
    assert "FATAL" in status.stdout and "binlog.1" in status.stdout
    assert (bad / "binlog.1").read_bytes() == data  # never cut or "repaired"


def test_a_node_that_keeps_dying_is_restarted_then_given_up_on(cluster, tmp_path):
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    c = cluster(nodes=1, command=f"{sys.executable} {script} {BSNODE}", CRASH_AFTER="1.0",
                BSCLUSTER_CRASH_LIMIT="3", BSCLUSTER_CRASH_WINDOW="60")
    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    seen_states = set()
    t0 = time.monotonic()
    while c.node("node1").get("state") != "FATAL":  # 3 crashes: ~1 + 1 + 1.5 s of life
        seen_states.add(c.node("node1").get("state"))
        assert time.monotonic() - t0 < 20, c.node("node1")
        time.sleep(0.02)
    gave_up = time.monotonic() - t0
    node1 = c.node("node1")
    log = (c.data_dir / "bscluster.log").read_text()
    print(f"a node dying 1 s after each start, crash_limit 3: FATAL after {gave_up:.1f} s, "
          f"{node1['restarts']} restarts, states {sorted(s for s in seen_states if s)}")
    assert {"RUNNING", "BACKOFF"} <= seen_states
    # (a start slowed past 1 s by a busy machine is a failed start, retried too)
    assert node1["restarts"] >= 2 and node1["crashes"] == 3 and node1["pid"] is None
    assert "crashed 3 times in" in node1["reason"], node1["reason"]
    assert "exited with status 3" in node1["reason"]
    assert "crash loop" in log  # the delayed restart before giving up
    assert sum(" FATAL: crashed 3 times" in ln for ln in log.splitlines()) == 1, log
    time.sleep(1.0)  # FATAL stays FATAL: nothing restarts it behind our back
    restarts = node1["restarts"]
    assert c.node("node1")["restarts"] == restarts and c.node("node1")["state"] == "FATAL"
    status = c.run("status")
    assert status.returncode == 3
    assert "FATAL" in status.stdout and "crashed 3 times" in status.stdout, status.stdout
    # the operator fixes the cause (here: a longer life) and revives it
    revived = c.run("restart", "node1")
    assert revived.returncode == 0, revived.stdout + revived.stderr
    assert c.node("node1")["state"] in ("RUNNING", "BACKOFF")
    assert c.node("node1")["restarts"] >= restarts + 1


# --- the supervisor killed --------------------------------------------------------------
def test_killed_supervisor_nodes_are_adopted_or_replaced_never_duplicated(cluster):
    c = cluster(nodes=3)
    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = {}
    for name in ("node1", "node2", "node3"):
        with client(c, name) as cl:
            ids[name] = cl.put(name.encode())
    before = {n: c.node(n)["pid"] for n in ids}
    sup = c.state()["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    poll(lambda: not pid_alive(sup), what="the supervisor gone")
    # unsupervised: the nodes serve on; one of them dies meanwhile
    with client(c, "node1") as cl:
        assert cl.peek(ids["node1"]).body == b"node1"
    os.kill(before["node3"], signal.SIGKILL)
    poll(lambda: not pid_alive(before["node3"]), what="node3 gone")

    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    after = c.state()
    assert after["supervisor"]["pid"] != sup
    for name in ("node1", "node2"):
        assert after["nodes"][name]["pid"] == before[name] and after["nodes"][name]["adopted"]
    assert after["nodes"]["node3"]["pid"] != before["node3"]
    assert after["nodes"]["node3"]["state"] == "RUNNING"
    for name, jid in ids.items():  # node3's job came back from its binlog
        with client(c, name) as cl:
            assert cl.peek(jid).body == name.encode()
    ports = [after["nodes"][n]["port"] for n in ids]
    assert [listeners(p) for p in ports] == [1, 1, 1]
    assert [len(node_processes(p)) for p in ports] == [1, 1, 1]

    # the supervisor killed again, and two `up -d` race to replace it
    sup = after["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    poll(lambda: not pid_alive(sup), what="the supervisor gone")
    racers = [subprocess.Popen([sys.executable, "-m", "bscluster", "up", "-d"], env=c.env,
                               cwd=c.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    outs = [p.communicate(timeout=90)[0] for p in racers]
    codes = [p.returncode for p in racers]
    c.remember()
    assert 0 in codes, outs
    final = c.state()
    assert pid_alive(final["supervisor"]["pid"])
    supervisors = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                   if _is_supervisor_of(pid, c.data_dir)]
    assert supervisors == [final["supervisor"]["pid"]], (supervisors, outs)
    assert [listeners(p) for p in ports] == [1, 1, 1]
    assert [len(node_processes(p)) for p in ports] == [1, 1, 1]
    assert {n: final["nodes"][n]["pid"] for n in ids} == \
        {n: after["nodes"][n]["pid"] for n in ids}
    r = c.run("down")
    assert r.returncode == 0
    assert [listeners(p) for p in ports] == [0, 0, 0]


def _is_supervisor_of(pid: int, data_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"bscluster" in b" ".join(argv) and b"supervise" in argv and \
        str(data_dir).encode() in b" ".join(argv)
