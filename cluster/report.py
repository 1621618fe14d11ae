"""Turn node reports into what `status` and `stats` print.

Pure functions of plain data (no sockets, no clock), so the formatting is
tested with made-up numbers.  Job counts use beanstalkd's ``stats`` and
``stats-tube`` field names (protocol.txt, "Other Commands").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from bsclient.fanout import MAX_TUBE_STATS, NON_ADDITIVE_STATS, merge_stats
from bscluster.probe import NO_ANSWER, NodeReport

JOB_STATES = ("ready", "reserved", "delayed", "buried")
DRAINING = "DRAINING"  # status's STATE for a running node that refuses new jobs
LEAVING = "LEAVING"  # status's mark for a node the config marks leaving = true
JOB_FIELDS = tuple(f"current-jobs-{s}" for s in JOB_STATES)
# cluster-wide totals are sums of these node ``stats`` fields
SUMMED_STATS = (
    "current-jobs-urgent", *JOB_FIELDS, "total-jobs", "current-connections",
    "current-producers", "current-workers", "current-waiting", "total-connections",
    "cmd-put", "cmd-reserve", "cmd-reserve-with-timeout", "cmd-delete", "cmd-release",
    "cmd-bury", "cmd-kick", "cmd-touch", "job-timeouts",
)
SUMMED_TUBE_STATS = (
    "current-jobs-urgent", *JOB_FIELDS, "total-jobs", "current-using",
    "current-watching", "current-waiting", "cmd-delete", "cmd-pause-tube",
)


def counted(n: int, what: str) -> str:
    """``1 node``, ``2 nodes``: a count in a message."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def human_duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(headers: list[str], rows: Iterable[list]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


# --- status ----------------------------------------------------------------------
def status_rows(nodes: Mapping[str, dict], reports: Mapping[str, NodeReport],
                leaving: Collection[str] = ()) -> list[dict]:
    """One row per node: what the supervisor says merged with what the node says.

    ``nodes`` maps a name to ``{"address", "state"?, "pid"?, "restarts"?, "crashes"?,
    "reason"?, "metrics"?}`` (``metrics``: the node's Prometheus URL, if it serves one).
    ``leaving``: the nodes the config marks ``leaving = true`` (they own no tubes).
    """
    rows = []
    for name, info in nodes.items():
        rep = reports[name]
        state = info.get("state") or ("UP" if rep.up else rep.silent_state)
        draining = rep.draining
        row = {
            "node": name, "address": info["address"], "up": rep.up,
            # a node that refuses puts (`bscluster drain`, SIGUSR1) says so in its stats
            "state": DRAINING if draining and state in ("RUNNING", "UP") else state,
            "draining": draining,
            "leaving": name in leaving,
            "pid": rep.stats.get("pid", info.get("pid")) if rep.up else info.get("pid"),
            "uptime": rep.stats.get("uptime") if rep.up else None,
            "restarts": info.get("restarts"),
            "crashes": info.get("crashes"),
            "metrics": info.get("metrics"),
            "reason": info.get("reason") or (None if rep.up else rep.error),
        }
        for state, key in zip(JOB_STATES, JOB_FIELDS, strict=True):
            row[state] = rep.stats.get(key) if rep.up else None
        rows.append(row)
    return rows


def render_status(rows: list[dict]) -> str:
    headers = ["NODE", "STATE", "PID", "ADDRESS", "UPTIME", *(s.upper() for s in JOB_STATES),
               "RESTARTS"]
    body = [[r["node"], _state(r), r["pid"] or "-", r["address"], human_duration(r["uptime"]),
             *(_n(r[s]) for s in JOB_STATES), _n(r["restarts"])] for r in rows]
    if any(r.get("metrics") for r in rows):
        headers.append("METRICS")
        for line, r in zip(body, rows, strict=True):
            line.append(r.get("metrics") or "-")
    out = [table(headers, body)]
    for r in rows:
        if r["reason"] and (not r["up"] or r["state"] not in ("RUNNING", "UP", DRAINING)):
            out.append(f"  {r['node']}: {r['reason']}")
    return "\n".join(out)


def _state(row: dict) -> str:
    """STATE as printed: a running node that does not answer is NO ANSWER; a
    leaving one is LEAVING (LEAVING,DRAINING once drained; DOWN,LEAVING if down)."""
    state = row["state"] if row["up"] or row["state"] != "RUNNING" else NO_ANSWER
    if not row.get("leaving"):
        return state
    if state in ("RUNNING", "UP"):
        return LEAVING
    if state == DRAINING:
        return f"{LEAVING},{DRAINING}"
    return f"{state},{LEAVING}"


def _n(v) -> str:
    return "-" if v is None else str(v)


# --- stats ------------------------------------------------------------------------
def cluster_stats(addresses: Mapping[str, str], reports: Mapping[str, NodeReport]) -> dict:
    """Totals and per-tube rows across nodes, as one JSON-able dict."""
    nodes = {name: {"address": address, "up": reports[name].up, "error": reports[name].error,
                    "stats": reports[name].stats} for name, address in addresses.items()}
    up = [name for name in addresses if reports[name].up]
    merged = merge_stats((reports[name].stats for name in up), NON_ADDITIVE_STATS)
    totals = {key: merged.get(key, 0) for key in SUMMED_STATS}
    per_tube: dict[str, dict[str, Mapping]] = {}
    for name in up:
        for tube, st in reports[name].tubes.items():
            per_tube.setdefault(tube, {})[name] = st
    tubes = {}
    for tube, by_node in sorted(per_tube.items()):
        summed = merge_stats(by_node.values(), take_max=MAX_TUBE_STATS)
        tubes[tube] = {**{key: summed.get(key, 0) for key in SUMMED_TUBE_STATS},
                       "nodes": {n: {k: st.get(k) for k in JOB_FIELDS} for n, st in by_node.items()}}
    totals["current-tubes"] = len(tubes)
    totals["nodes-up"] = len(up)
    totals["nodes"] = len(nodes)
    return {"totals": totals, "tubes": tubes, "nodes": nodes}


def render_stats(stats: dict) -> str:
    t = stats["totals"]
    head = (f"{t['nodes-up']}/{t['nodes']} nodes up, {t['current-tubes']} tubes, "
            f"{t['total-jobs']} jobs put since start")
    jobs = table(["", *(s.upper() for s in JOB_STATES), "URGENT", "CONNECTIONS", "WORKERS",
                  "WAITING"],
                 [["total", *(t[k] for k in JOB_FIELDS), t["current-jobs-urgent"],
                   t["current-connections"], t["current-workers"], t["current-waiting"]]])
    rows = []
    for name, row in stats["tubes"].items():
        rows.append([name, *(row[k] for k in JOB_FIELDS), row["total-jobs"],
                     row["current-watching"], ",".join(row["nodes"])])
    tubes = table(["TUBE", *(s.upper() for s in JOB_STATES), "TOTAL", "WATCHING", "NODES"],
                  rows)
    down = [f"  {name} ({n['address']}): {n['error']}"
            for name, n in stats["nodes"].items() if not n["up"]]
    parts = [head, "", jobs, "", tubes]
    if down:
        parts += ["", "not answering:", *down]
    return "\n".join(parts)


def _int(v) -> int:
    return v if isinstance(v, int) else 0
