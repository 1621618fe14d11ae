"""Prometheus metrics: beanstalkd's stats as text exposition format.

How this works
--------------
``describe(field)`` turns one beanstalkd ``stats`` / ``stats-tube`` field
(protocol.txt, "Other Commands") into a metric: a Prometheus-style name, a
type and a HELP text that names the field.  The rules are a small table
plus prefixes: ``current-*`` fields are gauges, ``cmd-*``, ``total-*`` and
the other cumulative fields are counters ending in ``_total``, durations
and sizes say their unit (``_seconds``, ``_bytes``), and the text fields
(version, id, hostname, os, platform) become labels of one ``_info`` gauge.
``render(families)`` writes text format 0.0.4.

The naming and rendering are pure and shared: bsnode serves its own figures
under the prefix ``bsnode`` (``node_families``, read straight from the live
``Commands``/``Store``, so a scrape is no protocol command and changes no
counter), and ``bscluster web`` serves what it polls from every node under
``beanstalkd`` with a ``node`` label.  Only ``serve`` touches the network:
a gevent WSGI server inside the node's own hub, started by
``bsnode --metrics ADDR:PORT``.

A scrape runs in the node's event loop, so it must never hold it for long:
per-tube series are exported for the ``max_tubes`` busiest tubes only (most
jobs; the others are counted in ``bsnode_metrics_tubes_omitted``), and the
walk over the tubes and the rendering call ``pause()`` (the server's
``gevent.sleep(0)``) every ``PAUSE_EVERY`` items, so other clients are served
in between.  One scrape renders at a time; scrapes meanwhile share its page.
"""

from __future__ import annotations

import heapq
import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import caps

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_PREFIX = "bsnode"
DEFAULT_MAX_TUBES = 1000  # tubes with series of their own (--metrics-max-tubes)
PAUSE_EVERY = 200  # tubes looked at, or samples rendered, between two pauses
PAUSE_EVERY_TUBE = 32  # tubes whose series are collected between two pauses
INFO_FIELDS = ("version", "id", "hostname", "os", "platform")
BINLOG_FILE_PREFIX = "binlog."

# field -> (name after the prefix, type, what it is); other fields follow _rule()
_FIELDS = {
    "total-jobs": ("jobs_total", "counter", "jobs created"),
    "total-connections": ("connections_total", "counter", "connections accepted"),
    "job-timeouts": ("job_timeouts_total", "counter", "times a reserved job's TTR ran out"),
    "max-job-size": ("max_job_size_bytes", "gauge", "largest job body accepted"),
    "pid": ("pid", "gauge", "process id"),
    "rusage-utime": ("rusage_utime_seconds_total", "counter", "user CPU time"),
    "rusage-stime": ("rusage_stime_seconds_total", "counter", "system CPU time"),
    "uptime": ("uptime_seconds", "gauge", "seconds since the server started"),
    "binlog-records-migrated": ("binlog_records_migrated_total", "counter",
                                "binlog records rewritten by compaction"),
    "binlog-records-written": ("binlog_records_written_total", "counter",
                               "binlog records written"),
    "binlog-max-size": ("binlog_max_size_bytes", "gauge", "size of each binlog file"),
    "draining": ("draining", "gauge", "1 while the server refuses new jobs (SIGUSR1)"),
    "pause": ("pause_seconds", "gauge", "length of the current pause"),
    "pause-time-left": ("pause_time_left_seconds", "gauge", "seconds until the tube resumes"),
}


@dataclass(frozen=True)
class Spec:
    name: str  # after the prefix (and "tube_" for tube fields)
    type: str
    help: str


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[tuple[dict, float]] = field(default_factory=list)

    def add(self, labels: Mapping[str, str], value: float) -> None:
        self.samples.append((dict(labels), value))


def describe(field_name: str, command: str = "stats") -> Spec:
    """The metric a beanstalkd stats field becomes."""
    name, kind, what = _FIELDS.get(field_name) or _rule(field_name)
    return Spec(name, kind, f"{what} (beanstalkd {command} field {field_name})")


def _rule(f: str) -> tuple[str, str, str]:
    snake = f.replace("-", "_")
    if f.startswith("cmd-"):
        return snake + "_total", "counter", f"{f[4:]} commands received"
    if f.startswith("current-jobs-"):
        return snake, "gauge", f"jobs now {f[13:]}"
    if f.startswith("current-"):
        return snake, "gauge", f"{f[8:]} now"
    if f.startswith("total-"):
        return snake[6:] + "_total", "counter", f"{f[6:]} so far"
    return snake, "gauge", f


def number(value) -> float | None:
    """A stats value as a sample value (None: not a number)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().strip('"')
    if text in ("true", "false"):
        return 1.0 if text == "true" else 0.0
    try:
        return float(text)
    except ValueError:
        return None


class Collector:
    """Families by name, in first-seen order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.families: dict[str, Family] = {}

    def family(self, name: str, kind: str, help_text: str) -> Family:
        full = f"{self.prefix}_{name}"
        fam = self.families.get(full)
        if fam is None:
            fam = self.families[full] = Family(full, kind, help_text)
        return fam

    def stats(self, fields: Iterable[tuple[str, object]], labels: Mapping[str, str]) -> None:
        """Every field of one `stats` reply; text fields go to ``<prefix>_info``."""
        info = dict(labels)
        for key, value in fields:
            if key in INFO_FIELDS:
                info[key] = str(value).strip('"')
                continue
            v = number(value)
            if v is None:
                continue
            spec = describe(key, "stats")
            self.family(spec.name, spec.type, spec.help).add(labels, v)
        self.family("info", "gauge", "constant 1; labels carry the beanstalkd stats fields "
                    + ", ".join(INFO_FIELDS)).add(info, 1)

    def tube(self, fields: Iterable[tuple[str, object]], labels: Mapping[str, str]) -> None:
        """Every field of one `stats-tube` reply, labelled with the tube's name."""
        for key, value in fields:
            v = None if key == "name" else number(value)
            if v is None:
                continue
            spec = describe(key, "stats-tube")
            self.family("tube_" + spec.name, spec.type, spec.help).add(labels, v)

    def render(self, pause: Callable[[], None] | None = None) -> str:
        return render(self.families.values(), pause)


def render(families: Iterable[Family], pause: Callable[[], None] | None = None) -> str:
    """Text format 0.0.4; ``pause()`` is called every PAUSE_EVERY samples."""
    out = []
    n = 0
    for fam in families:
        out.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            out.append(f"{fam.name}{_labels(labels)} {_value(value)}")
            n += 1
            if pause is not None and n % PAUSE_EVERY == 0:
                pause()
    return "\n".join(out) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 1 << 53 else repr(v)


# --- the node's own figures ----------------------------------------------------------
def tube_fields(tube, now: float) -> list[tuple[str, object]]:
    """A tube's `stats-tube` fields but its name (Tube.stats_fields owns them)."""
    return tube.stats_fields(now)[1:]


def oldest_ready(tubes) -> dict[str, object]:
    """Tube name -> its oldest ready job (the smallest id: ids follow creation)."""
    found: dict[str, object] = {}
    for t in tubes:
        if t.ready.count:
            job = t.ready.oldest()
            if job is not None:
                found[t.name] = job
    return found


def busiest(tubes: list, limit: int, pause: Callable[[], None] | None = None) -> list:
    """The ``limit`` tubes with the most jobs (ties: the older tube), in
    ``tubes``' order; ``pause()`` is called every PAUSE_EVERY tubes."""
    if len(tubes) <= limit:
        return list(tubes)
    if limit <= 0:
        return []
    heap: list = []  # (jobs, -index): the smallest is the first to give way
    for i, t in enumerate(tubes):
        key = (t.ready.count + t.reserved + t.delayed_count + len(t.buried), -i)
        if len(heap) < limit:
            heapq.heappush(heap, key)
        elif key > heap[0]:
            heapq.heapreplace(heap, key)
        if pause is not None and i % PAUSE_EVERY == PAUSE_EVERY - 1:
            pause()
    return [tubes[-k[1]] for k in sorted(heap, key=lambda k: -k[1])]


def binlog_bytes(binlog_dir: str | None) -> int:
    """Bytes in the binlog files of ``binlog_dir`` (0 without one)."""
    if not binlog_dir:
        return 0
    total = 0
    try:
        with os.scandir(binlog_dir) as entries:
            for e in entries:
                if e.name.startswith(BINLOG_FILE_PREFIX) and e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
    return total


def node_families(commands, store, binlog_dir: str | None = None,
                  max_tubes: int = DEFAULT_MAX_TUBES,
                  pause: Callable[[], None] | None = None) -> Collector:
    """Everything bsnode exposes: stats, stats-tube for the ``max_tubes``
    busiest tubes, binlog size, oldest ages."""
    c = Collector(NODE_PREFIX)
    c.stats(commands.stats_fields(pause), {})
    everything = list(store.tube_list)
    tubes = busiest(everything, max_tubes, pause)
    c.family("tubes", "gauge", "tubes that exist now").add({}, len(everything))
    c.family("metrics_tubes_omitted", "gauge",
             "tubes without series of their own here (all but the "
             "--metrics-max-tubes busiest)").add({}, len(everything) - len(tubes))
    now = store.clock()
    oldest = oldest_ready(tubes)
    for i, t in enumerate(tubes):
        c.tube(tube_fields(t, now), {"tube": t.name})
        if pause is not None and i % PAUSE_EVERY_TUBE == PAUSE_EVERY_TUBE - 1:
            pause()
    age = c.family("tube_oldest_ready_age_seconds", "gauge",
                   "age of the tube's oldest ready job, 0 when none is ready "
                   "(the age field of beanstalkd stats-job)")
    for t in tubes:
        job = oldest.get(t.name)
        age.add({"tube": t.name}, max(0.0, now - job.created) if job is not None else 0.0)
    c.family("binlog_size_bytes", "gauge",
             "bytes in the binlog files (beanstalkd has no stats field for it; "
             "see binlog-max-size)").add({}, binlog_bytes(binlog_dir))
    caps.add_metrics(c, store)
    return c


# --- the HTTP endpoint --------------------------------------------------------------------
def make_app(page: Callable[[], str]) -> Callable:
    """A WSGI app answering GET /metrics (and / with a pointer to it)."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Type", "text/plain")])
            return [b"only GET\n"]
        if path == "/metrics":
            body = page().encode()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"bsnode: metrics are at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; try /metrics\n"]

    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket for the endpoint (bound now, so errors show at start)."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(128)
    return sock


class Page:
    """The node's page, rendered with pauses; scrapes that arrive while a
    render is under way get that render's page rather than start another."""

    def __init__(self, commands, store, binlog_dir: str | None, max_tubes: int) -> None:
        from gevent import sleep

        self.commands, self.store, self.binlog_dir = commands, store, binlog_dir
        self.max_tubes = max_tubes
        self._pause = lambda: sleep(0)
        self._rendering = None  # an Event while a render is under way
        self._text = ""

    def __call__(self) -> str:
        from gevent.event import Event

        if self._rendering is not None:
            self._rendering.wait()
            return self._text
        self._rendering = done = Event()
        try:
            fams = node_families(self.commands, self.store, self.binlog_dir,
                                 self.max_tubes, self._pause)
            self._text = fams.render(self._pause)
            return self._text
        finally:
            self._rendering = None
            done.set()


def serve(listener: socket.socket, commands, store, binlog_dir: str | None = None,
          max_tubes: int = DEFAULT_MAX_TUBES):
    """Start serving /metrics in the running gevent hub; returns the server."""
    import logging

    from gevent.pywsgi import WSGIServer

    from .limits import AcceptBrake
    from .ratelog import Complaints

    class MetricsServer(AcceptBrake, WSGIServer):
        """Out of descriptors, brakes as the protocol's listener does."""

    listener.setblocking(False)
    app = make_app(Page(commands, store, binlog_dir, max_tubes))
    server = MetricsServer(listener, app, log=None, error_log=None)
    server.complaints = Complaints(logging.getLogger("bsnode.metrics"))
    server.start()
    return server
