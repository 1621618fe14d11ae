"""What does ClusterClient.reserve cost when the backlog is not spread evenly?

Starts ``--nodes`` bsnode processes on free loopback ports (bscluster/procs.py),
loads ``--jobs`` jobs straight onto chosen nodes with plain Clients, then
drains them through one ``ClusterClient`` (``reserve(timeout=0)`` + ``delete``)
and prints, per layout:

* reserves/s (reserve + delete pairs per second of wall time);
* reserve commands per job: the sum over nodes of their
  ``cmd-reserve-with-timeout`` counters divided by the jobs drained, i.e. the
  round trips a reserve costs (1.0 is the floor);
* each node's share of the reserve commands.

Layouts: ``one`` (the whole backlog on node1), ``two`` (half on node1, half
on node3), ``all`` (spread evenly).  Every run is bounded by ``--jobs`` and
by ``--max-seconds``; servers are stopped at the end.

    python bench/bench_cluster_reserve.py [--nodes 4] [--jobs 5000] [--layout one]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from bsclient import Client, ClusterClient, TimedOutError  # noqa: E402
from bscluster.procs import start  # noqa: E402

TUBE = "backlog"
LAYOUTS = {
    "one": lambda n: [1],
    "two": lambda n: [1, min(3, n)],
    "all": lambda n: list(range(1, n + 1)),
}


def reserve_counts(addresses: dict[str, str]) -> dict[str, int]:
    out = {}
    for name, address in addresses.items():
        with Client(address) as c:
            out[name] = c.stats()["cmd-reserve-with-timeout"]
    return out


def load(addresses: dict[str, str], holders: list[int], jobs: int) -> None:
    clients = [Client(addresses[f"node{i}"], use=TUBE) for i in holders]
    try:
        for k in range(jobs):
            clients[k % len(clients)].put(b"x" * 100)
    finally:
        for c in clients:
            c.close()


def drain(addresses: dict[str, str], jobs: int, max_seconds: float) -> tuple[int, float]:
    done = 0
    with ClusterClient(addresses, watch=TUBE) as cc:
        started = time.perf_counter()
        deadline = started + max_seconds
        while done < jobs and time.perf_counter() < deadline:
            try:
                job = cc.reserve(timeout=0)
            except TimedOutError:
                break
            cc.delete(job)
            done += 1
        return done, time.perf_counter() - started


def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        servers = [stack.enter_context(start(args.server)) for _ in range(args.nodes)]
        addresses = {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(servers, 1)}
        for layout in args.layout:
            holders = LAYOUTS[layout](args.nodes)
            load(addresses, holders, args.jobs)
            before = reserve_counts(addresses)
            done, seconds = drain(addresses, args.jobs, args.max_seconds)
            after = reserve_counts(addresses)
            per_node = {n: after[n] - before[n] for n in addresses}
            total = sum(per_node.values())
            shares = " ".join(f"{n}={c}" for n, c in per_node.items())
            print(f"{layout:>4}: {args.nodes} nodes, jobs on {holders}: drained {done} "
                  f"in {seconds:.3f} s = {done / seconds:,.0f} reserves/s; "
                  f"{total / max(done, 1):.2f} reserve commands per job ({shares})")
            if done < args.jobs:
                print(f"      stopped early after {args.max_seconds} s; "
                      f"{args.jobs - done} jobs left", file=sys.stderr)
                with ClusterClient(addresses, watch=TUBE) as cc:  # empty it for the next layout
                    for _ in range(args.jobs - done):
                        try:
                            cc.delete(cc.reserve(timeout=0))
                        except TimedOutError:
                            break


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--layout", action="append", choices=sorted(LAYOUTS),
                    help="repeatable; default: one, two, all")
    ap.add_argument("--server", choices=("bsnode", "beanstalkd"), default="bsnode")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    args.layout = args.layout or ["one", "two", "all"]
    run(args)


if __name__ == "__main__":
    main()
