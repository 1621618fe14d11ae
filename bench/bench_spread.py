"""Hot tubes: one tube's put-reserve-delete rate on one node (spread 1) and on two (spread 2).

Starts 2 bsnode processes on free loopback ports (bscluster/procs.py), then
alternates, ``--rounds`` times, the two layouts of one tube "hot":

* ``spread 1``: all of the tube's work on its owner;
* ``spread 2``: the work split over its first 2 ring nodes, as
  ``ClusterClient(spread={"hot": 2})`` splits it.

Two kinds of client drive the load (``--client``):

* ``loadgen`` (default): the compiled load generator (bench/harness.py finds
  or builds it), ``put-reserve-delete`` with ``--conns`` connections: all on
  the owner for spread 1, half on each node for spread 2 (the connections a
  spread ClusterClient would use).  Its client CPU is small, so the figure is
  the nodes';
* ``python``: ``--procs`` processes, each one ``ClusterClient(spread={"hot":
  k})`` doing ``put(tube="hot")``, ``reserve``, ``delete`` in a loop: the
  real client code, whose own CPU competes with the nodes for the 2 cores.

Prints each round's jobs/s, the ratio of the medians (spread 2 / spread 1)
and the median of each round's paired ratio (the two runs of a round are
seconds apart, so they share whatever else the machine is doing).  Every
run is bounded by ``--seconds``; servers are stopped at the end.

    python bench/bench_spread.py [--client loadgen] [--rounds 3] [--seconds 3] [--conns 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack

sys.path.insert(0, os.path.dirname(__file__))
from bsclient import ClusterClient  # noqa: E402
from bscluster.procs import start_bsnode  # noqa: E402
from harness import find_loadgen  # noqa: E402

TUBE = "hot"


def loadgen_run(loadgen: str, ports: list[int], conns: int, seconds: float,
                pipeline: int = 1) -> float:
    """Jobs/s of put-reserve-delete with ``conns`` split evenly over ``ports``, at once."""
    procs = []
    for i, port in enumerate(ports):
        share = conns // len(ports) + (1 if i < conns % len(ports) else 0)
        argv = [loadgen, "--host", "127.0.0.1", "--port", str(port), "--mode",
                "put-reserve-delete", "--conns", str(share), "--pipeline", str(pipeline),
                "--size", "100", "--tubes", "1", "--seconds", str(seconds)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"loadgen failed: {err.strip()}")
        result = json.loads(out.strip().splitlines()[-1])
        if result.get("errors"):
            raise RuntimeError(f"loadgen reported errors: {result}")
        total += result["jobs_per_s"]
    return total


def _python_worker(nodes: dict, k: int, seconds: float, start_at: float, out) -> None:
    cc = ClusterClient(nodes, spread={TUBE: k}, watch=[TUBE])
    cc.ignore("default")
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    end = start_at + seconds
    while time.time() < end:
        cc.put(b"x" * 100, tube=TUBE)
        cc.delete(cc.reserve(timeout=5))
        done += 1
    cc.close()
    out.put(done)


def python_run(nodes: dict, k: int, procs: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0  # after every process has imported and connected
    workers = [ctx.Process(target=_python_worker, args=(nodes, k, seconds, start_at, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join(10)
    return total / seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--client", choices=("loadgen", "python"), default="loadgen")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=8, help="loadgen connections in all")
    ap.add_argument("--procs", type=int, default=4, help="python client processes")
    ap.add_argument("--pipeline", type=int, default=1,
                    help="loadgen commands in flight per connection (16: the client's own "
                         "CPU no longer competes with the nodes for the 2 cores)")
    args = ap.parse_args(argv)
    with ExitStack() as stack:
        servers = [stack.enter_context(start_bsnode()) for _ in range(2)]
        nodes = {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(servers, 1)}
        ring = ClusterClient(nodes)
        order = ring.ring.preference(TUBE)
        port_of = {name: servers[int(name[4:]) - 1].port for name in nodes}
        loadgen = find_loadgen() if args.client == "loadgen" else ""
        rates: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for k in (1, 2):
                if args.client == "loadgen":
                    rate = loadgen_run(loadgen, [port_of[n] for n in order[:k]],
                                       args.conns, args.seconds, args.pipeline)
                else:
                    rate = python_run(nodes, k, args.procs, args.seconds)
                rates[k].append(rate)
                print(f"round {r + 1}: spread {k} ({', '.join(order[:k])}): "
                      f"{rate:,.0f} jobs/s", flush=True)
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        paired = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
        print(f"{args.client}: median spread 1 {one:,.0f} jobs/s, spread 2 {two:,.0f} jobs/s; "
              f"ratio of medians {two / one:.2f}, median of paired ratios "
              f"{statistics.median(paired):.2f} (each round: "
              f"{', '.join(f'{x:.2f}' for x in paired)})")


if __name__ == "__main__":
    main()
