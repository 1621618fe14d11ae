"""`bscluster bench`: put load on a node or a cluster and print ops/s and latency.

How this works
--------------
The parent process works out the connections (one tube each, round-robin
over ``--tubes`` tubes; with a cluster config each connection goes to the
node that owns its tube on the same hash ring ``ClusterClient`` uses), deals
them out to ``--procs`` worker processes and starts the clock once every
worker has its connections set up.  A worker drives its connections with
non-blocking sockets and a selector, keeping ``--pipeline`` commands in
flight on each, the way the compiled loadgen does:

* put: every slot puts;
* put-reserve-delete: every slot puts, reserves, deletes, and starts over;
* produce-consume: half of the connections put, the other half reserve
  (``reserve-with-timeout 1``, so the end of a run never hangs) and delete.

Every reply is checked; each INSERTED, RESERVED and DELETED counts as one
op, and its latency (command written to reply read) goes into a
log-bucketed histogram (about 2% wide), so memory stays bounded however
long the run.  When ``--seconds`` is up no new job is started, jobs in
flight finish (for at most GRACE seconds) and the workers send back their
counts.  Workers publish running op counts in shared memory, which the
parent turns into the progress line.  Afterwards the jobs the load left in
its tubes are drained, unless ``--keep-jobs``.

``--compare`` runs the same load against a second server right after the
first, ``--rounds`` times alternating, and prints the ratio of the medians.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import selectors
import socket
import ssl
import statistics
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace

import click
from bsclient.address import DEFAULT_HOST, format_address, parse_address
from bsclient.config import read_tls_settings
from bsclient.protocol import DEFAULT_PORT
from bsclient.ring import Ring
from bsclient.tls import TlsSettings
from bsclient.tls import wrap as wrap_tls
from bscluster.config import load_config
from bscluster.truth import cluster_view

MODES = ("put", "put-reserve-delete", "produce-consume")
PUT, RESERVE, DELETE = 0, 1, 2
PUTTER, CYCLER, CONSUMER = "putter", "cycler", "consumer"
TUBE_PREFIX = "bench."
GRACE = 5.0  # seconds in-flight jobs get to finish after --seconds
SETUP_TIMEOUT = 10.0
PROGRESS_EVERY = 0.5
HIST_SCALE = 50.0  # buckets per e-fold of latency: about 2% wide
HIST_SIZE = 1200  # up to e^24 µs, far beyond any run
DRAIN_BATCH = 200
DRAIN_LIMIT = 120.0  # seconds the clean-up may take
RECV_SIZE = 262144
LOADGEN_HINT = ("bench/loadgen.c in the source tree (`python bench/harness.py`\n"
                "builds it with cc and prints its path; bench/run_benchmarks.py uses it),\n"
                "one compiled process at a few µs of client CPU per command")


@dataclass(frozen=True)
class Load:
    mode: str
    size: int
    conns: int
    pipeline: int
    tubes: int
    seconds: float
    procs: int


@dataclass(frozen=True)
class ConnSpec:
    address: str  # "host:port" or "unix:/path"
    role: str
    tube: str
    tls: TlsSettings | None = None  # connect over TLS (a picklable recipe, not a context)


@dataclass(frozen=True)
class Target:
    """Where the load goes: node name -> address, and the ring weights."""

    nodes: dict
    weights: dict | None = None
    tls: TlsSettings | None = None  # [tls] / BSCLUSTER_TLS_*: the nodes speak TLS

    def describe(self) -> str:
        if len(self.nodes) == 1:
            return next(iter(self.nodes.values()))
        return f"cluster of {len(self.nodes)} nodes ({', '.join(self.nodes.values())})"


@dataclass
class Result:
    target: str
    ops: int = 0
    elapsed: float = 0.0
    errors: int = 0
    error_samples: list = field(default_factory=list)
    hist: list = field(default_factory=lambda: [0] * HIST_SIZE)
    by_cmd: list = field(default_factory=lambda: [0, 0, 0])
    client_cpu: float = 0.0
    per_node: dict = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in µs (bucket midpoint)."""
        total = sum(self.hist)
        if not total:
            return 0.0
        rank, seen = q * total, 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= rank:
                return math.exp((i + 0.5) / HIST_SCALE)
        return math.exp(HIST_SIZE / HIST_SCALE)

    def merge(self, other: dict) -> None:
        self.ops += other["ops"]
        self.errors += other["errors"]
        self.error_samples += other["error_samples"][: 5 - len(self.error_samples)]
        self.hist = [a + b for a, b in zip(self.hist, other["hist"], strict=True)]
        self.by_cmd = [a + b for a, b in zip(self.by_cmd, other["by_cmd"], strict=True)]
        self.client_cpu += other["cpu"]


# --- where the load goes -------------------------------------------------------------
def plan_conns(load: Load, nodes: dict[str, str],
               weights: dict[str, int] | None = None) -> list[ConnSpec]:
    """One ConnSpec per connection; tubes go to the node that owns them on the
    ring (the default ring of ClusterClient, with the config's weights)."""
    ring = Ring(weights or dict.fromkeys(nodes, 1)) if len(nodes) > 1 else None
    only = next(iter(nodes.values()))
    specs = []
    producers = load.conns // 2 if load.mode == "produce-consume" else load.conns
    for i in range(load.conns):
        if load.mode == "produce-consume":
            role = PUTTER if i < producers else CONSUMER
            k = i if i < producers else i - producers
        else:
            role, k = (PUTTER if load.mode == "put" else CYCLER), i
        tube = f"{TUBE_PREFIX}{k % load.tubes}"
        address = nodes[ring.node_for(tube)] if ring else only
        specs.append(ConnSpec(address, role, tube))
    return specs


def _connect(address: str, tls: TlsSettings | None = None) -> socket.socket:
    where = parse_address(address)
    if isinstance(where, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SETUP_TIMEOUT)
        sock.connect(where)
    else:
        sock = socket.create_connection(where, timeout=SETUP_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock = wrap_tls(sock, tls.client_context(), None if isinstance(where, str) else where[0])
    return sock


def _setup(sock: socket.socket, spec: ConnSpec) -> None:
    tube = spec.tube.encode()
    if spec.role == PUTTER:
        cmds, want = b"use %s\r\n" % tube, 1
    else:
        cmds, want = b"use %s\r\nwatch %s\r\nignore default\r\n" % (tube, tube), 3
    sock.sendall(cmds)
    buf = b""
    while buf.count(b"\r\n") < want:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"{spec.address} closed the connection during setup")
        buf += chunk
    if buf.count(b"USING") != 1 or buf.count(b"WATCHING") != want - 1:
        raise ConnectionError(f"{spec.address}: unexpected setup reply {buf[:60]!r}")


# --- one worker process ------------------------------------------------------------
class _Conn:
    __slots__ = ("sock", "role", "inflight", "rbuf", "wbuf", "address")

    def __init__(self, sock: socket.socket, role: str, address: str) -> None:
        self.sock = sock
        self.role = role
        self.address = address
        self.inflight: deque = deque()  # (command kind, time sent)
        self.rbuf = bytearray()
        self.wbuf: list[bytes] = []


class _Worker:
    """Drives a share of the connections until the run ends."""

    def __init__(self, load: Load, specs: list[ConnSpec], slot, index: int) -> None:
        self.load = load
        self.specs = specs
        self.slot = slot  # shared array of running op counts
        self.index = index
        body = b"b" * load.size
        self.put_cmd = b"put 1024 0 120 %d\r\n%s\r\n" % (load.size, body)
        self.ops = self.errors = 0
        self.samples: list[str] = []
        self.hist = [0] * HIST_SIZE
        self.by_cmd = [0, 0, 0]
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.conns: list[_Conn] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(text)

    def setup(self) -> None:
        for spec in self.specs:
            sock = _connect(spec.address, spec.tls)
            _setup(sock, spec)
            sock.setblocking(False)
            conn = _Conn(sock, spec.role, spec.address)
            self.conns.append(conn)
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def refill(self, c: _Conn, now: float) -> None:
        if self.stopping:
            return
        while len(c.inflight) < self.load.pipeline:
            if c.role == CONSUMER:
                c.wbuf.append(b"reserve-with-timeout 1\r\n")
                c.inflight.append((RESERVE, now))
            else:
                c.wbuf.append(self.put_cmd)
                c.inflight.append((PUT, now))

    def flush(self, c: _Conn) -> None:
        if not c.wbuf:
            return
        data = b"".join(c.wbuf)
        c.wbuf.clear()
        c.sock.setblocking(True)  # rare: a full socket buffer; writes are small
        try:
            c.sock.sendall(data)
        finally:
            c.sock.setblocking(False)

    def on_reply(self, c: _Conn, line: bytes, now: float) -> None:
        kind, sent = c.inflight.popleft()
        ok = ((kind == PUT and line.startswith(b"INSERTED ")) or
              (kind == RESERVE and line.startswith(b"RESERVED ")) or
              (kind == DELETE and line == b"DELETED"))
        if ok:
            self.ops += 1
            self.by_cmd[kind] += 1
            lat = (now - sent) * 1e6
            self.hist[min(HIST_SIZE - 1, int(math.log(lat) * HIST_SCALE)) if lat > 1 else 0] += 1
            if kind == PUT and c.role == CYCLER:
                c.wbuf.append(b"reserve\r\n")
                c.inflight.append((RESERVE, now))
            elif kind == RESERVE:
                c.wbuf.append(b"delete %s\r\n" % line.split()[1])
                c.inflight.append((DELETE, now))
        elif kind == RESERVE and line == b"TIMED_OUT" and c.role == CONSUMER:
            pass  # nothing to consume yet; refill asks again
        else:
            self.error(f"{c.address}: {('put', 'reserve', 'delete')[kind]} got {line[:60]!r}")

    def read(self, c: _Conn, now: float) -> bool:
        try:
            data = c.sock.recv(RECV_SIZE)
            while getattr(c.sock, "pending", None) and c.sock.pending():
                data += c.sock.recv(RECV_SIZE)  # TLS: decrypted bytes select() cannot see
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError as e:
            data, why = b"", str(e)
        else:
            why = "closed by the server"
        if not data:
            self.error(f"{c.address}: connection {why}; {len(c.inflight)} commands lost")
            self.sel.unregister(c.sock)
            c.inflight.clear()
            return False
        buf = c.rbuf
        buf += data
        pos = 0
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            line = bytes(buf[pos:nl])
            end = nl + 2
            if line.startswith(b"RESERVED "):
                end += int(line.rsplit(b" ", 1)[1]) + 2
                if end > len(buf):
                    break
            pos = end
            if not c.inflight:
                self.error(f"{c.address}: reply with nothing in flight: {line[:60]!r}")
                continue
            self.on_reply(c, line, now)
        del buf[:pos]
        self.refill(c, now)
        self.flush(c)
        return True

    def run(self, go) -> tuple[float, float]:
        start = time.perf_counter()
        end = start + self.load.seconds
        now = start
        for c in self.conns:
            self.refill(c, now)
            self.flush(c)
        last_publish = start
        while True:
            if not self.stopping and now >= end:
                self.stopping = True
            if self.stopping and (now >= end + GRACE or
                                  not any(c.inflight for c in self.conns)):
                break
            for key, _ in self.sel.select(0.05):
                self.read(key.data, now)
                now = time.perf_counter()
            now = time.perf_counter()
            if now - last_publish >= 0.1:
                self.slot[self.index] = self.ops
                last_publish = now
        self.slot[self.index] = self.ops
        return start, now


def _worker_main(load: Load, specs: list[ConnSpec], slot, index: int, ready, go,
                 results) -> None:
    cpu0 = time.process_time()
    w = _Worker(load, specs, slot, index)
    try:
        w.setup()
    except OSError as e:
        ready.put((index, f"{type(e).__name__}: {e}"))
        return
    ready.put((index, None))
    if not go.wait(SETUP_TIMEOUT * 3):  # the parent gave up on the run
        return
    start, end = w.run(go)
    for c in w.conns:
        c.sock.close()
    results.put({"ops": w.ops, "errors": w.errors, "error_samples": w.samples,
                 "hist": w.hist, "by_cmd": w.by_cmd, "start": start, "end": end,
                 "cpu": time.process_time() - cpu0})


# --- a run ---------------------------------------------------------------------------
def _progress(label: str, load: Load, slot, started: float, live: bool) -> None:
    elapsed = time.monotonic() - started
    ops = sum(slot[:])
    rate = ops / elapsed if elapsed > 0 else 0.0
    frac = min(1.0, elapsed / load.seconds)
    bar = "#" * int(frac * 20)
    text = f"  {label} [{bar:<20}] {elapsed:5.1f}s {ops:>11,} ops {rate:>10,.0f} ops/s"
    if live:
        click.echo("\r" + text, nl=False, err=True)
    else:
        click.echo(text, err=True)


def run_load(load: Load, target: Target, label: str | None = None) -> Result:
    """Run the load once against ``target``; returns the merged result.

    ``label`` names the run in the progress line."""
    specs = [replace(s, tls=target.tls) for s in plan_conns(load, target.nodes, target.weights)]
    procs = max(1, min(load.procs, len(specs)))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    slot = ctx.Array("q", procs, lock=False)
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_worker_main, daemon=True,
                           args=(load, specs[i::procs], slot, i, ready, go, results))
               for i in range(procs)]
    for w in workers:
        w.start()
    result = Result(target.describe())
    label = label or result.target
    for spec in specs:
        result.per_node[spec.address] = result.per_node.get(spec.address, 0) + 1
    live = sys.stderr.isatty()
    try:
        for _ in workers:
            try:
                _, problem = ready.get(timeout=SETUP_TIMEOUT + 5 + load.conns / 200)
            except queue.Empty:
                problem = "a load process did not report back"
            if problem:
                raise click.ClickException(f"cannot set up connections to "
                                           f"{target.describe()}: {problem}")
        go.set()
        started = time.monotonic()
        merged = []
        limit = started + load.seconds + GRACE + 10
        next_print = started + PROGRESS_EVERY if live else started + 1.0
        while len(merged) < procs:
            now = time.monotonic()
            if now > limit:
                raise click.ClickException("the load processes did not finish in time")
            if now >= next_print:
                _progress(label, load, slot, started, live)
                next_print += PROGRESS_EVERY if live else 1.0
            try:
                merged.append(results.get(timeout=0.1))
            except queue.Empty:
                continue
        if live:
            click.echo("", err=True)
    finally:
        for w in workers:
            w.join(timeout=2)
            if w.is_alive():
                w.kill()
                w.join()
    for m in merged:
        result.merge(m)
    result.elapsed = max(m["end"] for m in merged) - min(m["start"] for m in merged)
    return result


# --- clean-up ------------------------------------------------------------------------
def _replies(sock: socket.socket, buf: bytes, n: int) -> tuple[list[bytes], bytes]:
    """Read ``n`` replies; returns their first lines and the bytes left over."""
    lines = []
    while len(lines) < n:
        nl = buf.find(b"\r\n")
        end = -1
        if nl >= 0:
            end = nl + 2
            if buf.startswith(b"RESERVED "):
                end += int(buf[:nl].rsplit(b" ", 1)[1]) + 2
        if nl < 0 or end > len(buf):
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
            continue
        lines.append(buf[:nl])
        buf = buf[end:]
    return lines, buf


def drain(address: str, tube: str, deadline: float, tls: TlsSettings | None = None) -> int:
    """Delete every ready job of ``tube``; returns how many."""
    deleted = 0
    with _connect(address, tls) as sock:
        _setup(sock, ConnSpec(address, CONSUMER, tube))
        buf = b""
        while time.monotonic() < deadline:
            sock.sendall(b"reserve-with-timeout 0\r\n" * DRAIN_BATCH)
            lines, buf = _replies(sock, buf, DRAIN_BATCH)
            ids = [ln.split()[1] for ln in lines if ln.startswith(b"RESERVED ")]
            if ids:
                sock.sendall(b"".join(b"delete %s\r\n" % i for i in ids))
                _, buf = _replies(sock, buf, len(ids))
                deleted += len(ids)
            if len(ids) < DRAIN_BATCH:
                break
    return deleted


def clean_up(load: Load, target: Target) -> int:
    deadline = time.monotonic() + DRAIN_LIMIT
    seen = set()
    total = 0
    for spec in plan_conns(load, target.nodes, target.weights):
        if (spec.address, spec.tube) not in seen:
            seen.add((spec.address, spec.tube))
            total += drain(spec.address, spec.tube, deadline, target.tls)
    if time.monotonic() >= deadline:
        click.echo("warning: clean-up stopped at its time limit; jobs are left in "
                   f"{TUBE_PREFIX}* tubes", err=True)
    return total


# --- targets and output --------------------------------------------------------------
def resolve_nodes(host: str | None, port: int | None, config: str | None) -> Target:
    """The nodes named by --host/--port, --config, $BSCLUSTER_CONFIG or ./bscluster.toml,
    else those of the cluster `bscluster up` runs from this directory (if one does)."""
    if config is not None and (host is not None or port is not None):
        raise click.UsageError("give --config or --host/--port, not both")
    if host is None and port is None:
        try:
            loaded = load_config(config, {})  # (None: $BSCLUSTER_CONFIG, ./bscluster.toml)
        except ValueError as e:  # a bad file, environment or [tls] table
            raise click.ClickException(str(e)) from None
        view = cluster_view(loaded)
        if loaded.path is not None or view.state is not None:
            found = view.layout().nodes
            return Target({n.name: n.address for n in found},
                          {n.name: n.weight for n in found}, view.config.tls)
    try:
        tls = read_tls_settings(None, {k: v for k, v in os.environ.items()
                                       if k.startswith("BSCLUSTER_TLS_")})
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    return Target({"node": format_address((host or DEFAULT_HOST, port or DEFAULT_PORT))}, None, tls)


def _line(r: Result) -> str:
    return (f"{r.target:<28} {r.ops_per_s:>11,.0f} ops/s   p50 {r.percentile(0.5):>8,.0f} µs"
            f"   p99 {r.percentile(0.99):>9,.0f} µs   errors {r.errors}")


def _summary(rs: list[Result]) -> dict:
    return {"target": rs[0].target,
            "ops_per_s": statistics.median(r.ops_per_s for r in rs),
            "p50_us": statistics.median(r.percentile(0.5) for r in rs),
            "p99_us": statistics.median(r.percentile(0.99) for r in rs),
            "errors": sum(r.errors for r in rs),
            "runs": [round(r.ops_per_s) for r in rs]}


HELP = f"""Put load on a node or a cluster; print ops/s and p50/p99 latency.

Modes: put; put-reserve-delete (each slot puts, reserves, deletes); produce-consume
(half the connections put, half reserve and delete).  Every reply counts as one op.
The target is --host/--port, or the nodes of --config (a bscluster TOML file; tubes
are spread over the nodes by the cluster's hash ring, so use --tubes of several
times the node count), else $BSCLUSTER_CONFIG or ./bscluster.toml, else the
cluster `bscluster up` runs from this directory, else 127.0.0.1:11300.  --compare
HOST:PORT runs the same load against a second server in the same run (alternating,
--rounds times) and prints the ratio.  Jobs left in the bench.* tubes are deleted
afterwards unless --keep-jobs.

Short options mean what they mean in the other bscluster commands: -c is --config;
--conns, --pipeline and --seconds have none (-d is --detach in `up`, and -p is
the port in bsnode).

\b
Note: this is a Python client.  A Python client costs tens of µs of CPU per
command, so against a fast server the client itself can be the bottleneck (the
output warns when the load processes were busy nearly all the time).  For the
server's own figures use the compiled load generator:
{LOADGEN_HINT}.
"""


@click.command("bench", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mode", "-m", type=click.Choice(MODES), default="put-reserve-delete",
              show_default=True)
@click.option("--size", "-s", type=click.IntRange(0, 1 << 20), default=100, show_default=True,
              help="Body size in bytes.")
@click.option("--conns", type=click.IntRange(1), default=10, show_default=True,
              help="Connections in total.")
@click.option("--pipeline", type=click.IntRange(1), default=1, show_default=True,
              help="Commands in flight per connection.")
@click.option("--tubes", "-t", type=click.IntRange(1), default=1, show_default=True,
              help="Tubes (bench.0 ...), dealt to connections round-robin.")
@click.option("--seconds", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="How long each run puts load on.")
@click.option("--procs", "-P", type=click.IntRange(1), default=None,
              help="Load processes [default: the number of CPUs, at most --conns].")
@click.option("--host", metavar="ADDR", help="Server address (127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Server port (11300).")
@click.option("--config", "-c", "config", metavar="PATH",
              help="A bscluster config file: load the cluster's nodes (-c means --config "
                   "in every bscluster command).")
@click.option("--compare", metavar="HOST:PORT",
              help="Run the same load against this server too and print the ratio.")
@click.option("--rounds", type=click.IntRange(1), default=1, show_default=True,
              help="With --compare: alternate this many times; medians are compared.")
@click.option("--keep-jobs", is_flag=True, help="Do not delete the jobs the load leaves.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def bench(mode, size, conns, pipeline, tubes, seconds, procs, host, port, config, compare,
          rounds, keep_jobs, as_json) -> None:
    if mode == "produce-consume" and conns < 2:
        raise click.UsageError("produce-consume needs --conns of at least 2")
    load = Load(mode, size, conns, pipeline, tubes, seconds,
                procs or min(os.cpu_count() or 1, conns))
    targets = [("target", resolve_nodes(host, port, config))]
    if compare:
        try:
            targets.append(("compare", Target({"node": format_address(parse_address(compare))})))
        except ValueError:
            raise click.BadParameter(f"{compare!r} is not HOST:PORT",
                                     param_hint="--compare") from None
    click.echo(f"bench: {mode}, {conns} conns x pipeline {pipeline}, {size}-byte bodies, "
               f"{tubes} tube(s), {seconds:g} s, {load.procs} load process(es)", err=True)
    runs: dict[str, list[Result]] = {name: [] for name, _ in targets}
    for r in range(rounds if compare else 1):
        for name, target in targets:
            label = f"{name} {target.describe()}" if len(targets) > 1 else target.describe()
            if rounds > 1:
                label += f" #{r + 1}"
            result = run_load(load, target, label)
            runs[name].append(result)
            if not as_json:
                click.echo(_line(result))
            busy = result.client_cpu / (result.elapsed * load.procs) if result.elapsed else 0
            if busy > 0.85:
                click.echo(f"  note: the load processes were busy {busy:.0%} of the time: this "
                           "figure is probably the client's limit, not the server's", err=True)
            for sample in result.error_samples:
                click.echo(f"  error: {sample}", err=True)
            if not keep_jobs:
                clean_up(load, target)
    summary = {name: _summary(rs) for name, rs in runs.items()}
    ratio = None
    if compare:
        a, b = summary["target"]["ops_per_s"], summary["compare"]["ops_per_s"]
        ratio = a / b if b else None
        if not as_json:
            click.echo(f"ratio {summary['target']['target']} / {summary['compare']['target']}: "
                       + (f"{ratio:.2f}x" if ratio else "n/a")
                       + (f" (medians of {rounds})" if rounds > 1 else ""))
    if as_json:
        click.echo(json.dumps({"load": asdict(load), **summary, "ratio": ratio}))
    if any(r.errors for rs in runs.values() for r in rs):
        raise SystemExit(1)
