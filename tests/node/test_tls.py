"""bsnode over TLS, on loopback, with certificates generated for the session.

Clients: bsclient.Client, greenstalk over a socket wrapped by Python's ssl,
and Ruby's own OpenSSL sockets.  Refusals: no client certificate, a client
certificate from another CA, an expired one, a node the client cannot
verify, plain TCP on the TLS port; each is refused with a sentence on both
sides, while a client connected before keeps being served.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import greenstalk
import pytest
from bsclient import Client, ConnectionLostError, UnexpectedReplyError
from bsclient.tls import client_context
from servers import start_bsnode
from tls_helpers import (
    assert_still_serves,
    cert_serial,
    make_certs,
    peer_serial,
    start_tls_node,
    tls_args,
    wait_log,
)

pytestmark = pytest.mark.integration
RUBY = shutil.which("ruby")
COMPAT = Path(__file__).resolve().parents[1] / "compat"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def node(certs):
    with start_tls_node(certs) as server:
        yield server


@pytest.fixture
def good(node, certs):
    """A client connected (and served) before whatever the test does."""
    with Client(node.address, ssl_context=certs.good(), timeout=10) as c:
        c.stats()
        yield c


def test_client_round_trip_over_mutual_tls(node, certs):
    with Client(node.address, ssl_context=certs.good(), use="tls", watch="tls") as c:
        job_id = c.put(b"secret", ttr=30)
        job = c.reserve(timeout=5)
        assert (job.id, job.body) == (job_id, b"secret")
        c.delete(job)
        assert c.stats_tube("tls")["total-jobs"] == 1


def test_an_idle_tls_client_keeps_its_connection(node, certs):
    """The client's idle check (readable = the server hung up) must not take
    TLS housekeeping for a hang-up and reconnect before every command."""
    with Client(node.address, ssl_context=certs.good()) as c:
        first = c.stats()["total-connections"]
        for _ in range(5):
            c.list_tubes()
        assert c.stats()["total-connections"] == first


def test_large_bodies_and_pipelined_replies(node, certs):
    """Bodies bigger than one TLS record (16 KiB) and many replies in one
    read: decrypted bytes left buffered in OpenSSL must still be served."""
    body = bytes(range(256)) * 200  # 51200 bytes: four records
    ctx = certs.good()
    with socket.create_connection(node.address, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"use big\r\n" + b"".join(
            b"put 0 0 60 %d\r\n%s\r\n" % (len(body), body) for _ in range(8)))
        expected = b"USING big\r\n"
        got = b""
        while got.count(b"\r\n") < 9:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got.startswith(expected) and got.count(b"INSERTED") == 8
        ids = [int(line.split()[1]) for line in got.split(b"\r\n") if line.startswith(b"INS")]
    with Client(node.address, ssl_context=ctx) as c:
        for job_id in ids:
            assert c.peek(job_id).body == body
            c.delete(job_id)


def test_greenstalk_over_python_ssl(node, certs):
    raw = socket.create_connection(node.address, timeout=10)
    s = certs.good().wrap_socket(raw, server_hostname="127.0.0.1")
    with greenstalk.Client(s, use="gs", watch="gs") as g:
        job_id = g.put("from greenstalk")
        job = g.reserve(timeout=5)
        assert (job.id, job.body) == (job_id, "from greenstalk")
        g.delete(job)


@pytest.mark.skipif(RUBY is None, reason="ruby is not installed")
def test_ruby_openssl_client(node, certs):
    """A non-Python client: Ruby's own OpenSSL sockets drive a transcript."""
    proc = subprocess.run(
        [RUBY, str(COMPAT / "ruby" / "tls_client.rb"), "127.0.0.1",
         str(node.port), str(certs.ca.cert), str(certs.client.cert), str(certs.client.key)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:4] == ["USING ruby", "INSERTED", "RESERVED hi from ruby",
                                           "DELETED"]


# --- refusals ------------------------------------------------------------------
def test_no_client_certificate_is_refused(node, certs, good):
    mark = len(node.lines)
    with pytest.raises(ConnectionLostError, match="requires a client certificate"):
        with Client(node.address, ssl_context=certs.context()) as c:
            c.stats()
    wait_log(node, r"TLS: refused .*the client sent no certificate", after=mark)
    assert_still_serves(node, certs, good)


def test_client_certificate_from_another_ca_is_refused(node, certs, good):
    mark = len(node.lines)
    with pytest.raises(ConnectionLostError, match="does not trust the CA"):
        with Client(node.address, ssl_context=certs.context(certs.other_client)) as c:
            c.stats()
    wait_log(node, r"TLS: refused .*client certificate not accepted: "
                   r"unable to get local issuer certificate", after=mark)
    assert_still_serves(node, certs, good)


def test_expired_client_certificate_is_refused(node, certs, good):
    mark = len(node.lines)
    with pytest.raises(ConnectionLostError, match="it has expired"):
        with Client(node.address, ssl_context=certs.context(certs.expired_client)) as c:
            c.stats()
    wait_log(node, r"TLS: refused .*client certificate not accepted: "
                   r"certificate has expired", after=mark)
    assert_still_serves(node, certs, good)


def test_client_that_does_not_trust_the_node_says_so(node, certs, good):
    mark = len(node.lines)
    ctx = certs.context(certs.client, ca=certs.other_ca)
    with pytest.raises(ConnectionLostError, match="node's certificate was not accepted"):
        Client(node.address, ssl_context=ctx)
    wait_log(node, r"TLS: refused .*TLS handshake failed: tlsv1 alert unknown ca", after=mark)
    assert_still_serves(node, certs, good)


def test_plain_tcp_on_the_tls_port_is_told_tls_required(node, certs, good):
    mark = len(node.lines)
    with pytest.raises(UnexpectedReplyError, match="serves TLS only"):
        Client(node.address).stats()
    wait_log(node, r"TLS: refused .*plain-text client on a TLS port", after=mark)
    assert_still_serves(node, certs, good)


def test_a_silent_or_stalled_handshake_holds_nobody_else(node, certs, good):
    silent = socket.create_connection(node.address)
    stalled = socket.create_connection(node.address)
    stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    try:
        for _ in range(3):
            with Client(node.address, ssl_context=certs.good(), timeout=5) as c:
                assert c.put(b"x") > 0
        assert_still_serves(node, certs, good)
    finally:
        silent.close()
        stalled.close()


def test_handshake_deadline_closes_a_silent_client(certs):
    # the deadline is HANDSHAKE_TIMEOUT (10 s): wait for the node to close it
    with start_tls_node(certs) as node, socket.create_connection(node.address) as silent:
        silent.settimeout(30)
        assert silent.recv(10) == b""
        wait_log(node, r"TLS: refused .*no TLS handshake within 10 s")


def test_expired_node_certificate_is_refused_by_the_client(certs):
    with start_tls_node(certs, node=certs.expired_node) as node:
        with pytest.raises(ConnectionLostError, match="certificate has expired"):
            Client(node.address, ssl_context=certs.good())
        wait_log(node, r"TLS: refused .*certificate expired")


def test_tls_client_on_a_plain_port_times_out_with_a_hint(bsnode, certs):
    with pytest.raises(ConnectionLostError, match="does the server serve TLS"):
        Client(bsnode.address, ssl_context=certs.good(), connect_timeout=1)


# --- modes -------------------------------------------------------------------------
def test_tls_port_beside_plain_port(certs):
    with start_bsnode(*tls_args(certs), "--tls-port", "0") as node:
        line = wait_log(node, r"serving TLS, client certificates required on 127\.0\.0\.1:\d+")
        tls_port = int(line.rsplit(":", 1)[1])
        with Client(node.address) as plain, \
                Client(("127.0.0.1", tls_port), ssl_context=certs.good()) as secure:
            job_id = plain.put(b"one queue, two doors")
            assert secure.peek(job_id).body == b"one queue, two doors"


def test_tls_without_client_ca_accepts_any_client(certs):
    with start_tls_node(certs, mtls=False) as node:
        with Client(node.address, ssl_context=client_context(str(certs.ca.cert))) as c:
            assert c.put(b"no client certificate needed") > 0


def test_durable_mode_over_tls(certs, tmp_path):
    with start_tls_node(certs, "-b", str(tmp_path), "-f", "0") as node:
        with Client(node.address, ssl_context=certs.good()) as c:
            ids = [c.put(b"synced %d" % i) for i in range(20)]
            assert c.peek(ids[-1]).body == b"synced 19"


def test_bad_certificate_files_stop_the_node_with_a_reason(certs, tmp_path):
    with pytest.raises(RuntimeError, match="cannot load the TLS certificate"):
        start_bsnode("--tls-cert", str(certs.node.cert), "--tls-key", str(certs.client.key))


def test_flags_that_need_each_other(certs):
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key go together"):
        start_bsnode("--tls-cert", str(certs.node.cert))
    with pytest.raises(RuntimeError, match="need --tls-cert and --tls-key"):
        start_bsnode("--tls-client-ca", str(certs.ca.cert))


# --- reload ------------------------------------------------------------------------
def test_sighup_reloads_certificates_without_dropping_connections(certs, tmp_path):
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    shutil.copy(certs.node.cert, cert)
    shutil.copy(certs.node.key, key)
    with start_bsnode("--tls-cert", str(cert), "--tls-key", str(key),
                      "--tls-client-ca", str(certs.ca.cert)) as node:
        old = Client(node.address, ssl_context=certs.good(), use="kept")
        job_id = old.put(b"before reload")
        assert peer_serial(certs.good(), node.address) == cert_serial(certs.node)
        shutil.copy(certs.node2.cert, cert)
        shutil.copy(certs.node2.key, key)
        mark = len(node.lines)
        node.signal(signal.SIGHUP)
        wait_log(node, r"SIGHUP: TLS certificates reloaded", after=mark)
        assert peer_serial(certs.good(), node.address) == cert_serial(certs.node2)
        assert old.peek(job_id).body == b"before reload"  # the old connection lives on
        # a broken file: the node says so and keeps serving the last good certificate
        cert.write_text("not a certificate\n")
        mark = len(node.lines)
        node.signal(signal.SIGHUP)
        wait_log(node, r"SIGHUP: TLS certificates not reloaded, still serving the old ones",
                 after=mark)
        assert peer_serial(certs.good(), node.address) == cert_serial(certs.node2)
        old.close()


# --- ClusterClient over TLS ------------------------------------------------------------
def test_cluster_client_reserves_over_tls_from_every_node(certs):
    """The multiplexed reserve polls the nodes' descriptors; bodies of several
    TLS records each must come whole, with nothing left unseen in OpenSSL."""
    from bsclient import ClusterClient, TimedOutError

    with start_tls_node(certs) as a, start_tls_node(certs) as b:
        nodes = {"node1": f"127.0.0.1:{a.port}", "node2": f"127.0.0.1:{b.port}"}
        cc = ClusterClient(nodes, ssl_context=certs.good(), timeout=10)
        tubes = [f"t{i}" for i in range(6)]
        assert {cc.node_for(t) for t in tubes} == {"node1", "node2"}
        sent = {}
        for i in range(24):
            cc.use(tubes[i % len(tubes)])
            body = bytes([i]) * (20000 + i)  # two TLS records and a bit
            sent[cc.put(body)] = body
        for t in tubes:
            cc.watch(t)
        got = {}
        while len(got) < len(sent):
            job = cc.reserve(timeout=5)
            got[job.handle] = job.body
            cc.delete(job)
        assert got == sent
        with pytest.raises(TimedOutError):
            cc.reserve(timeout=0)
        cc.close()
