"""Are many delayed jobs promoted on time, and without a CPU spike?

    python bench/delayed_promotion.py --port P [--pid PID] [--jobs 1000000]
                                      [--start 40] [--spread 30]

How the measurement works
-------------------------
1. Fill: one pipelined connection puts ``--jobs`` jobs into one tube.  Job i
   is meant to become ready at ``T0 + start + spread * u_i`` (u_i uniform in
   [0, 1), so deadlines arrive in random order, not in put order).  The
   protocol's delay is whole seconds, so the delay sent is
   ``ceil(target - send_time)``; the job's real deadline on the server is
   ``server_put_time + delay``, and server_put_time lies between the time the
   batch was sent and the time its replies came back.  Both bounds are kept.
2. Watch: a second connection sends ``stats-tube`` every ``--every`` ms until
   no job is delayed any more.  A server promotes in deadline order, so when
   a sample taken at time t (reply received) shows P jobs promoted, the next
   job to promote is the (P+1)-th smallest deadline D.  If t > D, that job is
   late by at least t - D_hi and at most t - D_lo.  The largest such figure
   over all samples is the promotion lateness (any lateness longer than the
   sampling interval is seen).
3. Probes: the bounds above are as wide as the fill's batches took to be
   acknowledged, which grows when the server is starved of CPU.  So, while
   the tube is sampled, one probe job is put every ``--probe-every`` ms into a
   tube of its own (``delay 1`` on an otherwise idle connection, so its
   deadline is known to within one round trip) and another connection
   blocks in ``reserve`` on that tube: a probe's lateness is the time its
   RESERVED arrived minus its deadline.  They are due while the million are
   being promoted, so they see every stall of the server's clock.
4. CPU: with ``--pid`` the server's CPU time is read from /proc every 0.5 s
   during the promotion window; the busiest 0.5 s window beside the mean shows
   whether promotion comes in bursts.

Prints one JSON line.  Only 127.0.0.1 is allowed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import threading
import time
from array import array
from bisect import bisect_right

TUBE = "bench-delayed"
PROBE_TUBE = "bench-delayed-probe"
BATCH = 256  # puts per write; two batches are kept in flight
CPU_WINDOW = 0.5
IO_TIMEOUT = 60.0


def _recv_lines(sock: socket.socket, buf: bytearray, lines: int) -> bytearray:
    """Read until ``buf`` holds at least ``lines`` CRLF-ended lines; returns the rest."""
    while buf.count(b"\r\n") < lines:
        chunk = sock.recv(262144)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
    cut = 0
    for _ in range(lines):
        cut = buf.index(b"\r\n", cut) + 2
    head = bytes(buf[:cut])
    if head.count(b"INSERTED ") != lines:
        bad = next(ln for ln in head.split(b"\r\n") if not ln.startswith(b"INSERTED "))
        raise RuntimeError(f"put failed: {bad[:80]!r}")
    return buf[cut:]


def fill(host: str, port: int, jobs: int, start: float, spread: float, size: int,
         seed: int = 1, progress=None) -> dict:
    """Put the delayed jobs; returns their deadline bounds and timings."""
    rng = random.Random(seed)
    body = b"d" * size
    t0 = time.monotonic()
    lo = array("d", bytes(8 * jobs))
    hi = array("d", bytes(8 * jobs))
    window = 0.0
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"use %s\r\n" % TUBE.encode())
        rest = bytearray()
        while rest.count(b"\r\n") < 1:
            rest += sock.recv(4096)
        if not rest.startswith(b"USING "):
            raise RuntimeError(f"use failed: {bytes(rest)!r}")
        rest = bytearray()
        pending: list[tuple[int, int, float, array]] = []  # (first, count, sent, delays)

        def settle() -> None:
            nonlocal rest, window
            first, count, sent, delays = pending.pop(0)
            rest = _recv_lines(sock, rest, count)
            acked = time.monotonic()
            window = max(window, acked - sent)
            for k in range(count):
                lo[first + k] = sent + delays[k]
                hi[first + k] = acked + delays[k]

        i = 0
        while i < jobs:
            count = min(BATCH, jobs - i)
            sent = time.monotonic()
            delays = array("d")
            parts = []
            for _ in range(count):
                target = t0 + start + spread * rng.random()
                delay = max(1, math.ceil(target - sent))
                delays.append(delay)
                parts.append(b"put 1024 %d 120 %d\r\n%s\r\n" % (delay, size, body))
            sock.sendall(b"".join(parts))
            pending.append((i, count, sent, delays))
            i += count
            if len(pending) > 1:
                settle()
            if progress is not None and i % (BATCH * 400) < BATCH:
                progress(i)
        while pending:
            settle()
    return {"t0": t0, "lo": lo, "hi": hi, "fill_s": time.monotonic() - t0,
            "window_ms": window * 1e3}


def _stats_tube(sock: socket.socket, buf: bytearray) -> tuple[dict, bytearray]:
    sock.sendall(b"stats-tube %s\r\n" % TUBE.encode())
    while True:
        nl = buf.find(b"\r\n")
        if nl >= 0:
            head = bytes(buf[:nl])
            if not head.startswith(b"OK "):
                raise RuntimeError(f"stats-tube failed: {head!r}")
            need = nl + 2 + int(head[3:]) + 2
            if len(buf) >= need:
                text = bytes(buf[nl + 2:need - 2]).decode()
                stats = dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
                return stats, buf[need:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the stats connection")
        buf += chunk


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _line(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytearray]:
    """One reply line (and a RESERVED body skipped); returns it and the rest."""
    while True:
        nl = buf.find(b"\r\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            end = nl + 2
            if line.startswith(b"RESERVED "):
                end += int(line.rsplit(b" ", 1)[1]) + 2
            if len(buf) >= end:
                return line, buf[end:]
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("server closed a probe connection")
        buf += chunk


class Probes:
    """Puts a delay-1 probe job every ``every`` s until stopped; a second
    connection reserves them and records how late each one came."""

    def __init__(self, host: str, port: int, every: float) -> None:
        self.host, self.port, self.every = host, port, every
        self.stop = threading.Event()
        self.sent: dict[int, tuple[float, float]] = {}  # id -> (sent, acked)
        self.got: dict[int, float] = {}  # id -> RESERVED received
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                         for f in (self._put, self._reserve)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(IO_TIMEOUT)

    def _guard(self, fn) -> None:
        try:
            fn()
        except (OSError, RuntimeError) as e:
            self.errors.append(f"{fn.__name__}: {e}")

    def _put(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT) as sock:
            buf = bytearray()
            sock.sendall(b"use %s\r\n" % PROBE_TUBE.encode())
            _, buf = _line(sock, buf)
            while not self.stop.wait(self.every):
                sent = time.monotonic()
                sock.sendall(b"put 0 1 60 1\r\np\r\n")
                line, buf = _line(sock, buf)
                self.sent[int(line.split()[1])] = (sent, time.monotonic())

    def _reserve(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT) as sock:
            buf = bytearray()
            sock.sendall(b"watch %s\r\nignore default\r\n" % PROBE_TUBE.encode())
            for _ in range(2):
                _, buf = _line(sock, buf)
            while not self.stop.is_set():
                sock.sendall(b"reserve-with-timeout 1\r\n")
                line, buf = _line(sock, buf)
                if line.startswith(b"RESERVED "):
                    got = time.monotonic()
                    jid = int(line.split()[1])
                    self.got[jid] = got
                    sock.sendall(b"delete %d\r\n" % jid)
                    _, buf = _line(sock, buf)

    def result(self) -> dict:
        late_hi = sorted(self.got[j] - (s + 1) for j, (s, _) in self.sent.items()
                         if j in self.got)
        late_lo = [self.got[j] - (a + 1) for j, (_, a) in self.sent.items() if j in self.got]
        windows = [a - s for s, a in self.sent.values()]
        return {
            "probes": len(self.sent), "probes_reserved": len(late_hi),
            "probe_late_max_ms": late_hi[-1] * 1e3 if late_hi else None,
            "probe_late_p99_ms": late_hi[int(0.99 * (len(late_hi) - 1))] * 1e3 if late_hi
            else None,
            "probe_late_max_lo_ms": max(late_lo) * 1e3 if late_lo else None,
            "probe_window_max_ms": max(windows) * 1e3 if windows else None,
            "probe_errors": self.errors,
        }


def watch(host: str, port: int, filled: dict, pid: int | None, every_ms: float,
          slack: float = 10.0, progress=None) -> dict:
    """Sample the tube until every job is promoted; returns lateness and CPU figures."""
    lo = sorted(filled["lo"])
    hi = sorted(filled["hi"])
    n = len(lo)
    end = hi[-1] + slack
    late_hi = late_lo = 0.0
    worst_job = -1
    samples = 0
    lates: list[float] = []
    cpu_marks: list[tuple[float, float]] = []
    next_cpu = 0.0
    first_due = lo[0]
    last_print = 0.0
    watch_start = time.monotonic()
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as sock:
        buf = bytearray()
        while True:
            sent = time.monotonic()
            stats, buf = _stats_tube(sock, buf)
            got = time.monotonic()
            samples += 1
            delayed = int(stats["current-jobs-delayed"])
            promoted = n - delayed
            if promoted < n:
                hi_late = got - lo[promoted]  # upper bound: earliest possible deadline
                lo_late = sent - hi[promoted]  # lower bound: latest possible deadline
                if hi_late > late_hi:
                    late_hi, worst_job = hi_late, promoted
                late_lo = max(late_lo, lo_late)
                if got >= lo[promoted]:
                    lates.append(hi_late)
            if pid is not None and got >= next_cpu and got >= first_due - 1.0:
                cpu_marks.append((got, _cpu_s(pid)))
                next_cpu = got + CPU_WINDOW
            if progress is not None and got - last_print >= 2.0:
                # how many jobs were due (by their latest possible deadline) by now
                due = bisect_right(hi, got)
                progress(promoted, due, n)
                last_print = got
            if delayed == 0 or got > end:
                break
            pause = every_ms / 1e3 - (time.monotonic() - sent)
            if pause > 0:
                time.sleep(pause)
    rates = [(b[1] - a[1]) / (b[0] - a[0])
             for a, b in zip(cpu_marks, cpu_marks[1:], strict=False) if b[0] - a[0] > 0]
    lates.sort()
    return {
        "jobs": n,
        # jobs whose deadline came while we watched (the others were due during the fill)
        "measured": n - bisect_right(lo, watch_start),
        "promoted": n - delayed,
        "samples": samples,
        "late_max_ms": max(late_hi, 0.0) * 1e3,  # conservative (upper bound)
        "late_max_lo_ms": max(late_lo, 0.0) * 1e3,  # lower bound
        "late_p99_ms": (lates[int(0.99 * (len(lates) - 1))] if lates else 0.0) * 1e3,
        "worst_job_rank": worst_job,
        "promotion_s": hi[-1] - lo[0],
        "cpu_mean_pct": 100 * (sum(rates) / len(rates)) if rates else None,
        "cpu_peak_pct": 100 * max(rates) if rates else None,
    }


def measure(host: str, port: int, pid: int | None, jobs: int, start: float, spread: float,
            size: int = 100, every_ms: float = 5.0, probe_every_ms: float = 100.0,
            progress=None) -> dict:
    if host != "127.0.0.1":
        raise ValueError("only 127.0.0.1 is allowed")

    def fill_progress(i: int) -> None:
        if progress is not None:
            progress(f"filled {i}/{jobs}")

    def watch_progress(promoted: int, due: int, n: int) -> None:
        if progress is not None:
            progress(f"promoted {promoted}/{n} (due by now: {due})")

    filled = fill(host, port, jobs, start, spread, size, progress=fill_progress)
    with Probes(host, port, probe_every_ms / 1e3) as probes:
        result = watch(host, port, filled, pid, every_ms, progress=watch_progress)
    result.update(probes.result())
    result.update(fill_s=filled["fill_s"], fill_window_ms=filled["window_ms"],
                  start_s=start, spread_s=spread,
                  fill_overlapped=filled["fill_s"] > start)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, help="server pid, for CPU figures")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--start", type=float, default=40.0,
                    help="first deadline, seconds after the fill starts")
    ap.add_argument("--spread", type=float, default=30.0, help="deadlines spread over this")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--every", type=float, default=5.0, help="sampling interval, ms")
    ap.add_argument("--probe-every", type=float, default=100.0, help="probe interval, ms")
    args = ap.parse_args(argv)

    def progress(text: str) -> None:
        print(f"delayed: {text}", file=sys.stderr, flush=True)

    result = measure(args.host, args.port, args.pid, args.jobs, args.start, args.spread,
                     args.size, args.every, args.probe_every, progress)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
