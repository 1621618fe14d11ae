"""bsclient.tls on its own: the idle check against a server that does send
TLS 1.3 session tickets (bsnode does not, other TLS servers do), and the
sentences ``explain`` gives."""

from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest
from bsclient import tls
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
