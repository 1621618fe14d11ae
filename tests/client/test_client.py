"""bsclient.Client against real servers: beanstalkd 1.12 and bsnode.

Every test runs twice through the ``server`` fixture, so the client suite
doubles as a check that bsnode answers as beanstalkd does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from bsclient import (
    BadFormatError,
    Client,
    ConnectionLostError,
    DeadlineSoonError,
    DrainingError,
    ExpectedCrlfError,
    Job,
    JobTooBigError,
    NotFoundError,
    NotIgnoredError,
    TimedOutError,
    UnknownCommandError,
)
from bsclient.client import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL
from servers import HAVE_BEANSTALKD, free_port, start, start_bsnode

pytestmark = pytest.mark.integration
KINDS = ["beanstalkd", "bsnode"]
POLL_DEADLINE = 10.0


@pytest.fixture
def client(server):
    with Client(server.address) as c:
        yield c


def kind_param(kind):
    if kind == "beanstalkd" and not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    return kind


def test_put_reserve_delete_roundtrip(client):
    job_id = client.put(b"hello")
    assert isinstance(job_id, int) and job_id > 0
    job = client.reserve(timeout=0)
    assert job == Job(job_id, b"hello", client.name)
    assert job.handle == f"{client.name}/{job_id}"
    client.delete(job)
    with pytest.raises(NotFoundError):
        client.peek(job_id)


def test_bodies_are_bytes_exactly(client):
    bodies = [b"", b"a\r\nb", bytes(range(256)), b"x" * 60000]
    ids = [client.put(b) for b in bodies]
    for job_id, body in zip(ids, bodies, strict=True):
        job = client.reserve(timeout=0)
        assert (job.id, job.body) == (job_id, body)
        client.delete(job.id)


def test_encoding_gives_str_bodies(server):
    with Client(server.address, encoding="utf-8") as c:
        c.put("héllo")
        job = c.reserve(timeout=0)
        assert job.body == "héllo"
        assert c.peek(job).body == "héllo"


def test_put_arguments_reach_the_server(client):
    job_id = client.put(b"x", priority=7, delay=0, ttr=42)
    stats = client.stats_job(job_id)
    assert stats["id"] == job_id and stats["pri"] == 7 and stats["ttr"] == 42
    assert stats["tube"] == "default" and stats["state"] == "ready"
    delayed = client.put(b"y", delay=100)
    assert client.stats_job(delayed)["state"] == "delayed"
    assert client.put(b"z", ttr=0) and client.stats_job(client.put(b"z", ttr=0))["ttr"] == 1


def test_priority_order_within_a_server(client):
    client.put(b"low", priority=2000)
    client.put(b"high", priority=1)
    client.put(b"mid", priority=1024)
    got = []
    for _ in range(3):
        job = client.reserve(timeout=0)
        got.append(job.body)
        client.delete(job)
    assert got == [b"high", b"mid", b"low"]


def test_use_watch_ignore_are_tracked_and_match_the_server(client):
    assert client.using == "default" and client.watching == ["default"]
    assert client.use("jobs") == "jobs"
    assert client.using == client.list_tube_used() == "jobs"
    assert client.watch("a") == 2
    assert client.watch("b") == 3
    assert client.watch("a") == 3
    assert client.ignore("default") == 2
    # beanstalkd's watch set fills the hole with its last entry: order kept
    assert client.watching == client.list_tubes_watched() == ["b", "a"]
    client.ignore("a")
    with pytest.raises(NotIgnoredError):
        client.ignore("b")
    assert client.watching == client.list_tubes_watched() == ["b"]


def test_use_and_watch_given_to_the_constructor(server):
    with Client(server.address, use="out", watch=["in1", "in2"]) as c:
        assert c.list_tube_used() == "out"
        assert c.list_tubes_watched() == c.watching
        assert sorted(c.watching) == ["in1", "in2"]


def test_reserve_only_from_watched_tubes(client):
    client.use("other")
    client.put(b"elsewhere")
    with pytest.raises(TimedOutError):
        client.reserve(timeout=0)
    client.watch("other")
    assert client.reserve(timeout=0).body == b"elsewhere"


def test_reserve_with_timeout_waits_then_times_out(client):
    started = time.monotonic()
    with pytest.raises(TimedOutError):
        client.reserve(timeout=1)
    assert 0.5 < time.monotonic() - started < 3


def test_blocking_reserve_wakes_up_for_a_put(server):
    with Client(server.address) as consumer, Client(server.address) as producer:
        got = []
        t = threading.Thread(target=lambda: got.append(consumer.reserve(timeout=10)))
        t.start()
        # wait until the consumer is really waiting, then put
        deadline = time.monotonic() + POLL_DEADLINE
        while producer.stats()["current-waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        producer.put(b"wake")
        t.join(10)
        assert [j.body for j in got] == [b"wake"]


def test_release_bury_kick_peek(client):
    a = client.put(b"a")
    job = client.reserve(timeout=0)
    client.release(job, priority=5, delay=100)
    assert client.stats_job(a)["state"] == "delayed"
    assert client.peek_delayed().id == a
    with pytest.raises(NotFoundError):
        client.peek_ready()
    assert client.kick(10) == 1
    assert client.peek_ready().id == a
    job = client.reserve_job(a)
    client.bury(job, priority=3)
    stats = client.stats_job(a)
    assert (stats["state"], stats["pri"], stats["buries"]) == ("buried", 3, 1)
    assert client.peek_buried().body == b"a"
    client.kick_job(a)
    assert client.stats_job(a)["state"] == "ready"
    with pytest.raises(NotFoundError):
        client.peek_buried()


def test_touch_resets_time_left(client):
    client.put(b"t", ttr=100)
    job = client.reserve(timeout=0)
    client.touch(job)
    assert client.stats_job(job)["time-left"] >= 98
    client.release(job)
    with pytest.raises(NotFoundError):
        client.touch(job)  # not reserved any more


def test_not_found_for_every_by_id_command(client):
    missing = 999999
    for call in (client.delete, client.peek, client.kick_job, client.stats_job,
                 client.touch, client.bury, client.release, client.reserve_job):
        with pytest.raises(NotFoundError):
            call(missing)
    with pytest.raises(NotFoundError):
        client.stats_tube("no-such-tube")
    with pytest.raises(NotFoundError):
        client.pause_tube("no-such-tube", 1)


def test_stats_are_parsed_into_typed_values(client):
    client.put(b"s")
    stats = client.stats()
    assert stats["current-jobs-ready"] == 1 and stats["cmd-put"] == 1
    assert isinstance(stats["pid"], int) and isinstance(stats["version"], str)
    assert isinstance(stats["rusage-utime"], float)
    assert stats["draining"] is False
    assert isinstance(stats["id"], str) and isinstance(stats["hostname"], str)
    tube = client.stats_tube("default")
    assert tube["name"] == "default" and tube["current-jobs-ready"] == 1
    assert tube["pause"] == 0


def test_list_tubes(client):
    client.use("listed")
    client.put(b"keep it alive")
    assert set(client.list_tubes()) == {"default", "listed"}


def test_pause_tube_holds_back_reserves(client):
    client.use("p")
    client.watch("p")
    client.put(b"held")
    client.pause_tube("p", 100)
    assert client.stats_tube("p")["pause"] == 100
    with pytest.raises(TimedOutError):
        client.reserve(timeout=0)
    client.pause_tube("p", 0)  # beanstalkd turns 0 into a minimal pause
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        try:
            assert client.reserve(timeout=0).body == b"held"
            break
        except TimedOutError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_deadline_soon(client):
    client.put(b"short", ttr=1)
    job = client.reserve(timeout=0)
    with pytest.raises(DeadlineSoonError):
        client.reserve(timeout=2)
    client.delete(job)


def test_bad_format_and_unknown_command_from_the_server(client):
    with pytest.raises(BadFormatError):
        client.use("-starts-with-dash")
    with pytest.raises(BadFormatError):
        client.execute(b"put 1 2")
    with pytest.raises(UnknownCommandError):
        client.execute(b"frobnicate")
    assert client.put(b"still in step") > 0


def test_expected_crlf(server):
    with Client(server.address) as c:
        with pytest.raises(ExpectedCrlfError):
            c.execute(b"put 0 0 60 1", body=b"abc")
        # the stray CRLF draws one more reply; the client must not read it
        # as the answer to its next command
        job_id = c.put(b"fine")
        assert c.peek(job_id).body == b"fine"


def test_expected_crlf_with_the_stray_reply_late():
    """beanstalkd writes EXPECTED_CRLF and the stray line's UNKNOWN_COMMAND in two
    writes; when the second is late (the server descheduled between them), it is
    not there yet when the next command is sent, so only dropping the connection
    on EXPECTED_CRLF keeps the client in step.  A scripted server holds the stray
    reply back until the next command comes, on the same connection or not."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(POLL_DEADLINE)
    seen: list[bytes] = []

    def serve():
        first, _ = listener.accept()
        with first:
            first.settimeout(POLL_DEADLINE)
            seen.append(read_until(first, b"abc\r\n"))
            first.sendall(b"EXPECTED_CRLF\r\n")
            try:
                late = first.recv(4096)  # the next command, if it comes here
            except OSError:
                late = b""
            if late:
                seen.append(late)
                first.sendall(b"UNKNOWN_COMMAND\r\nINSERTED 1\r\n")
                return
        second, _ = listener.accept()  # the client reconnected
        with second:
            second.settimeout(POLL_DEADLINE)
            seen.append(read_until(second, b"fine\r\n"))
            second.sendall(b"INSERTED 2\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Client(listener.getsockname()) as c:
            with pytest.raises(ExpectedCrlfError):
                c.execute(b"put 0 0 60 1", body=b"abc")
            assert c.put(b"fine") == 2  # on a new connection, not UNKNOWN_COMMAND
        thread.join(POLL_DEADLINE)
        assert len(seen) == 2 and seen[0] == b"put 0 0 60 1\r\nabc\r\n"
        assert seen[1].startswith(b"put ") and seen[1].endswith(b" 4\r\nfine\r\n")
    finally:
        listener.close()


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_tube_names_cannot_inject_commands(client):
    with pytest.raises(ValueError):
        client.use("a\r\nput 0 0 1 1")
    with pytest.raises(TypeError):
        client.put(b"x", priority="1 0 1 1\r\n")


@pytest.mark.parametrize("kind", KINDS)
def test_job_too_big(kind):
    with start(kind_param(kind), "-z", "10") as s, Client(s.address) as c:
        with pytest.raises(JobTooBigError):
            c.put(b"x" * 11)
        assert c.put(b"x" * 10) > 0  # the stream stayed in step


@pytest.mark.parametrize("kind", KINDS)
def test_draining(kind):
    with start(kind_param(kind)) as s, Client(s.address) as c:
        s.signal(signal.SIGUSR1)
        deadline = time.monotonic() + POLL_DEADLINE
        while not c.stats()["draining"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(DrainingError):
            c.put(b"no")


def test_reconnects_after_server_restart_and_replays_tubes():
    # beanstalkd cannot be restarted on a chosen port by the harness; bsnode can
    first = start_bsnode()
    port = first.port
    try:
        c = Client(first.address, use="u", watch=["w1", "w2"])
        first.kill()
        with start_bsnode("-p", str(port)) as second, c:
            assert second.port == port
            # the dead connection is noticed before sending: nothing ambiguous
            job_id = c.put(b"again")
            assert c.list_tube_used() == "u"
            assert c.list_tubes_watched() == c.watching
            assert sorted(c.watching) == ["w1", "w2"]
            assert c.stats_job(job_id)["tube"] == "u"
    finally:
        first.stop()


def test_connection_refused_is_connection_lost_not_sent():
    c = Client(f"127.0.0.1:{free_port()}", lazy=True, connect_timeout=2)
    with pytest.raises(ConnectionLostError) as info:
        c.put(b"x")
    assert info.value.sent is False and not c.connected


def test_threads_each_with_a_client(server):
    n_threads, per_thread = 4, 200
    errors = []

    def work(i):
        try:
            with Client(server.address, use=f"t{i}", watch=f"t{i}") as c:
                ids = {c.put(f"{i}-{k}".encode()) for k in range(per_thread)}
                for _ in range(per_thread):
                    job = c.reserve(timeout=5)
                    assert job.body.startswith(f"{i}-".encode())
                    ids.remove(job.id)
                    c.delete(job)
                assert not ids
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time, gevent
    from bsclient import Client
    addr = sys.argv[1]
    consumer, producer = Client(addr, watch="g"), Client(addr, use="g")
    started = time.monotonic()
    waiter = gevent.spawn(consumer.reserve, 10)
    # if the blocked reserve did not yield, this greenlet would never run
    def produce():
        while producer.stats()["current-waiting"] < 1:
            gevent.sleep(0.01)
        producer.put(b"from another greenlet")
    gevent.spawn(produce).join(10)
    job = waiter.get(timeout=10)
    assert job.body == b"from another greenlet", job
    assert time.monotonic() - started < 5
    print("ok")
""")


def test_works_under_gevent_monkey_patching(server):
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, f"{server.host}:{server.port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_every_connection_has_tcp_keepalive(client):
    client.stats()  # connected
    probe = socket.socket(fileno=os.dup(client.fileno()))  # the same socket, another fd
    try:
        assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
            assert probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == \
                KEEPALIVE_INTERVAL
            assert probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
    finally:
        probe.close()  # the duplicate only
