"""Watch every node at once: what `bscluster top`, `web` and the cluster /metrics show.

How this works
--------------
``Monitor.poll()`` asks every node, in parallel, for ``stats``,
``list-tubes`` and one ``stats-tube`` per tube (``probe.node_report``; any
beanstalkd-speaking server will do) and turns the answers into a *view*: a
plain JSON-able dict of cluster totals, one row per node and one row per
tube summed over the nodes that have it.  Rates (ops/s) come from the
difference of cumulative counters between two polls divided by the time
between them; a counter that went backwards, or a node whose ``id``
changed, was restarted, so its rate is unknown (None) for that poll.
"ops" counts the job commands (put, reserve, delete, release, bury, kick,
touch), not the stats commands the monitor itself sends.

Every poll also appends a point to a bounded history (cluster totals and
each tube's depth and rates) for the dashboard's charts.  The view-making
functions are pure; only ``Monitor`` has a clock and sockets, and both are
injected so tests can drive it with made-up reports.

Tubes cost by what happens in them, not by how many exist (anyone who can
``watch`` makes tubes).  A *quiet* tube (no jobs, nobody waiting, not
paused, no put or delete since the last poll, on every node that has it)
gets no full row unless there is room: the view lists at most ``max_tubes``
tubes (``web_max_tubes``), the busy ones first, and counts the rest in
``tubes_omitted``.  History is kept only for tubes that have or had jobs
or traffic within the history window, for at most ``max_tubes`` of them;
one more evicts the tube whose last activity is the oldest.  So memory and
poll time do not grow with tubes nobody uses (docs/MONITORING.md has the
figures at 20,000 tubes).

``inspect_tube`` and ``inspect_job`` are the read-only look inside a tube
for the dashboard: the protocol lets a client see only the next job of each
state (peek-ready/-delayed/-buried) or a job by id (peek), so that is what
they return, with ``stats-job`` and a body preview.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from bsclient import Client, ConnectionLostError, NotFoundError, ReplyError
from bsclient.address import parse_address
from bsclient.config import ConfigError as ClientConfigError
from bsclient.config import NodeAddress, nodes_from_mapping
from bsclient.fanout import MAX_TUBE_STATS, merge_stats
from bscluster.config import DEFAULT_WEB_MAX_TUBES
from bscluster.probe import NodeReport, probe_all
from bsnode.metrics import Collector

POLL_INTERVAL = 1.0  # seconds between polls in top and web
POLL_TIMEOUT = 1.5  # a node that takes longer counts as down for that poll
HISTORY_SECONDS = 600  # how far back the charts go
PREVIEW_BYTES = 200  # body preview length in the dashboard
STATES = ("ready", "reserved", "delayed", "buried")
# a tube row's counts: row key -> the stats-tube field summed over nodes (paused: max)
TUBE_ROW_FIELDS = {**{s: f"current-jobs-{s}" for s in STATES}, "urgent": "current-jobs-urgent",
                   "waiting": "current-waiting", "watching": "current-watching",
                   "using": "current-using", "total_jobs": "total-jobs",
                   "paused": "pause-time-left"}
# job commands: their per-second sum is a node's "ops/s"
OPS_COMMANDS = ("cmd-put", "cmd-reserve", "cmd-reserve-with-timeout", "cmd-delete",
                "cmd-release", "cmd-bury", "cmd-kick", "cmd-touch")
NODE_RATES = {"puts": ("cmd-put",), "reserves": ("cmd-reserve", "cmd-reserve-with-timeout"),
              "deletes": ("cmd-delete",), "ops": OPS_COMMANDS}
TUBE_RATES = {"puts": ("total-jobs",), "deletes": ("cmd-delete",),
              "ops": ("total-jobs", "cmd-delete")}
TUBE_COUNTERS = ("total-jobs", "cmd-delete")  # the fields TUBE_RATES read
# a tube is quiet while all of these are 0 (and its counters stand still)
QUIET_FIELDS = (*(f"current-jobs-{s}" for s in STATES), "current-waiting", "pause-time-left")
CLUSTER_METRICS_PREFIX = "beanstalkd"

# attention levels, highest first: why a tube is at the top of the list
ATTENTION = {3: "buried jobs", 2: "ready jobs but no worker watching", 1: "paused", 0: ""}


class MonitorError(Exception):
    """The list of nodes to watch could not be worked out; the message says why."""


# --- which nodes ---------------------------------------------------------------------
def parse_node_flags(flags: Sequence[str]) -> tuple[NodeAddress, ...]:
    """``--node name=host:port[@weight]`` (or bare ``host:port``, named nodeI)."""
    nodes: dict = {}
    for i, item in enumerate(flags, 1):
        name, sep, rest = item.partition("=")
        if not sep:
            name, rest = f"node{i}", item
        address, at, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if at and not weight.isdigit():
            raise MonitorError(f"--node {item}: the weight after @ must be a whole number")
        nodes[name.strip()] = {"address": address.strip(), "weight": int(weight) if at else 1}
    try:
        parsed = nodes_from_mapping(nodes, "--node")
    except ClientConfigError as e:
        raise MonitorError(str(e)) from None
    for n in parsed:
        if not 0 < _host_port(n.address)[1] <= 65535:
            raise MonitorError(f"--node {n.name}={n.address}: the port must be 1..65535")
    return parsed


def cluster_nodes(config_file: str | None, data_dir: str | None) -> tuple[NodeAddress, ...]:
    """The running cluster's nodes (from its data dir), else the config's."""
    from bscluster.config import ConfigError, load_config
    from bscluster.truth import cluster_view

    try:
        config = load_config(config_file, {"data_dir": data_dir})
    except ConfigError as e:
        raise MonitorError(str(e)) from None
    return cluster_view(config).layout().nodes


def cluster_ssl_context(config_file: str | None):
    """TLS for watching the nodes: the config's [tls] and BSCLUSTER_TLS_* (None: plain)."""
    from bscluster.config import ConfigError, load_config

    try:
        return load_config(config_file, {}).ssl_context()
    except ConfigError as e:
        raise MonitorError(str(e)) from None


def watch_options(f):
    """The options of commands that watch a cluster: which nodes to look at."""
    import click

    f = click.option("--node", "node_flags", multiple=True, metavar="NAME=HOST:PORT",
                     help="Watch this node instead of the cluster's (repeatable); any "
                          "beanstalkd-speaking server will do.")(f)
    f = click.option("--data-dir", metavar="DIR",
                     help="The running cluster's data dir [env BSCLUSTER_DATA_DIR].")(f)
    return click.option("--config", "-c", "config_file", metavar="PATH",
                        help="Config file [env BSCLUSTER_CONFIG; default ./bscluster.toml "
                             "if present].")(f)


def resolve_nodes(config_file: str | None, data_dir: str | None,
                  node_flags: Sequence[str]) -> tuple[NodeAddress, ...]:
    """What ``watch_options`` asked for: --node flags, else the cluster's nodes."""
    return parse_node_flags(node_flags) if node_flags else cluster_nodes(config_file, data_dir)


def _host_port(address: str) -> tuple[str, int]:
    addr = parse_address(address)
    if isinstance(addr, str):
        raise MonitorError(f"{address}: the monitor watches TCP nodes only")
    return addr


# --- making the view (pure) ------------------------------------------------------------
def _num(v) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def _rate(prev: Mapping | None, cur: Mapping, fields: Iterable[str], dt: float) -> float | None:
    if prev is None or dt <= 0:
        return None
    delta = sum(_num(cur.get(f)) - _num(prev.get(f)) for f in fields)
    return None if delta < 0 else delta / dt


def _restarted(prev: NodeReport | None, cur: NodeReport) -> bool:
    return (prev is None or not prev.up or not cur.up
            or prev.stats.get("id") != cur.stats.get("id")
            or prev.stats.get("pid") != cur.stats.get("pid"))


def fullness(s: Mapping) -> dict | None:
    """How full a capped bsnode is (its stats show caps only when one is set)."""
    pairs = [(s.get("current-jobs", 0), s.get("max-jobs", 0)),
             (s.get("current-job-bytes", 0), s.get("max-job-bytes", 0))]
    if not any(limit for _, limit in pairs):
        return None
    return {"fraction": max(now / limit for now, limit in pairs if limit),
            "jobs": pairs[0][0], "max_jobs": pairs[0][1],
            "job_bytes": pairs[1][0], "max_job_bytes": pairs[1][1]}


def node_row(node: NodeAddress, cur: NodeReport, prev: NodeReport | None, dt: float) -> dict:
    s = cur.stats
    row = {"name": node.name, "address": node.address, "up": cur.up, "error": cur.error,
           # as top and the dashboard show it: up, draining, NO ANSWER or DOWN
           "state": ("draining" if cur.draining else "up") if cur.up else cur.silent_state}
    row["full"] = fullness(s) if cur.up else None  # bsnode --max-jobs/--max-job-bytes
    before = None if _restarted(prev, cur) else prev.stats
    row.update({k: (_rate(before, s, f, dt) if cur.up else None) for k, f in NODE_RATES.items()})
    if not cur.up:
        row.update({k: None for k in (*STATES, "urgent", "connections", "producers",
                                      "workers", "waiting", "tubes", "uptime", "version",
                                      "total_jobs", "draining", "pid")})
        return row
    for state in STATES:
        row[state] = s.get(f"current-jobs-{state}", 0)
    row.update(urgent=s.get("current-jobs-urgent", 0), connections=s.get("current-connections", 0),
               producers=s.get("current-producers", 0), workers=s.get("current-workers", 0),
               waiting=s.get("current-waiting", 0), tubes=len(cur.tubes),
               uptime=s.get("uptime"), version=s.get("version"), pid=s.get("pid"),
               total_jobs=s.get("total-jobs", 0), draining=cur.draining)
    return row


def attention(row: Mapping) -> int:
    """How much a tube needs an operator (see ATTENTION)."""
    if row["buried"]:
        return 3
    if row["ready"] and not row["watching"]:
        return 2
    if row["paused"]:
        return 1
    return 0


def tube_sort_key(row: Mapping) -> tuple:
    return (-row["attention"], -row["buried"], -row["ready"], -row["delayed"], row["name"])


def _quiet(st: Mapping, before: Mapping | None) -> bool:
    """Nothing in the tube, nobody waiting, not paused, and no put or delete since
    ``before`` (its stats-tube at the last poll; None: unknown, counts as still)."""
    get = st.get  # (plain loops: this runs once per tube per poll)
    for f in QUIET_FIELDS:
        if get(f):
            return False
    if before is not None:
        for f in TUBE_COUNTERS:
            if get(f, 0) != before.get(f, 0):
                return False
    return True


def _tube_row(name: str, entries: list, dt: float) -> dict:
    """One tube summed over the nodes in ``entries``: (node, stats-tube, stats before)."""
    row = {"name": name, **dict.fromkeys(STATES, 0), "urgent": 0, "waiting": 0,
           "watching": 0, "using": 0, "total_jobs": 0, "paused": 0, "nodes": [],
           **dict.fromkeys(TUBE_RATES, None)}
    summed = merge_stats((st for _, st, _ in entries), take_max=MAX_TUBE_STATS)
    for key, field in TUBE_ROW_FIELDS.items():
        row[key] = summed.get(field, 0)
    for node, st, before in entries:
        row["nodes"].append(node)
        for key, fields in TUBE_RATES.items():
            r = _rate(before, st, fields, dt)
            if r is not None:
                row[key] = (row[key] or 0.0) + r
    row["attention"] = attention(row)
    row["why"] = ATTENTION[row["attention"]]
    return row


def tube_rows(nodes: Sequence[NodeAddress], cur: Mapping[str, NodeReport],
              prev: Mapping[str, NodeReport] | None, dt: float,
              limit: int | None = None) -> tuple[list[dict], int]:
    """The tubes' rows, busy ones first (``tube_sort_key``), at most ``limit`` of
    them; and how many tubes there are in all.  Quiet tubes get a row only
    while there is room, in name order."""
    busy: dict[str, list] = {}
    quiet: dict[str, list] = {}
    for node in nodes:
        rep = cur[node.name]
        if not rep.up:
            continue
        old = None if prev is None else prev.get(node.name)
        old_tubes = None if old is None or _restarted(old, rep) else old.tubes
        for name, st in rep.tubes.items():
            # a tube new since the last poll started from zero
            before = None if old_tubes is None else old_tubes.get(name, {})
            entry = (node.name, st, before)
            if name in busy:
                busy[name].append(entry)
            elif _quiet(st, before):
                quiet.setdefault(name, []).append(entry)
            else:
                busy[name] = quiet.pop(name, []) + [entry]
    total = len(busy) + len(quiet)
    rows = sorted((_tube_row(n, e, dt) for n, e in busy.items()), key=tube_sort_key)
    room = len(quiet) if limit is None else max(0, limit - len(rows))
    rows += sorted((_tube_row(n, quiet[n], dt) for n in sorted(quiet)[:room]),
                   key=tube_sort_key)
    return (rows if limit is None else rows[:limit]), total


def totals(node_rows: Sequence[Mapping], tube_count: int) -> dict:
    up = [r for r in node_rows if r["up"]]
    out = {"nodes": len(node_rows), "nodes_up": len(up), "tubes": tube_count}
    merged = merge_stats(up)  # a rate no node has yet (None everywhere) stays None
    for key in (*STATES, "urgent", "connections", "producers", "workers", "waiting",
                "total_jobs"):
        out[key] = merged.get(key, 0)
    for key in NODE_RATES:
        out[key] = merged.get(key)
    return out


def make_view(nodes: Sequence[NodeAddress], cur: Mapping[str, NodeReport],
              prev: Mapping[str, NodeReport] | None, dt: float, now: float,
              max_tubes: int | None = None) -> dict:
    """The whole picture of one poll, JSON-able (docs/MONITORING.md, GET /api/overview);
    at most ``max_tubes`` tube rows, the rest counted in ``tubes_omitted``."""
    node_rows = [node_row(n, cur[n.name], None if prev is None else prev.get(n.name), dt)
                 for n in nodes]
    tubes, count = tube_rows(nodes, cur, prev, dt, max_tubes)
    return {"time": now, "interval": dt if prev is not None else None,
            "totals": totals(node_rows, count), "nodes": node_rows, "tubes": tubes,
            "tubes_omitted": count - len(tubes)}


def history_point(view: Mapping) -> dict:
    t = view["totals"]
    return {"t": view["time"], **{k: t[k] for k in (*STATES, *NODE_RATES)}}


def tube_point(view: Mapping, row: Mapping) -> dict:
    return {"t": view["time"], **{k: row[k] for k in (*STATES, *TUBE_RATES)}}


def busy_row(row: Mapping) -> bool:
    """Does this tube row show jobs or traffic (so its history is worth keeping)?"""
    return any(row[k] for k in STATES) or any(row[k] for k in TUBE_RATES)


def cluster_metrics(nodes: Sequence[NodeAddress], reports: Mapping[str, NodeReport],
                    tubes: Container[str] | None = None) -> str:
    """Every node's stats and stats-tube as Prometheus text, labelled by node (and
    tube); only the tubes in ``tubes`` when given (the view's, busiest first)."""
    c = Collector(CLUSTER_METRICS_PREFIX)
    up = c.family("up", "gauge", "1 if the node answered the last poll, else 0")
    for node in nodes:
        up.add({"node": node.name}, 1 if reports[node.name].up else 0)
    for node in nodes:
        rep = reports[node.name]
        if rep.up:
            c.stats(rep.stats.items(), {"node": node.name})
    for node in nodes:
        rep = reports[node.name]
        for tube, st in rep.tubes.items() if rep.up else ():
            if tubes is None or tube in tubes:
                c.tube(st.items(), {"node": node.name, "tube": tube})
    return c.render()


# --- the poller -------------------------------------------------------------------------
class Monitor:
    """Polls the nodes and keeps the latest view and a bounded history. Thread-safe."""

    def __init__(self, nodes: Sequence[NodeAddress],
                 probe: Callable[[dict], dict[str, NodeReport]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 history_seconds: float = HISTORY_SECONDS,
                 interval: float = POLL_INTERVAL,
                 max_tubes: int = DEFAULT_WEB_MAX_TUBES, ssl_context=None) -> None:
        self.nodes = tuple(nodes)
        self.interval = interval
        self.max_tubes = max_tubes  # tube rows in a view, and tubes with a history
        self.ssl_context = ssl_context  # TLS to the nodes ([tls] in the config) if set
        self._addresses = {n.name: _host_port(n.address) for n in self.nodes}
        self._probe = probe or (lambda addrs: probe_all(addrs, POLL_TIMEOUT, self.ssl_context))
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._keep = max(2, int(history_seconds / interval))
        self._history: deque = deque(maxlen=self._keep)
        self._window = history_seconds
        # tube -> (its points, wall time it last had jobs or traffic), least recent first
        self._tube_history: OrderedDict[str, tuple[deque, float]] = OrderedDict()
        self._prev: tuple[float, dict[str, NodeReport]] | None = None
        self.view: dict | None = None
        self.reports: dict[str, NodeReport] = {}
        self._reported: tuple[NodeAddress, ...] = ()  # the nodes ``reports`` is about

    def set_nodes(self, nodes: Sequence[NodeAddress]) -> None:
        """Watch these nodes from the next poll on (the supervisor grew the cluster)."""
        addresses = {n.name: _host_port(n.address) for n in nodes}
        with self._lock:
            self.nodes, self._addresses = tuple(nodes), addresses

    def use_ssl_context(self, ssl_context) -> None:
        """Connect to the nodes with this context from the next poll (and action) on:
        client certificates rewritten in place (`bscluster reload`)."""
        self.ssl_context = ssl_context

    def poll(self) -> dict:
        """Ask every node now; returns the new view."""
        with self._poll_lock:
            with self._lock:
                nodes, addresses = self.nodes, self._addresses
            reports = self._probe(addresses)
            now = self._clock()
            prev = self._prev
            dt = now - prev[0] if prev else 0.0
            view = make_view(nodes, reports, prev[1] if prev else None, dt, self._wall(),
                             self.max_tubes)
            with self._lock:
                self._prev = (now, reports)
                self.reports, self._reported = reports, nodes
                self.view = view
                self._history.append(history_point(view))
                self._record_tubes(view)
            return view

    def _record_tubes(self, view: dict) -> None:
        now, tracked = view["time"], self._tube_history
        for row in view["tubes"]:
            name = row["name"]
            entry = tracked.get(name)
            if busy_row(row):
                if entry is None:
                    if len(tracked) >= self.max_tubes:
                        tracked.popitem(last=False)  # the one quiet the longest
                    entry = (deque(maxlen=self._keep), now)
                tracked[name] = (entry[0], now)
                tracked.move_to_end(name)
            if entry is not None:
                entry[0].append(tube_point(view, row))
        while tracked:  # quiet (or gone) for a whole window: forget it
            name, (_, active) = next(iter(tracked.items()))
            if now - active <= self._window:
                break
            del tracked[name]

    def tracked_tubes(self) -> list[str]:
        """The tubes with a history, least recently busy first."""
        with self._lock:
            return list(self._tube_history)

    def history(self, tube: str | None = None) -> list[dict]:
        with self._lock:
            if tube is None:
                return list(self._history)
            entry = self._tube_history.get(tube)
            return list(entry[0]) if entry is not None else []

    def latest(self) -> dict | None:
        with self._lock:
            return self.view

    def metrics(self) -> str:
        """The cluster /metrics: per-tube series for the tubes in the view only."""
        with self._lock:
            reports, nodes, view = self.reports, self._reported, self.view
        if not reports:
            self.poll()
            with self._lock:
                reports, nodes, view = self.reports, self._reported, self.view
        shown = {row["name"] for row in view["tubes"]} if view and view["tubes_omitted"] \
            else None
        return cluster_metrics(nodes, reports, shown)

    def client(self, name: str, timeout: float = 5.0) -> Client:
        """A fresh connection to one node (the caller closes it)."""
        for n in self.nodes:
            if n.name == name:
                return Client(n.address, connect_timeout=2.0, timeout=timeout, name=name,
                              ssl_context=self.ssl_context)
        raise MonitorError(f"no node named {name!r}; watching "
                           f"{', '.join(n.name for n in self.nodes)}")


# --- looking inside a tube (read-only) ---------------------------------------------------------
def preview(body: bytes, limit: int = PREVIEW_BYTES) -> dict:
    """The start of a job body, as text if it is UTF-8, else as escaped bytes."""
    head = body[:limit]
    try:
        text, binary = head.decode("utf-8"), False
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 3 and len(body) > limit:  # a character cut at the limit
            text, binary = head[:e.start].decode("utf-8", "replace"), False
        else:
            text, binary = head.decode("latin-1").encode("unicode_escape").decode(), True
    return {"text": text, "binary": binary, "size": len(body), "truncated": len(body) > limit}


def _job_info(c: Client, job, node: str) -> dict:
    try:
        stats = c.stats_job(job.id)
    except NotFoundError:  # gone between the peek and the stats-job
        stats = None
    return {"node": node, "id": job.id, "handle": f"{node}/{job.id}",
            "stats": stats, "body": preview(job.body)}


def inspect_tube(monitor: Monitor, tube: str) -> dict:
    """Per node that has the tube: its stats-tube and the next ready, delayed and buried job."""
    out = {"name": tube, "nodes": {}}
    for node in monitor.nodes:
        entry: dict = {"up": True, "stats": None, "next": {}}
        try:
            with monitor.client(node.name) as c:
                try:
                    entry["stats"] = c.stats_tube(tube)
                except NotFoundError:
                    continue  # the tube does not exist there
                c.use(tube)
                for state, peek in (("ready", c.peek_ready), ("delayed", c.peek_delayed),
                                    ("buried", c.peek_buried)):
                    try:
                        entry["next"][state] = _job_info(c, peek(), node.name)
                    except NotFoundError:
                        entry["next"][state] = None
        except (OSError, ConnectionLostError, ReplyError) as e:
            entry = {"up": False, "error": str(e) or type(e).__name__}
        out["nodes"][node.name] = entry
    return out


def inspect_job(monitor: Monitor, node: str, job_id: int) -> dict | None:
    """stats-job and a body preview of one job, or None if the node has no such job."""
    with monitor.client(node) as c:
        try:
            return _job_info(c, c.peek(job_id), node)
        except NotFoundError:
            return None
