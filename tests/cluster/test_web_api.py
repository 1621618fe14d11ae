"""The dashboard's JSON API and actions against two real bsnodes (docs/MONITORING.md)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from bsclient import Client, ClusterClient
from bsclient.config import NodeAddress
from bscluster.monitor import Monitor
from bscluster.web import Dashboard, make_server
from servers import bscluster_command, start_bsnode

TOKEN = "s3cret-token"
DEADLINE = 10.0


def _pair(a, b) -> tuple[NodeAddress, NodeAddress]:
    return (NodeAddress("node1", f"{a.host}:{a.port}"), NodeAddress("node2", f"{b.host}:{b.port}"))


@pytest.fixture(scope="module")
def nodes():
    """Two nodes shared by the module's tests; each test uses tubes of its own."""
    with start_bsnode() as a, start_bsnode() as b:
        yield _pair(a, b)


class Web:
    def __init__(self, nodes, token):
        self.nodes = nodes
        self.monitor = Monitor(nodes, interval=0.2)
        self.dashboard = Dashboard(self.monitor, token)
        self.server = make_server(self.dashboard, "127.0.0.1", 0)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.dashboard.start()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.dashboard.stop()
        self.thread.join(5)

    def request(self, method, path, body=None, token=TOKEN, headers=None):
        data = None if body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get(self, path, **kw):
        status, _, body = self.request("GET", path, **kw)
        return status, json.loads(body)

    def post(self, path, body=None, **kw):
        status, _, raw = self.request("POST", path, body if body is not None else {}, **kw)
        return status, json.loads(raw)

    def until(self, check):
        """Poll the overview until ``check(view)`` holds (the poller runs every 0.2 s)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            _, view = self.get("/api/overview")
            if check(view):
                return view
            assert time.monotonic() < deadline, view
            time.sleep(0.05)


@pytest.fixture
def web(nodes):
    w = Web(nodes, TOKEN)
    yield w
    w.close()


@pytest.fixture
def readonly(nodes):
    w = Web(nodes, None)
    yield w
    w.close()


def _client(node: NodeAddress, tube: str | None = None) -> Client:
    c = Client(node.address)
    if tube:
        c.use(tube)
        c.watch(tube)
        c.ignore("default")
    return c


def _bury(c: Client, count: int, priority: int = 1024) -> list[int]:
    ids = [c.put(b"to bury %d" % i, priority=priority) for i in range(count)]
    for _ in ids:
        c.bury(c.reserve(timeout=0), priority)
    return ids


def _tube_row(view, name):
    return next((t for t in view["tubes"] if t["name"] == name), None)


def test_overview_follows_puts():
    with start_bsnode() as a, start_bsnode() as b:
        web = Web(_pair(a, b), TOKEN)
        try:
            _overview_follows_puts(web, web.nodes)
        finally:
            web.close()


def _overview_follows_puts(web, nodes):
    view = web.until(lambda v: v["totals"]["nodes_up"] == 2)
    assert view["actions"] is True and view["poll_interval"] == 0.2
    with _client(nodes[0], "jobs") as c1, _client(nodes[1], "jobs") as c2:
        for i in range(3):
            c1.put(b"a%d" % i)
        c2.put(b"b", delay=100)
        view = web.until(lambda v: (_tube_row(v, "jobs") or {}).get("ready") == 3)
    row = _tube_row(view, "jobs")
    assert (row["delayed"], row["nodes"]) == (1, ["node1", "node2"])
    assert view["totals"]["ready"] == 3 and view["totals"]["delayed"] == 1
    assert {n["name"]: n["ready"] for n in view["nodes"]} == {"node1": 3, "node2": 0}
    status, hist = web.get("/api/history")
    assert status == 200 and hist["points"] and set(hist["points"][-1]) >= {"t", "ready", "ops"}
    status, hist = web.get("/api/history?tube=jobs")
    assert status == 200 and hist["tube"] == "jobs" and hist["points"][-1]["ready"] == 3


def test_tube_and_job_inspection(web, nodes):
    with _client(nodes[0], "look/here") as c:
        buried = _bury(c, 1)[0]
        ready_id = c.put(b"hello \xff world", priority=5)
        c.put(b"later", delay=50)
        status, doc = web.get("/api/tubes/" + quote("look/here", safe=""))
        assert status == 200 and doc["name"] == "look/here"
        assert list(doc["nodes"]) == ["node1"]  # node2 has no such tube
        nxt = doc["nodes"]["node1"]["next"]
        assert nxt["ready"]["id"] == ready_id
        assert nxt["ready"]["stats"]["pri"] == 5
        assert nxt["ready"]["body"] == {"text": "hello \\xff world", "binary": True, "size": 13,
                                        "truncated": False}
        assert nxt["delayed"]["body"]["text"] == "later"
        assert nxt["buried"]["id"] == buried and nxt["buried"]["handle"] == f"node1/{buried}"
        status, job = web.get(f"/api/jobs/node1/{buried}")
        assert status == 200 and job["stats"]["state"] == "buried"
    assert web.get("/api/jobs/node1/999999")[0] == 404
    assert web.get("/api/jobs/node9/1")[0] == 404
    assert web.get("/api/jobs/node1/abc")[0] == 400
    assert web.get("/api/tubes/" + quote("bad name", safe=""))[0] == 400
    assert web.get("/api/tubes/no-such-tube")[0] == 404  # every node answered: none has it


def test_actions_need_a_configured_token(readonly):
    status, doc = readonly.post("/api/tubes/default/kick", {"bound": 1})
    assert status == 403 and "--token" in doc["error"]
    assert readonly.get("/api/overview")[1]["actions"] is False


def test_actions_need_the_right_token(web):
    assert web.post("/api/tubes/default/kick", {"bound": 1}, token=None)[0] == 401
    assert web.post("/api/tubes/default/kick", {"bound": 1}, token="wrong")[0] == 401
    status, _, _ = web.request("POST", "/api/tubes/default/kick", {"bound": 1},
                               headers={"Content-Type": "text/plain"})
    assert status == 415
    assert web.post("/api/tubes/default/kick", {"bound": 0})[0] == 400
    assert web.post("/api/tubes/default/explode", {})[0] == 404


def test_kick_spreads_the_bound_over_nodes(web, nodes):
    with _client(nodes[0], "k") as c1, _client(nodes[1], "k") as c2:
        _bury(c1, 2)
        _bury(c2, 2)
        status, doc = web.post("/api/tubes/k/kick", {"bound": 3})
        assert status == 200 and doc["kicked"] == 3 and sum(doc["nodes"].values()) == 3
        buried = c1.stats_tube("k")["current-jobs-buried"] + c2.stats_tube("k")["current-jobs-buried"]
        assert buried == 1
        status, doc = web.post("/api/tubes/k/kick", {})
        assert doc["kicked"] == 1
        assert c1.stats_tube("k")["current-jobs-ready"] + c2.stats_tube("k")["current-jobs-ready"] == 4


def test_job_kick_and_delete(web, nodes):
    with _client(nodes[1], "j") as c:
        a, b = _bury(c, 2)
        assert web.post(f"/api/jobs/node2/{a}/kick")[1] == {"kicked": f"node2/{a}"}
        assert c.stats_job(a)["state"] == "ready"
        assert web.post(f"/api/jobs/node2/{b}/delete")[1] == {"deleted": f"node2/{b}"}
        assert web.post(f"/api/jobs/node2/{b}/delete")[0] == 404
        held = c.reserve(timeout=0)  # a job a worker holds cannot be deleted by others
        status, doc = web.post(f"/api/jobs/node2/{held.id}/delete")
        assert status == 404 and "reserved" in doc["error"]


def test_clear_deletes_everything_but_reserved_jobs(web, nodes):
    with _client(nodes[0], "c") as c1, _client(nodes[1], "c") as c2, \
            _client(nodes[0], "other") as other:
        for c in (c1, c2):
            for i in range(5):
                c.put(b"r%d" % i)
            c.put(b"d", delay=100)
            _bury(c, 2)
        held = c1.reserve(timeout=0)
        other.put(b"untouched")
        status, doc = web.post("/api/tubes/c/clear")
        assert status == 200 and doc == {"deleted": 2 * 5 + 2 * 1 + 2 * 2 - 1, "complete": True}
        s1, s2 = c1.stats_tube("c"), c2.stats_tube("c")
        for s in (s1, s2):
            assert s["current-jobs-ready"] == s["current-jobs-delayed"] == 0
            assert s["current-jobs-buried"] == 0
        assert s1["current-jobs-reserved"] == 1 and c1.stats_job(held)["state"] == "reserved"
        assert other.stats_tube("other")["current-jobs-ready"] == 1
        view = web.until(lambda v: (_tube_row(v, "c") or {}).get("ready") == 0)
        assert _tube_row(view, "c")["reserved"] == 1


def test_clear_only_some_states(web, nodes):
    with _client(nodes[0], "cs") as c:
        c.put(b"r")
        _bury(c, 1)
        assert web.post("/api/tubes/cs/clear", {"states": ["buried"]})[1]["deleted"] == 1
        assert c.stats_tube("cs")["current-jobs-ready"] == 1
        assert web.post("/api/tubes/cs/clear", {"states": ["reserved"]})[0] == 400


def test_move_buried_jobs_to_the_target_tubes_owner(web, nodes):
    ring = ClusterClient(nodes)
    owner = ring.node_for("moved-here")
    ring.close()
    with _client(nodes[0], "src") as c1, _client(nodes[1], "src") as c2:
        _bury(c1, 2, priority=7)
        _bury(c2, 1, priority=7)
        c1.put(b"stays ready")
        status, doc = web.post("/api/tubes/src/move", {"to": "moved-here", "state": "buried"})
        assert status == 200 and doc == {"moved": 3, "complete": True, "to": "moved-here"}
        assert c1.stats_tube("src")["current-jobs-buried"] == 0
        assert c2.stats_tube("src")["current-jobs-buried"] == 0
        assert c1.stats_tube("src")["current-jobs-ready"] == 1
    target = next(n for n in nodes if n.name == owner)
    with _client(target, "moved-here") as t:
        assert t.stats_tube("moved-here")["current-jobs-ready"] == 3
        job = t.peek_ready()
        assert job.body.startswith(b"to bury") and t.stats_job(job)["pri"] == 7


def test_move_delayed_keeps_the_delay_and_respects_the_limit(web, nodes):
    with _client(nodes[0], "dsrc") as c:
        for i in range(3):
            c.put(b"d%d" % i, delay=300, ttr=33)
        status, doc = web.post("/api/tubes/dsrc/move",
                               {"to": "ddst", "state": "delayed", "limit": 2})
        assert status == 200 and doc["moved"] == 2
        assert c.stats_tube("dsrc")["current-jobs-delayed"] == 1
    moved = []
    for node in nodes:
        with _client(node) as c:
            if "ddst" in c.list_tubes():
                c.use("ddst")
                job = c.peek_delayed()
                moved.append(c.stats_job(job))
                assert c.stats_tube("ddst")["current-jobs-delayed"] == 2
    assert len(moved) == 1 and moved[0]["ttr"] == 33 and 290 <= moved[0]["time-left"] <= 300
    assert web.post("/api/tubes/dsrc/move", {"to": "dsrc", "state": "delayed"})[0] == 400
    assert web.post("/api/tubes/dsrc/move", {"to": "x y", "state": "delayed"})[0] == 400


def test_pause_and_resume(web, nodes):
    with _client(nodes[0], "p") as c1, _client(nodes[1], "p") as c2:
        status, doc = web.post("/api/tubes/p/pause", {"seconds": 100})
        assert status == 200 and doc == {"paused": 100, "nodes": ["node1", "node2"]}
        assert c1.stats_tube("p")["pause"] == 100 and c2.stats_tube("p")["pause"] == 100
        view = web.until(lambda v: (_tube_row(v, "p") or {}).get("paused", 0) > 0)
        assert _tube_row(view, "p")["why"] == "paused"
        assert web.post("/api/tubes/p/resume")[1]["paused"] == 0
        assert c1.stats_tube("p")["pause-time-left"] == 0
    assert web.post("/api/tubes/nosuchtube/pause", {"seconds": 5})[0] == 404
    assert web.post("/api/tubes/p/pause", {"seconds": -1})[0] == 400


def test_metrics_endpoint(web, nodes):
    from prometheus_client import parser
    with _client(nodes[1], "m") as c:
        c.put(b"x")
        web.monitor.poll()
        status, headers, body = web.request("GET", "/metrics")
        stats = c.stats()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in parser.text_string_to_metric_families(body.decode())
               for s in fam.samples}
    assert samples[("beanstalkd_up", (("node", "node2"),))] == 1
    assert samples[("beanstalkd_current_jobs_ready", (("node", "node2"),))] == \
        stats["current-jobs-ready"]
    assert samples[("beanstalkd_cmd_put_total", (("node", "node2"),))] == stats["cmd-put"]
    assert samples[("beanstalkd_tube_current_jobs_ready",
                    (("node", "node2"), ("tube", "m")))] == 1


def test_static_files_and_headers(web):
    status, headers, body = web.request("GET", "/")
    assert status == 200 and b"<title>bscluster</title>" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        status, headers, body = web.request("GET", f"/static/{name}")
        assert status == 200 and ctype in headers["Content-Type"] and body
    assert web.request("GET", "/static/..%2Fweb.py")[0] == 404
    assert web.request("GET", "/static/nothing.js")[0] == 404
    assert web.request("GET", "/api/nothing")[0] == 404


def test_foreign_host_header_is_refused(web):
    status, _, body = web.request("GET", "/api/overview", headers={"Host": "evil.example:80"})
    assert status == 421
    assert web.request("GET", "/api/overview",
                       headers={"Host": f"localhost:{web.port}"})[0] == 200


def _bscluster() -> list[str]:
    return bscluster_command()


def test_web_command_prints_url_and_token_and_stops_on_sigterm(nodes):
    proc = subprocess.Popen(
        _bscluster() + ["web", "-l", "127.0.0.1:0", "--token", "--interval", "0.5",
                        "--node", f"node1={nodes[0].address}", "--node", f"node2={nodes[1].address}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        token_line = proc.stdout.readline()
        url_line = proc.stdout.readline()
        assert re.fullmatch(r"token: [A-Za-z0-9_-]{20,}\n", token_line), token_line
        m = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/) watching node1, node2", url_line)
        assert m, url_line
        token = token_line.split()[1]
        req = urllib.request.Request(m.group(1) + "api/tubes/default/kick", data=b"{}",
                                     method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["kicked"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_web_command_read_only_without_token(nodes, monkeypatch):
    monkeypatch.delenv("BSCLUSTER_WEB_TOKEN", raising=False)
    proc = subprocess.Popen(
        _bscluster() + ["web", "-l", "127.0.0.1:0", "--node", f"node1={nodes[0].address}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "dashboard on http://127.0.0.1:" in proc.stdout.readline()
        assert "read-only" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_down_node_is_shown_and_named_by_actions():
    with start_bsnode() as a, start_bsnode() as b:
        nodes = _pair(a, b)
        w = Web(nodes, TOKEN)
        try:
            with _client(nodes[0], "half") as c:
                _bury(c, 2)
            b.kill()
            view = w.until(lambda v: v["totals"]["nodes_up"] == 1)
            down = next(n for n in view["nodes"] if n["name"] == "node2")
            assert down["up"] is False and down["error"] and down["ready"] is None
            status, doc = w.post("/api/tubes/half/kick", {"bound": 5})
            assert status == 200 and doc == {"kicked": 2, "nodes": {"node1": 2},
                                             "unreachable": ["node2"]}
            status, doc = w.get("/api/tubes/half")
            assert status == 200 and doc["nodes"]["node2"]["up"] is False
        finally:
            w.close()
