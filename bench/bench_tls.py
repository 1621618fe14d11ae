"""What TLS costs: bsnode plain vs bsnode over mutual TLS, beside beanstalkd.

How this works
--------------
Three servers run side by side in one run, each pinned to core 0
(harness.start_server): beanstalkd (plain, the reference), bsnode plain, and
bsnode with ``--tls-cert/--tls-key/--tls-client-ca`` (certificates made
for the run by the same code as ``bscluster init --tls``).  For each
pipeline depth, ``--procs`` load processes (pinned to core 1 when there
is one) each hold one connection and repeat a batch: PIPELINE puts of
100-byte bodies in one write, their replies, then PIPELINE deletes in one
write and their replies.  Ops are commands answered; the latency is that
of a whole batch, and the server's CPU time per op (from /proc, so a busy
machine slows every target without changing what each op costs) is the
figure to compare.  Targets take turns for ``--rounds`` rounds and medians
are reported, so a noisy neighbour hits all of them alike.  A second
measure is new connections per second (connect, handshake, ``stats``,
close) from one process, plain vs TLS.

    python bench/bench_tls.py                       # pipelines 1 and 16, 3 rounds
    python bench/bench_tls.py --seconds 5 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bsclient.protocol import ReplyReader  # noqa: E402
from bscluster.tls_init import make_trial  # noqa: E402
from harness import CLIENT_CORE, cores, cpu_seconds, start_server  # noqa: E402

BODY = b"x" * 100
START_DELAY = 0.5  # seconds for every process to connect before the clock starts


def _context(files) -> ssl.SSLContext | None:
    if files is None:
        return None
    ctx = ssl.create_default_context(cafile=files["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def _connect(port: int, ctx: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock if ctx is None else ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def _read(sock, reader: ReplyReader, n: int, got: list) -> list:
    while len(got) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        got += reader.feed(chunk)
    out, got[:] = got[:n], got[n:]
    return out


def _load(port: int, files, pipeline: int, seconds: float, start_at: float, out) -> None:
    if cores() > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    sock = _connect(port, _context(files))
    reader, got = ReplyReader(), []
    puts = (b"put 0 0 60 %d\r\n%s\r\n" % (len(BODY), BODY)) * pipeline
    ops, lat = 0, []
    while time.monotonic() < start_at:
        time.sleep(0.005)
    end = start_at + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sock.sendall(puts)
        ids = [words[1] for words, _ in _read(sock, reader, pipeline, got)]
        sock.sendall(b"".join(b"delete %s\r\n" % i for i in ids))
        for words, _ in _read(sock, reader, pipeline, got):
            assert words[0] == b"DELETED", words
        lat.append(time.perf_counter() - t0)
        ops += 2 * pipeline
    out.put((ops, time.monotonic() - start_at, statistics.median(lat) if lat else 0.0))
    sock.close()


def run_load(server, files, pipeline: int, seconds: float, procs: int) -> dict:
    port = server.port
    cpu0 = cpu_seconds(server.pid)
    q = mp.Queue()
    start_at = time.monotonic() + START_DELAY
    ps = [mp.Process(target=_load, args=(port, files, pipeline, seconds, start_at, q))
          for _ in range(procs)]
    for p in ps:
        p.start()
    try:
        results = [q.get(timeout=seconds + 60) for _ in ps]
    finally:
        for p in ps:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    ops = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    cpu = cpu_seconds(server.pid) - cpu0  # the server's own CPU: robust to noisy neighbours
    return {"ops_per_s": ops / elapsed, "server_cpu_us_per_op": cpu / ops * 1e6,
            "batch_p50_us": statistics.median(r[2] for r in results) * 1e6}


def handshakes(port: int, files, seconds: float) -> float:
    """New connections per second: connect (+ TLS handshake), stats, close."""
    ctx = _context(files)
    n, end = 0, time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        with _connect(port, ctx) as sock:
            sock.sendall(b"stats\r\n")
            _read(sock, ReplyReader(), 1, [])
        n += 1
    return n / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--procs", type=int, default=4, help="load processes (one conn each)")
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pipelines = [int(p) for p in args.pipelines.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        trial = make_trial(tmp, ["127.0.0.1"])
        files = {"ca": str(trial.ca.cert), "cert": str(trial.client.cert),
                 "key": str(trial.client.key)}
        tls_flags = ("--tls-cert", str(trial.node.cert), "--tls-key", str(trial.node.key),
                     "--tls-client-ca", str(trial.ca.cert))
        started = []
        try:
            ref = start_server("beanstalkd")
            started.append(ref)
            plain = start_server("bsnode")
            started.append(plain)
            secure = start_server("bsnode", 0, *tls_flags)
            started.append(secure)
            targets = {"beanstalkd (plain)": (ref, None),
                       "bsnode plain": (plain, None),
                       "bsnode mTLS": (secure, files)}
            runs = {(t, p): [] for t in targets for p in pipelines}
            for _ in range(args.rounds):
                for p in pipelines:
                    for name, (server, f) in targets.items():
                        runs[(name, p)].append(run_load(server, f, p, args.seconds, args.procs))
            conn_rates = {name: handshakes(server.port, f, args.seconds)
                          for name, (server, f) in targets.items() if name.startswith("bsnode")}
        finally:
            for s in started:
                s.stop()
    report(runs, conn_rates, pipelines, args)


def report(runs: dict, conn_rates: dict, pipelines: list, args) -> None:
    summary = {}
    for (name, p), rs in runs.items():
        summary.setdefault(name, {})[p] = {
            "ops_per_s": statistics.median(r["ops_per_s"] for r in rs),
            "batch_p50_us": statistics.median(r["batch_p50_us"] for r in rs),
            "server_cpu_us_per_op": statistics.median(r["server_cpu_us_per_op"] for r in rs),
            "rounds": [round(r["ops_per_s"]) for r in rs]}
    if args.json:
        print(json.dumps({"summary": summary, "connections_per_s": conn_rates,
                          "args": vars(args)}))
        return
    print(f"put+delete, 100-byte bodies, {args.procs} procs x 1 conn, {args.seconds:g} s, "
          f"median of {args.rounds} rounds")
    print("| target | pipeline | server CPU µs/op | vs bsnode plain | ops/s | batch p50 µs "
          "| ops/s by round |")
    print("|---|---|---|---|---|---|---|")
    for p in pipelines:
        base = summary["bsnode plain"][p]["server_cpu_us_per_op"]
        for name in summary:
            s = summary[name][p]
            print(f"| {name} | {p} | {s['server_cpu_us_per_op']:.1f} | "
                  f"{s['server_cpu_us_per_op'] / base:.2f}x | {s['ops_per_s']:,.0f} | "
                  f"{s['batch_p50_us']:,.0f} | {', '.join(map(str, s['rounds']))} |")
    print("\nnew connections/s (connect, handshake, stats, close; one process):")
    for name, rate in conn_rates.items():
        print(f"  {name}: {rate:,.0f}")


if __name__ == "__main__":
    main()
