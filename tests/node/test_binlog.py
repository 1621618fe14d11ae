"""The binlog in-process: format, restore, damage, locking, rollover, fsync policy, faults.

Everything runs against the real module writing real files in tmp_path, with
the store on a fake clock (binlog_harness).  Server processes are in
test_binlog_crash.py; the long bounded-disk runs in test_binlog_bounded.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import msgpack
import pytest
from binlog_harness import Clock, FaultyIO, advance, disk_bytes, open_store, snapshot
from bsclient import protocol as P
from bsclient.protocol import CommandReader
from bsnode import binlog
from bsnode.binlog import format as F
from bsnode.binlog.dump import describe
from bsnode.binlog.dump import main as dump_main
from bsnode.binlog.fileio import MAP_FILESYSTEMS, filesystem_type
from bsnode.commands import Commands
from bsnode.store import NOT_LOGGED


@pytest.fixture
def tmp_path(binlog_tmp):
    """Every test here, with its binlog on each filesystem (binlog_tmp in conftest.py)."""
    return binlog_tmp


def segs(path) -> list[str]:
    return sorted((n for n in os.listdir(path) if n.startswith("binlog.") and n[7:].isdigit()),
                  key=lambda n: int(n[7:]))


# --- the record codec -------------------------------------------------------------
def test_frame_layout_is_length_crc_payload_and_a_msgpack_stream():
    payload = msgpack.packb([F.DELETE, 7])
    fr = F.frame(payload)
    assert fr[0] == 0xCE and fr[5] == 0xCE
    assert int.from_bytes(fr[1:5], "big") == len(payload)
    assert list(msgpack.Unpacker(__import__("io").BytesIO(fr))) == [
        len(payload), __import__("zlib").crc32(payload), [F.DELETE, 7]]
    data = F.header(3) + fr + F.mark(9)
    assert F.parse_header(data) == 3
    sizes, stop = F.scan_frames(data)
    assert stop == len(data) and sum(sizes) == len(data) - F.HEADER_SIZE
    assert F.decode(data, F.HEADER_SIZE, sizes) == [[F.DELETE, 7], [F.MARK, 9]]


def test_scan_stops_at_a_bad_crc_and_resyncs_after_it():
    a, b = F.delete(1), F.delete(2)
    data = bytearray(F.header(1) + a + b)
    data[F.HEADER_SIZE + F.FRAME_SIZE] ^= 0xFF  # damage a's payload
    sizes, stop = F.scan_frames(bytes(data))
    assert (sizes, stop) == ([], F.HEADER_SIZE)
    assert F.next_frame(bytes(data), stop + 1) == F.HEADER_SIZE + len(a)
    kinds = [type(r).__name__ for _, _, r in F.iter_frames(bytes(data))]
    assert kinds == ["FormatError", "list"]


def test_a_valid_crc_over_a_malformed_record_is_named_by_offset():
    data = F.header(1) + F.delete(1) + F.frame(msgpack.packb([F.FULL, 1, "t"]))
    sizes, stop = F.scan_frames(data)
    with pytest.raises(F.FormatError) as e:
        F.decode(data, F.HEADER_SIZE, sizes)
    assert e.value.offset == F.HEADER_SIZE + len(F.delete(1))


def test_headers_need_magic_and_version():
    with pytest.raises(F.FormatError, match="magic"):
        F.parse_header(b"\x07\x00\x00\x00" + bytes(12))
    bad = F.HEADER.pack(F.MAGIC, F.FORMAT_VERSION + 1, 0, 1, 0, 0, 0)
    with pytest.raises(F.FormatError, match="version"):
        F.parse_header(bad)


def test_unpacking_has_explicit_limits():
    big_map = F.frame(msgpack.packb({1: 2}))
    data = F.header(1) + big_map
    sizes, _ = F.scan_frames(data)
    with pytest.raises(F.FormatError):
        F.decode(data, F.HEADER_SIZE, sizes)


# --- restore ------------------------------------------------------------------------
def session_ops(store):
    s = store.connect()
    return s


def test_restart_restores_every_state_tube_counter_and_the_id_counter(tmp_path):
    store, wal, clock = open_store(tmp_path)
    s = store.connect()
    ready = store.put(s, 10, 0, 30, b"ready")
    store.use(s, "other")
    delayed = store.put(s, 20, 100, 40, b"delayed")
    buried = store.put(s, 30, 0, 50, b"buried")
    store.watch(s, "other")
    got = store.reserve_job(s, buried.id)
    store.bury(s, got.id, 31)
    reserved = store.put(s, 5, 0, 60, b"reserved")
    store.reserve_job(s, reserved.id)
    rel = store.put(s, 6, 0, 60, b"released")
    store.reserve_job(s, rel.id)
    store.release(s, rel.id, 7, 10)
    kicked = store.put(s, 8, 0, 60, b"kicked")
    store.reserve_job(s, kicked.id)
    store.bury(s, kicked.id, 8)
    store.kick_job(kicked.id)
    gone = store.put(s, 9, 0, 60, b"gone")
    store.delete(s, gone.id)
    advance(store, clock, 3)
    before = snapshot(store)
    wal.close()

    clock2 = Clock(clock.now + 5)  # five seconds later, on a fresh monotonic clock
    clock2.now = clock.now + 5
    store2, wal2, _ = open_store(tmp_path, clock2)
    after = snapshot(store2)
    assert set(after) == set(before) == {ready.id, delayed.id, buried.id, reserved.id,
                                         rel.id, kicked.id}
    for jid in before:
        if jid == reserved.id:  # a reservation is not logged: its counter is not either
            *fields, (reserves, *counters) = before[jid]
            before[jid] = (*fields, (reserves - 1, *counters))
        assert after[jid] == before[jid], jid
    assert store2.jobs[delayed.id].deadline == pytest.approx(clock.now - 3 + 100, abs=0.01)
    assert store2.jobs[reserved.id].state == "ready"  # reserved comes back ready
    assert store2.jobs[buried.id].buries == 1 and store2.jobs[kicked.id].kicks == 1
    assert store2.next_id == gone.id + 1
    wal2.close()


def test_ids_are_never_reused_even_after_every_job_is_deleted(tmp_path):
    store, wal, _ = open_store(tmp_path, segment_size=1024)
    s = store.connect()
    for _ in range(3):
        for _ in range(40):
            store.delete(s, store.put(s, 1, 0, 60, b"x" * 50).id)
        wal.close()
        last = store.next_id - 1
        store, wal, _ = open_store(tmp_path, segment_size=1024)
        s = store.connect()
        assert not store.jobs
        assert store.next_id == last + 1
        assert len(segs(tmp_path)) == 1  # everything else was garbage
    wal.close()


def test_a_delayed_job_whose_time_passed_while_down_comes_back_ready(tmp_path):
    store, wal, clock = open_store(tmp_path)
    s = store.connect()
    j = store.put(s, 1, 10, 60, b"later")
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now + 11))
    assert store2.jobs[j.id].state == "ready"
    wal2.close()


def test_buried_jobs_come_back_in_burial_order(tmp_path):
    store, wal, _ = open_store(tmp_path)
    s = store.connect()
    ids = [store.put(s, 1, 0, 60, b"%d" % i).id for i in range(4)]
    for jid in (ids[2], ids[0], ids[3], ids[1]):
        store.reserve_job(s, jid)
        store.bury(s, jid, 1)
    wal.close()
    store2, wal2, _ = open_store(tmp_path)
    s2 = store2.connect()
    assert [j.id for j in store2.default_tube.buried.values()] == [ids[2], ids[0], ids[3], ids[1]]
    assert store2.peek_buried(s2).id == ids[2]
    wal2.close()


# --- files and locking ------------------------------------------------------------------
def test_files_are_owner_only_and_the_directory_is_locked(tmp_path):
    d = tmp_path / "log"
    store, wal, _ = open_store(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in os.listdir(d):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600, name
    with pytest.raises(binlog.BinlogError, match="in use by another process") as e:
        open_store(d)
    assert e.value.exit_code == 10
    wal.close()
    _, wal2, _ = open_store(d)  # free again once closed
    wal2.close()


def test_a_foreign_file_is_refused_not_cut(tmp_path):
    (tmp_path / "binlog.1").write_bytes(b"\x07\x00\x00\x00" + os.urandom(300))
    with pytest.raises(binlog.BinlogError, match=r"binlog\.1 .* offset 0"):
        open_store(tmp_path)
    assert (tmp_path / "binlog.1").stat().st_size == 304


# --- segments ------------------------------------------------------------------------------
def test_segments_roll_over_at_the_size_limit(tmp_path):
    store, wal, _ = open_store(tmp_path, segment_size=4096)
    s = store.connect()
    jobs = [store.put(s, 1, 0, 60, b"j" * 100) for _ in range(150)]
    names = segs(tmp_path)
    nums = [seg.num for seg in wal.segments]  # the log; spares (room for deletes) follow it
    assert len(nums) >= 5
    assert [int(n[7:]) for n in names] == list(range(1, len(nums) + len(wal.spares) + 1))
    for num in nums[:-1]:
        size = (tmp_path / f"binlog.{num}").stat().st_size
        assert 4096 - 200 < size <= 4096  # finished segments keep only what was written
    assert (tmp_path / f"binlog.{nums[-1]}").stat().st_size == 4096  # allocated whole
    st = wal.stats()
    assert (st["oldest_index"], st["current_index"], st["max_size"]) == (1, nums[-1], 4096)
    assert st["records_written"] == 150 + 2  # the puts, the opening MARK and HEAD
    assert wal.file_of(jobs[0]) == 1 and wal.file_of(jobs[-1]) == nums[-1]
    assert wal.usage()["disk"] == disk_bytes(tmp_path)
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=4096)
    assert snapshot(store2) == before
    assert wal2.file_of(store2.jobs[jobs[0].id]) == 1
    wal2.close()


def test_a_job_bigger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    store, wal, _ = open_store(tmp_path, segment_size=1024)
    s = store.connect()
    big = store.put(s, 1, 0, 60, b"B" * 5000)
    small = store.put(s, 1, 0, 60, b"s")
    assert wal.file_of(big) != wal.file_of(small)
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=1024)
    assert snapshot(store2) == before
    wal2.close()


# --- damage --------------------------------------------------------------------------------
def write_log(path, n=20, segment_size=1024):
    store, wal, _ = open_store(path, segment_size=segment_size)
    s = store.connect()
    for i in range(n):
        store.put(s, 1, 0, 60, b"job %d" % i + b"." * 40)
    wal.close()
    return segs(path)


def frame_offsets(data: bytes) -> list[int]:
    sizes, _ = F.scan_frames(data)
    return F.offsets(F.HEADER_SIZE, sizes)


def test_corruption_in_the_middle_stops_the_start_naming_file_and_offset(tmp_path):
    names = write_log(tmp_path)
    first = tmp_path / names[0]
    data = bytearray(first.read_bytes())
    at = frame_offsets(bytes(data))[2]
    data[at + F.FRAME_SIZE + 3] ^= 0x55
    first.write_bytes(bytes(data))
    with pytest.raises(binlog.BinlogError) as e:
        open_store(tmp_path)
    msg = str(e.value)
    assert f"{first} is damaged at offset {at}" in msg and binlog.RECOVER_ENV in msg
    assert e.value.exit_code == 1


def test_a_truncated_segment_before_the_last_is_corruption_not_a_torn_tail(tmp_path):
    names = write_log(tmp_path, n=30)
    assert len(names) >= 3
    first = tmp_path / names[0]
    data = first.read_bytes()
    first.write_bytes(data[:frame_offsets(data)[-1] + 5])
    with pytest.raises(binlog.BinlogError, match="damaged at offset"):
        open_store(tmp_path)


def test_recovery_skips_the_damage_saves_it_and_heals_the_log(tmp_path, monkeypatch):
    names = write_log(tmp_path)
    first = tmp_path / names[0]
    data = bytearray(first.read_bytes())
    at = frame_offsets(bytes(data))[2]
    data[at + F.FRAME_SIZE + 3] ^= 0x55
    first.write_bytes(bytes(data))
    monkeypatch.setenv(binlog.RECOVER_ENV, "1")
    store, wal, _ = open_store(tmp_path)
    assert len(store.jobs) == 19  # the damaged put is lost, nothing else
    assert [n for n in os.listdir(tmp_path) if ".damaged-at-" in n] == [f"{names[0]}.damaged-at-{at}"]
    assert names[0] not in segs(tmp_path)  # rewritten into the new segment
    before = snapshot(store)
    wal.close()
    monkeypatch.delenv(binlog.RECOVER_ENV)
    store2, wal2, _ = open_store(tmp_path)
    assert snapshot(store2) == before
    wal2.close()


# --- cut at every byte ----------------------------------------------------------------------
def script(store):
    """A run touching every record kind; yields after each operation (one record each)."""
    s = store.connect()
    store.watch(s, "t1")
    ids = []

    def put(tube, pri, delay, body):
        store.use(s, tube)
        ids.append(store.put(s, pri, delay, 60 + len(ids), body).id)

    for i in range(6):
        put("default" if i % 2 else "t1", 100 - i, 0, b"body-%d-" % i + b"b" * 150)
        yield
    put("t1", 7, 30, b"delayed")
    yield
    store.reserve_job(s, ids[0])
    yield
    store.bury(s, ids[0], 3)
    yield
    store.reserve_job(s, ids[1])
    yield
    store.release(s, ids[1], 9, 15)
    yield
    store.kick_job(ids[1])
    yield
    store.delete(s, ids[2])
    yield
    store.kick_job(ids[0])
    yield
    store.delete(s, ids[6])
    yield
    for i in range(4):
        put("t2", i, 0, b"more %d-" % i + b"m" * 150)
        yield
    store.reserve_job(s, ids[-1])
    yield
    store.delete(s, ids[-1])
    yield


def unfinished(d, used: dict, starts: dict, cut: int) -> None:
    """A segment is linked to the next one (its header's ``next``) when the
    next one becomes cur, whose header was written when it was created: so
    in a log cut before the next one's header, the link is not there yet."""
    for num in sorted(used):
        later = [n for n in sorted(used) if n > num]
        if later and starts[later[0]] + F.HEADER_SIZE > cut and (d / f"binlog.{num}").exists():
            path = d / f"binlog.{num}"
            data = bytearray(path.read_bytes())
            try:
                h = F.read_header(bytes(data))
            except F.FormatError:
                continue  # cut inside its own header
            data[:F.HEADER_SIZE] = F.header(h.num, h.flags, h.prev, 0, h.prev_end)
            path.write_bytes(bytes(data))


def test_replay_of_a_log_cut_at_every_byte_is_a_prefix_of_what_was_committed(tmp_path):
    src = tmp_path / "src"
    store, wal, clock = open_store(src, segment_size=1024)
    marks = [(wal.cur.num, wal.cur.used, snapshot(store), store.next_id)]
    for _ in script(store):
        marks.append((wal.cur.num, wal.cur.used, snapshot(store), store.next_id))
    assert wal.stats()["oldest_index"] == 1 and len(wal.segments) >= 3  # nothing collected
    used = {seg.num: seg.used for seg in wal.segments}
    spares = {seg.num for seg in wal.spares}
    files = {int(n[7:]): (src / n).read_bytes() for n in segs(src)}
    wal.close()
    starts, total = {}, 0
    for num in sorted(used):
        starts[num] = total
        total += used[num]
    ends = [starts[num] + u for num, u, _, _ in marks]
    assert ends == sorted(ends)
    # A record whose last bytes are zeros is whole once its last non-zero byte is
    # there: the zeros after a cut (space allocated, never written) complete it.
    whole = [starts[num] + len(files[num][:u].rstrip(b"\0")) for num, u, _, _ in marks]
    clean = {c for w, e in zip(whole, ends, strict=True) for c in range(w, e + 1)}
    clean |= {starts[n] + F.HEADER_SIZE for n in used} | set(starts.values())
    # a header cut after its format-1 part reads as a header whose links are zero
    clean |= {starts[n] + c for n in used for c in range(F.HEADER_V1.size, F.HEADER_SIZE)}
    clean.add(F.HEADER_SIZE + len(F.mark(1)))  # between the opening MARK and HEAD

    for cut in range(total + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        for num, data in files.items():
            if num in spares:
                (d / f"binlog.{num}").write_bytes(data)  # allocated, never written
            elif starts[num] + used[num] <= cut:
                (d / f"binlog.{num}").write_bytes(data[:used[num]])
            elif starts[num] < cut:  # the segment being written: zeros after the cut
                keep = cut - starts[num]
                (d / f"binlog.{num}").write_bytes(data[:keep] + bytes(len(data) - keep))
        unfinished(d, used, starts, cut)
        last = max((w for w in whole if w <= cut), default=whole[0])
        expect = whole.index(last)  # a reserve-job writes nothing: the state before it
        store2, wal2, _ = open_store(d, Clock(clock.now), segment_size=1024)
        assert snapshot(store2) == marks[expect][2], cut
        assert store2.next_id == marks[expect][3], cut
        torn = [n for n in os.listdir(d) if ".torn-at-" in n]
        assert bool(torn) == (cut not in clean), cut
        wal2.close()
        if cut % 5 == 0:  # and again: the cut log is whole now
            store3, wal3, _ = open_store(d, Clock(clock.now), segment_size=1024)
            assert snapshot(store3) == marks[expect][2], cut
            assert [n for n in os.listdir(d) if ".torn-at-" in n] == torn
            wal3.close()
        shutil.rmtree(d)


# --- fsync policy ---------------------------------------------------------------------------
def test_fsync_zero_syncs_every_write_before_returning(tmp_path):
    io = FaultyIO()
    store, wal, _ = open_store(tmp_path, fsync_ms=0, io=io)
    s = store.connect()
    base = io.syncs
    for i in range(5):
        store.put(s, 1, 0, 60, b"x")
        assert io.syncs == base + i + 1
    wal.close()


def test_fsync_ms_syncs_at_most_every_ms_and_after_the_last_write(tmp_path):
    io = FaultyIO()
    store, wal, clock = open_store(tmp_path, fsync_ms=50, io=io, background_sync=False)
    s = store.connect()
    advance(store, clock, 1)  # the start-up sync
    advance(store, clock, 1)
    base = io.syncs
    store.put(s, 1, 0, 60, b"a")  # quiet for a while: synced at the next tick
    advance(store, clock, 0)
    assert io.syncs == base + 1
    for _ in range(10):  # a burst: one more sync, 50 ms after the last one
        store.put(s, 1, 0, 60, b"b")
        advance(store, clock, 0.004)
    assert io.syncs == base + 1
    advance(store, clock, 0.0105)
    assert io.syncs == base + 2
    advance(store, clock, 5)  # nothing written since: no sync
    assert io.syncs == base + 2
    store.put(s, 1, 0, 60, b"c")  # a lone write after a quiet spell is synced within 50 ms
    assert store.sched.next_deadline() <= clock.now + 0.05
    advance(store, clock, 0.05)
    assert io.syncs == base + 3
    wal.close()


class GatedIO(FaultyIO):
    """Background fdatasync waits until the test opens the gate (a slow disk).

    Syncs on the event loop's own thread (a segment rolling over, start-up)
    are not held: only the binlog's sync thread is."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def fdatasync(self, fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            assert self.gate.wait(30)
        super().fdatasync(fd)


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_background_sync_keeps_old_segments_until_their_replacement_is_synced(tmp_path):
    io = GatedIO()
    store, wal, clock = open_store(tmp_path, fsync_ms=50, io=io, segment_size=1024)
    s = store.connect()
    keep = store.put(s, 1, 0, 60, b"k" * 100)
    advance(store, clock, 1)
    io.gate.clear()  # the disk stalls: syncs are asked for but do not finish
    calls = io.syncs
    for _ in range(60):
        store.delete(s, store.put(s, 1, 0, 60, b"x" * 100).id)
        advance(store, clock, 0.06)  # the node keeps serving meanwhile
    assert wal.records_migrated >= 1  # compaction moved the old job on
    doomed = [seg.path for _, seg in wal._doomed]
    assert doomed and all(os.path.exists(p) for p in doomed)
    assert wal.file_of(keep) != 1 and os.path.exists(tmp_path / "binlog.1")
    io.gate.set()
    wait_for(lambda: wal._syncer.done >= wal._syncer.requested, "the stalled sync")
    assert io.syncs > calls
    advance(store, clock, 0.01)
    assert not any(os.path.exists(p) for p in doomed)
    assert wal.usage()["disk"] == disk_bytes(tmp_path)
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now), segment_size=1024)
    assert snapshot(store2) == before
    wal2.close()


def test_never_fsync_never_syncs(tmp_path):
    io = FaultyIO()
    store, wal, clock = open_store(tmp_path, fsync_ms=None, io=io, segment_size=1024)
    s = store.connect()
    for _ in range(100):
        store.delete(s, store.put(s, 1, 0, 60, b"y" * 30).id)
        advance(store, clock, 0.01)
    wal.close()
    assert io.syncs == 0


# --- faults -------------------------------------------------------------------------------------
def put_cmd(commands, session, body: bytes) -> bytes:
    (ev,) = CommandReader().feed(b"put 1 0 60 %d\r\n%s\r\n" % (len(body), body))
    return commands.execute(session, ev)


def test_disk_full_puts_get_out_of_memory_deletes_still_work_and_it_recovers(tmp_path, caplog):
    io = FaultyIO()
    store, wal, clock = open_store(tmp_path, segment_size=4096, io=io)
    commands = Commands(store)
    s = store.connect()
    acked = []
    io.full = True
    with caplog.at_level(logging.ERROR, logger="bsnode"):
        for i in range(200):
            reply = put_cmd(commands, s, b"%05d" % i + b"." * 95)
            if reply == P.OUT_OF_MEMORY:
                break
            acked.append(int(reply.split()[1]))
    assert reply == P.OUT_OF_MEMORY and len(acked) > 10  # the segment's room was used first
    assert "cannot allocate a new segment" in caplog.text and "OUT_OF_MEMORY" in caplog.text
    for jid in acked[:-2]:  # every delete has its room reserved
        assert store.delete(s, jid)
    after_deletes = put_cmd(commands, s, b"fits in the freed room")
    assert after_deletes.startswith(b"INSERTED")
    acked = acked[-2:] + [int(after_deletes.split()[1])]
    io.full = False
    for _ in range(100):
        reply = put_cmd(commands, s, b"z" * 100)
        assert reply.startswith(b"INSERTED")
        acked.append(int(reply.split()[1]))
    before = snapshot(store)
    assert set(before) == set(acked)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now), segment_size=4096)
    assert snapshot(store2) == before
    wal2.close()


def test_failed_writes_refuse_puts_and_retry_deletes_until_they_land(tmp_path, caplog):
    io = FaultyIO()
    store, wal, clock = open_store(tmp_path, io=io)
    s = store.connect()
    keep = store.put(s, 1, 0, 60, b"keep")
    gone = store.put(s, 1, 0, 60, b"gone")
    store.reserve_job(s, keep.id)
    io.broken = True
    with caplog.at_level(logging.ERROR, logger="bsnode"):
        assert store.put(s, 1, 0, 60, b"refused") is None
        assert store.delete(s, gone.id)  # the store deletes; the binlog owes a record
        assert store.bury(s, keep.id, 5) is NOT_LOGGED  # refused: keep stays reserved
    assert "cannot write" in caplog.text
    assert wal.usage()["pending"] == 2
    advance(store, clock, binlog.RETRY_EVERY)
    assert wal.usage()["pending"] == 2  # still broken: kept, not dropped
    io.broken = False
    advance(store, clock, binlog.RETRY_EVERY)
    assert wal.usage()["pending"] == 0
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now))
    assert snapshot(store2) == before
    assert set(store2.jobs) == {keep.id} and store2.jobs[keep.id].state == "ready"
    wal2.close()


# --- the dump tool ---------------------------------------------------------------------------------
def test_dump_prints_every_record_and_flags_damage(tmp_path, capsys):
    store, wal, _ = open_store(tmp_path)
    s = store.connect()
    j = store.put(s, 3, 0, 60, b"hello dump")
    store.reserve_job(s, j.id)
    store.bury(s, j.id, 4)
    store.delete(s, store.put(s, 1, 0, 60, b"bye").id)
    wal.close()
    assert dump_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "header   segment 1" in out
    assert "full     id=1 tube=default pri=3" in out and "body(10)=b'hello dump'" in out
    assert "update   id=1 pri=4 delay=0 state=buried" in out
    assert "delete   id=2" in out and "mark     next_id=1" in out
    path = tmp_path / "binlog.1"
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # in the first FULL record, after the opening MARK and HEAD
    path.write_bytes(bytes(data))
    assert dump_main(["--json", str(path)]) == 1
    items = [i for i in describe(bytes(data))]
    assert [i["kind"] for i in items][:4] == ["header", "mark", "head", "damaged"]


# the console script of this installation (beside its python), not one on PATH
DUMP_SCRIPT = os.path.join(os.path.dirname(sys.executable), "bsnode-dump")


@pytest.mark.parametrize("argv", [
    pytest.param([DUMP_SCRIPT], id="console-script"),
    pytest.param([sys.executable, "-m", "bsnode.binlog.dump"], id="python-m"),
])
def test_the_dump_tool_runs_as_a_command(tmp_path, argv):
    if argv[0] == DUMP_SCRIPT and not os.access(DUMP_SCRIPT, os.X_OK):
        pytest.fail(f"no {DUMP_SCRIPT}: run `pip install -e .` (setup.cfg entry point)")
    store, wal, _ = open_store(tmp_path)
    store.put(store.connect(), 3, 0, 60, b"from the command")
    wal.close()
    out = subprocess.run(argv + [str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "body(16)=b'from the command'" in out.stdout
    usage = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60)
    assert usage.stdout.startswith(f"usage: {'bsnode-dump' if len(argv) == 1 else 'python -m'}")


@pytest.mark.parametrize("payload", [
    msgpack.packb([F.FULL, 9, "t"]),  # too short
    msgpack.packb([F.DELETE, 9]) + msgpack.packb([F.DELETE, 10]),  # two records in one frame
    msgpack.packb([F.UPDATE, 9, 1, 0, 99, 0, 0, 0, 0, 0, 0]),  # no such state
    msgpack.packb([7, 9]),  # no such record
])
def test_a_well_framed_but_malformed_record_is_corruption_named_by_offset(tmp_path, payload):
    write_log(tmp_path, n=3)
    path = tmp_path / "binlog.1"
    data = path.read_bytes()
    _, end = F.scan_frames(data)
    path.write_bytes(data[:end] + F.frame(payload) + data[:end][F.HEADER_SIZE:])
    with pytest.raises(binlog.BinlogError, match=f"binlog.1 is damaged at offset {end} "):
        open_store(tmp_path)


def test_restarts_do_not_pile_up_segments(tmp_path):
    store, wal, _ = open_store(tmp_path, segment_size=1024)
    s = store.connect()
    keep = store.put(s, 1, 0, 60, b"still here")
    wal.close()
    for _ in range(6):
        store, wal, _ = open_store(tmp_path, segment_size=1024)
        assert store.jobs[keep.id].body == b"still here"
        wal.close()
    assert len(segs(tmp_path)) == 2  # the job's segment and the latest start's
    assert store.next_id == keep.id + 1


def test_changes_still_owed_are_written_when_the_node_stops(tmp_path):
    io = FaultyIO()
    store, wal, clock = open_store(tmp_path, io=io)
    s = store.connect()
    gone = store.put(s, 1, 0, 60, b"gone")
    io.broken = True
    assert store.delete(s, gone.id)
    assert wal.usage()["pending"] == 1
    io.broken = False  # the disk is back, but no retry ran before the stop
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now))
    assert gone.id not in store2.jobs
    wal2.close()


def test_records_go_through_a_memory_map_where_the_filesystem_allows(tmp_path):
    store, wal, _ = open_store(tmp_path)
    mapped = filesystem_type(str(tmp_path)) in MAP_FILESYSTEMS
    assert (wal.cur.map is not None) == mapped
    wal.close()


def test_short_writes_are_finished(tmp_path):
    io = FaultyIO()
    io.short = True
    store, wal, clock = open_store(tmp_path, io=io, segment_size=1024)
    s = store.connect()
    for i in range(30):
        j = store.put(s, 1, 0, 60, b"short %d" % i + b"." * 50)
        if i % 3 == 0:
            store.delete(s, j.id)
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, Clock(clock.now), segment_size=1024)
    assert snapshot(store2) == before
    wal2.close()


def test_a_job_bigger_than_a_segment_keeps_the_segments_in_number_order(tmp_path):
    """Replay reads segments by number.  A record bigger than a segment used
    to get a new segment placed before the spares already allocated, which
    have lower numbers: the log was then written 6, 9, 7, 8, ... and a job
    put in 9 and deleted in 7 came back after a restart (found while
    checking issue 19's segment links)."""
    store, wal, _ = open_store(tmp_path, segment_size=1024)
    s = store.connect()
    for _ in range(60):  # enough live jobs that spares are allocated for their deletes
        store.put(s, 1, 0, 60, b"s" * 20)
    assert wal.spares
    big = store.put(s, 1, 0, 60, b"B" * 3000).id
    home = wal.cur.num
    while wal.cur.num == home:
        store.put(s, 1, 0, 60, b"t" * 20)
    store.delete(s, big)
    nums = [seg.num for seg in wal.segments + wal.spares]
    assert nums == sorted(nums)
    want = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=1024)
    try:
        assert big not in store2.jobs
        assert snapshot(store2) == want
    finally:
        wal2.close()


def test_restarts_and_crashes_under_compaction_are_never_refused(tmp_path):
    """The segment links (issue 19, case 6) raise no false alarm: rounds of
    random puts and deletes in 1 KiB segments (compaction moving jobs and
    removing segments all along), each ended by a clean stop or by a crash
    (the files copied as they are, as a kill -9 leaves them); every restart
    starts, with exactly the jobs that were there."""
    import random
    import shutil

    rng = random.Random(7)
    d = tmp_path / "log"
    clock = Clock()
    store, wal, _ = open_store(d, clock, segment_size=1024)
    migrated = 0
    for n in range(40):
        s = store.connect()
        for _ in range(rng.randint(0, 400)):
            ready = [j.id for j in store.jobs.values() if j.state == "ready"]
            if rng.random() < 0.5 or not ready:
                store.put(s, 1, 0, 60, b"x" * rng.choice([10, 50, 200, 1500]))
            else:
                store.delete(s, rng.choice(ready))
        migrated += wal.stats()["records_migrated"]
        want = snapshot(store)
        if rng.random() < 0.6:  # a crash: the files as they are, then the process gone
            crashed = tmp_path / f"crash{n}"
            crashed.mkdir()
            for name in segs(d):
                shutil.copyfile(d / name, crashed / name)
            wal.close()
            shutil.rmtree(d)
            crashed.rename(d)
        else:
            wal.close()
        store, wal, _ = open_store(d, clock, segment_size=1024)
        assert snapshot(store) == want, n
    wal.close()
    assert migrated > 500  # compaction was at work throughout
