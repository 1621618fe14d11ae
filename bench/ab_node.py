"""A/B test two copies of bsnode on the same loads, alternating run by run.

    python bench/ab_node.py --b /tmp/scratch [--a REPO] [--runs 5] [--seconds 3]
                            [--load prd:10:16 --load prd:10:1 ...] [--memory 200000]
                            [--binlog [FLAGS]]

``--a`` and ``--b`` are directories holding a ``bsnode`` package (a copy of
node/ with a change to try); ``--a`` defaults to the installed package.  Both
servers run at the same time, pinned to core 0, the load generator on core
1; runs alternate A, B, A, B so noise hits both alike.  For each load it
prints the median ops/s, server CPU µs per command and p99 of each, and the
B/A ratios; ``--memory N`` also fills N ready jobs into a fresh server of
each and prints bytes per job over the body.  ``--binlog`` gives both
servers ``-b`` (a fresh directory each) and, if given, FLAGS (``"-f 0"``).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile

import harness as H

MODES = {"prd": "put-reserve-delete", "pc": "produce-consume", "put": "put"}


def parse_load(text: str) -> tuple[str, int, int]:
    mode, conns, pipeline = text.split(":")
    return MODES.get(mode, mode), int(conns), int(pipeline)


def memory(loadgen: str, pythonpath: str | None, jobs: int, size: int) -> float:
    server = H.start_server("bsnode", H.SERVER_CORE, pythonpath=pythonpath)
    try:
        before = H.rss_kb(server.pid)
        H.run_loadgen(loadgen, server.port, "fill", conns=10, pipeline=64, size=size, jobs=jobs,
                      timeout=600)
        return (H.rss_kb(server.pid) - before) * 1024 / jobs - size
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", help="directory with the A copy of bsnode (default: installed)")
    ap.add_argument("--b", required=True, help="directory with the B copy of bsnode")
    ap.add_argument("--load", action="append", metavar="MODE:CONNS:PIPELINE",
                    help="prd/pc/put:conns:pipeline (default prd:10:16, prd:10:1, pc:100:1)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--memory", type=int, default=0, metavar="JOBS")
    ap.add_argument("--binlog", nargs="?", const="", metavar="FLAGS",
                    help="run both with -b DIR (a fresh directory each) plus FLAGS")
    args = ap.parse_args(argv)
    loads = [parse_load(x) for x in (args.load or ["prd:10:16", "prd:10:1", "pc:100:1"])]
    loadgen = H.find_loadgen()
    paths = {"A": args.a, "B": args.b}
    rows = []
    for mode, conns, pipeline in loads:
        dirs = []
        flags: dict[str, list[str]] = {k: [] for k in paths}
        if args.binlog is not None:
            for k in paths:
                dirs.append(tempfile.mkdtemp(prefix="ab-binlog-"))
                flags[k] = ["-b", dirs[-1], *shlex.split(args.binlog)]
        srv = {k: H.start_server("bsnode", H.SERVER_CORE, *flags[k], pythonpath=p)
               for k, p in paths.items()}
        try:
            got: dict[str, list] = {"A": [], "B": []}
            for s in srv.values():  # warm-up
                H.run_loadgen(loadgen, s.port, mode, conns=conns, pipeline=pipeline,
                              size=args.size, seconds=1)
            for rep in range(args.runs):
                for k in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    s = srv[k]
                    r = H.run_loadgen(loadgen, s.port, mode, conns=conns, pipeline=pipeline,
                                      size=args.size, seconds=args.seconds, server_pid=s.pid)
                    got[k].append(r)
                    print(f"{mode} c={conns} p={pipeline} {k} #{rep + 1}: "
                          f"{r['ops_per_s']:,.0f} ops/s {r['server_cpu_us_per_op']:.2f} us/op",
                          file=sys.stderr, flush=True)
        finally:
            for s in srv.values():
                s.stop()
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        med = {k: {f: H.median([r[f] for r in v])
                   for f in ("ops_per_s", "server_cpu_us_per_op", "p99_us")}
               for k, v in got.items()}
        rows.append((f"{mode} c={conns} p={pipeline}", med))
    print(f"A = {args.a or 'installed bsnode'}, B = {args.b}; medians of {args.runs}")
    print(f"{'load':32} {'A ops/s':>9} {'B ops/s':>9} {'B/A':>6} {'A us/op':>8} "
          f"{'B us/op':>8} {'B/A':>6} {'A p99':>8} {'B p99':>8}")
    for name, m in rows:
        a, b = m["A"], m["B"]
        print(f"{name:32} {a['ops_per_s']:9,.0f} {b['ops_per_s']:9,.0f} "
              f"{b['ops_per_s'] / a['ops_per_s']:6.2f} {a['server_cpu_us_per_op']:8.2f} "
              f"{b['server_cpu_us_per_op']:8.2f} "
              f"{b['server_cpu_us_per_op'] / a['server_cpu_us_per_op']:6.2f} "
              f"{a['p99_us']:8.0f} {b['p99_us']:8.0f}")
    if args.memory:
        for k, p in paths.items():
            print(f"memory {k}: {memory(loadgen, p, args.memory, args.size):.0f} bytes/job "
                  f"over the body ({args.memory:,} ready jobs)")


if __name__ == "__main__":
    main()
