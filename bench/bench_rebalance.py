"""How fast `bscluster rebalance` moves jobs, on bsnode and on beanstalkd, in one run.

    .venv/bin/python bench/bench_rebalance.py [--jobs 10000] [--tubes 20] [--rounds 3]

Two servers of each kind (free 127.0.0.1 ports, no binlog unless --binlog);
the first gets JOBS jobs spread over TUBES tubes, half ready, a quarter
delayed, a quarter buried; then ``rebalance.execute`` moves every tube to the
second server, exactly as `rebalance` does after its survey.  Printed: jobs
moved, seconds, jobs/s per kind (the median of --rounds), and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bsclient.protocol import encode_command  # noqa: E402
from bscluster.mover import Pipe  # noqa: E402
from bscluster.procs import HAVE_BEANSTALKD, start_beanstalkd, start_bsnode  # noqa: E402
from bscluster.rebalance import Move, execute  # noqa: E402


def fill(port: int, jobs: int, tubes: int) -> dict[str, int]:
    pipe = Pipe("source", "127.0.0.1", port)
    per_tube: dict[str, int] = {}
    try:
        for start in range(0, jobs, 500):
            cmds, bury = [], []
            for i in range(start, min(jobs, start + 500)):
                tube = f"t{i % tubes}"
                per_tube[tube] = per_tube.get(tube, 0) + 1
                delay = 600 if i % 4 == 2 else 0
                cmds += [encode_command("use", tube),
                         encode_command("put", i % 100, delay, 60, 100, body=b"x" * 100)]
            replies = pipe.call(cmds)[1::2]
            for i, (words, _) in zip(range(start, start + len(replies)), replies, strict=True):
                if i % 4 == 3:
                    bury += [encode_command("reserve-job", int(words[1])),
                             encode_command("bury", int(words[1]), 5)]
            pipe.call(bury)
    finally:
        pipe.close()
    return per_tube


def one_round(kind: str, jobs: int, tubes: int, binlog: bool) -> float:
    start = start_bsnode if kind == "bsnode" else start_beanstalkd
    with tempfile.TemporaryDirectory() as tmp:
        args = [["-b", f"{tmp}/{n}"] if binlog else [] for n in ("a", "b")]
        for n in ("a", "b"):
            Path(tmp, n).mkdir()  # beanstalkd wants its -b directory to exist
        servers = [start(*args[0]), start(*args[1])]
        try:
            per_tube = fill(servers[0].port, jobs, tubes)
            addresses = {"src": ("127.0.0.1", servers[0].port),
                         "dst": ("127.0.0.1", servers[1].port)}
            moves = [Move("src", tube, "dst", ready=n) for tube, n in per_tube.items()]
            t0 = time.perf_counter()
            execute(moves, addresses, rate=None)
            seconds = time.perf_counter() - t0
            moved = sum(sum(m.moved.values()) for m in moves)
            assert moved == jobs and not any(m.error for m in moves), [m.error for m in moves]
            return seconds
        finally:
            for s in servers:
                s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--tubes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binlog", action="store_true", help="run the servers with -b")
    args = ap.parse_args()
    kinds = ["bsnode"] + (["beanstalkd"] if HAVE_BEANSTALKD else [])
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:  # alternating, so both see the same machine load
            times[kind].append(one_round(kind, args.jobs, args.tubes, args.binlog))
    print(f"{'nodes':<11} {'jobs':>6} {'median s':>9} {'jobs/s':>8}")
    rate = {}
    for kind, ts in times.items():
        med = statistics.median(ts)
        rate[kind] = args.jobs / med
        print(f"{kind:<11} {args.jobs:>6} {med:>9.2f} {rate[kind]:>8.0f}")
    if len(rate) == 2:
        print(f"bsnode / beanstalkd: {rate['bsnode'] / rate['beanstalkd']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
