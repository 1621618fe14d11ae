"""CPU cost of bsnode's core per command, without sockets: for comparing changes.

    python bench/core_cost.py [--path DIR ...] [--repeat 7] [--jobs 20000]

On a shared, noisy machine a server's ops/s (and even its CPU per op) moves
by tens of percent from run to run, which hides a 10% improvement.  This
drives the exact path a request takes inside the node, minus the sockets:
bytes -> ``CommandReader.feed`` -> ``Commands.execute`` -> store -> reply
bytes, joined per batch as the server does.  Each ``--path`` (a directory
holding a ``bsnode`` and optionally a ``bsclient`` copy; ``-`` is the
installed package) runs in its own process, the paths alternate, every
figure is repeated ``--repeat`` times, and the minimum is reported (the cost
with the least interference from other processes) beside the median.

Figures: µs of CPU per command for put-reserve-delete cycles with 16 and 1
commands per batch; µs per put while filling --fill ready jobs (this is
where cyclic-GC pauses show) and the longest GC pause seen; µs per delayed
job promoted from --fill delayed jobs on a fake clock; bytes per ready job
over the body (RSS growth over the fill).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time

BODY = 100


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _node(clock=time.monotonic):
    from bsclient.protocol import CommandReader
    from bsnode.commands import Commands
    from bsnode.store import Store

    store = Store(clock=clock)
    commands = Commands(store)
    session = store.connect(lambda reply: None)
    return store, commands, session, CommandReader(commands.max_job_size)


def _tame_gc_like_the_server() -> None:
    """Whatever GC policy the server applies at start-up, apply it here too."""
    try:
        from bsnode import server
    except ImportError:
        return
    hook = getattr(server, "freeze_survivors", None)
    if hook is not None:
        hook()


def cycles(jobs: int, batch: int) -> float:
    """µs of CPU per command for put-reserve-delete in batches of ``batch``."""
    store, commands, session, reader = _node()
    execute, feed = commands.execute, reader.feed
    put = b"put 1024 0 120 %d\r\n%s\r\n" % (BODY, b"x" * BODY)
    rounds = jobs // batch
    puts, reserves = put * batch, b"reserve\r\n" * batch
    first = store.next_id
    deletes = [b"".join(b"delete %d\r\n" % (first + r * batch + k) for k in range(batch))
               for r in range(rounds)]
    t0 = time.process_time()
    for r in range(rounds):
        for chunk in (puts, reserves, deletes[r]):
            b"".join([execute(session, ev) for ev in feed(chunk)])
    spent = time.process_time() - t0
    if store.jobs:
        raise RuntimeError(f"{len(store.jobs)} jobs left: replies were not what was expected")
    return spent * 1e6 / (rounds * batch * 3)


def fill(jobs: int) -> dict:
    """µs per put and GC pauses while filling ``jobs`` ready jobs; bytes per job."""
    pauses: list[float] = []
    started = [0.0]

    def watch(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    store, commands, session, reader = _node()
    execute, feed = commands.execute, reader.feed
    chunk = (b"put 1024 0 120 %d\r\n%s\r\n" % (BODY, b"x" * BODY)) * 64
    gc.collect()
    before = _rss_kb()
    gc.callbacks.insert(0, watch)
    t0 = time.process_time()
    for _ in range(jobs // 64):
        b"".join([execute(session, ev) for ev in feed(chunk)])
    spent = time.process_time() - t0
    gc.callbacks.remove(watch)
    n = len(store.jobs)
    return {"us_per_put": spent * 1e6 / n, "gc_pause_max_ms": max(pauses, default=0) * 1e3,
            "gc_total_ms": sum(pauses) * 1e3,
            "bytes_per_job_over_body": (_rss_kb() - before) * 1024 / n - BODY}


def promote(jobs: int) -> float:
    """µs per delayed job promoted (fake clock, deadlines spread over 30 s)."""
    now = [0.0]
    store, commands, session, reader = _node(clock=lambda: now[0])
    rng = random.Random(1)
    for i in range(jobs):
        now[0] = i * 20.0 / jobs
        store.put(session, 1024, 40 + int(rng.random() * 30), 120, b"x" * BODY)
    now[0] = 40.0
    t0 = time.process_time()
    while store.sched.next_deadline() is not None and now[0] < 200:
        store.tick()
        now[0] += 0.001
    spent = time.process_time() - t0
    return spent * 1e6 / jobs


def child(args) -> None:
    _tame_gc_like_the_server()
    which = args.child
    if which == "cycles16":
        out = {"cycles16": cycles(args.jobs, 16)}
    elif which == "cycles1":
        out = {"cycles1": cycles(args.jobs // 4, 1)}
    elif which == "fill":
        out = fill(args.fill)
    else:
        out = {"promote": promote(args.fill)}
    print(json.dumps(out))


FIGURES = (("cycles16", "prd, 16 per batch: µs/command", "min"),
           ("cycles1", "prd, 1 per batch: µs/command", "min"),
           ("us_per_put", "fill: µs/put", "min"),
           ("gc_pause_max_ms", "fill: longest GC pause, ms", "median"),
           ("bytes_per_job_over_body", "fill: bytes/job over the body", "median"),
           ("promote", "µs per delayed job promoted", "min"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", action="append", metavar="DIR",
                    help="a copy to measure (repeatable; '-' = installed)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=20000, help="jobs per cycle measurement")
    ap.add_argument("--fill", type=int, default=200000, help="jobs for the fill/promote figures")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return
    paths = args.path or ["-"]
    got: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for rep in range(args.repeat):
        for what in ("cycles16", "cycles1", "fill", "promote"):
            for p in paths if rep % 2 == 0 else list(reversed(paths)):
                env = dict(os.environ)
                if p != "-":
                    env["PYTHONPATH"] = p
                argv = [sys.executable, __file__, "--child", what, "--jobs", str(args.jobs),
                        "--fill", str(args.fill)]
                done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                      timeout=600, check=True)
                for k, v in json.loads(done.stdout).items():
                    got[p].setdefault(k, []).append(v)
        print(f"repeat {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    width = max(len(p) for p in paths) + 2
    print(f"{'figure':36}" + "".join(f"{p:>{width}}" for p in paths))
    for key, label, how in FIGURES:
        row = f"{label + ' (' + how + ')':36}"
        for p in paths:
            vals = got[p].get(key, [])
            v = (min(vals) if how == "min" else statistics.median(vals)) if vals else float("nan")
            row += f"{v:>{width}.2f}"
        print(row)


if __name__ == "__main__":
    main()
