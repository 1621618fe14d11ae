"""bsclient.Client against a scripted fake server, and its pure helpers.

The fake server answers whatever a test tells it to, so every reply word
(including OUT_OF_MEMORY and INTERNAL_ERROR, which a healthy server never
sends), silence, split replies and dropped connections can be produced
deterministically.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from bsclient import (
    BadFormatError,
    BeanstalkError,
    BuriedError,
    Client,
    ConnectionLostError,
    DeadlineSoonError,
    DrainingError,
    ExpectedCrlfError,
    InternalError,
    Job,
    JobTooBigError,
    NotFoundError,
    NotIgnoredError,
    OutOfMemoryError,
    ReplyError,
    SocketTimeoutError,
    TimedOutError,
    UnexpectedReplyError,
    UnknownCommandError,
)
from bsclient.client import parse_address
from bsclient.errors import REPLY_ERRORS
from bsclient.flat_yaml import parse_yaml_dict, parse_yaml_list
from bsclient.protocol import ERROR_WORDS

CLOSE = object()  # handler result: drop the connection
SILENT = object()  # handler result: read the command, never answer


class FakeServer:
    """A loopback server whose replies come from ``handler(line, conn_no)``."""

    def __init__(self, handler):
        self.handler = handler
        self.received: list[tuple[int, bytes]] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            self._threads.append(t)
            t.start()
            n += 1

    def _serve(self, conn, n):
        buf = b""
        with conn:
            while True:
                while b"\r\n" not in buf:
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                line, buf = buf.split(b"\r\n", 1)
                if line.startswith(b"put "):
                    size = int(line.split()[-1]) + 2
                    while len(buf) < size:
                        buf += conn.recv(4096)
                    buf = buf[size:]
                self.received.append((n, line))
                reply = self.handler(line, n)
                if reply is CLOSE:
                    return
                if reply is SILENT:
                    continue
                try:
                    conn.sendall(reply)
                except OSError:
                    return

    def close(self):
        self._stop.set()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def always(reply: bytes):
    return lambda line, n: reply


# --- one exception per reply word -------------------------------------------
EXPECTED = {
    "NOT_FOUND": NotFoundError,
    "BURIED": BuriedError,
    "DEADLINE_SOON": DeadlineSoonError,
    "TIMED_OUT": TimedOutError,
    "JOB_TOO_BIG": JobTooBigError,
    "DRAINING": DrainingError,
    "BAD_FORMAT": BadFormatError,
    "UNKNOWN_COMMAND": UnknownCommandError,
    "EXPECTED_CRLF": ExpectedCrlfError,
    "OUT_OF_MEMORY": OutOfMemoryError,
    "INTERNAL_ERROR": InternalError,
    "NOT_IGNORED": NotIgnoredError,
}


def test_every_protocol_error_word_has_its_class():
    assert set(EXPECTED) == set(ERROR_WORDS) == set(REPLY_ERRORS)
    assert len(set(EXPECTED.values())) == len(EXPECTED)


@pytest.mark.parametrize("word", sorted(EXPECTED))
def test_reply_word_raises_its_exception(word):
    with FakeServer(always(word.encode() + b"\r\n")) as srv, Client(srv.address) as c:
        with pytest.raises(EXPECTED[word]) as info:
            c.reserve(timeout=0)
        exc = info.value
        assert type(exc) is EXPECTED[word]
        assert isinstance(exc, ReplyError) and isinstance(exc, BeanstalkError)
        assert exc.word == word
        # an error reply leaves the connection usable, except EXPECTED_CRLF: the
        # server is out of step with us then (see Client._error)
        assert c.connected == (word != "EXPECTED_CRLF")


def test_buried_carries_the_job_id_when_present():
    with FakeServer(always(b"BURIED 17\r\n")) as srv, Client(srv.address) as c:
        with pytest.raises(BuriedError) as info:
            c.put(b"x")
        assert info.value.job_id == 17
    with FakeServer(always(b"BURIED\r\n")) as srv, Client(srv.address) as c:
        with pytest.raises(BuriedError) as info:
            c.release(5)
        assert info.value.job_id is None


def test_no_node_available_names_one_node_or_several_in_plain_words():
    from bsclient.errors import NoNodeAvailableError
    one = NoNodeAvailableError("node2", "cannot connect")
    assert str(one) == "node node2 is not available: cannot connect" and one.node == "node2"
    every = NoNodeAvailableError("node1,node2,node3", "no node could be reached")
    assert str(every) == "nodes node1, node2, node3 are not available: no node could be reached"
    assert every.node == "node1,node2,node3"  # (the attribute keeps its documented form)


def test_unexpected_reply_closes_the_connection():
    with FakeServer(always(b"WAT 1\r\n")) as srv, Client(srv.address) as c:
        with pytest.raises(UnexpectedReplyError):
            c.delete(1)
        assert not c.connected
    with FakeServer(always(b"DELETED\r\n")) as srv, Client(srv.address) as c:
        with pytest.raises(UnexpectedReplyError):
            c.touch(1)  # a reply word that belongs to another command


# --- transport failures ---------------------------------------------------------
def test_socket_timeout_is_wrapped_and_closes():
    with FakeServer(lambda line, n: SILENT) as srv:
        c = Client(srv.address, timeout=0.3)
        with pytest.raises(SocketTimeoutError) as info:
            c.stats()
        assert isinstance(info.value, ConnectionLostError)
        assert isinstance(info.value, TimeoutError)
        assert info.value.sent is True and srv.address in str(info.value)
        assert not c.connected


def test_reserve_with_timeout_extends_the_socket_timeout():
    # the server answers TIMED_OUT only after the client's plain timeout
    def slow(line, n):
        time.sleep(0.6)  # a slow server, on purpose
        return b"TIMED_OUT\r\n"

    with FakeServer(slow) as srv, Client(srv.address, timeout=0.3) as c:
        with pytest.raises(TimedOutError):
            c.reserve(timeout=1)


def test_connection_dropped_mid_command_may_have_run():
    with FakeServer(lambda line, n: CLOSE) as srv, Client(srv.address) as c:
        with pytest.raises(ConnectionLostError) as info:
            c.put(b"x")
        assert info.value.sent is True
        assert not c.connected


def test_stale_connection_is_replaced_before_sending_and_tubes_replayed():
    closed_once = threading.Event()

    def handler(line, n):
        if line.startswith(b"use"):
            return b"USING " + line.split()[1] + b"\r\n"
        if line.startswith((b"watch", b"ignore")):
            return b"WATCHING 1\r\n"
        if n == 0 and line == b"list-tube-used":
            closed_once.set()
            return CLOSE  # server side hangs up while the client is idle
        return b"INSERTED 9\r\n"

    with FakeServer(handler) as srv, Client(srv.address, use="u", watch="w") as c:
        with pytest.raises(ConnectionLostError):
            c.list_tube_used()
        assert closed_once.is_set()
        assert c.put(b"x") == 9
        replayed = [line for conn, line in srv.received if conn == 1]
        assert replayed == [b"use u", b"watch w", b"ignore default", b"put 1024 0 60 1"]


def test_idle_connection_closed_by_server_is_noticed():
    def handler(line, n):
        return b"INSERTED %d\r\n" % (n + 1)

    with FakeServer(handler) as srv, Client(srv.address) as c:
        assert c.put(b"a") == 1
        srv._conns[0].shutdown(socket.SHUT_RDWR)  # the server went away
        assert c.put(b"b") == 2  # reconnected before sending, nothing ambiguous


def test_replies_split_byte_by_byte():
    reply = b"RESERVED 5 7\r\nab\r\ncde\r\n"

    def handler(line, n):
        return SILENT

    with FakeServer(handler) as srv, Client(srv.address) as c:
        result = []
        t = threading.Thread(target=lambda: result.append(c.reserve(timeout=5)))
        t.start()
        deadline = time.monotonic() + 10
        while not srv.received:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(len(reply)):
            srv._conns[0].sendall(reply[i:i + 1])
        t.join(10)
        assert result == [Job(5, b"ab\r\ncde", c.name)]


def test_lazy_client_connects_on_first_command():
    with FakeServer(always(b"USING x\r\n")) as srv:
        c = Client(srv.address, lazy=True)
        assert not c.connected
        c.use("x")
        assert c.connected
        c.close()


# --- pure helpers ------------------------------------------------------------------
def test_parse_yaml_dict_types():
    body = (b'---\ncurrent-jobs-ready: 3\nversion: "1.12"\nrusage-utime: 0.012000\n'
            b"draining: false\nid: 0123456789\nhostname: 123\nos: #1 SMP x: y\n"
            b"pause-time-left: -1\n")
    stats = parse_yaml_dict(body, frozenset({"id", "hostname", "os", "version"}))
    assert stats == {
        "current-jobs-ready": 3, "version": "1.12", "rusage-utime": 0.012,
        "draining": False, "id": "0123456789", "hostname": "123", "os": "#1 SMP x: y",
        "pause-time-left": -1,
    }


def test_parse_yaml_tube_named_like_a_number_stays_a_string():
    assert parse_yaml_dict(b"---\nname: 42\n", frozenset({"name"}))["name"] == "42"
    assert parse_yaml_list(b"---\n- default\n- 42\n") == ["default", "42"]


def test_parse_address_forms():
    assert parse_address("10.0.0.1:11301") == ("10.0.0.1", 11301)
    assert parse_address("example") == ("example", 11300)
    assert parse_address(("h", "5")) == ("h", 5)
    assert parse_address("unix:/tmp/bs.sock") == "/tmp/bs.sock"
    assert parse_address("[::1]:11300") == ("::1", 11300)
    assert parse_address("::1") == ("::1", 11300)  # a bare IPv6 literal has no port
    assert parse_address("h:1") == ("h", 1)
    assert parse_address("h:65535") == ("h", 65535)


@pytest.mark.parametrize("bad", ["h:99999", "h:65536", "h:0", "h:-1", "h:", "h:port", "h:1.5",
                                 "h:+5", "[::1]:70000", ("h", 70000), ("h", 0), ("h", "x"),
                                 ("h", True)])
def test_parse_address_refuses_ports_outside_1_to_65535(bad):
    with pytest.raises(ValueError, match="from 1 to 65535"):
        parse_address(bad)
    with pytest.raises(ValueError):
        Client(bad, lazy=True)


def test_job_handle():
    assert Job(17, b"", "node2").handle == "node2/17"


def test_lazy_client_applies_initial_tubes_on_connect():
    def handler(line, n):
        if line.startswith(b"use"):
            return b"USING " + line.split()[1] + b"\r\n"
        if line.startswith((b"watch", b"ignore")):
            return b"WATCHING 1\r\n"
        return b"INSERTED 1\r\n"

    with FakeServer(handler) as srv:
        c = Client(srv.address, lazy=True, use="u", watch=["a", "b"])
        assert not c.connected and c.using == "u"
        c.put(b"x")
        assert [line for _, line in srv.received] == [
            b"use u", b"watch a", b"watch b", b"ignore default", b"put 1024 0 60 1"]
        assert c.watching == ["b", "a"]  # beanstalkd's order after ignoring default
        c.close()


def test_every_public_name_of_the_package_resolves_and_is_listed():
    # (bsclient imports its names on first use: a wrong entry in its table fails here)
    import importlib

    import bsclient

    for name in bsclient.__all__:
        module = importlib.import_module(f"bsclient.{bsclient._WHERE[name]}")
        assert getattr(bsclient, name) is getattr(module, name)
    assert set(bsclient.__all__) <= set(dir(bsclient))
    with pytest.raises(AttributeError):
        bsclient.NoSuchName  # noqa: B018
