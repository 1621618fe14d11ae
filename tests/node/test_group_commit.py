"""``-f 0`` under a server: syncs grouped, and no answer before its record is on disk.

A node runs in this process (gevent) with a binlog whose fdatasync is
watched: each sync reads the segment it is about to make durable and, once
it has returned, adds the ids of the jobs in it to ``durable``.  Clients on
many connections put jobs; every INSERTED they receive must name a job
already in ``durable``, and there must be fewer syncs than puts.
"""

from __future__ import annotations

import errno
import os
import socket as pysock
import threading

import gevent
import pytest
from bsnode import binlog
from bsnode.binlog import format as F
from bsnode.binlog.fileio import OsIO
from bsnode.commands import Commands
from bsnode.server import GroupCommit, NodeServer
from bsnode.store import Store
from gevent import socket


@pytest.fixture
def tmp_path(binlog_tmp):
    """Every test here, with its binlog on each filesystem (binlog_tmp in conftest.py)."""
    return binlog_tmp


DEADLINE = 60.0
CLIENTS, PUTS = 20, 10


class WatchedIO(OsIO):
    """fdatasync that records which jobs each sync made durable (and which
    deletes); it can fail on cue, and be held (``gate``) until the test lets
    it go."""

    def __init__(self) -> None:
        self.durable: set[int] = set()
        self.deleted: set[int] = set()
        self.fail_next = 0
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()  # a sync is waiting at the gate
        self.watch_delete: int | None = None
        self.delete_synced = threading.Event()  # a sync covered watch_delete's DELETE

    def fdatasync(self, fd: int) -> None:
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait(DEADLINE)
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        sizes, _ = F.scan_frames(data)
        records = F.decode(data, F.HEADER_SIZE, sizes)
        covered = {rec[1] for rec in records if rec[0] == F.FULL}
        deletes = {rec[1] for rec in records if rec[0] == F.DELETE}
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)
        self.durable |= covered
        self.deleted |= deletes
        if self.watch_delete in deletes:
            self.delete_synced.set()


def wait_set(event: threading.Event) -> None:
    """Wait, without blocking the event loop, for an event another thread sets."""
    assert gevent.get_hub().threadpool.apply(event.wait, (DEADLINE,)), "never set"


class BreakableIO(WatchedIO):
    """Records go through pwrite (no map), which fails while ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def map(self, fd: int, size: int, dirpath: str):
        return None

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self.broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().pwrite(fd, data, offset)


@pytest.fixture
def node(tmp_path, request):
    io = getattr(request, "param", WatchedIO)()
    lst = pysock.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(128)
    store = Store()
    server = NodeServer(lst, store, Commands(store, 65535, 10 << 20))
    wal = binlog.attach(store, str(tmp_path), fsync_ms=0, io=io)
    server.start()
    try:
        yield lst.getsockname()[1], server, io
    finally:
        server.stop()
        wal.close()
        lst.close()


def producer(port: int, io: WatchedIO, puts: int) -> list[int]:
    s = socket.create_connection(("127.0.0.1", port))
    got = []
    try:
        for _ in range(puts):
            s.sendall(b"put 1 0 60 5\r\nhello\r\n")
            line = s.recv(64)
            assert line.startswith(b"INSERTED "), line
            jid = int(line.split()[1])
            assert jid in io.durable, f"job {jid} acknowledged before its record was synced"
            got.append(jid)
    finally:
        s.close()
    return got


def test_answers_wait_for_the_sync_and_one_sync_serves_many(node):
    port, server, io = node
    assert server.group is not None  # -f 0: the server took the syncs over
    with gevent.Timeout(DEADLINE):
        jobs = gevent.joinall([gevent.spawn(producer, port, io, PUTS) for _ in range(CLIENTS)],
                              raise_error=True)
    ids = [jid for g in jobs for jid in g.value]
    assert len(set(ids)) == CLIENTS * PUTS
    assert server.group.syncs < CLIENTS * PUTS / 2, server.group.syncs


def test_a_failed_sync_holds_the_answer_until_a_sync_succeeds(node, caplog):
    port, server, io = node
    io.fail_next = 1
    with gevent.Timeout(DEADLINE):
        (jid,) = producer(port, io, 1)
    assert jid in io.durable
    assert "cannot sync" in caplog.text


class OrderIO(OsIO):
    """Notes each sync and unlink with how many records had been written then."""

    def __init__(self) -> None:
        self.wal = None
        self.events: list[tuple[str, int]] = []

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.events.append(("sync", self.wal.records_written if self.wal else -1))

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.events.append(("unlink", self.wal.records_written))


def test_with_grouped_syncs_compaction_syncs_before_it_unlinks(tmp_path):
    """Compaction removes a segment once the records that replace it are on
    disk; with -f 0 and the server syncing, it must sync them itself first."""
    io = OrderIO()
    store = Store()
    wal = binlog.attach(store, str(tmp_path), segment_size=4096, fsync_ms=0, io=io)
    io.wal = wal
    assert wal.sync_later()
    s = store.connect()
    store.watch(s, "default")
    keep = store.put(s, 1, 0, 60, b"k" * 200)  # one long-lived job: its segment must move
    for _ in range(400):
        job = store.put(s, 1, 0, 60, b"x" * 100)
        store.reserve_job(s, job.id)
        store.delete(s, job.id)
    unlinks = [at for op, at in io.events if op == "unlink"]
    assert unlinks, "compaction never removed a segment"
    synced_at = {at for op, at in io.events if op == "sync"}
    assert all(at in synced_at for at in unlinks), io.events
    assert keep.id in store.jobs
    wal.close()



def test_no_client_sees_a_job_before_its_put_is_synced(node):
    """A worker's reserve that takes a job whose put is still being synced
    is answered only after that sync, as beanstalkd's -f 0 would."""
    port, server, io = node
    writer = socket.create_connection(("127.0.0.1", port))
    worker = socket.create_connection(("127.0.0.1", port))
    try:
        with gevent.Timeout(DEADLINE):
            io.gate.clear()
            writer.sendall(b"put 1 0 60 2\r\nhi\r\n")
            wait_set(io.held)  # the sync for that put is running, held
            (job,) = server.store.jobs.values()
            worker.sendall(b"reserve-with-timeout 0\r\n")
            while job.state != "reserved":  # the node has run the reserve...
                gevent.sleep(0.01)
            worker.setblocking(False)
            with pytest.raises(BlockingIOError):  # ...and holds its answer
                worker.recv(64)
            worker.setblocking(True)
            io.gate.set()
            assert writer.recv(64).startswith(b"INSERTED ")
            assert worker.recv(64).startswith(b"RESERVED ")
    finally:
        io.gate.set()
        writer.close()
        worker.close()


class FakeWal:
    """What GroupCommit uses of a binlog: a record count, a synced mark, an fd."""

    def __init__(self, tmp_path, io) -> None:
        self.io = io
        self.records_written = 0
        self.synced = 0
        self._fd = os.open(tmp_path / "seg", os.O_RDWR | os.O_CREAT)

    def sync_start(self):
        return os.dup(self._fd), self.records_written

    def sync_done(self, upto, err):
        if err is None:
            self.synced = max(self.synced, upto)


class GatedIO(OsIO):
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.held = threading.Event()

    def fdatasync(self, fd: int) -> None:
        self.held.set()
        assert self.gate.wait(DEADLINE)
        super().fdatasync(fd)


def test_a_syncing_greenlet_killed_mid_sync_does_not_strand_the_others(tmp_path):
    io = GatedIO()
    wal = FakeWal(tmp_path, io)
    group = GroupCommit(wal)
    wal.records_written = 1
    first = gevent.spawn(group.wait)  # runs the sync, held at the gate
    with gevent.Timeout(DEADLINE):
        wait_set(io.held)
        wal.records_written = 2
        second = gevent.spawn(group.wait)  # waits for the round in flight
        gevent.sleep(0)
        first.kill()
        io.gate.set()
        second.join()
    assert second.successful() and wal.synced == 2
    os.close(wal._fd)


@pytest.mark.parametrize("node", [BreakableIO], indirect=True)
def test_a_delete_written_by_the_retry_timer_is_synced_without_an_answer(node):
    """A delete whose record could not be written is answered DELETED and
    retried by a timer; no answer waits on that retry, so the clock syncs it."""
    port, server, io = node
    s = socket.create_connection(("127.0.0.1", port))
    try:
        with gevent.Timeout(DEADLINE):
            (jid,) = producer(port, io, 1)
            s.sendall(b"reserve-with-timeout 0\r\n")
            assert s.recv(256).startswith(b"RESERVED %d " % jid)
            io.broken = True
            s.sendall(b"delete %d\r\n" % jid)
            assert s.recv(64) == b"DELETED\r\n"
            assert jid not in io.deleted
            io.watch_delete = jid
            io.broken = False  # the retry (within a second) writes the DELETE, then a sync
            wait_set(io.delete_synced)
    finally:
        s.close()
