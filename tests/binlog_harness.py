"""Shared pieces of the binlog tests (no tests here): a fake clock, a store with a binlog, snapshots.

The store and its binlog run in-process on a fake clock (no server, no
sleeping); ``wall`` follows the fake clock too, so delayed jobs come back with
exactly the deadline they had.
"""

from __future__ import annotations

import errno
import os

from bsnode import binlog
from bsnode.binlog.fileio import OsIO
from bsnode.store import Store

WALL_BASE = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_BASE + self.now


def open_store(path, clock: Clock | None = None, **kw):
    """A fresh store with the binlog in ``path`` attached; returns (store, wal, clock)."""
    clock = clock or Clock()
    store = Store(clock=clock)
    kw.setdefault("fsync_ms", None)
    wal = binlog.attach(store, str(path), wall=clock.wall, **kw)
    return store, wal, clock


def advance(store, clock: Clock, seconds: float) -> None:
    """Move the fake clock and run what became due, as the server's clock loop does."""
    clock.now += seconds
    store.tick()


def snapshot(store) -> dict:
    """What a restart must give back: every job as the binlog should know it."""
    out = {}
    for j in store.jobs.values():
        state = "ready" if j.state == "reserved" else j.state
        deadline = round(j.deadline, 2) if state == "delayed" else None
        out[j.id] = (j.tube.name, state, j.pri, j.delay, j.ttr, j.body, deadline,
                     round(j.created, 2), (j.reserves, j.timeouts, j.releases, j.buries, j.kicks))
    return out


def disk_bytes(path) -> int:
    """Bytes of segment files actually in the directory."""
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if n.startswith("binlog.") and n[7:].isdigit())


class FaultyIO(OsIO):
    """File operations that fail on cue: ``full`` (no new space), ``broken`` (writes
    fail), ``short`` (each pwrite writes half of what it is given).

    Records go through pwrite (no memory map) so that a broken write can fail."""

    def __init__(self) -> None:
        self.full = False
        self.broken = False
        self.short = False
        self.syncs = 0

    def map(self, fd: int, size: int, dirpath: str):
        return None

    def allocate(self, fd: int, size: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().allocate(fd, size)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self.broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if self.short and len(data) > 1:  # the kernel may write less than asked
            data = memoryview(data)[:len(data) // 2]
        return super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)
