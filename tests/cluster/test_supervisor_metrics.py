"""The supervisor's Prometheus series and the cluster /metrics page (no processes).

Pages are parsed with prometheus_client's text parser, so a malformed line,
a bad label or a counter without ``_total`` fails here.
"""

from __future__ import annotations

import pytest
from bsclient.config import NodeAddress
from bscluster.monitor import Monitor
from bscluster.probe import NodeReport
from bscluster.states import State
from bscluster.supervisor_metrics import supervisor_metrics
from bscluster.web import Dashboard
from prometheus_client import parser

STATE = {
    "supervisor": {"pid": 10, "started": 1700000000.5},
    "nodes": {
        "node1": {"state": "RUNNING", "restarts": 2, "crashes": 2, "since": 1700000100.0},
        "node2": {"state": "FATAL", "restarts": 5, "crashes": 5, "since": 1700000200.0,
                  "reason": "crashed 5 times in 9s"},
        "node3": {"state": "BACKOFF", "restarts": 0, "since": 1700000300.0},  # no "crashes"
    },
}


def families(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(fam, **labels) -> list[float]:
    return [s.value for s in fam.samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


def test_node_state_is_one_for_the_current_state_and_zero_for_the_others():
    fams = families(supervisor_metrics(STATE))
    fam = fams["bscluster_node_state"]
    assert fam.type == "gauge"
    for node, entry in STATE["nodes"].items():
        assert len(samples(fam, node=node)) == len(State)
        assert sum(samples(fam, node=node)) == 1
        assert samples(fam, node=node, state=entry["state"]) == [1]
    assert sum(samples(fam, state="FATAL")) == 1


def test_restart_and_crash_counters_and_times():
    fams = families(supervisor_metrics(STATE))
    restarts = fams["bscluster_node_restarts"]  # the parser strips _total from counters
    crashes = fams["bscluster_node_crashes"]
    assert restarts.type == crashes.type == "counter"
    assert {s.labels["node"]: s.value for s in restarts.samples} == \
        {"node1": 2, "node2": 5, "node3": 0}
    assert {s.labels["node"]: s.value for s in crashes.samples} == \
        {"node1": 2, "node2": 5, "node3": 0}
    assert all(s.name.endswith("_total") for s in crashes.samples)
    since = fams["bscluster_node_state_change_timestamp_seconds"]
    assert samples(since, node="node2") == [1700000200.0]
    assert samples(fams["bscluster_supervisor_start_time_seconds"]) == [1700000000.5]


@pytest.mark.parametrize("state", [None, {}, {"nodes": {}}])
def test_no_supervisor_no_series(state):
    assert supervisor_metrics(state) == ""


# --- the cluster page: nodes' series, then the supervisor's ---------------------------------
def fake_probe(up: dict[str, bool]):
    def probe(addresses):
        return {name: NodeReport(up=True, stats={"current-jobs-ready": 3, "cmd-put": 7})
                if up.get(name, True) else NodeReport(up=False, error="refused")
                for name in addresses}
    return probe


def test_dashboard_metrics_page_has_both_and_parses():
    nodes = [NodeAddress("node1", "127.0.0.1:1"), NodeAddress("node2", "127.0.0.1:2")]
    monitor = Monitor(nodes, probe=fake_probe({"node2": False}))
    page = Dashboard(monitor, None, lambda: STATE).metrics()
    fams = families(page)
    assert samples(fams["beanstalkd_up"], node="node1") == [1]
    assert samples(fams["beanstalkd_up"], node="node2") == [0]
    assert samples(fams["beanstalkd_current_jobs_ready"], node="node1") == [3]
    assert samples(fams["bscluster_node_state"], node="node2", state="FATAL") == [1]
    names = [line.split()[2] for line in page.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))  # no family twice
    # without a supervisor: just the nodes
    alone = families(Dashboard(monitor, None).metrics())
    assert "beanstalkd_up" in alone and "bscluster_node_state" not in alone


def test_monitor_set_nodes_takes_effect_at_the_next_poll():
    monitor = Monitor([NodeAddress("node1", "127.0.0.1:1")], probe=fake_probe({}))
    monitor.poll()
    monitor.set_nodes([NodeAddress("node1", "127.0.0.1:1"), NodeAddress("node2", "127.0.0.1:2")])
    # metrics before the next poll describe the nodes that poll saw: no KeyError
    assert samples(families(monitor.metrics())["beanstalkd_up"]) == [1]
    view = monitor.poll()
    assert [n["name"] for n in view["nodes"]] == ["node1", "node2"]
    assert samples(families(monitor.metrics())["beanstalkd_up"]) == [1, 1]


def test_overview_rows_carry_the_supervisors_view_when_there_is_one():
    nodes = [NodeAddress("node1", "127.0.0.1:1"), NodeAddress("node2", "127.0.0.1:2")]
    monitor = Monitor(nodes, probe=fake_probe({"node2": False}))
    rows = {r["name"]: r for r in Dashboard(monitor, None, lambda: STATE).overview()["nodes"]}
    assert rows["node2"]["up"] is False
    assert rows["node2"]["supervisor"] == {"state": "FATAL", "reason": "crashed 5 times in 9s",
                                           "restarts": 5, "crashes": 5}
    assert rows["node1"]["supervisor"]["state"] == "RUNNING"
    alone = Dashboard(monitor, None).overview()
    assert all("supervisor" not in r for r in alone["nodes"]) and alone["actions"] is False
