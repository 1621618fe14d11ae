"""bsclient.tls on its own: the idle check against a server that does send
TLS 1.3 session tickets (bsnode does not, other TLS servers do), the
sentences ``explain`` gives, and ``Client.nowait_io`` over TLS (the proxy's
event-loop calls), against a server thread."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

import pytest
from bsclient import Client, ConnectionLostError, tls
from tls_helpers import make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-client"))


def test_session_tickets_are_not_a_hang_up(certs):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(certs.node.cert), str(certs.node.key))
    server_ctx.num_tickets = 2  # sent right after the handshake, unasked
    listener = socket.create_server(("127.0.0.1", 0))
    close_now = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True):
            close_now.wait(10)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ctx = tls.client_context(str(certs.ca.cert))
    sock = tls.wrap(socket.create_connection(listener.getsockname(), timeout=10), ctx,
                    "127.0.0.1")
    try:
        assert select.select([sock], [], [], 5)[0]  # the tickets make it readable
        assert tls.stale(sock) is False
        assert sock.gettimeout() == 10  # the timeout is put back
        close_now.set()
        t.join(10)
        assert select.select([sock], [], [], 5)[0]
        assert tls.stale(sock) is True  # now the server did hang up
    finally:
        sock.close()
        listener.close()


def test_explain_names_the_cause():
    e = ssl.SSLError(1, "alert")
    e.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert "requires a client certificate" in tls.explain(e)
    e.reason = "WRONG_VERSION_NUMBER"
    assert "plain TCP" in tls.explain(e)
    assert tls.explain(ConnectionResetError("reset")) == "reset"


def test_client_context_names_unreadable_files(tmp_path):
    with pytest.raises(tls.TlsConfigError, match="cannot load TLS files"):
        tls.client_context(str(tmp_path / "nope.pem"))


def _use_server(certs):
    """A TLS server thread answering ``use T`` lines with ``USING T``; its address."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.node.cert), str(certs.node.key))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        listener.close()
        with ctx.wrap_socket(conn, server_side=True) as s, s.makefile("rb") as lines:
            for line in lines:
                s.sendall(b"USING " + line.split(b" ", 1)[1])

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()


@pytest.mark.parametrize("tls_on", [True, False], ids=["tls", "plain"])
def test_nowait_io_never_waits_after_nonblocking_even_after_a_blocking_command(certs, tls_on):
    if tls_on:
        address = _use_server(certs)
        ctx = tls.client_context(str(certs.ca.cert))
    else:  # a plain socket pair stands in for the server
        listener = socket.create_server(("127.0.0.1", 0))
        address, ctx = listener.getsockname(), None

        def serve():
            conn, _ = listener.accept()
            listener.close()
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    conn.sendall(b"USING " + line.split(b" ", 1)[1])

        threading.Thread(target=serve, daemon=True).start()
    with Client(address, ssl_context=ctx, timeout=5) as c:
        recv, send, feed = c.nowait_io()
        c.use("first")  # a blocking command: the socket waits again (up to 5 s)
        c.nonblocking()
        started = time.monotonic()
        with pytest.raises(BlockingIOError):
            recv(100)  # nothing to read: at once, not after the timeout
        assert time.monotonic() - started < 1
        assert send(b"use second\r\n") == len(b"use second\r\n")
        replies: list = []
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            select.select([c.fileno()], [], [], 1)
            try:
                replies += feed(recv(100))
            except BlockingIOError:
                continue  # (TLS: only part of a record yet)
        assert replies == [([b"USING", b"second"], None)]


def test_a_replaced_context_is_for_the_next_connection_the_open_one_keeps_its_own(certs):
    """``Client.ssl_context`` replaced while connected (ClusterClient.use_ssl_context,
    the proxy's SIGHUP): the open plain connection goes on as plain, and the next
    connection starts with a TLS handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    first_bytes: list[bytes] = []

    def serve():
        with listener:
            conn, _ = listener.accept()  # the first connection: plain, answers use
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    conn.sendall(b"USING " + line.split(b" ", 1)[1])
            conn, _ = listener.accept()  # the next: what does it start with?
            with conn:
                conn.settimeout(5)
                first_bytes.append(conn.recv(1))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    c = Client(listener.getsockname(), timeout=5)
    try:
        c.ssl_context = tls.client_context(str(certs.ca.cert))
        assert c.use("still-plain") == "still-plain"
        assert c.still_open()  # (a plain socket's check, not TLS's)
        c.close()
        with pytest.raises(ConnectionLostError):
            c.use("over-tls")
    finally:
        c.close()
    thread.join(10)
    assert first_bytes == [b"\x16"]  # a TLS handshake record
