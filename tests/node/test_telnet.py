"""A person at telnet: one line at a time, reading the answer after each.

Every test runs against /usr/bin/beanstalkd and against bsnode (the
``server`` fixture), so what a newcomer types behaves the same on both.
Lines end in CRLF, as telnet sends them.  ``Wire`` is a raw socket plus the
client-side reply framer; test_node_robustness.py uses it too.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from bsclient.protocol import ReplyReader

pytestmark = pytest.mark.integration
REPLY_DEADLINE = 10.0
QUIET = 0.3  # how long "no reply yet" is watched for


class Wire:
    """A raw connection that frames replies as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = ReplyReader()
        self.ready: list[bytes] = []

    @classmethod
    def to(cls, server) -> Wire:
        return cls(server.connect())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once; False on timeout. Raises EOFError at end of stream."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return False
        if not data:
            raise EOFError
        for words, body in self.reader.feed(data):
            raw = b" ".join(words) + b"\r\n"
            self.ready.append(raw if body is None else raw + body + b"\r\n")
        return True

    def reply(self, timeout: float = REPLY_DEADLINE) -> bytes:
        """The next whole reply, as bytes on the wire."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            if not self._fill(deadline):
                raise AssertionError(f"no reply within {timeout:.1f}s")
        return self.ready.pop(0)

    def line(self, text: bytes, timeout: float = REPLY_DEADLINE) -> bytes:
        """Type one line (CRLF added) and read its answer."""
        self.send(text + b"\r\n")
        return self.reply(timeout)

    def quiet(self, wait: float = QUIET) -> None:
        """Nothing arrives for ``wait`` seconds."""
        assert not self.ready
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self._fill(deadline)
            assert not self.ready, self.ready

    def eof(self, timeout: float = REPLY_DEADLINE) -> bool:
        """True when the server closes the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._fill(deadline):
                    return False
        except (EOFError, ConnectionResetError):
            return True

    def close(self) -> None:
        self.sock.close()


def yaml_of(reply: bytes) -> dict[str, str]:
    m = re.fullmatch(rb"OK (\d+)\r\n(---\n.*)\r\n", reply, re.S)
    assert m and int(m.group(1)) == len(m.group(2)), reply
    return dict(line.split(": ", 1) for line in m.group(2).decode()[4:].splitlines())


@pytest.fixture
def typist(server):
    w = Wire.to(server)
    yield w
    w.close()


def type_slowly(w: Wire, text: bytes) -> None:
    """Send one keystroke per packet, as telnet in character mode does."""
    for i in range(len(text)):
        w.send(text[i:i + 1])


def test_newcomer_session(typist):
    w = typist
    w.send(b"put 0 0 60 5\r\n")
    w.quiet()  # the server waits for the body
    w.send(b"hello\r\n")
    assert w.reply() == b"INSERTED 1\r\n"
    assert w.line(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert w.line(b"delete 1") == b"DELETED\r\n"
    stats = yaml_of(w.line(b"stats"))
    assert stats["cmd-put"] == "1"
    assert stats["cmd-delete"] == "1"
    assert stats["current-connections"] == "1"
    assert w.line(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"
    w.send(b"quit\r\n")
    assert w.eof()


def test_typing_a_line_in_pieces(typist):
    w = typist
    w.send(b"use ")
    w.quiet(0.1)
    w.send(b"kitchen")
    w.quiet(0.1)
    w.send(b"\r\n")
    assert w.reply() == b"USING kitchen\r\n"
    type_slowly(w, b"list-tube-used\r\n")
    assert w.reply() == b"USING kitchen\r\n"


def test_put_body_typed_after_a_pause(typist):
    w = typist
    type_slowly(w, b"put 5 0 30 11\r\n")
    w.quiet()
    type_slowly(w, b"hello ")
    w.quiet(0.1)
    type_slowly(w, b"world\r\n")
    assert w.reply() == b"INSERTED 1\r\n"
    assert w.line(b"peek-ready") == b"FOUND 1 11\r\nhello world\r\n"
    job = yaml_of(w.line(b"stats-job 1"))
    assert (job["pri"], job["ttr"], job["state"]) == ("5", "30", "ready")


def test_mistakes_a_person_makes(typist):
    w = typist
    assert w.line(b"hello") == b"UNKNOWN_COMMAND\r\n"
    assert w.line(b"") == b"UNKNOWN_COMMAND\r\n"
    assert w.line(b"PUT 0 0 1 1") == b"UNKNOWN_COMMAND\r\n"
    assert w.line(b"put 0 0 1") == b"BAD_FORMAT\r\n"
    assert w.line(b"delete") == b"UNKNOWN_COMMAND\r\n"
    assert w.line(b"delete x") == b"BAD_FORMAT\r\n"
    assert w.line(b"delete 99") == b"NOT_FOUND\r\n"
    assert w.line(b"use my tube") == b"BAD_FORMAT\r\n"
    assert w.line(b"ignore default") == b"NOT_IGNORED\r\n"
    # a body of the wrong length: the extra bytes are not the trailer
    w.send(b"put 0 0 1 2\r\n")
    w.quiet(0.1)
    w.send(b"abc\r\n")
    assert w.reply() == b"EXPECTED_CRLF\r\n"
    w.quiet(0.1)  # the "\n" left over is the start of the next line
    assert w.line(b"") == b"UNKNOWN_COMMAND\r\n"
    assert w.line(b"list-tube-used") == b"USING default\r\n"


def test_reserve_with_timeout_typed(typist):
    w = typist
    start = time.monotonic()
    assert w.line(b"reserve-with-timeout 1", timeout=10) == b"TIMED_OUT\r\n"
    assert time.monotonic() - start >= 0.9
    assert w.line(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"


def test_two_people_one_waits_for_the_other(server):
    worker, producer = Wire.to(server), Wire.to(server)
    try:
        assert worker.line(b"watch jobs") == b"WATCHING 2\r\n"
        worker.send(b"reserve\r\n")
        worker.quiet()
        assert producer.line(b"use jobs") == b"USING jobs\r\n"
        producer.send(b"put 0 0 60 4\r\n")
        producer.send(b"wash\r\n")
        assert producer.reply() == b"INSERTED 1\r\n"
        assert worker.reply() == b"RESERVED 1 4\r\nwash\r\n"
        assert producer.line(b"delete 1") == b"NOT_FOUND\r\n"  # reserved by worker
        assert worker.line(b"bury 1 10") == b"BURIED\r\n"
        assert producer.line(b"peek-buried") == b"FOUND 1 4\r\nwash\r\n"
        assert producer.line(b"kick 5") == b"KICKED 1\r\n"
        assert worker.line(b"reserve") == b"RESERVED 1 4\r\nwash\r\n"
        assert worker.line(b"release 1 0 0") == b"RELEASED\r\n"
        assert producer.line(b"delete 1") == b"DELETED\r\n"
    finally:
        worker.close()
        producer.close()


def test_lines_sent_together_answered_in_order(typist):
    # a paste of several lines at once
    w = typist
    w.send(b"use a\r\nput 0 0 9 1\r\nx\r\nlist-tube-used\r\npeek-ready\r\nuse b\r\n")
    assert [w.reply() for _ in range(5)] == [
        b"USING a\r\n", b"INSERTED 1\r\n", b"USING a\r\n", b"FOUND 1 1\r\nx\r\n",
        b"USING b\r\n"]
