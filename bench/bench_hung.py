"""What does a hung (SIGSTOPped) node cost the tubes of the other nodes?

Starts 3 bsnode processes on free loopback ports (bscluster/procs.py).  One
``ClusterClient`` (``--op-timeout``) puts, reserves and deletes in a loop on
two tubes, one owned by node1 and one by node3, for ``--seconds``: first with
every node running, then with node2 SIGSTOPped (a hung node: its socket
accepts, nothing answers), alternating ``--rounds`` times.  A stopped
node is always SIGCONTed before the next round and before exit.

Prints each run's jobs/s and slowest call, and the median ratio
stopped / running (the issue's bar: >= 0.90, and no call over 1 s).

    python bench/bench_hung.py [--rounds 3] [--seconds 3] [--op-timeout 2]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from contextlib import ExitStack

from bsclient import ClusterClient  # noqa: E402
from bscluster.procs import start_bsnode  # noqa: E402


def owned_by(cc: ClusterClient, node: str) -> str:
    return next(t for t in (f"t{i}" for i in range(10_000)) if cc.node_for(t) == node)


def run(cc: ClusterClient, tubes: list[str], seconds: float) -> tuple[float, float]:
    """Jobs/s of put+reserve+delete, and the slowest single call (s)."""
    done, slowest = 0, 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cc.use(tubes[done % 2])  # use + put: the older ClusterClient runs this too
        for call in (lambda: cc.put(b"x" * 100), lambda: cc.delete(cc.reserve(timeout=2))):
            started = time.monotonic()
            call()
            slowest = max(slowest, time.monotonic() - started)
        done += 1
    return done / seconds, slowest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--op-timeout", type=float, default=2.0)
    args = ap.parse_args(argv)
    with ExitStack() as stack:
        servers = [stack.enter_context(start_bsnode()) for _ in range(3)]
        hung = servers[1]
        stack.callback(lambda: hung.signal(signal.SIGCONT))
        nodes = {f"node{i}": f"{s.host}:{s.port}" for i, s in enumerate(servers, 1)}
        # timeout= is op_timeout's older name, which the earlier ClusterClient also takes
        cc = stack.enter_context(ClusterClient(nodes, timeout=args.op_timeout))
        tubes = [owned_by(cc, "node1"), owned_by(cc, "node3")]
        for tube in tubes:
            cc.watch(tube)
        cc.ignore("default")
        ratios, worst = [], 0.0
        for r in range(args.rounds):
            running, slow_running = run(cc, tubes, args.seconds)
            hung.signal(signal.SIGSTOP)
            try:
                stopped, slow_stopped = run(cc, tubes, args.seconds)
            finally:
                hung.signal(signal.SIGCONT)
            ratios.append(stopped / running)
            worst = max(worst, slow_stopped)
            print(f"round {r + 1}: running {running:,.0f} jobs/s (slowest call "
                  f"{slow_running * 1000:.1f} ms), node2 stopped {stopped:,.0f} jobs/s "
                  f"(slowest call {slow_stopped * 1000:.1f} ms)", flush=True)
        print(f"median ratio stopped/running {statistics.median(ratios):.2f} "
              f"(each round: {', '.join(f'{x:.2f}' for x in ratios)}); slowest call with "
              f"node2 stopped {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
