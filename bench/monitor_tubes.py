"""What the dashboard's monitor costs when a node has many tubes nobody uses.

Starts one node (bsnode, or beanstalkd with --beanstalkd), makes TUBES
empty tubes exist by watching them on one connection (a tube lives while
someone watches it), then polls it the way the dashboard does and reports,
for this process (which holds nothing else of size): RSS before the first
poll, after it, and after POLLS polls (and every tenth of the way, with
Python's allocated blocks); the median and worst poll time, split into
asking the node (probe) and making the view; and the size of one
/api/overview answer.  A few tubes get jobs, so the figures
include tubes the history must keep.

    python bench/monitor_tubes.py --tubes 20000 --polls 120

Polls run back to back (each one is what the dashboard does once a second),
so POLLS polls are POLLS seconds of a dashboard's life; before issue 19 every
poll added a history point to every tube, empty or not.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

from bsclient import Client  # noqa: E402
from bsclient.config import NodeAddress  # noqa: E402
from bscluster.monitor import POLL_TIMEOUT, Monitor  # noqa: E402
from bscluster.probe import probe_all  # noqa: E402
from bscluster.procs import start_beanstalkd, start_bsnode  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch_many(host: str, port: int, count: int) -> socket.socket:
    """One connection watching ``count`` tubes (pipelined, replies read as they come)."""
    sock = socket.create_connection((host, port))
    batch = 2000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        sock.sendall(b"".join(b"watch idle-%06d\r\n" % i for i in range(start, start + n)))
        got = b""
        while got.count(b"\r\n") < n:
            got += sock.recv(65536)
    return sock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tubes", type=int, default=20000)
    ap.add_argument("--polls", type=int, default=120)
    ap.add_argument("--busy", type=int, default=20, help="tubes that get one job each")
    ap.add_argument("--beanstalkd", action="store_true", help="watch beanstalkd instead")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    start = start_beanstalkd if args.beanstalkd else start_bsnode
    with start() as node:
        holder = watch_many(node.host, node.port, args.tubes)
        with Client(f"{node.host}:{node.port}") as c:
            for i in range(args.busy):
                c.use(f"busy-{i}")
                c.put(b"x")
        probe_times = []

        def timed_probe(addresses):
            t = time.perf_counter()
            try:
                return probe_all(addresses, POLL_TIMEOUT)
            finally:
                probe_times.append(time.perf_counter() - t)
        mon = Monitor((NodeAddress("node1", f"{node.host}:{node.port}"),), probe=timed_probe)
        before = rss_mb()
        times = []
        t0 = time.perf_counter()
        mon.poll()
        times.append(time.perf_counter() - t0)
        first = rss_mb()
        series = []  # (poll, RSS MB, Python objects' blocks in thousands) every tenth poll
        for i in range(2, args.polls + 1):
            t0 = time.perf_counter()
            view = mon.poll()
            times.append(time.perf_counter() - t0)
            if i % max(1, args.polls // 10) == 0:
                series.append((i, round(rss_mb(), 1), sys.getallocatedblocks() // 1000))
        after = rss_mb()
        overview = len(json.dumps(view, default=str))
        holder.close()
    print(json.dumps({
        "node": "beanstalkd" if args.beanstalkd else "bsnode", "tubes": args.tubes,
        "polls": args.polls, "rss_before_mb": round(before, 1),
        "rss_after_first_poll_mb": round(first, 1), "rss_after_polls_mb": round(after, 1),
        "growth_after_first_poll_mb": round(after - first, 1),
        "poll_median_s": round(statistics.median(times), 3),
        "poll_max_s": round(max(times), 3),
        "probe_median_s": round(statistics.median(probe_times), 3),
        "view_median_s": round(statistics.median(t - p for t, p in zip(times, probe_times,
                                                                        strict=True)), 3), "overview_bytes": overview,
        "series_poll_rss_kblocks": series, "tubes_in_view": len(view["tubes"]), "tubes_total": view["totals"]["tubes"],
        "fd_limit": soft if soft == hard else f"{soft}/{hard}",
    }))


if __name__ == "__main__":
    main()
