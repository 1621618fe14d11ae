"""`bscluster rebalance` when a node does not answer: it says so and exits 1.

Integration, with a real detached 2-node cluster.  A job is put on node1
into a tube that node2 owns; then one node is hung with SIGSTOP (its socket
still accepts, nothing answers: the probe's timeout is what ends the wait).
A hung owner leaves the tube not moved; a hung source cannot be looked at.
Either way `rebalance` (and its dry run) names what it could not do, never
claims "nothing to move", and exits 1; after SIGCONT a rerun moves the job
and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager

import pytest
from bsclient import Client
from bsclient.errors import NotFoundError
from clusters import Cluster

pytestmark = pytest.mark.integration

HUNG_RUN = 15.0  # seconds a rebalance may take with a hung node (probe timeout 2 s + startup)


def start(tmp_path) -> Cluster:
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    r = c.run("up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    return c


def tube_owned_by(c: Cluster, node: str) -> str:
    """A tube the config's ring gives to ``node``."""
    tubes = [f"thumbnails-{i}" for i in range(64)]
    rows = json.loads(c.run("route", "--json", *tubes, check=True).stdout)
    return next(r["tube"] for r in rows if r["node"] == node)


def misplace(c: Cluster, node: str, tube: str) -> None:
    with Client(("127.0.0.1", c.node(node)["port"]), use=tube) as client:
        client.put(b"on the wrong node")


@contextmanager
def misplaced_job_and_hung(tmp_path, hung: str):
    """A started cluster with one job on node1 in a tube node2 owns, and ``hung``
    SIGSTOPped; yields (cluster, tube, resume), resume() sending the SIGCONT.  At the
    end: SIGCONT if still due, then down."""
    c = start(tmp_path)
    stopped = []
    try:
        tube = tube_owned_by(c, "node2")
        misplace(c, "node1", tube)
        pid = c.node(hung)["pid"]
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

        def resume() -> None:
            os.kill(stopped.pop(), signal.SIGCONT)

        yield c, tube, resume
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        c.run("down")
        c.cleanup()


def ready_on(c: Cluster, node: str, tube: str) -> int:
    with Client(("127.0.0.1", c.node(node)["port"])) as client:
        try:
            return client.stats_tube(tube)["current-jobs-ready"]
        except NotFoundError:  # an empty tube nobody uses is gone
            return 0


def timed(c: Cluster, *args: str):
    started = time.monotonic()
    r = c.run(*args)
    elapsed = time.monotonic() - started
    assert elapsed < HUNG_RUN, f"rebalance took {elapsed:.1f}s with a hung node"
    return r


def test_owner_that_does_not_answer_leaves_the_tube_and_exits_1(tmp_path):
    with misplaced_job_and_hung(tmp_path, "node2") as (c, tube, resume):

        r = timed(c, "rebalance")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert f"not moved: node1 {tube}: its target node2 does not answer" in r.stdout, out
        assert "node2 could not be asked" in r.stdout, out

        r = timed(c, "rebalance", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["moved_total"] == 0
        assert [s for s in doc["skipped"] if s.startswith(f"node1 {tube}:")], doc
        assert [u["node"] for u in doc["unreachable"]] == ["node2"], doc
        assert doc["errors"] == [] and "skipped" in doc and "moves" in doc  # the keys stay

        r = timed(c, "rebalance", "--dry-run")
        assert r.returncode == 1 and "nothing to move" not in r.stdout, r.stdout + r.stderr

        resume()
        r = c.run("rebalance", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is True and doc["moved_total"] == 1 and doc["unreachable"] == [], doc
        assert ready_on(c, "node2", tube) == 1 and ready_on(c, "node1", tube) == 0


def test_source_that_does_not_answer_is_named_and_exits_1(tmp_path):
    with misplaced_job_and_hung(tmp_path, "node1") as (c, tube, resume):

        r = timed(c, "rebalance", "--dry-run")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "nothing to move" not in out
        assert "node1 could not be asked" in r.stdout and "not looked at" in r.stdout, out

        r = timed(c, "rebalance", "--dry-run", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and [u["node"] for u in doc["unreachable"]] == ["node1"], doc
        assert doc["unreachable"][0]["error"], doc

        r = timed(c, "rebalance")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "node1 could not be asked" in r.stdout, r.stdout + r.stderr

        resume()
        r = c.run("rebalance")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("moved 1 jobs") and "could not be asked" not in r.stdout
        assert ready_on(c, "node2", tube) == 1 and ready_on(c, "node1", tube) == 0
        r = c.run("rebalance", "--dry-run")
        assert r.returncode == 0 and "nothing to move" in r.stdout, r.stdout + r.stderr


def test_no_node_answers_exits_1_naming_each(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)  # never started: nothing listens
    try:
        r = c.run("rebalance")
        assert r.returncode == 1, r.stdout + r.stderr
        for node in ("node1", "node2"):
            assert f"{node} could not be asked: connection refused" in r.stdout, r.stdout
        r = c.run("rebalance", "--dry-run", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        assert [u["node"] for u in json.loads(r.stdout)["unreachable"]] == ["node1", "node2"]
    finally:
        c.run("down")
        c.cleanup()


def test_remove_says_at_once_why_a_job_cannot_move_then_stops_at_its_timeout(tmp_path):
    """`remove node2` while node1, the only place its job can go, hangs: the reason is on
    stderr after the first pass (once, though every pass meets it), not only at the end."""
    c = start(tmp_path)
    stopped = []
    try:
        tube = tube_owned_by(c, "node2")
        misplace(c, "node2", tube)  # (its own tube: it must move once node2 drains)
        stopped.append(c.node("node1")["pid"])
        os.kill(stopped[0], signal.SIGSTOP)
        r = timed(c, "remove", "node2", "--timeout", "3")
        assert r.returncode == 1, r.stdout + r.stderr
        warning = f"warning: not moved: node2 {tube}: its target node1 does not answer"
        assert r.stderr.count(warning) == 1, r.stderr
        assert r.stderr.index(warning) < r.stderr.index("still holds 0 reserved, 1 ready"), r.stderr
        os.kill(stopped.pop(), signal.SIGCONT)
        assert ready_on(c, "node2", tube) == 1  # nothing lost; `remove` again moves it
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        c.run("down")
        c.cleanup()


def test_a_node_in_the_config_but_not_started_is_named_as_such(tmp_path):
    """`nodes` raised in the config and `up` not run yet: the new node is not "down" and
    nothing on it was skipped; rebalance says to start it, leaves its tubes, exits 1."""
    c = start(tmp_path)
    try:
        c.env["BSCLUSTER_NODES"] = "3"  # the config now; the running cluster has two
        tube = tube_owned_by(c, "node3")
        misplace(c, "node1", tube)
        r = timed(c, "rebalance", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["unreachable"] == [
            {"node": "node3", "error": "in the config but not started (`bscluster up` starts it)"}]
        assert f"node1 {tube}: its target node3 is not started" in doc["skipped"], doc
        r = timed(c, "rebalance", "--dry-run")
        assert "node3 is in the config but not started (`bscluster up` starts it)" in r.stdout
        assert "could not be asked" not in r.stdout, r.stdout
        assert ready_on(c, "node1", tube) == 1
    finally:
        c.run("down")
        c.cleanup()
