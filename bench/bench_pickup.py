"""How fast does an idle consumer get a job, and what does waiting cost the nodes?

Starts ``--nodes`` bsnode processes on free loopback ports (bscluster/procs.py).
For each case a consumer thread sits in ``reserve()`` (no timeout) and deletes
what it gets; a producer puts ``--jobs`` jobs, one every ``--gap-min`` to
``--gap-max`` ms (seeded), each body carrying the ``perf_counter`` time of its
put.  Pickup = the consumer's clock when ``reserve`` returned minus that
time.  Then the consumer is left idle for ``--idle`` seconds and every node's
``cmd-*`` counters are read before and after: the idle cost, in commands per
second per node (our own ``stats`` calls are not counted).

Cases (one run, bounded by the job count, the gaps and ``--idle``):

* ``client-1``: a plain ``Client`` on one node;
* ``cluster-1``: a ``ClusterClient`` over that one node;
* ``cluster-4-one-tube``: 4 nodes, the consumer's one tube;
* ``cluster-4-four-tubes``: 4 nodes, 4 tubes, one owned by each node, puts
  each put to a random one;
* ``cluster-4-twenty-tubes``: 4 nodes, 20 tubes, each put to a random one;
* ``cluster-4-non-owner``: 4 nodes, each job put straight onto a node that
  does not own the tube (as after a failover or a ring change);
* ``proxy-4-one-tube`` and ``proxy-4-twenty-tubes``: the same 4 nodes behind
  `bscluster proxy`; consumer and producer are plain ``Client``s of the
  proxy, as any beanstalkd client in any language would be.

    python bench/bench_pickup.py [--jobs 200] [--gap-min 10] [--gap-max 50] [--idle 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bsclient import Client, ClusterClient  # noqa: E402
from bscluster.procs import start_bsnode, start_proxy, write_config  # noqa: E402

STOP = b"stop"


def tube_owned_by(ring_cc: ClusterClient, node: str, prefix: str) -> str:
    for i in range(10_000):
        if ring_cc.node_for(f"{prefix}{i}") == node:
            return f"{prefix}{i}"
    raise RuntimeError(f"no tube maps to {node}")


def cmd_counts(addresses: dict[str, str]) -> dict[str, int]:
    """Each node's sum of cmd-* counters, leaving out our own stats commands."""
    out = {}
    for name, address in addresses.items():
        with Client(address) as c:
            stats = c.stats()
        out[name] = sum(v for k, v in stats.items() if k.startswith("cmd-") and k != "cmd-stats")
    return out


class Consumer:
    """A thread blocked in reserve(); records pickup times until it reads STOP."""

    def __init__(self, make_client, tubes: list[str]):
        self.make_client = make_client
        self.tubes = tubes
        self.pickups: list[float] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("consumer did not start")

    def run(self) -> None:
        try:
            client = self.make_client()
            for tube in self.tubes:
                client.watch(tube)
            if "default" not in self.tubes:
                client.ignore("default")
            self.ready.set()
            while True:
                job = client.reserve()
                now = time.perf_counter()
                client.delete(job)
                if job.body == STOP:
                    break
                self.pickups.append((now - float(job.body)) * 1000)
            client.close()
        except BaseException as e:  # reported by the main thread
            self.error = e
            self.ready.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_case(name, addresses, make_consumer, tubes, put, args, rng) -> dict:
    consumer = Consumer(make_consumer, tubes)
    time.sleep(0.2)  # let it block
    for _ in range(args.jobs):
        time.sleep(rng.uniform(args.gap_min, args.gap_max) / 1000)
        put(rng.choice(tubes), repr(time.perf_counter()).encode())
    # wait for the last pickups, then measure an idle consumer
    deadline = time.monotonic() + 5
    while len(consumer.pickups) < args.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    before = cmd_counts(addresses)
    time.sleep(args.idle)
    after = cmd_counts(addresses)
    idle = {n: (after[n] - before[n]) / args.idle for n in addresses}
    put(tubes[0], STOP)
    consumer.thread.join(10)
    if consumer.error is not None:
        raise RuntimeError(f"{name}: consumer failed: {consumer.error!r}")
    got = consumer.pickups
    return {
        "case": name, "jobs": len(got), "missing": args.jobs - len(got),
        "p50_ms": round(statistics.median(got), 2) if got else None,
        "p99_ms": round(percentile(got, 0.99), 2) if got else None,
        "max_ms": round(max(got), 2) if got else None,
        "idle_cmds_per_s_max_node": round(max(idle.values()), 2),
        "idle_cmds_per_s": {n: round(v, 2) for n, v in idle.items()},
    }


def cluster_putter(addresses):
    cc = ClusterClient(addresses)

    def put(tube, body):
        cc.use(tube)
        cc.put(body)
    return put


def client_putter(client: Client):
    def put(tube, body):
        if client.using != tube:
            client.use(tube)
        client.put(body)
    return put


def cases(addresses: dict[str, str], proxy: str) -> list:
    one = {"node1": addresses["node1"]}
    ring = ClusterClient(addresses)
    single = "pickup"
    four = [tube_owned_by(ring, f"node{i}", f"own{i}-") for i in range(1, 5)]
    twenty = [f"tube{i}" for i in range(20)]
    stray = "stray"
    owner = ring.node_for(stray)
    other = next(n for n in addresses if n != owner)
    put_stray = client_putter(Client(addresses[other]))
    put_plain = client_putter(Client(addresses["node1"]))
    put_proxied = client_putter(Client(proxy))
    return [
        ("client-1", one, lambda: Client(addresses["node1"]), [single], put_plain),
        ("cluster-1", one, lambda: ClusterClient(one), [single], cluster_putter(one)),
        ("cluster-4-one-tube", addresses, lambda: ClusterClient(addresses), [single],
         cluster_putter(addresses)),
        ("cluster-4-four-tubes", addresses, lambda: ClusterClient(addresses), four,
         cluster_putter(addresses)),
        ("cluster-4-twenty-tubes", addresses, lambda: ClusterClient(addresses), twenty,
         cluster_putter(addresses)),
        ("cluster-4-non-owner", addresses, lambda: ClusterClient(addresses), [stray],
         put_stray),
        ("proxy-4-one-tube", addresses, lambda: Client(proxy), [single], put_proxied),
        ("proxy-4-twenty-tubes", addresses, lambda: Client(proxy), twenty, put_proxied),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--gap-min", type=float, default=10.0, help="ms between puts, least")
    ap.add_argument("--gap-max", type=float, default=50.0, help="ms between puts, most")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle measurement")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--case", action="append", help="run only these cases (repeatable)")
    ap.add_argument("--json", action="store_true", help="one JSON object per case")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        servers = [stack.enter_context(start_bsnode()) for _ in range(args.nodes)]
        addresses = {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(servers, 1)}
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        proxy = stack.enter_context(start_proxy(write_config(tmp / "proxy.toml",
                                                             [s.port for s in servers])))
        if not args.json:
            print(f"{'case':<24} {'jobs':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
                  f"{'idle cmd/s (max node)':>22}")
        for name, nodes, make, tubes, put in cases(addresses, f"127.0.0.1:{proxy.port}"):
            if args.case and name not in args.case:
                continue
            row = run_case(name, nodes, make, tubes, put, args, rng)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{name:<24} {row['jobs']:>5} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                      f"{row['max_ms']:>8} {row['idle_cmds_per_s_max_node']:>22}", flush=True)


if __name__ == "__main__":
    main()
