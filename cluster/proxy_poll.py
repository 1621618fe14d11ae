"""The proxy's busy poll: after traffic, poll for a moment instead of sleeping.

How this works
--------------
Every command through the proxy makes two hops, client to proxy and proxy to
node, and its reply two more.  A process that sleeps in ``epoll_wait`` between
them must be woken for each, and the wakeup is the dearest part of a hop: on
a virtual machine an idle CPU is woken through the hypervisor.  (On the 2-core
VM of docs/BENCHMARKS.md a bare C forwarder that sleeps keeps 0.42-0.54 of a
direct connection's rate at pipeline 1; the same forwarder polling for ~100 us
before it sleeps keeps 0.70-1.01.)

So while reads come densely (more than half of the last eight or so came
within ``window`` of the end of the work before: a poll would mostly catch
the next one) each read starts a libev idle watcher: while one is active
the loop polls with a zero timeout, and the watcher's callback runs each time
a turn of the loop found nothing to do.  When ``window`` seconds pass after
the last read's work ended (``done``) without another read, it stops itself
and the loop sleeps as before.  Both are timed from the end of the work, not
from the read: a client pipelining 16 commands gives the proxy reads whose
work takes longer than the window, and timed from the read the poll would end
before it began.  Each empty turn yields
the CPU (``sched_yield``), so a node or client process waiting to run on
this core is not kept from it.

The cost is CPU, and only under dense traffic: an idle proxy never polls, nor
does one whose clients send a command now and then (a poll after each of
their reads would mostly wait out its window: one client sending 5,000 puts a
second, each waited for, cost the proxy 69 % of a core polled at every read
against 38 % unpolled; gated so, 44 % against 40 %); under load the loop is
busy anyway.  HAProxy's
``busy-polling`` is the same trade, always on.  Never where the proxy may use
one CPU or less (``window_for``): under a cgroup quota such as a Kubernetes
CPU limit polling would spend the quota and get the proxy throttled, and on
one CPU it takes the time the node or the clients need.
"""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter

from gevent import get_hub

CGROUP = Path("/sys/fs/cgroup")
WEIGHT = 1 / 8  # of the newest read in ``BusyPoll.dense``, a moving average
DENSE = 0.5  # poll while more than this share of recent reads came within the window


class BusyPoll:
    """Keep the event loop polling for ``window_us`` microseconds after each read, while
    most reads come within that time of the one before (0: never)."""

    __slots__ = ("idle", "window", "clock", "dense", "last_done")

    def __init__(self, window_us: int, clock=perf_counter) -> None:
        self.window = window_us / 1e6
        self.clock = clock
        self.idle = get_hub().loop.idle() if window_us > 0 else None  # None: off
        self.dense = 0.0  # the share of recent reads that came within ``window`` of the last
        self.last_done = clock()  # when the work of the last read ended

    def poke(self) -> None:
        """A read happened (the read callbacks call this after each read)."""
        now = self.clock()
        self.dense += ((now - self.last_done < self.window) - self.dense) * WEIGHT
        self.last_done = now  # (until ``done`` says when its work ended)
        idle = self.idle
        if idle is not None and self.dense > DENSE and not idle.active:
            idle.start(self._empty_turn)

    def done(self) -> None:
        """The work of a read ended (its callback calls this last)."""
        self.last_done = self.clock()

    def _empty_turn(self) -> None:
        if self.clock() - self.last_done > self.window:
            self.idle.stop()  # (the next read that finds reads dense starts it again)
        else:
            os.sched_yield()

    @property
    def polling(self) -> bool:
        return self.idle is not None and self.idle.active

    def close(self) -> None:
        if self.idle is not None:
            self.idle.stop()
            self.idle.close()


def cpu_limit(root: Path = CGROUP, proc: Path = Path("/proc/self")) -> float:
    """How many CPUs this process may use: its CPU affinity, or a cgroup quota if lower."""
    affinity = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)  # (Linux has the first)
    quota = _quota(root, proc)
    return affinity if quota is None else min(affinity, quota)


def _quota(root: Path, proc: Path) -> float | None:
    """The cgroup's CPU quota in CPUs (v2 ``cpu.max``, else v1 ``cfs_quota_us``); None: none."""
    try:
        own = next((line.split(":", 2)[2].strip().lstrip("/") for line in
                    (proc / "cgroup").read_text().splitlines() if line.startswith("0::")), "")
    except OSError:
        own = ""
    for path in (root / own / "cpu.max", root / "cpu.max"):
        try:
            quota, period = path.read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota < 0 else quota / period


def window_for(configured: int, cpus: float) -> tuple[int, str]:
    """The busy-poll window to use, in microseconds, and a phrase for the log line:
    the setting, or 0 where this process may use one CPU or less."""
    if not configured:
        return 0, "busy poll off"
    if cpus <= 1:
        return 0, f"busy poll off: this process may use {cpus:g} CPU"
    return configured, f"busy poll {configured} us"
