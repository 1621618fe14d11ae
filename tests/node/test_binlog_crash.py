"""The binlog with real processes: kill -9 under load, beanstalkd's behaviour, damage, locking.

Every server is started and reaped here (tests/servers.py), on 127.0.0.1
with free ports, with its binlog in tmp_path: a directory on each filesystem
the machine has (ext4, tmpfs, overlayfs; binlog_tmp in conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import pytest
from bsclient import Client, ConnectionLostError, NotFoundError
from bsnode import binlog
from bsnode.binlog import format as F
from servers import HAVE_BEANSTALKD, bsnode_command, start, start_bsnode

pytestmark = pytest.mark.integration


@pytest.fixture
def tmp_path(binlog_tmp):
    return binlog_tmp


WORKERS = 4
LOAD_SECONDS = 1.5
MAX_OPS_PER_WORKER = 20_000


def address(server) -> str:
    return f"{server.host}:{server.port}"


# --- kill -9 under concurrent load ---------------------------------------------------
class Worker(threading.Thread):
    """Puts jobs (some delayed, some then buried, some then deleted), noting every
    reply it got; ``inflight`` is the command whose reply never came."""

    def __init__(self, addr: str, k: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.addr, self.k, self.stop = addr, k, stop
        self.jobs: dict[int, list] = {}  # id -> [body, state] as acknowledged
        self.deleted: set[int] = set()
        self.inflight: tuple | None = None
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.addr, timeout=20, use=f"tube{self.k % 2}",
                        watch=f"tube{self.k % 2}") as c:
                self._load(c)
        except ConnectionLostError:
            pass  # the kill
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _load(self, c: Client) -> None:
        last_ready = None
        for seq in range(MAX_OPS_PER_WORKER):
            if self.stop.is_set():
                return
            body = b"w%d-%d" % (self.k, seq)
            delayed = seq % 5 == 3
            self.inflight = ("put", body)
            jid = c.put(body, priority=seq % 3, delay=3600 if delayed else 0)
            self.jobs[jid] = [body, "delayed" if delayed else "ready"]
            self.acked += 1
            self.inflight = None
            if seq % 5 == 1:
                self.inflight = ("bury", jid)
                c.reserve_job(jid)
                c.bury(jid)
                self.jobs[jid][1] = "buried"
                self.inflight = None
            elif seq % 5 == 2 and last_ready is not None:
                self.inflight = ("delete", last_ready)
                c.delete(last_ready)
                del self.jobs[last_ready]
                self.deleted.add(last_ready)
                self.inflight = None
                last_ready = None
            elif not delayed:
                last_ready = jid


def test_kill_9_under_load_with_fsync_0_loses_no_acknowledged_job(tmp_path):
    d = str(tmp_path / "binlog")
    server = start_bsnode("-b", d, "-f", "0")
    stop = threading.Event()
    workers = [Worker(address(server), k, stop) for k in range(WORKERS)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 30
        while sum(w.acked for w in workers) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(LOAD_SECONDS)
        server.kill()  # SIGKILL while every worker is mid-command
    finally:
        stop.set()
        server.stop()
        for w in workers:
            w.join(30)
    assert not any(w.is_alive() for w in workers)
    for w in workers:
        assert w.error is None, w.error
    assert sum(w.acked for w in workers) >= 200

    with start_bsnode("-b", d) as again, Client(address(again)) as c:
        expected: dict[int, list] = {}
        maybe_bodies, maybe_gone = set(), set()
        deleted = set()
        for w in workers:
            expected.update(w.jobs)
            deleted |= w.deleted
            if w.inflight is not None:
                kind, what = w.inflight
                if kind == "put":
                    maybe_bodies.add(what)
                else:
                    maybe_gone.add(what)
        top = max(list(expected) + list(deleted))
        found = {}
        for jid in range(1, top + WORKERS + 2):
            try:
                found[jid] = (c.peek(jid).body, c.stats_job(jid)["state"])
            except NotFoundError:
                pass
        bodies = [b for b, _ in found.values()]
        assert len(bodies) == len(set(bodies)), "a job came back twice"
        for jid, (body, state) in expected.items():
            if jid in maybe_gone:
                continue
            assert jid in found, f"acknowledged job {jid} lost"
            got_body, got_state = found[jid]
            assert got_body == body
            if state == "buried" or jid not in {w.inflight[1] for w in workers if w.inflight}:
                assert got_state == state, (jid, got_state, state)
        for jid in deleted:
            assert jid not in found, f"deleted job {jid} came back"
        for jid, (body, _) in found.items():
            assert jid in expected or body in maybe_bodies, (jid, body)
        stats = c.stats()
        total = sum(stats[f"current-jobs-{s}"] for s in ("ready", "reserved", "delayed", "buried"))
        assert total == len(found)
        assert c.put(b"after") > top  # ids go on after the highest ever issued


# --- the same sequence against beanstalkd ------------------------------------------
def sequence(c: Client) -> None:
    """Jobs in every state, in three tubes, with every logged kind of change."""
    ids = {}
    for tube, n in (("default", 4), ("alpha", 5), ("beta", 3)):
        c.use(tube)
        c.watch(tube)
        for i in range(n):
            ids[tube, i] = c.put(b"%s-%d" % (tube.encode(), i), priority=10 * i, ttr=30 + i,
                                 delay=600 if i == 2 else 0)
    c.reserve_job(ids["alpha", 0])
    c.bury(ids["alpha", 0], priority=7)
    c.reserve_job(ids["alpha", 1])
    c.bury(ids["alpha", 1], priority=3)
    c.reserve_job(ids["alpha", 3])
    c.release(ids["alpha", 3], priority=99, delay=900)
    c.reserve_job(ids["default", 0])
    c.release(ids["default", 0], priority=5, delay=1200)
    c.reserve_job(ids["default", 1])  # reserved at the crash
    c.delete(ids["beta", 1])
    c.reserve_job(ids["beta", 0])
    c.bury(ids["beta", 0])
    c.kick_job(ids["beta", 0])
    c.kick_job(ids["beta", 2])  # a delayed job kicked
    c.delete(ids["default", 3])
    c.reserve_job(ids["alpha", 4])
    c.bury(ids["alpha", 4])


def state(c: Client, top: int) -> dict:
    out = {}
    for jid in range(1, top + 1):
        try:
            st = c.stats_job(jid)
        except NotFoundError:
            continue
        out[jid] = {k: st[k] for k in ("tube", "state", "pri", "delay", "ttr", "reserves",
                                       "timeouts", "releases", "buries", "kicks")}
        out[jid]["body"] = c.peek(jid).body
        if st["state"] == "delayed":
            out[jid]["time-left"] = st["time-left"] // 10  # both count down the same 600/900 s
    for tube in sorted(c.list_tubes()):
        c.use(tube)
        heads = []
        for peek in (c.peek_ready, c.peek_delayed, c.peek_buried):
            try:
                heads.append(peek().id)
            except NotFoundError:
                heads.append(None)
        out[tube] = heads
        out[tube, "kick"] = c.kick(1)
    out["next"] = c.put(b"next")
    return out


@pytest.mark.differential
@pytest.mark.skipif(not HAVE_BEANSTALKD, reason="/usr/bin/beanstalkd is not installed")
def test_same_sequence_same_state_after_restart_as_beanstalkd(tmp_path):
    results = {}
    for kind in ("beanstalkd", "bsnode"):
        d = str(tmp_path / kind)
        os.mkdir(d)
        with start(kind, "-b", d) as server:
            with Client(address(server)) as c:
                sequence(c)
                top = c.stats()["total-jobs"]
            server.kill()
        with start(kind, "-b", d) as again, Client(address(again)) as c:
            results[kind] = state(c, top)
    for jid, job in results["beanstalkd"].items():
        if isinstance(jid, int) and job["state"] == "buried":
            # beanstalkd's replay buries the job again and counts it again
            # (prot.c: bury_job increments bury_ct also when replaying)
            job["buries"] -= 1
    assert results["bsnode"] == results["beanstalkd"]


# --- damage and locking with a real node ------------------------------------------------
def fill(d: str, n: int = 30) -> list[int]:
    with start_bsnode("-b", d, "-s", "2048") as server, Client(address(server)) as c:
        ids = [c.put(b"job %d" % i + b"." * 40) for i in range(n)]
        server.kill()
    return ids


def run_bsnode(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A bsnode that is expected to exit by itself at start."""
    return subprocess.run(bsnode_command() + ["-l", "127.0.0.1", "-p", "0", *args],
                          capture_output=True, timeout=60, env=env)


def test_a_torn_last_record_is_cut_saved_and_the_node_starts(tmp_path):
    d = str(tmp_path / "binlog")
    ids = fill(d)
    last = max((n for n in os.listdir(d) if re.fullmatch(r"binlog\.\d+", n)),
               key=lambda n: int(n[7:]))
    path = os.path.join(d, last)
    data = open(path, "rb").read()
    sizes, end = F.scan_frames(data)
    torn = F.frame(b"\x93\x03\x07\x07")[:7]  # a write cut short by the crash
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(torn)
    with start_bsnode("-b", d) as again, Client(address(again)) as c:
        assert [c.peek(i).body[:6] for i in (ids[0], ids[-1])] == [b"job 0.", b"job 29"]
        assert any("torn record" in line and f"offset {end}" in line for line in again.lines)
    assert open(f"{path}.torn-at-{end}", "rb").read() == torn


def test_corruption_mid_log_stops_the_node_unless_recovery_is_asked(tmp_path):
    d = str(tmp_path / "binlog")
    fill(d)
    path = os.path.join(d, "binlog.1")
    data = bytearray(open(path, "rb").read())
    sizes, _ = F.scan_frames(bytes(data))
    at = F.offsets(F.HEADER_SIZE, sizes)[3]
    data[at + F.FRAME_SIZE + 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    r = run_bsnode("-b", d)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{path} is damaged at offset {at}" in err and binlog.RECOVER_ENV in err
    env = dict(os.environ, **{binlog.RECOVER_ENV: "1"})
    with start_bsnode("-b", d, env=env) as again, Client(address(again)) as c:
        assert c.stats()["current-jobs-ready"] == 29
    with start_bsnode("-b", d) as healed, Client(address(healed)) as c:
        assert c.stats()["current-jobs-ready"] == 29


def test_one_node_per_directory(tmp_path):
    d = str(tmp_path / "binlog")
    with start_bsnode("-b", d):
        r = run_bsnode("-b", d)
    assert r.returncode == 10
    assert b"in use by another process" in r.stderr


def test_stats_report_the_binlog(tmp_path):
    d = str(tmp_path / "binlog")
    with start_bsnode("-b", d, "-s", "4096") as server, Client(address(server)) as c:
        first = c.put(b"f" * 100)
        for _ in range(100):
            c.put(b"x" * 100)
        st = c.stats()
        assert st["binlog-max-size"] == 4096
        assert st["binlog-oldest-index"] == 1
        assert st["binlog-current-index"] >= 4
        assert st["binlog-records-written"] == 101 + 2  # the puts, the opening MARK and HEAD
        assert c.stats_job(first)["file"] == 1
        assert c.stats_job(c.put(b"last"))["file"] == st["binlog-current-index"]
