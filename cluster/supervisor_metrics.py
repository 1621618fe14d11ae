"""The supervisor's own Prometheus series: what it knows that no node can say.

How this works
--------------
``supervisor_metrics(state)`` turns the supervisor's state document (what it
writes to ``bscluster.json``; see ``Supervisor.snapshot``) into text format
0.0.4, using the node's ``Collector`` so naming and escaping are shared.
It is pure: the caller decides where the state comes from (the supervisor's
memory for `up --web`, the state file for `bscluster web`).

Series, all under ``bscluster_``:

* ``node_state{node,state}``: one sample per node and supervision state, 1
  for the state the node is in and 0 for the others (the usual way to
  expose an enum, so ``bscluster_node_state{state="FATAL"} == 1`` alerts);
* ``node_restarts_total{node}``: times the supervisor started it again;
* ``node_crashes_total{node}``: times it died while RUNNING;
* ``node_state_change_timestamp_seconds{node}``: when it entered its state;
* ``supervisor_start_time_seconds``: when the supervisor started (counters
  above restart from the last state file, so they survive adoption).
"""

from __future__ import annotations

from collections.abc import Mapping

from bscluster.states import State
from bsnode.metrics import Collector

SUPERVISOR_PREFIX = "bscluster"


def supervisor_metrics(state: Mapping | None) -> str:
    """Prometheus text for a supervisor state document ("" when there is none)."""
    if not state or not state.get("nodes"):
        return ""
    c = Collector(SUPERVISOR_PREFIX)
    nodes = state["nodes"]
    fam = c.family("node_state", "gauge",
                   "1 for the supervision state the node is in (STARTING, RUNNING, BACKOFF, "
                   "STOPPING, STOPPED, FATAL), 0 for the others")
    for name, entry in nodes.items():
        for s in State:
            fam.add({"node": name, "state": s.value}, 1 if entry.get("state") == s.value else 0)
    counters = (("restarts", "node_restarts_total", "times the supervisor started the node "
                 "again (after a crash, a failed start or a restart request)"),
                ("crashes", "node_crashes_total", "times the node exited while RUNNING"))
    for key, metric, help_text in counters:
        fam = c.family(metric, "counter", help_text)
        for name, entry in nodes.items():
            fam.add({"node": name}, float(entry.get(key) or 0))
    fam = c.family("node_state_change_timestamp_seconds", "gauge",
                   "Unix time the node entered its current supervision state")
    for name, entry in nodes.items():
        if entry.get("since") is not None:
            fam.add({"node": name}, float(entry["since"]))
    started = (state.get("supervisor") or {}).get("started")
    if started is not None:
        c.family("supervisor_start_time_seconds", "gauge",
                 "Unix time the supervisor started").add({}, float(started))
    return c.render()
