"""Grow, rebalance and remove nodes of a running cluster, losing nothing.

Integration, with real processes: a detached 3-node cluster (of bsnode, and
again of beanstalkd 1.12: the moves use only its protocol) described
by a config file, 10,000 jobs in every state (ready, delayed, buried, some
reserved by a worker that holds them through a `remove`), a producer and
consumers running the whole time.  The cluster goes 3 -> 4 nodes (`up -d`
after raising ``nodes``, then `rebalance`) -> 2 nodes (`remove node2`, a
middle node: its table becomes ``removed = true``; `remove node4`, the last:
``nodes`` goes down).  Every acknowledged job must be delivered at least once
with its attributes: body, priority, TTR, buried jobs still buried, delayed
jobs still delayed with about the delay they had left.

The producer and the consumers are plain ``bsclient.Client``s, so this tests
what bscluster guarantees, not the ClusterClient: the producer routes with
the config file's ring (re-read as a client would) and moves a put on to the
next node of the tube's failover order when the owner answers DRAINING; the
consumers reserve from every node the supervisor runs.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bsclient import Client
from bsclient.errors import (
    BeanstalkError,
    ConnectionLostError,
    DrainingError,
    NotFoundError,
    TimedOutError,
)
from bsclient.protocol import encode_command
from bscluster.config import load_config
from bscluster.mover import Pipe
from clusters import Cluster
from servers import BEANSTALKD, HAVE_BEANSTALKD, poll

pytestmark = pytest.mark.integration

PRELOAD = 10_000
PRE_TUBES = [f"pre-{i}" for i in range(24)]
LIVE_TUBES = [f"live-{i}" for i in range(6)]
CONSUMED_DURING = PRE_TUBES[::2] + LIVE_TUBES  # the other pre tubes wait to be moved
HELD = 60  # jobs a worker keeps reserved on node2 while it is removed
DELAY_SLACK = 5  # seconds: whole-second delays, and the time the moves take


class Ledger:
    """Every acknowledged job (body -> attributes) and every delivery."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked: dict[bytes, dict] = {}
        self.delivered: dict[bytes, list[dict]] = {}
        self.problems: list[str] = []

    def ack(self, body: bytes, **attrs) -> None:
        with self.lock:
            self.acked[body] = attrs

    def deliver(self, body: bytes, seen: dict) -> None:
        with self.lock:
            self.delivered.setdefault(body, []).append(seen)


def owner_order(config_path: Path, tube: str) -> list[str]:
    return load_config(config_path, {}, env={}).placement().preference(tube)


def addresses(c: Cluster) -> dict[str, str]:
    state = c.state() or {"nodes": {}}
    return {n: f"127.0.0.1:{e['port']}" for n, e in state["nodes"].items()
            if e["state"] == "RUNNING"}


def preload(c: Cluster, config_path: Path, ledger: Ledger, rng: random.Random) -> None:
    """PRELOAD jobs on the 3 owners: half ready, a quarter delayed, a quarter buried."""
    pipes = {n: Pipe(n, "127.0.0.1", int(a.rsplit(":", 1)[1])) for n, a in addresses(c).items()}
    ring = load_config(config_path, {}, env={}).placement()
    by_node: dict[str, list] = {n: [] for n in pipes}
    for i in range(PRELOAD):
        tube = PRE_TUBES[i % len(PRE_TUBES)]
        kind = ("ready", "ready", "delayed", "buried")[i % 4]
        attrs = {"tube": tube, "pri": rng.randrange(0, 5000), "ttr": rng.randrange(30, 300),
                 "state": kind, "delay": rng.randrange(400, 900) if kind == "delayed" else 0}
        body = f"{tube}/{i}/{kind}".encode() + b"x" * rng.randrange(0, 200)
        by_node[ring.node_for(tube)].append((body, attrs))
    for name, jobs in by_node.items():
        pipe = pipes[name]
        for start in range(0, len(jobs), 500):
            chunk = jobs[start:start + 500]
            cmds = []
            for body, a in chunk:
                cmds += [encode_command("use", a["tube"]),
                         encode_command("put", a["pri"], a["delay"], a["ttr"], len(body),
                                        body=body)]
            sent = time.time()
            replies = pipe.call(cmds)[1::2]
            bury = []
            for (body, a), (words, _) in zip(chunk, replies, strict=True):
                assert words[0] == b"INSERTED", words
                ledger.ack(body, **a, due=sent + a["delay"])
                if a["state"] == "buried":
                    bury += [encode_command("reserve-job", int(words[1])),
                             encode_command("bury", int(words[1]), a["pri"])]
            assert all(w[0] in (b"RESERVED", b"BURIED") for w, _ in pipe.call(bury))
        pipe.close()


def producer(config_path: Path, c: Cluster, ledger: Ledger, stop: threading.Event) -> None:
    """Puts live jobs where a client reading the config file would, failing over on
    DRAINING; only INSERTED counts as acknowledged."""
    rng = random.Random(7)
    clients: dict[str, Client] = {}
    n = 0
    while not stop.is_set():
        tube = LIVE_TUBES[n % len(LIVE_TUBES)]
        body = f"live/{n}".encode()
        pri, ttr = rng.randrange(0, 3000), rng.randrange(20, 200)
        where = addresses(c)
        for name in owner_order(config_path, tube):
            if name not in where:
                continue
            try:
                cl = clients.get(name) or Client(where[name], timeout=10)
                clients[name] = cl
                cl.use(tube)
                cl.put(body, priority=pri, ttr=ttr)
            except DrainingError:
                continue
            except ConnectionLostError:
                clients.pop(name, None)
                continue
            ledger.ack(body, tube=tube, pri=pri, ttr=ttr, state="ready", delay=0, due=0)
            break
        n += 1
        stop.wait(0.003)
    for cl in clients.values():
        cl.close()


def consume(c: Cluster, ledger: Ledger, tubes: list[str], stop: threading.Event,
            until_empty: bool = False) -> None:
    """Reserve from every running node; check the job's attributes; delete it."""
    clients: dict[str, Client] = {}
    idle_rounds = 0
    while not stop.is_set():
        got = 0
        for name, address in addresses(c).items():
            try:
                cl = clients.get(name) or Client(address, watch=tubes, timeout=10)
                clients[name] = cl
                job = cl.reserve(timeout=0)
                st = cl.stats_job(job)
                ledger.deliver(job.body, {"tube": st["tube"], "pri": st["pri"],
                                          "ttr": st["ttr"], "state": "ready"})
                cl.delete(job)
                got += 1
            except TimedOutError:
                pass
            except (ConnectionLostError, NotFoundError):
                clients.pop(name, None)
            except BeanstalkError as e:
                ledger.problems.append(f"consumer on {name}: {e!r}")
        idle_rounds = 0 if got else idle_rounds + 1
        if until_empty and idle_rounds >= 3:
            break
    for cl in clients.values():
        cl.close()


def collect_rest(c: Cluster, ledger: Ledger) -> None:
    """Take every delayed and buried job left, with what stats-job says of it."""
    for name, address in addresses(c).items():
        with Client(address, timeout=10) as cl:
            for tube in PRE_TUBES + LIVE_TUBES:
                cl.use(tube)
                for peek in (cl.peek_delayed, cl.peek_buried):
                    while True:
                        try:
                            job = peek()
                        except NotFoundError:
                            break
                        st = cl.stats_job(job)
                        ledger.deliver(job.body, {
                            "tube": st["tube"], "pri": st["pri"], "ttr": st["ttr"],
                            "state": st["state"], "due": time.time() + st["time-left"],
                            "node": name})
                        cl.delete(job)


def bscluster(c: Cluster, *args: str) -> str:
    r = c.run(*args)
    assert r.returncode == 0, f"bscluster {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def check(ledger: Ledger) -> None:
    assert not ledger.problems, ledger.problems[:5]
    missing = [b for b in ledger.acked if b not in ledger.delivered]
    assert not missing, f"{len(missing)} acknowledged jobs were lost, e.g. {missing[:3]}"
    for body, want in ledger.acked.items():
        for got in ledger.delivered[body]:
            assert (got["tube"], got["pri"], got["ttr"]) == \
                (want["tube"], want["pri"], want["ttr"]), (body, want, got)
            if want["state"] == "buried":
                assert got["state"] == "buried", (body, got)
            if want["state"] == "delayed" and got["state"] == "delayed":
                assert abs(got["due"] - want["due"]) <= DELAY_SLACK, (body, want, got)
            if want["state"] == "delayed":
                assert got["state"] == "delayed", (body, "ran early", got)


@pytest.mark.parametrize("kind", ["bsnode", "beanstalkd"])
def test_grow_rebalance_and_remove_with_producers_and_consumers(tmp_path, kind):
    if kind == "beanstalkd" and not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    started = time.monotonic()
    command = BEANSTALKD if kind == "beanstalkd" else f"{sys.executable} -m bsnode"
    c = Cluster(tmp_path, command, 3)
    for key in ("BSCLUSTER_NODES", "BSCLUSTER_BASE_PORT", "BSCLUSTER_DATA_DIR"):
        del c.env[key]  # the file decides, as it does for clients
    config_path = tmp_path / "bscluster.toml"
    config_path.write_text(f'# the test cluster\n[cluster]\nnodes = 3\nbase_port = '
                           f'{c.base_port}\ndata_dir = "data"\n')
    ledger, stop, threads = Ledger(), threading.Event(), []
    try:
        bscluster(c, "up", "-d")
        preload(c, config_path, ledger, random.Random(1))
        threads = [threading.Thread(target=producer, args=(config_path, c, ledger, stop)),
                   *(threading.Thread(target=consume, args=(c, ledger, CONSUMED_DURING, stop))
                     for _ in range(2))]
        for t in threads:
            t.start()

        # 3 -> 4: a quarter of the tubes get node4 as owner; rebalance moves them there
        config_path.write_text(config_path.read_text().replace("nodes = 3", "nodes = 4"))
        bscluster(c, "up", "-d")
        moved = json.loads(bscluster(c, "rebalance", "--json"))
        assert moved["errors"] == [] and moved["moved_total"] > 0, moved
        assert {m["target"] for m in moved["moves"] if sum(m["moved"].values())} >= {"node4"}

        # a worker holds jobs reserved on node2 while node2 is removed
        holder = Client(addresses(c)["node2"], watch=PRE_TUBES[1::2], timeout=10)
        held = [holder.reserve(timeout=0) for _ in range(HELD)]
        remove = subprocess.Popen(
            [sys.executable, "-m", "bscluster", "remove", "node2", "--timeout", "60"],
            env=c.env, cwd=c.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        poll(lambda: _only_reserved_left(c, "node2", HELD), 40, "node2 to hold only the "
             "reserved jobs")
        for job in held:  # the worker gives them back: remove moves them, nothing is lost
            st = holder.stats_job(job)
            holder.release(job, priority=st["pri"])
        holder.close()
        out, _ = remove.communicate(timeout=60)
        assert remove.returncode == 0, out
        assert "[nodes.node2] removed = true" in out, out
        # it said what it waited for while the worker held them
        assert re.search(r"waiting for the \d+ jobs? reserved on node2 to be released", out), out

        # 4 -> 3 -> 2: node4 is the last node, so `nodes` goes down
        assert "nodes = 3" in bscluster(c, "remove", "node4")
        assert sorted(c.state()["nodes"]) == ["node1", "node3"]
        config = load_config(config_path, {}, env={})
        assert [n.name for n in config.nodes] == ["node1", "node3"]
        assert "# the test cluster" in config_path.read_text()  # the file was edited, not rewritten

        stop.set()
        for t in threads:
            t.join(30)
        consume(c, ledger, PRE_TUBES + LIVE_TUBES, threading.Event(), until_empty=True)
        collect_rest(c, ledger)
        check(ledger)
        assert len(ledger.acked) > PRELOAD  # the producer's jobs count too
        assert time.monotonic() - started < 120
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        c.cleanup()


def _only_reserved_left(c: Cluster, name: str, held: int) -> bool:
    from bscluster.probe import node_report
    entry = c.node(name)
    if not entry.get("draining"):
        return False
    stats = node_report("127.0.0.1", entry["port"]).stats
    return stats.get("current-jobs-reserved") == held and not any(
        stats.get(f"current-jobs-{k}") for k in ("ready", "delayed", "buried"))


def test_the_last_node_is_removed_without_a_config_file(tmp_path):
    """Nodes from flags and BSCLUSTER_* only: `remove` takes out the last node (its jobs
    moved first) and says the file could not record it."""
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    try:
        bscluster(c, "up", "-d")
        tube = next(r["tube"] for r in json.loads(bscluster(
            c, "route", "--json", *(f"t{i}" for i in range(64)))) if r["node"] == "node2")
        with Client(addresses(c)["node2"], use=tube, timeout=10) as cl:
            cl.put(b"moves to node1")
        out = bscluster(c, "remove", "node2")
        assert "is empty (1 job moved" in out and "no config file" in out, out
        assert sorted(c.state()["nodes"]) == ["node1"]
        with Client(addresses(c)["node1"], watch=[tube], timeout=10) as cl:
            assert cl.reserve(timeout=0).body == b"moves to node1"
    finally:
        c.cleanup()
