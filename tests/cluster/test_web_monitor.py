"""The monitor behind top/web/cluster metrics, driven with made-up node reports."""

from __future__ import annotations

import sys

import pytest
from bsclient.config import NodeAddress
from bscluster import monitor as M
from bscluster.probe import NodeReport
from prometheus_client import parser

NODES = (NodeAddress("node1", "127.0.0.1:11300"), NodeAddress("node2", "127.0.0.1:11301"))


def _stats(**over) -> dict:
    base = {"id": "abc", "pid": 100, "uptime": 5, "version": "1.12", "draining": "false",
            "current-connections": 2, "current-producers": 1, "current-workers": 1,
            "current-waiting": 0, "current-jobs-urgent": 0, "total-jobs": 0,
            **{f"current-jobs-{s}": 0 for s in M.STATES}, **dict.fromkeys(M.OPS_COMMANDS, 0),
            "cmd-stats": 0}
    base.update(over)
    return base


def _tube(**over) -> dict:
    base = {"name": "t", "current-jobs-urgent": 0, **{f"current-jobs-{s}": 0 for s in M.STATES},
            "total-jobs": 0, "current-using": 0, "current-watching": 0, "current-waiting": 0,
            "cmd-delete": 0, "cmd-pause-tube": 0, "pause": 0, "pause-time-left": 0}
    base.update(over)
    return base


def _rep(stats=None, tubes=None) -> NodeReport:
    return NodeReport(up=True, stats=stats or _stats(), tubes=tubes or {})


DOWN = NodeReport(up=False, error="connection refused (nothing listening)")


def test_totals_and_rows_sum_over_nodes():
    cur = {
        "node1": _rep(_stats(**{"current-jobs-ready": 3, "current-jobs-buried": 1}),
                      {"emails": _tube(**{"current-jobs-ready": 3, "current-jobs-buried": 1,
                                          "current-watching": 1}),
                       "default": _tube(**{"current-watching": 1})}),
        "node2": _rep(_stats(**{"current-jobs-ready": 2}),
                      {"emails": _tube(**{"current-jobs-ready": 2}),
                       "default": _tube(**{"current-watching": 1})}),
    }
    view = M.make_view(NODES, cur, None, 0.0, 123.0)
    t = view["totals"]
    assert (t["nodes"], t["nodes_up"], t["tubes"], t["ready"], t["buried"]) == (2, 2, 2, 5, 1)
    assert t["ops"] is None  # one poll: no rate yet
    emails = next(r for r in view["tubes"] if r["name"] == "emails")
    assert (emails["ready"], emails["buried"], emails["nodes"]) == (5, 1, ["node1", "node2"])
    assert emails["watching"] == 1 and emails["attention"] == 3
    assert view["tubes"][0]["name"] == "emails"


def test_rates_from_counter_deltas():
    prev = {"node1": _rep(_stats(**{"cmd-put": 10, "cmd-delete": 4, "cmd-stats": 100}),
                          {"t": _tube(**{"total-jobs": 10, "cmd-delete": 4})}),
            "node2": _rep()}
    cur = {"node1": _rep(_stats(**{"cmd-put": 30, "cmd-delete": 14, "cmd-reserve": 6,
                                   "cmd-stats": 999}),
                         {"t": _tube(**{"total-jobs": 30, "cmd-delete": 14}),
                          "new": _tube(**{"total-jobs": 4})}),
           "node2": _rep()}
    view = M.make_view(NODES, cur, prev, 2.0, 0.0)
    n1 = view["nodes"][0]
    assert (n1["puts"], n1["deletes"], n1["reserves"]) == (10.0, 5.0, 3.0)
    assert n1["ops"] == 18.0  # put + delete + reserve; stats commands do not count
    assert view["totals"]["ops"] == 18.0 and view["nodes"][1]["ops"] == 0.0
    tubes = {r["name"]: r for r in view["tubes"]}
    assert (tubes["t"]["puts"], tubes["t"]["deletes"], tubes["t"]["ops"]) == (10.0, 5.0, 15.0)
    assert tubes["new"]["puts"] == 2.0  # created since the last poll: counted from zero


def test_restarted_node_has_no_rate():
    prev = {"node1": _rep(_stats(**{"cmd-put": 50})), "node2": _rep()}
    cur = {"node1": _rep(_stats(id="new", pid=101, **{"cmd-put": 3})), "node2": _rep()}
    view = M.make_view(NODES, cur, prev, 1.0, 0.0)
    assert view["nodes"][0]["puts"] is None
    assert view["nodes"][1]["puts"] == 0.0


def test_down_node():
    view = M.make_view(NODES, {"node1": _rep(), "node2": DOWN}, None, 0.0, 0.0)
    n2 = view["nodes"][1]
    assert not n2["up"] and n2["ready"] is None and "refused" in n2["error"]
    assert view["totals"]["nodes_up"] == 1


@pytest.mark.parametrize("row,level", [
    ({"buried": 1, "ready": 0, "watching": 0, "paused": 0}, 3),
    ({"buried": 0, "ready": 4, "watching": 0, "paused": 0}, 2),
    ({"buried": 0, "ready": 4, "watching": 1, "paused": 0}, 0),
    ({"buried": 0, "ready": 0, "watching": 0, "paused": 9}, 1),
    ({"buried": 0, "ready": 0, "watching": 0, "paused": 0}, 0),
])
def test_attention(row, level):
    assert M.attention(row) == level


class FakeProbe:
    def __init__(self):
        self.puts = 0
        self.calls = []

    def __call__(self, addresses):
        self.calls.append(dict(addresses))
        self.puts += 5
        return {"node1": _rep(_stats(**{"cmd-put": self.puts}),
                              {"t": _tube(**{"total-jobs": self.puts})}),
                "node2": DOWN}


def test_monitor_history_is_bounded_and_rates_use_the_clock():
    clock = iter(float(i) for i in range(100))
    probe = FakeProbe()
    mon = M.Monitor(NODES, probe=probe, clock=lambda: next(clock), wall=lambda: 7.0,
                    history_seconds=5, interval=1.0)
    for _ in range(8):
        view = mon.poll()
    assert probe.calls[0] == {"node1": ("127.0.0.1", 11300), "node2": ("127.0.0.1", 11301)}
    assert view["totals"]["puts"] == 5.0
    points = mon.history()
    assert len(points) == 5
    assert points[-1]["puts"] == 5.0 and points[-1]["t"] == 7.0
    assert [p["puts"] for p in mon.history("t")][-1] == 5.0
    assert mon.history("nope") == []
    assert mon.latest() is view


def test_cluster_metrics_labels_every_node_and_tube():
    reports = {"node1": _rep(_stats(**{"cmd-put": 7, "current-jobs-ready": 2}),
                             {"a\"b": _tube(**{"current-jobs-ready": 2})}),
               "node2": DOWN}
    text = M.cluster_metrics(NODES, reports)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in parser.text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("beanstalkd_up", (("node", "node1"),))] == 1
    assert samples[("beanstalkd_up", (("node", "node2"),))] == 0
    assert samples[("beanstalkd_cmd_put_total", (("node", "node1"),))] == 7
    assert samples[("beanstalkd_tube_current_jobs_ready",
                    (("node", "node1"), ("tube", 'a"b')))] == 2
    assert not any(dict(labels).get("node") == "node2" for name, labels in samples
                   if name != "beanstalkd_up")


def test_preview():
    assert M.preview(b"hello") == {"text": "hello", "binary": False, "size": 5,
                                   "truncated": False}
    long = "é" * 150  # 300 bytes: the cut at 200 falls between characters or inside one
    p = M.preview(long.encode())
    assert not p["binary"] and p["truncated"] and p["text"] == "é" * 100
    odd = ("a" + "é" * 150).encode()
    p = M.preview(odd)
    assert not p["binary"] and p["text"] == "a" + "é" * 99
    p = M.preview(b"\x00\xff\xfebin")
    assert p["binary"] and p["text"] == "\\x00\\xff\\xfebin"


def test_parse_node_flags():
    nodes = M.parse_node_flags(["node1=127.0.0.1:11300", "b=10.0.0.2:11301@3", "127.0.0.1:9"])
    assert [(n.name, n.address, n.weight) for n in nodes] == [
        ("node1", "127.0.0.1:11300", 1), ("b", "10.0.0.2:11301", 3), ("node3", "127.0.0.1:9", 1)]
    for bad in (["x=h:99999"], ["x=h:1@w"], ["x=h:port"]):
        with pytest.raises(M.MonitorError):
            M.parse_node_flags(bad)


# --- tubes nobody uses cost nothing (issue 19, case 3) ------------------------------------
class ManyTubes:
    """A node with ``quiet`` empty tubes nobody uses and a few busy ones (jobs, puts)."""

    def __init__(self, quiet: int, busy: tuple[str, ...] = ("jobs",)):
        self.quiet = {f"idle-{i:06d}": _tube(**{"current-watching": 1}) for i in range(quiet)}
        self.busy = list(busy)
        self.puts = 0

    def __call__(self, addresses):
        self.puts += 1
        tubes = dict(self.quiet)
        for name in self.busy:
            tubes[name] = _tube(**{"current-jobs-ready": 1, "total-jobs": self.puts})
        return {"node1": _rep(_stats(**{"cmd-put": self.puts}), tubes), "node2": DOWN}


def _monitor(probe, max_tubes: int = 1000, history_seconds: float = 600) -> M.Monitor:
    clock = iter(float(i) for i in range(100_000))
    wall = iter(float(i) for i in range(100_000))
    return M.Monitor(NODES, probe=probe, clock=lambda: next(clock), wall=lambda: next(wall),
                     history_seconds=history_seconds, interval=1.0, max_tubes=max_tubes)


def test_quiet_tubes_get_no_history_and_the_view_lists_busy_ones_first():
    probe = ManyTubes(5000, busy=("jobs", "more"))
    mon = _monitor(probe, max_tubes=100)
    for _ in range(3):
        view = mon.poll()
    assert view["totals"]["tubes"] == 5002
    assert len(view["tubes"]) == 100 and view["tubes_omitted"] == 4902
    assert {r["name"] for r in view["tubes"][:2]} == {"jobs", "more"}
    assert view["tubes"][2]["name"] == "idle-000000"  # then quiet ones, by name
    assert sorted(mon.tracked_tubes()) == ["jobs", "more"]
    assert len(mon.history("jobs")) == 3 and mon.history("idle-000000") == []
    page = mon.metrics()  # per-tube series only for the tubes in the view
    assert 'tube="jobs"' in page and 'tube="idle-000099"' not in page
    assert 'tube="idle-000097"' in page


def test_tubes_tracked_are_capped_least_recently_busy_out_first():
    probe = ManyTubes(0, busy=())
    mon = _monitor(probe, max_tubes=3)
    for name in ("a", "b", "c", "d"):  # each busy in turn, then quiet
        probe.busy = [name]
        mon.poll()
    assert mon.tracked_tubes() == ["b", "c", "d"]  # "a" was quiet the longest
    probe.busy = ["b"]
    mon.poll()
    assert mon.tracked_tubes() == ["c", "d", "b"]


def test_a_tube_quiet_for_the_whole_window_is_forgotten():
    probe = ManyTubes(0, busy=("t",))
    mon = _monitor(probe, history_seconds=5)
    mon.poll()
    probe.busy = []
    for _ in range(5):
        mon.poll()
        assert mon.tracked_tubes() == ["t"]  # had jobs recently: its chart goes on
    mon.poll()
    assert mon.tracked_tubes() == [] and mon.history("t") == []


def test_memory_stays_flat_with_20000_tubes_nobody_uses():
    probe = ManyTubes(20000)
    mon = _monitor(probe)
    for _ in range(3):
        mon.poll()
    before = sys.getallocatedblocks()
    for _ in range(20):
        mon.poll()
    grown = sys.getallocatedblocks() - before
    # before the fix every poll added a point (a dict) to all 20,001 tubes'
    # histories: ~1,000,000 blocks in 20 polls
    assert grown < 20_000, grown
    assert len(mon.tracked_tubes()) == 1


def test_a_replaced_ssl_context_is_used_from_the_next_poll_on(monkeypatch):
    """`bscluster reload`: the monitor's polls (and actions) connect with the new context."""
    used = []
    monkeypatch.setattr(M, "probe_all", lambda addrs, timeout, ctx: used.append(ctx) or
                        {name: _rep() for name in addrs})
    old, new = object(), object()
    m = M.Monitor(NODES, ssl_context=old)
    m.poll()
    m.use_ssl_context(new)
    m.poll()
    assert used == [old, new] and m.ssl_context is new
