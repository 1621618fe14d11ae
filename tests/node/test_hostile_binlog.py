"""Hostile binlog files: damaged, truncated, crafted.  bsnode must never crash
with a traceback, never allocate without bound, and must say what is wrong.

Two levels:

* the binlog module in-process (``binlog.attach`` on a copy of a real log,
  mutated one byte at a time): the only acceptable outcomes are a restore
  whose every job is well formed, or ``BinlogError`` naming the file;
* ``bsnode -b DIR`` on crafted directories: it either starts (a torn tail is
  cut and saved) or exits non-zero with a message naming the file and the
  offset -- and in no case prints a traceback or grows its memory past
  STARTUP_MEMORY.

The real log is written by a real bsnode (``-F``) that is then SIGKILLed,
so its last segment ends in allocated, unused zeros as after a crash.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from bsclient.protocol import U32_MAX, U64_MAX, valid_tube_name
from bsnode import binlog
from bsnode.binlog import format as F
from bsnode.store import Store
from servers import bsnode_command, start_bsnode
from test_hostile import command

pytestmark = pytest.mark.integration

STARTUP_DEADLINE = 20.0
STARTUP_MEMORY = 200 * 1024  # KiB of peak RSS a node may use to refuse or read a tiny log
# values a mutated byte takes: nil, false, float64, int8, fixstr, fixarray(1),
# uint64, bin32, array16, a negative fixint, and plain bytes
MUTANTS = (0xC0, 0xC2, 0xCB, 0xD0, 0xA1, 0x91, 0xCF, 0xC6, 0xDC, 0xFF, 0x00, 0x7F)


# --- a real log -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_log(tmp_path_factory) -> Path:
    """A binlog with jobs in every state, two tubes, binary bodies, deletes."""
    d = tmp_path_factory.mktemp("real") / "log"
    with start_bsnode("-b", str(d), "-F", "-s", "4096") as node, node.connect() as c:
        for line in (b"use t1", b"put 10 0 60 3\r\none", b"put 1024 0 60 3\r\ntwo",
                     b"put 5000 3600 120 5\r\nlater", b"use t2",
                     b"put 0 0 60 4\r\n\x00\r\n\xff", b"put 7 0 60 0\r\n"):
            assert command(c, line).split()[0] in (b"USING", b"INSERTED")
        for line in (b"watch t1", b"reserve-with-timeout 0", b"release 5 3 0",
                     b"reserve-with-timeout 0", b"bury 5 99", b"delete 2",
                     b"kick-job 3", b"reserve-job 1", b"release 1 11 0"):
            command(c, line)
        node.kill()  # as a crash: the last segment keeps its zero tail
    assert any(n.startswith("binlog.") for n in os.listdir(d))
    return d


def segments(d: Path) -> list[str]:
    return sorted((n for n in os.listdir(d) if n.startswith("binlog.") and n[7:].isdigit()),
                  key=lambda n: int(n[7:]))


def copy_log(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in os.listdir(src):
        if name.startswith("binlog.") and name[7:].isdigit():
            shutil.copyfile(src / name, dst / name)
    return dst


def frames_of(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each valid frame of one segment."""
    sizes, _ = F.scan_frames(data)
    out, pos = [], F.HEADER_SIZE
    for size in sizes:
        out.append((pos, size))
        pos += size
    return out


def sane(job) -> str | None:
    """What is wrong with a restored job, or None."""
    checks = [
        ("id", type(job.id) is int and 0 < job.id <= U64_MAX),
        ("pri", type(job.pri) is int and 0 <= job.pri <= U32_MAX),
        ("delay", type(job.delay) is int and 0 <= job.delay <= U32_MAX),
        ("ttr", type(job.ttr) is int and 1 <= job.ttr <= U32_MAX),
        ("body", type(job.body) is bytes),
        ("tube", valid_tube_name(job.tube.name.encode("utf-8", "replace"))),
        ("counters", all(type(x) is int and 0 <= x <= U32_MAX for x in (
            job.reserves, job.timeouts, job.releases, job.buries, job.kicks))),
        ("created", isinstance(job.created, (int, float))),
    ]
    bad = [name for name, ok in checks if not ok]
    return f"job {job.id!r} has a bad {', '.join(bad)}" if bad else None


def attach_outcome(d: Path) -> str | None:
    """Attach the log in ``d`` to a fresh store: None if fine (refused with a
    message, or restored well-formed jobs); otherwise what went wrong."""
    store = Store()
    try:
        wal = binlog.attach(store, str(d), segment_size=4096, fsync_ms=None, recover=False)
    except binlog.BinlogError as e:
        return None if "binlog" in str(e) and str(d) in str(e) else f"vague refusal: {e}"
    except Exception as e:  # noqa: BLE001 - the point: anything else is a bug
        return f"{type(e).__name__}: {e}"
    try:
        for job in store.jobs.values():
            problem = sane(job)
            if problem:
                return "accepted a malformed record: " + problem
        if store.next_id > U64_MAX + 1 or type(store.next_id) is not int:
            return f"next id {store.next_id!r}"
        return None
    finally:
        wal.close()


# --- in-process: every byte flipped, every payload byte mutated -----------------------
def test_bit_flips_anywhere_are_cut_or_refused_never_a_crash(real_log, tmp_path):
    """One bit flipped at each byte of the written part of the log: the CRC
    catches it; replay cuts a torn tail or refuses with file and offset."""
    problems, tried = [], 0
    for seg in segments(real_log):
        data = (real_log / seg).read_bytes()
        for i in range(F.scan_frames(data)[1]):
            d = copy_log(real_log, tmp_path / f"flip{tried}")
            with open(d / seg, "r+b") as f:
                f.seek(i)
                f.write(bytes([data[i] ^ (1 << (i % 8))]))
            tried += 1
            why = attach_outcome(d)
            if why:
                problems.append(f"{seg} byte {i}: {why}")
            shutil.rmtree(d)
    print(f"{tried} single-bit flips tried")
    assert not problems, "\n".join(problems[:20])


def test_payload_bytes_mutated_under_a_valid_crc_are_refused_never_restored(real_log,
                                                                              tmp_path):
    """The hostile case: a record changed on purpose, its CRC made right
    again.  Each byte of the first records' payloads takes each MUTANTS value."""
    seg = segments(real_log)[0]
    data = (real_log / seg).read_bytes()
    problems, tried = [], 0
    for pos, size in frames_of(data)[:4]:
        payload_at = pos + F.FRAME_SIZE
        for i in range(payload_at, pos + size):
            for value in MUTANTS:
                if data[i] == value:
                    continue
                payload = bytearray(data[payload_at:pos + size])
                payload[i - payload_at] = value
                mutated = data[:pos] + F.frame(bytes(payload)) + data[pos + size:]
                d = copy_log(real_log, tmp_path / f"m{tried}")
                (d / seg).write_bytes(mutated)
                tried += 1
                why = attach_outcome(d)
                if why:
                    problems.append(f"offset {i} := {value:#04x}: {why}")
                shutil.rmtree(d)
    print(f"{tried} mutated records tried, {len(problems)} mishandled")
    assert not problems, f"{len(problems)} of {tried} mishandled:\n" + "\n".join(problems[:15])


# --- bsnode on crafted directories -----------------------------------------------------
def full(jid=1, tube="t", pri=0, delay=0, ttr=60, body=b"x", state=F.STATE_READY,
         deadline_ms=0, created_ms=None, counters=(0, 0, 0, 0, 0)) -> list:
    created = int(time.time() * 1000) if created_ms is None else created_ms
    return [F.FULL, jid, tube, pri, delay, ttr, body, state, deadline_ms, created, *counters]


def rec(obj) -> bytes:
    return F.frame(msgpack.packb(obj))


GOOD = rec(full())


def case(name, payload, expect="refuse"):
    return pytest.param(payload, expect, id=name)


CASES = [
    # framing: huge declared lengths, cut short -> a torn tail, cut off and saved
    case("length-1GiB-declared-3-bytes-there",
         F.FRAME.pack(0xCE, F.MAX_PAYLOAD, 0xCE, 0) + b"abc", "start"),
    case("length-4GiB-declared", F.FRAME.pack(0xCE, 2**32 - 1, 0xCE, 0) + b"abc", "start"),
    case("torn-last-record", GOOD + rec(full(jid=2))[:-3], "start"),
    case("bin32-4GiB-inside-a-frame",
         F.frame(b"\x9f\x01\x01\xa1t\x00\x00\x3c\xc6\xff\xff\xff\xf0")),
    case("array32-4G-elements", F.frame(b"\xdd\xff\xff\xff\xff")),
    case("map-record", rec({"1": 2})),
    case("nested-100000-deep", F.frame(b"\x91" * 100000 + b"\x00")),
    case("unknown-record-kind", GOOD + rec([9, 1])),
    case("id-is-a-string", rec(full(jid="a"))),
    case("delete-of-a-string-id", GOOD + rec([F.DELETE, "1"])),
    case("mark-is-a-string", rec([F.MARK, "x"])),
    case("state-code-99", rec(full(state=99))),
    # wrong types and ranges inside otherwise well-shaped records
    case("pri-is-a-string", rec(full(pri="x"))),
    case("pri-is-a-list", rec(full(pri=[1]))),
    case("created-is-a-string", rec(full(created_ms="x"))),
    case("deadline-is-a-string", rec(full(state=F.STATE_DELAYED, delay=5, deadline_ms="x"))),
    case("update-pri-is-a-string", GOOD + rec([F.UPDATE, 1, "p", 0, 1, 0, 0, 0, 0, 0, 0])),
    case("pri-negative", rec(full(pri=-5))),
    case("pri-over-u32", rec(full(pri=2**32))),
    case("pri-is-a-float", rec(full(pri=1.5))),
    case("ttr-is-nil", rec(full(ttr=None))),
    case("id-is-a-float", rec(full(jid=1.5))),
    case("id-negative", rec(full(jid=-3))),
    case("id-zero", rec(full(jid=0))),
    case("counter-is-a-string", rec(full(counters=("a", 0, 0, 0, 0)))),
    case("tube-name-invalid", rec(full(tube="bad name!"))),
    case("tube-name-700-chars", rec(full(tube="a" * 700))),
    case("body-is-a-string", rec(full(body="text"))),
]


def start_on(d: Path, limit_as: int | None = None) -> tuple[int | None, str, int]:
    """Run ``bsnode -b d`` until it listens or exits: (exit code or None if it
    listened, its stderr, its peak RSS in KiB)."""
    def limit():
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    err_path = d.parent / f"{d.name}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            bsnode_command() + ["-l", "127.0.0.1", "-p", "0", "-b", str(d)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=limit)
    hwm, listening = 0, False
    deadline = time.monotonic() + STARTUP_DEADLINE
    try:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    hwm = max([hwm] + [int(x.split()[1]) for x in f if x.startswith("VmHWM")])
            except (OSError, ValueError):
                pass
            if "listening on" in err_path.read_text():
                listening = True
                break
            if time.monotonic() > deadline:
                raise AssertionError("bsnode neither started nor exited: "
                                     + err_path.read_text())
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return (None if listening else proc.returncode), err_path.read_text(), hwm


@pytest.mark.parametrize("payload,expect", CASES)
def test_bsnode_on_a_crafted_log_starts_or_says_what_is_wrong(tmp_path, payload, expect):
    d = tmp_path / "log"
    d.mkdir()
    (d / "binlog.1").write_bytes(F.header(1) + payload)
    code, err, hwm = start_on(d)
    assert "Traceback" not in err, err
    assert hwm < STARTUP_MEMORY, f"peak RSS {hwm} KiB"
    if expect == "start":
        assert code is None, err
        saved = [n for n in os.listdir(d) if ".torn-at-" in n]
        assert saved and "torn" in err, err
    else:
        assert code not in (None, 0), err
        assert f"{d}/binlog.1" in err and "offset" in err, err


def test_a_huge_sparse_segment_is_refused_without_reading_it(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    with open(d / "binlog.1", "wb") as f:
        f.write(F.header(1))
        f.truncate(4 << 30)  # 4 GiB apparent size, no disk used
    code, err, hwm = start_on(d, limit_as=1536 << 20)
    assert "Traceback" not in err, err
    assert code not in (None, 0) and f"{d}/binlog.1" in err, err
    assert hwm < STARTUP_MEMORY


def test_a_foreign_file_in_the_directory_is_refused_by_name(tmp_path):
    """A beanstalkd binlog (or anything else) named like ours is not cut."""
    d = tmp_path / "log"
    d.mkdir()
    foreign = b"\x07\x00\x00\x00" + os.urandom(1000)
    (d / "binlog.1").write_bytes(foreign)
    code, err, _ = start_on(d)
    assert "Traceback" not in err
    assert code not in (None, 0) and f"{d}/binlog.1" in err
    assert (d / "binlog.1").read_bytes() == foreign


def test_an_unreadable_directory_is_refused_with_the_reason(tmp_path):
    d = tmp_path / "afile"
    d.write_text("not a directory")
    code, err, _ = start_on(d)
    assert "Traceback" not in err, err
    assert code not in (None, 0) and str(d) in err, err


def _refusal(tmp_path, payload: bytes) -> str:
    d = tmp_path / "log"
    d.mkdir()
    (d / "binlog.1").write_bytes(F.header(1) + payload)
    code, err, _ = start_on(d)
    assert code not in (None, 0) and "Traceback" not in err, err
    return err


def test_the_refusal_does_not_claim_records_follow_when_none_do(tmp_path):
    err = _refusal(tmp_path, rec(full(pri=-5)))
    assert "bad pri" in err
    assert "valid records follow" not in err, err


def test_the_refusal_names_the_decoding_error(tmp_path):
    err = _refusal(tmp_path, F.frame(b"\x91" * 100000 + b"\x00"))
    assert re.search(r"does not decode: [^)\s]", err), err


def _refusal_in_process(tmp_path, payload: bytes) -> str:
    d = tmp_path / "log"
    d.mkdir()
    (d / "binlog.1").write_bytes(F.header(1) + payload)
    with pytest.raises(binlog.BinlogError) as e:
        binlog.attach(Store(), str(d), segment_size=4096, fsync_ms=None, recover=False)
    return str(e.value)


@pytest.mark.parametrize("bad", [
    pytest.param(b"\xce\x00\x00\x00\x05garbage", id="damaged-bytes"),
    pytest.param(rec(full(jid=1, pri=-5)), id="crc-valid-bad-field"),
])
def test_the_refusal_says_valid_records_follow_when_they_do(tmp_path, bad):
    err = _refusal_in_process(tmp_path, rec(full(jid=2)) + bad + rec(full(jid=3)))
    assert "valid records follow" in err, err
    assert f"{tmp_path / 'log' / 'binlog.1'}" in err, err


# --- whole segments missing, emptied or cut (issue 19, case 6) ----------------------------
@pytest.fixture(scope="module")
def long_log(tmp_path_factory) -> tuple[Path, dict]:
    """300 jobs put, 100 deleted, in about a dozen 4 KiB segments, left as a
    crash leaves them (the store's binlog is still open); and its jobs."""
    from binlog_harness import open_store, snapshot

    d = tmp_path_factory.mktemp("long") / "log"
    store, wal, _ = open_store(d, segment_size=4096)
    s = store.connect()
    ids = [store.put(s, 100, 0, 60, b"job %03d " % i + b"x" * 92).id for i in range(300)]
    everything = snapshot(store)
    for jid in ids[::3]:
        store.delete(s, jid)
    jobs = snapshot(store)
    copy = copy_log(d, d.parent / "copy")
    wal.close()
    return copy, jobs, everything


def written(d: Path) -> list[str]:
    """The segments holding records (spares, allocated ahead, hold none), in order."""
    out = []
    for name in segments(d):
        data = (d / name).read_bytes()
        hdr = F.read_header(data)
        if F.scan_frames(data, hdr.size)[0]:
            out.append(name)
    return out


def attach_jobs(d: Path, recover: bool = False):
    from binlog_harness import open_store, snapshot

    store, wal, _ = open_store(d, segment_size=4096, recover=recover)
    try:
        return snapshot(store)
    finally:
        wal.close()


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "header-only": lambda p: p.write_bytes(p.read_bytes()[:F.HEADER_SIZE]),
}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_missing_emptied_or_cut_segment_is_refused_with_its_name(long_log, tmp_path,
                                                                   how, where):
    """Before issue 19 a deleted first or middle segment, or a middle one cut
    to its header, started silently with jobs gone.  Now replay follows the
    segments' links (each header names the segment before it and where that
    one ended, and the next one once it is finished): any of them missing,
    emptied or cut is refused, naming the file, unless recovery is asked for,
    which starts without it, says what was lost, and leaves a whole log."""
    src, jobs, everything = long_log
    d = copy_log(src, tmp_path / "log")
    names = written(d)
    assert len(names) >= 10, names
    name = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}[where]
    DAMAGE[how](d / name)
    if where == "last" and how == "header-only":
        # The newest segment cut at a record boundary cannot be told from a
        # crash (its end is where the last write stopped): it starts, with
        # every job the segments before it hold.
        back = attach_jobs(d)
        assert back != jobs and all(back[j] == everything[j] for j in back)
        return
    with pytest.raises(binlog.BinlogError) as e:
        attach_jobs(d)
    assert name in str(e.value) and "--binlog-recover" in str(e.value), str(e.value)
    # salvage: what is left, with a warning; jobs put there are lost, and
    # jobs deleted there come back
    back = attach_jobs(d, recover=True)
    assert back != jobs and all(back[j] == everything[j] for j in back)
    assert attach_jobs(d) == back  # and the log is whole again


def test_links_allow_what_compaction_and_restarts_remove(tmp_path):
    """No false alarm: segments removed by compaction (a HEAD record says so),
    idle segments left by restarts, and spares allocated ahead."""
    from binlog_harness import open_store, snapshot

    d = tmp_path / "log"
    store, wal, _ = open_store(d, segment_size=1024)
    s = store.connect()
    keep = store.put(s, 0, 0, 60, b"kept all along").id
    for i in range(3000):  # compaction moves ``keep`` along and drops the head
        store.delete(s, store.put(s, 1, 0, 60, b"%05d" % i + b"y" * 60).id)
    assert wal.stats()["oldest_index"] > 10
    want = snapshot(store)
    wal.close()
    for _ in range(3):  # restarts with nothing written
        store, wal, _ = open_store(d, segment_size=1024)
        assert snapshot(store) == want and keep in store.jobs
        wal.close()
    # and with the first segment still needed gone, it is refused
    first = segments(d)[0]
    (d / first).unlink()
    with pytest.raises(binlog.BinlogError, match=first.replace(".", r"\.")):
        open_store(d, segment_size=1024)


def test_a_format_1_log_is_still_read(tmp_path):
    """Logs written before the links (format 1: a 16-byte header) still start."""
    d = tmp_path / "log"
    d.mkdir()
    full = [F.FULL, 7, "old", 5, 0, 60, b"from format 1", F.STATE_READY, 0,
            1_700_000_000_000, 0, 0, 0, 0, 0]
    (d / "binlog.3").write_bytes(F.HEADER_V1.pack(F.MAGIC, 1, 0, 3) + F.mark(7)
                                 + F.frame(msgpack.packb(full)))
    store = Store()
    wal = binlog.attach(store, str(d), segment_size=4096, fsync_ms=None)
    try:
        assert store.jobs[7].body == b"from format 1" and store.next_id == 8
    finally:
        wal.close()
    assert F.read_header((d / "binlog.4").read_bytes()).version == F.FORMAT_VERSION


def test_bsnode_refuses_a_log_with_a_segment_missing(long_log, tmp_path):
    src = long_log[0]
    d = copy_log(src, tmp_path / "log")
    names = written(d)
    (d / names[len(names) // 2]).unlink()
    r = subprocess.run(bsnode_command() + ["-l", "127.0.0.1", "-p", "0", "-b", str(d)],
                       capture_output=True, text=True, timeout=STARTUP_DEADLINE)
    assert r.returncode == 1, r.stderr
    assert names[len(names) // 2] in r.stderr and "is missing" in r.stderr
    assert "Traceback" not in r.stderr
