"""The binlog's fast path for put and delete, against its slow path and the disk.

A put or delete whose record fits in ``_quick`` skips every check the slow
path makes (room in cur, slots kept for deletes, the bound on disk use, a
sync to schedule, failures pending).  These tests drive random sequences of
every command through a binlog with tiny segments, a disk that fills up and
frees again, and the fsync timer, and check after every step that the fast
path never promised room the slow path would refuse, and that a restart
gives back exactly what the store held.

Each test runs with its binlog on every filesystem the machine has (ext4,
tmpfs, overlayfs: ``binlog_tmp`` in conftest.py).  Where the binlog maps
its segment (ext4, tmpfs) the fast path is open; where it writes with
pwrite (overlayfs) records take the slow path.  Either way the bytes on
disk and what replay gives back are the same, and that is what is checked.
"""

from __future__ import annotations

import errno
import os
import tempfile

import pytest
from binlog_harness import WALL_BASE, Clock, advance, open_store, snapshot
from bsnode.binlog import format as F
from bsnode.binlog.fileio import MAP_FILESYSTEMS, OsIO, filesystem_type
from bsnode.binlog.segments import SLOT
from bsnode.lifecycle import Outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def tmp_path(binlog_tmp):
    """Every test here, on each filesystem."""
    return binlog_tmp


def maps(path) -> bool:
    """Does the binlog write through a memory map on this filesystem?"""
    return filesystem_type(str(path)) in MAP_FILESYSTEMS


class FillingIO(OsIO):
    """Real files and memory maps; new segments are refused while ``full``."""

    def __init__(self) -> None:
        self.full = False

    def allocate(self, fd: int, size: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().allocate(fd, size)


def check_room(wal) -> None:
    """Every live job can still be deleted, and _quick promises no more than that."""
    cur = wal.cur
    free = cur.size - cur.used
    assert free // SLOT + wal.spare_slots >= wal.live_count
    if wal._quick >= 0:
        assert cur.map is not None
        owed = max(0, wal.live_count - wal.spare_slots)
        assert free - wal._quick >= owed * SLOT


ops = st.lists(st.tuples(
    st.sampled_from(["put", "put", "put", "put_delayed", "delete", "delete", "release",
                     "bury", "kick", "tick", "full", "room"]),
    st.integers(0, 10_000)), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, segment_size=st.sampled_from([1024, 2048, 8192]))
def test_random_commands_keep_room_for_every_delete_and_replay_exactly(
        tmp_path, script, segment_size):
    path = tempfile.mkdtemp(dir=tmp_path)  # one per example
    io = FillingIO()
    store, wal, clock = open_store(path, segment_size=segment_size, fsync_ms=50, io=io,
                                   background_sync=False)
    s = store.connect()
    for kind, arg in script:
        live = sorted(store.jobs)
        pick = live[arg % len(live)] if live else None
        if kind in ("put", "put_delayed"):
            store.use(s, f"tube{arg % 3}")
            body = bytes([arg % 251]) * (arg % 700)
            delay = 1 + arg % 50 if kind == "put_delayed" else 0
            if store.put(s, arg % 5000, delay, 1 + arg % 90, body) is None:
                assert io.full  # refused only for want of disk
        elif kind == "delete" and pick is not None:
            job = store.jobs[pick]
            if job.state == "ready":
                store.watch(s, job.tube.name)
                store.reserve_job(s, pick)
            if job.state != "delayed":
                store.delete(s, pick)
        elif kind in ("release", "bury") and pick is not None:
            job = store.jobs[pick]
            if job.state == "ready":
                store.watch(s, job.tube.name)
                store.reserve_job(s, pick)
                if kind == "bury" or store.release(s, pick, arg % 100, arg % 30) is not Outcome.DONE:
                    store.bury(s, pick, arg % 100)
        elif kind == "kick" and pick is not None:
            store.kick_job(pick)
        elif kind == "tick":
            advance(store, clock, (arg % 200) / 1000)  # the fsync timer, delays coming due
        elif kind == "full":
            io.full = True
        elif kind == "room":
            io.full = False
        for job in list(store.jobs.values()):  # nothing stays reserved across a restart
            if job.state == "reserved":
                store.bury(s, job.id, job.pri)
        check_room(wal)
    io.full = False  # room again: close writes what is owed (test_binlog covers a full stop)
    before = snapshot(store)
    deadlines = {j.id: j.deadline for j in store.jobs.values() if j.state == "delayed"}
    wal.close()

    clock2 = Clock(clock.now)
    store2, wal2, _ = open_store(path, clock2, segment_size=segment_size)
    assert without_times(snapshot(store2)) == without_times(before)
    for jid, job in store2.jobs.items():  # the log keeps whole milliseconds
        assert abs(job.created - before[jid][7]) < 0.006
        if job.state == "delayed":
            assert abs(job.deadline - deadlines[jid]) < 0.0011
    wal2.close()


def without_times(snap: dict) -> dict:
    """Each job without its deadline and creation time (compared to the millisecond)."""
    return {jid: fields[:6] + fields[8:] for jid, fields in snap.items()}


def test_the_fast_records_are_plain_msgpack_with_the_values_put(tmp_path):
    store, wal, clock = open_store(tmp_path)
    s = store.connect()
    store.use(s, "emails")
    first = store.put(s, 2**32 - 1, 0, 120, b"hello")  # the slow path works out _quick
    job = store.put(s, 7, 30, 60, b"\x00" * 300)
    assert (wal._quick >= 0) == maps(tmp_path)  # mapped: this one took the fast path
    gone = store.put(s, 1, 0, 1, b"")
    store.watch(s, "emails")
    store.reserve_job(s, gone.id)
    store.delete(s, gone.id)
    wal.close()
    with open(os.path.join(tmp_path, "binlog.1"), "rb") as f:
        data = f.read()
    sizes, _ = F.scan_frames(data)
    records = F.decode(data, F.HEADER_SIZE, sizes)
    created = int((WALL_BASE + job.created) * 1000)
    assert [1, first.id, "emails", 2**32 - 1, 0, 120, b"hello", F.STATE_READY, 0,
            created, 0, 0, 0, 0, 0] in records
    assert [1, job.id, "emails", 7, 30, 60, b"\x00" * 300, F.STATE_DELAYED,
            int((WALL_BASE + job.deadline) * 1000), created, 0, 0, 0, 0, 0] in records
    assert records[-1] == [F.DELETE, gone.id]


class CountingIO(OsIO):
    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)


def test_a_put_on_the_fast_path_after_a_sync_still_gets_the_next_sync(tmp_path):
    io = CountingIO()
    store, wal, clock = open_store(tmp_path, fsync_ms=50, io=io, background_sync=False)
    s = store.connect()
    store.put(s, 1, 0, 60, b"first")
    store.put(s, 1, 0, 60, b"fast")
    assert (wal.cur.map is not None and wal._quick >= 0) == maps(tmp_path)  # fast path
    for n in range(3):
        synced = io.syncs
        advance(store, clock, 0.06)
        assert io.syncs == synced + 1, f"write {n}: the sync after it never came"
        store.put(s, 1, 0, 60, b"after a sync")
    advance(store, clock, 0.06)
    assert io.syncs == synced + 2
    wal.close()
