"""One stats merge (bsclient.fanout.merge_stats): ``bscluster stats`` (report.py), the
dashboard's totals and tube rows (monitor.py) and ClusterClient.stats add up the same
way.  Pure: NodeReports made here, no node started."""

from __future__ import annotations

from bsclient.config import NodeAddress
from bsclient.fanout import MAX_TUBE_STATS, NON_ADDITIVE_STATS, merge_stats
from bscluster.monitor import make_view
from bscluster.probe import NodeReport
from bscluster.report import cluster_stats


def _stats(ready, urgent, conns, pid):
    return {"current-jobs-ready": ready, "current-jobs-urgent": urgent, "current-jobs-reserved": 1,
            "current-jobs-delayed": 0, "current-jobs-buried": 0, "total-jobs": ready + 1,
            "current-connections": conns, "pid": pid, "uptime": 50, "version": "1.0",
            "rusage-utime": "0.5"}


def _tube(ready, left):
    return {"name": "t", "current-jobs-ready": ready, "current-jobs-urgent": 0,
            "current-jobs-reserved": 0, "current-jobs-delayed": 0, "current-jobs-buried": 0,
            "total-jobs": ready, "current-using": 1, "current-watching": 2, "current-waiting": 0,
            "cmd-delete": 0, "cmd-pause-tube": 1, "pause": 10, "pause-time-left": left}


NODES = (NodeAddress("node1", "127.0.0.1:1"), NodeAddress("node2", "127.0.0.1:2"),
         NodeAddress("node3", "127.0.0.1:3"))
REPORTS = {
    "node1": NodeReport(True, _stats(3, 1, 4, 100), {"t": _tube(2, 4)}),
    "node2": NodeReport(True, _stats(5, 0, 6, 200), {"t": _tube(7, 9), "u": _tube(1, 0)}),
    "node3": NodeReport(False, error="connection refused"),  # a down node adds nothing
}


def test_merge_stats_sums_numbers_and_takes_the_max_where_told():
    got = merge_stats([{"a": 1, "p": 4, "s": "x", "b": True}, {"a": 2, "p": 9, "q": None}],
                      leave_out=frozenset({"pid"}), take_max=frozenset({"p"}))
    assert got == {"a": 3, "p": 9}


def test_report_monitor_and_client_merge_alike():
    up = [REPORTS[n].stats for n in ("node1", "node2")]
    merged = merge_stats(up, NON_ADDITIVE_STATS)
    assert "pid" not in merged and merged["current-jobs-ready"] == 8

    report = cluster_stats({n.name: n.address for n in NODES}, REPORTS)
    view = make_view(NODES, REPORTS, None, 1.0, 0.0)
    assert report["totals"]["current-jobs-ready"] == view["totals"]["ready"] == 8
    assert report["totals"]["current-jobs-urgent"] == view["totals"]["urgent"] == 1
    assert report["totals"]["current-connections"] == view["totals"]["connections"] == 10
    assert report["totals"]["nodes-up"] == view["totals"]["nodes_up"] == 2
    assert view["totals"]["ops"] is None  # no earlier poll: no rate anywhere

    tube = merge_stats([_tube(2, 4), _tube(7, 9)], take_max=MAX_TUBE_STATS)
    assert tube["pause-time-left"] == 9 and tube["current-watching"] == 4
    row = next(r for r in view["tubes"] if r["name"] == "t")
    assert report["tubes"]["t"]["current-jobs-ready"] == row["ready"] == tube["current-jobs-ready"]
    assert report["tubes"]["t"]["current-watching"] == row["watching"] == 4
    assert row["paused"] == 9 and sorted(row["nodes"]) == ["node1", "node2"]
    assert sorted(report["tubes"]["t"]["nodes"]) == ["node1", "node2"]


def test_stats_tube_fields_are_the_nodes_reply():
    """bsclient.protocol.STATS_TUBE_FIELDS (the proxy's) is what bsnode's stats-tube says."""
    from bsclient.flat_yaml import parse_yaml_dict
    from bsclient.protocol import STATS_TUBE_FIELDS
    from bsnode.commands import Commands
    from bsnode.store import Store

    commands = Commands(Store(clock=lambda: 1000.0))
    session = commands.store.connect()
    reply = commands.execute(session, ("stats-tube", "default"))
    body = reply.split(b"\r\n", 1)[1]
    assert tuple(parse_yaml_dict(body)) == STATS_TUBE_FIELDS
