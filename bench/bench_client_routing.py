"""What does ClusterClient's routing cost per put?

Runs the same producer load three ways and prints ops/s:

* ``Client.put`` on one node (the baseline);
* ``ClusterClient.put`` over 4 nodes (the issue's comparison: same total
  load, tubes spread by the ring);
* ``ClusterClient.put`` over that same single node (pure client-side
  routing cost: same server, same sockets, only the routing differs).

The load: ``--jobs`` puts of ``--body-size`` bytes into ``--tubes`` tubes,
``--batch`` puts per ``use``, cut into ``--rounds`` rounds; the rounds of
the three ways are interleaved in a shuffled order so that noise from the
rest of the machine hits all of them alike, and medians are printed.
Overheads are paired: within each round every way runs back to back, the
ratio to the baseline is taken per round, and the median ratio over rounds
is printed, so slow drifts in machine load cancel out.  Wall time per put
is what the issue's "under 10%" is about; the client's own CPU time per put
(``time.process_time``, servers excluded) is printed too.
Servers are started here on free loopback ports: bsnode by default,
``--server beanstalkd`` for the reference server.

    python bench/bench_client_routing.py [--jobs 20000] [--server bsnode]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from contextlib import ExitStack

from bsclient import Client, ClusterClient  # noqa: E402
from bscluster.procs import start  # noqa: E402


def load(put_target, use, jobs: int, tubes: list[str], batch: int, body: bytes) -> float:
    """Run the producer load; returns seconds taken."""
    started = time.perf_counter()
    done = 0
    b = 0
    while done < jobs:
        use(tubes[b % len(tubes)])
        for _ in range(min(batch, jobs - done)):
            put_target(body)
        done += batch
        b += 1
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30000)
    ap.add_argument("--tubes", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--body-size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--server", choices=["bsnode", "beanstalkd"], default="bsnode")
    args = ap.parse_args(argv)
    tubes = [f"bench-{i}" for i in range(args.tubes)]
    body = b"x" * args.body_size

    with ExitStack() as stack:
        single = stack.enter_context(start(args.server))
        many = [stack.enter_context(start(args.server)) for _ in range(args.nodes)]
        nodes = {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(many, 1)}
        client = stack.enter_context(Client(single.address))
        cluster = stack.enter_context(ClusterClient(nodes))
        cluster1 = stack.enter_context(ClusterClient({"node1": single.address}))
        ways = {
            "Client.put, 1 node": client,
            f"ClusterClient.put, {args.nodes} nodes": cluster,
            "ClusterClient.put, same 1 node": cluster1,
        }
        for c in ways.values():  # warm up: connections, tubes, caches
            load(c.put, c.use, min(2000, args.jobs), tubes, args.batch, body)
        per_round = max(args.batch, args.jobs // args.rounds)
        wall: dict[str, list[float]] = {name: [] for name in ways}
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        rng = random.Random(1)
        for _ in range(args.rounds):
            order = list(ways)
            rng.shuffle(order)
            for name in order:
                c = ways[name]
                cpu0 = time.process_time()
                wall[name].append(load(c.put, c.use, per_round, tubes, args.batch, body))
                cpu[name].append(time.process_time() - cpu0)

    name0 = next(iter(ways))
    print(f"server={args.server} jobs={per_round * args.rounds} tubes={args.tubes} "
          f"batch={args.batch} body={args.body_size}B rounds={args.rounds} x {per_round} puts")
    print(f"{'way':32} {'ops/s':>8} {'us/op':>7} {'overhead':>9} "
          f"{'client CPU us/op':>17} {'CPU overhead':>12}")
    for name in ways:
        # each round ran every way back to back: compare within the round,
        # then take the median over rounds (drifts in machine load cancel)
        over = statistics.median(w / b - 1 for w, b in zip(wall[name], wall[name0], strict=True))
        cpu_over = statistics.median(c / b - 1 for c, b in zip(cpu[name], cpu[name0], strict=True))
        secs, cpus = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:32} {per_round / secs:8.0f} {secs / per_round * 1e6:7.1f} "
              f"{over * 100:+8.1f}% {cpus / per_round * 1e6:17.1f} {cpu_over * 100:+11.1f}%")

if __name__ == "__main__":
    main()
