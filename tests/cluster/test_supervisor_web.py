"""`bscluster up --web` and node metrics, with real bsnode processes.

* `up -d --web 127.0.0.1:0 ` prints the dashboard URL; the detached
  supervisor serves the dashboard and the cluster /metrics (nodes' series
  plus its own: state, restarts, crashes), and each node serves its own
  endpoint on metrics_base_port + I - 1; a kill -9 shows up as a crash and a
  restart; `down` closes the dashboard with everything else.
* In the foreground the same, and SIGTERM leaves nothing listening.
* A dashboard port that is taken stops `up` before any node starts.
* In the foreground, a cluster whose every node went FATAL in a crash loop
  ends `up` with status 1 and says so.

Every page is parsed with prometheus_client's parser.  Clusters run in
tmp_path on free loopback ports and are taken down by the fixture.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import test_supervisor_faults
from bsclient import Client
from bscluster.runtime import pid_alive
from clusters import Cluster, free_base_port
from prometheus_client import parser
from servers import bsnode_command, poll
from test_supervisor_faults import CRASHER

cluster = test_supervisor_faults.cluster  # the same fixture: a Cluster factory, cleaned up after
pytestmark = pytest.mark.integration

BSNODE = " ".join(bsnode_command())
DASHBOARD_LINE = "dashboard: http://"


def metrics_base(c: Cluster, count: int) -> int:
    """Free ports for the nodes' metrics that do not overlap the cluster's."""
    while True:
        base = free_base_port(count)
        if base + count <= c.base_port or base >= c.base_port + 8:
            return base


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def scrape(url: str) -> dict:
    status, text = get(url)
    assert status == 200
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(page: dict, name: str, **labels) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))


def refused(url: str) -> bool:
    host, port = url.split("//")[1].rstrip("/").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def dashboard_url(text: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith(DASHBOARD_LINE))
    return line.split()[1]


def test_detached_up_web_serves_dashboard_and_metrics_and_down_stops_it(cluster):
    c = cluster(nodes=2)
    c.env["BSCLUSTER_METRICS_BASE_PORT"] = str(metrics_base(c, 2))
    r = c.run("up", "-d", "--web", "127.0.0.1:0")
    assert r.returncode == 0, r.stdout + r.stderr
    url = dashboard_url(r.stdout)
    assert url.startswith("http://127.0.0.1:") and f"Prometheus: {url}metrics" in r.stdout
    assert c.state()["supervisor"]["web"] == url

    status, html = get(url)
    assert status == 200 and "<html" in html.lower()
    # each node's own endpoint, as `status --json` and `up` show it
    rows = json.loads(c.run("status", "--json").stdout)["nodes"]
    node_urls = {r["node"]: r["metrics"] for r in rows}
    assert node_urls["node1"].endswith(f":{int(c.env['BSCLUSTER_METRICS_BASE_PORT'])}/metrics")
    assert all(u in r.stdout for u in node_urls.values())
    with Client(f"127.0.0.1:{c.node('node1')['port']}", timeout=5) as cl:
        cl.put(b"seen by both pages")
    own = scrape(node_urls["node1"])
    assert value(own, "bsnode_current_jobs_ready") == 1

    # the cluster page: the nodes as polled, the supervisor's own series
    page = poll(lambda: (p := scrape(url + "metrics")) and
                value(p, "beanstalkd_current_jobs_ready", node="node1") == 1 and p,
                what="the job in the cluster /metrics")
    assert value(page, "beanstalkd_up", node="node2") == 1
    for node in ("node1", "node2"):
        assert value(page, "bscluster_node_state", node=node, state="RUNNING") == 1
        assert value(page, "bscluster_node_state", node=node, state="FATAL") == 0
        assert value(page, "bscluster_node_crashes_total", node=node) == 0

    # a crash is counted, and so is the restart that follows
    old_pid = c.node("node1")["pid"]
    os.kill(old_pid, signal.SIGKILL)
    page = poll(lambda: (p := scrape(url + "metrics")) and
                value(p, "bscluster_node_crashes_total", node="node1") == 1 and
                value(p, "bscluster_node_state", node="node1", state="RUNNING") == 1 and p,
                what="the crash and the restart in /metrics")
    assert value(page, "bscluster_node_restarts_total", node="node1") == 1
    assert value(page, "bscluster_node_restarts_total", node="node2") == 0

    sup = c.state()["supervisor"]["pid"]
    assert c.run("down").returncode == 0
    assert refused(url), "the dashboard outlived `down`"
    assert all(refused(u.removesuffix("metrics")) for u in node_urls.values())
    assert not pid_alive(sup)


def test_foreground_up_web_prints_the_url_and_sigterm_leaves_nothing(cluster):
    c = cluster(nodes=1)
    proc = c.start_foreground("--web", "127.0.0.1:0")
    poll(lambda: DASHBOARD_LINE in c.output(), what="the banner")
    url = dashboard_url(c.output())
    status, body = get(url + "api/overview")
    (row,) = json.loads(body)["nodes"]
    assert status == 200 and row["name"] == "node1" and row["up"] is True
    assert row["supervisor"] == {"state": "RUNNING", "reason": None, "restarts": 0,
                                 "crashes": 0}
    page = scrape(url + "metrics")
    assert value(page, "bscluster_node_state", node="node1", state="RUNNING") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert refused(url)


def test_a_taken_dashboard_port_stops_up_before_any_node_starts(cluster):
    c = cluster(nodes=2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        r = c.run("up", "-d", "--web", f"127.0.0.1:{port}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"cannot serve the dashboard on 127.0.0.1:{port}" in r.stderr, r.stderr
        assert "--web ADDR:PORT" in r.stderr
        for i in range(2):
            assert refused(f"http://127.0.0.1:{c.base_port + i}/")
    finally:
        holder.close()


def test_foreground_up_exits_1_when_every_node_is_fatal(cluster, tmp_path):
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    c = cluster(nodes=1, command=f"{sys.executable} {script} {BSNODE}", CRASH_AFTER="0.5",
                BSCLUSTER_CRASH_LIMIT="2")
    proc = c.start_foreground()
    try:
        assert proc.wait(60) == 1
    except subprocess.TimeoutExpired:
        pytest.fail("up kept running with every node FATAL:\n" + c.output())
    out = c.output()
    assert "node1 FATAL: crashed 2 times" in out, out
    assert "every node is FATAL; nothing left to supervise" in out
    assert not (c.data_dir / "bscluster.json").exists()  # a clean stop


def test_bscluster_web_next_to_a_supervisor_shows_its_series_too(cluster):
    c = cluster(nodes=1)
    assert c.run("up", "-d").returncode == 0
    web = subprocess.Popen([sys.executable, "-m", "bscluster", "web", "-l", "127.0.0.1:0"],
                           env=c.env, cwd=c.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        line = web.stdout.readline()  # printed once it is serving
        assert line.startswith("dashboard on http://"), line
        url = line.split()[2]
        page = scrape(url + "metrics")
        assert value(page, "beanstalkd_up", node="node1") == 1
        assert value(page, "bscluster_node_state", node="node1", state="RUNNING") == 1
        assert value(page, "bscluster_node_restarts_total", node="node1") == 0
    finally:
        web.terminate()
        web.wait(10)
        web.stdout.close()
