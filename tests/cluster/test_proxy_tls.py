"""TLS and mutual TLS on `bscluster proxy`'s own listener (cluster/proxy_tls.py).

Two bsnodes serve mutual TLS; the proxy talks TLS to them ([tls] in its
config) and serves TLS itself, from bsnode's flags or from the config's
``proxy_tls = true``.  Clients: bsclient over Python's ssl and greenstalk
over an ssl socket.  Refusals as bsnode's: plain text gets TLS_REQUIRED, a
client without a certificate is refused at the handshake, a silent or
stalled handshake holds nobody else.  The handshake deadline and
``ProxyTLS.reload`` are driven in this process, with a short deadline.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import gevent
import greenstalk
import pytest
from bsclient import Client, ConnectionLostError, NotFoundError, UnexpectedReplyError
from bsclient.tls import client_context
from bscluster.config import ClusterConfig, ConfigError, load_config
from bscluster.procs import poll, start_proxy, write_config
from bscluster.proxy_tls import ProxyTLS, TlsPlan, config_values
from bsnode.tls import TLS_REQUIRED, TlsFiles
from clusters import Cluster
from gevent.server import StreamServer
from proxyrun import Raw
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
TUBES = [f"t{i}" for i in range(8)]  # enough tubes to land on both nodes


def tls_table(certs, client_auth: bool = True) -> str:
    return (f'[tls]\nca = "{certs.ca.cert}"\ncert = "{certs.client.cert}"\n'
            f'key = "{certs.client.key}"\nnode_cert = "{certs.node.cert}"\n'
            f'node_key = "{certs.node.key}"\nclient_auth = {str(client_auth).lower()}\n')


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("proxy-tls"))


@pytest.fixture(scope="module")
def nodes(certs):
    a, b = start_tls_node(certs), None
    try:
        b = start_tls_node(certs)
        yield [a, b]
    finally:
        a.stop()
        if b is not None:
            b.stop()


@pytest.fixture(scope="module")
def config(nodes, certs, tmp_path_factory):
    """The proxy's config: the two nodes, and [tls] so it talks TLS to them."""
    path = tmp_path_factory.mktemp("proxy-tls-config") / "proxy.toml"
    return write_config(path, [n.port for n in nodes], tls_table(certs))


@pytest.fixture(scope="module")
def proxy(config, certs):
    """A proxy serving mutual TLS from bsnode's flags."""
    with start_proxy(config, *tls_args(certs)) as server:
        yield server


@pytest.fixture
def good(proxy, certs):
    """A client connected (and served) before whatever the test does."""
    with Client(proxy.address, ssl_context=certs.good(), timeout=10) as c:
        c.stats()
        yield c


def round_trip(address, ctx: ssl.SSLContext) -> None:
    """Put to every tube (both nodes), reserve each job back and delete it."""
    with Client(address, ssl_context=ctx, timeout=10) as c:
        sent = {}
        for i, tube in enumerate(TUBES):
            c.use(tube)
            body = b"%d:" % i + bytes([65 + i]) * (20000 + i)  # two TLS records and a bit
            sent[c.put(body)] = body
        assert {job_id % 1000 for job_id in sent} == {0, 1}  # on node1 and node2
        for tube in TUBES:
            c.watch(tube)
        got = {}
        while len(got) < len(sent):
            job = c.reserve(timeout=5)
            got[job.id] = job.body
            c.delete(job.id)
        assert got == sent


# --- the proxy's own connections to TLS nodes -------------------------------------
def test_a_sidecar_pipelines_over_its_tls_connections_and_survives_a_node_restart(
        certs, tmp_path):
    """A plain sidecar proxy talking TLS to its nodes (the deployment docs/PROXY.md
    suggests): pipelined puts, reserves and deletes of bodies several TLS records
    long take the fast lane and come back whole and in order; a node restarted
    while its connection idles costs the next put nothing; one that hangs is
    answered for within the reply timeout."""
    n1, n2 = start_tls_node(certs), start_tls_node(certs)
    try:
        config = write_config(tmp_path / "proxy.toml", [n1.port, n2.port], tls_table(certs))
        with start_proxy(config) as proxy:
            c = Raw(proxy.address)
            bodies = [b"%02d" % i + bytes([65 + i]) * 40000 for i in range(20)]
            c.send(b"use t1\r\nwatch t1\r\nignore default\r\n")
            assert c.replies(3)[0] == b"USING t1\r\n"
            for _ in range(2):  # the first round opens the connection (slow lane)
                c.send(b"".join(b"put 0 0 60 %d\r\n%s\r\n" % (len(b), b) for b in bodies)
                       + b"reserve-with-timeout 0\r\n" * len(bodies))
                replies = c.replies(2 * len(bodies))
                assert all(r.startswith(b"INSERTED ") for r in replies[:20]), replies[:20]
                got = [r.split(b"\r\n")[1] for r in replies[20:]]
                assert got == bodies  # one tube, equal priorities: in order
                ids = [r.split(b" ")[1] for r in replies[20:]]
                c.send(b"".join(b"delete %s\r\n" % i for i in ids))
                assert c.replies(20) == [b"DELETED\r\n"] * 20
            owner = [n1, n2][int(ids[0]) % 1000]
            port = owner.port
            owner.kill()
            restarted = start_tls_node(certs, "-p", str(port))
            if owner is n1:
                n1 = restarted
            else:
                n2 = restarted
            c.send(b"put 0 0 60 3\r\nnew\r\n")
            reply = c.replies(1)[0]
            assert reply.startswith(b"INSERTED "), reply
            # a TLS node that hangs with puts in flight: answered within the reply
            # timeout (2 s), and the next put fails over to the other node
            hung = [n1, n2][int(reply.split(b" ")[1]) % 1000]
            hung.signal(signal.SIGSTOP)
            try:
                start = time.monotonic()
                c.send(b"put 0 0 60 1\r\na\r\nput 0 0 60 1\r\nb\r\n")
                assert c.replies(2) == [b"INTERNAL_ERROR\r\n"] * 2
                assert time.monotonic() - start < 2.0 + 1.5
                c.send(b"put 0 0 60 5\r\nafter\r\n")
                after = c.replies(1)[0]
                assert after.startswith(b"INSERTED ") and int(after.split(b" ")[1]) % 1000 != \
                    int(reply.split(b" ")[1]) % 1000, after
            finally:
                hung.signal(signal.SIGCONT)
            c.close()
    finally:
        n1.stop()
        n2.stop()


def test_sighup_rotates_the_client_certificate_the_proxy_shows_its_nodes(certs, tmp_path):
    """The nodes move to client certificates of a new CA: the proxy's [tls] cert and
    key are rewritten in place and it gets SIGHUP; node connections it opens from
    then on present the new certificate (the nodes now refuse the old one), and a
    client connected before keeps its node connections."""
    client_ca = tmp_path / "client-ca.pem"  # the CA the nodes require of clients
    shutil.copy(certs.ca.cert, client_ca)
    flags = ("--tls-cert", str(certs.node.cert), "--tls-key", str(certs.node.key),
             "--tls-client-ca", str(client_ca))
    nodes = [start_bsnode(*flags), start_bsnode(*flags)]
    cert, key = tmp_path / "proxy-client.pem", tmp_path / "proxy-client.key"
    shutil.copy(certs.client.cert, cert)
    shutil.copy(certs.client.key, key)
    table = f'[tls]\nca = "{certs.ca.cert}"\ncert = "{cert}"\nkey = "{key}"\n'
    try:
        config = write_config(tmp_path / "proxy.toml", [n.port for n in nodes], table)
        with start_proxy(config) as proxy, \
                Client(proxy.address, timeout=10) as before:
            round_trip(proxy.address, None)
            before_ids = {}
            for tube in (f"kept-{t}" for t in TUBES):  # (connections to both nodes, kept)
                before.use(tube)
                before_ids[before.put(b"before")] = tube
            assert {job_id % 1000 for job_id in before_ids} == {0, 1}
            shutil.copy(certs.other_ca.cert, client_ca)
            for node in nodes:
                mark = len(node.lines)
                node.signal(signal.SIGHUP)
                wait_log(node, r"SIGHUP: TLS certificates reloaded", after=mark)
            shutil.copy(certs.other_client.cert, cert)
            shutil.copy(certs.other_client.key, key)
            mark = len(proxy.lines)
            proxy.signal(signal.SIGHUP)
            wait_log(proxy, r"TLS to the nodes: \[tls\] files read again", after=mark)
            round_trip(proxy.address, None)  # a new client: new node connections
            for job_id, tube in before_ids.items():  # the old client's still serve it
                before.use(tube)
                assert before.peek(job_id).body == b"before"
                before.delete(job_id)
            port = nodes[0].port  # a node restart: the old client's connection to it
            nodes[0].kill()  # reconnects, with the new certificate (no failover)
            nodes[0] = start_bsnode(*flags, "-p", str(port))
            assert before.stats()["current-connections"] >= 1  # (every node, reconnected)
            after = set()
            for tube in before_ids.values():
                before.use(tube)
                after.add(before.put(b"after") % 1000)
            assert after == {0, 1}
    finally:
        for node in nodes:
            node.stop()


# --- serving ---------------------------------------------------------------------
def test_put_reserve_delete_through_a_mutual_tls_proxy_over_two_nodes(proxy, certs):
    round_trip(proxy.address, certs.good())
    wait_log(proxy, r"listening on 127\.0\.0\.1:\d+ \(TLS only, client certificates required")


def test_pipelined_commands_and_greenstalk_over_python_ssl(proxy, certs):
    raw = socket.create_connection(proxy.address, timeout=10)
    sock = certs.good().wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        sock.sendall(b"use piped\r\n" + b"put 0 0 60 3\r\nabc\r\n" * 50)
        want = 1 + 50  # USING, then 50 INSERTED
        lines = b""
        while lines.count(b"\r\n") < want:
            lines += sock.recv(65536)
        assert lines.startswith(b"USING piped\r\n")
        assert lines.count(b"INSERTED ") == 50
        ids = [line.split()[1] for line in lines.split(b"\r\n") if line.startswith(b"INSERTED")]
        sock.sendall(b"".join(b"delete %s\r\n" % i for i in ids))
        replies = b""
        while replies.count(b"\r\n") < 50:
            replies += sock.recv(65536)
        assert replies == b"DELETED\r\n" * 50
    finally:
        sock.close()
    raw = socket.create_connection(proxy.address, timeout=10)
    with greenstalk.Client(certs.good().wrap_socket(raw, server_hostname="127.0.0.1"),
                           use="g", watch="g") as g:
        job_id = g.put("via greenstalk")
        job = g.reserve(timeout=5)
        assert (job.id, job.body) == (job_id, "via greenstalk")
        g.delete(job)


def _waiting(c: Client) -> int:
    return c.stats()["current-waiting"]  # the proxy's own clients (docs/PROXY.md)


def _ready(c: Client):
    try:
        return c.peek_ready()
    except NotFoundError:
        return None


def test_a_waiting_reserve_and_a_hang_up_while_waiting(proxy, certs, good):
    """While a reserve waits, the proxy's watcher reads the TLS socket: a job put
    meanwhile is delivered, and a hang-up ends the wait and releases held jobs."""
    ctx = certs.good()
    good.use("waits")
    got = []
    with Client(proxy.address, ssl_context=ctx, watch="waits", timeout=15) as worker:
        t = threading.Thread(target=lambda: got.append(worker.reserve(timeout=10)))
        t.start()
        poll(lambda: _waiting(good) >= 1, what="the worker to wait")
        job_id = good.put(b"put while it waited")
        t.join(10)
        assert got and (got[0].id, got[0].body) == (job_id, b"put while it waited")
        worker.delete(job_id)
    held_id = good.put(b"held, then the client hangs up")
    raw = socket.create_connection(proxy.address, timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(b"watch waits\r\nreserve-with-timeout 5\r\n")
    data = b""
    while not data.endswith(b"\r\n") or b"RESERVED" not in data:
        data += sock.recv(65536)
    assert b"RESERVED %d " % held_id in data
    sock.sendall(b"reserve\r\n")
    poll(lambda: _waiting(good) >= 1, what="the raw client to wait")
    sock.close()
    assert poll(lambda: _ready(good), what="the held job to be released").id == held_id
    good.delete(held_id)


class _BioClient:
    """A TLS client over a raw socket through memory BIOs, so the test decides
    how its records reach the proxy (here: cut into small pieces)."""

    def __init__(self, ctx: ssl.SSLContext, address) -> None:
        self.raw = socket.create_connection(address, timeout=10)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self.out.read())
                self._take()
        self.raw.sendall(self.out.read())

    def _take(self) -> None:
        data = self.raw.recv(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        self.inc.write(data)

    def send_in_pieces(self, data: bytes, piece: int = 97) -> None:
        self.tls.write(data)
        wire = self.out.read()
        for i in range(0, len(wire), piece):
            self.raw.sendall(wire[i:i + piece])
            time.sleep(0.001)  # so the pieces reach the proxy in separate reads

    def read_lines(self, count: int) -> bytes:
        got = b""
        while got.count(b"\r\n") < count:
            try:
                got += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._take()
        return got

    def close(self) -> None:
        self.raw.close()


def test_records_that_arrive_in_pieces(proxy, certs):
    """Half a TLS record is no command yet, and no end of stream either."""
    client = _BioClient(certs.good(), proxy.address)
    try:
        body = b"p" * 5000
        client.send_in_pieces(b"use pieces\r\nput 0 0 60 %d\r\n%s\r\n" % (len(body), body))
        lines = client.read_lines(2)
        assert lines.startswith(b"USING pieces\r\nINSERTED ")
        job_id = int(lines.split(b"INSERTED ")[1].split(b"\r\n")[0])
        client.send_in_pieces(b"delete %d\r\n" % job_id)
        assert client.read_lines(1) == b"DELETED\r\n"
    finally:
        client.close()


def test_a_slow_reader_gets_every_reply_whole(proxy, certs, good):
    """Replies larger than the socket takes at once wait for the client (TLS writes
    that would block are retried when writable, not taken for a hang-up)."""
    count, body = 90, bytes(range(256)) * 234  # 59904 bytes each: 5.4 MB, more than
    # the proxy's socket buffer takes (tcp_wmem max: 4 MB) with a 4 KB client window
    good.use("slow-reader")
    ids = [good.put(body) for _ in range(count)]
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    raw.settimeout(20)
    raw.connect(proxy.address)
    sock = certs.good().wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        sock.sendall(b"watch slow-reader\r\n" + b"reserve-with-timeout 5\r\n" * count)
        poll(lambda: good.stats()["current-jobs-reserved"] >= count, what="the reserves")
        data = b""
        while data.count(body) < count:
            chunk = sock.recv(65536)
            assert chunk, "the proxy dropped the slow reader"
            data += chunk
        got = [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"RESERVED")]
        assert sorted(got) == sorted(ids)
    finally:
        sock.close()
    poll(lambda: good.stats()["current-jobs-reserved"] == 0, what="the jobs to be released")
    for job_id in ids:
        good.delete(job_id)


# --- refusals, as bsnode's --------------------------------------------------------
def test_plain_text_is_told_tls_required(proxy, certs, good):
    mark = len(proxy.lines)
    with socket.create_connection(proxy.address, timeout=10) as plain:
        plain.sendall(b"stats\r\n")
        got = b""
        while True:
            data = plain.recv(100)
            if not data:
                break
            got += data
    assert got == TLS_REQUIRED
    wait_log(proxy, r"TLS: refused 127\.0\.0\.1:\d+: plain-text client on a TLS port",
             after=mark)
    with pytest.raises(UnexpectedReplyError, match="serves TLS only"):
        Client(proxy.address).stats()
    assert_still_serves(proxy, certs, good)


def test_mutual_tls_refuses_a_client_without_a_certificate(proxy, certs, good):
    mark = len(proxy.lines)
    with pytest.raises(ConnectionLostError, match="requires a client certificate"):
        with Client(proxy.address, ssl_context=certs.context(), timeout=10) as c:
            c.stats()
    wait_log(proxy, r"TLS: refused .*the client sent no certificate", after=mark)
    mark = len(proxy.lines)
    with pytest.raises(ConnectionLostError, match="does not trust the CA"):
        with Client(proxy.address, ssl_context=certs.context(certs.other_client)) as c:
            c.stats()
    wait_log(proxy, r"TLS: refused .*client certificate not accepted", after=mark)
    assert_still_serves(proxy, certs, good)


def test_a_silent_or_stalled_handshake_holds_nobody_else(proxy, certs, good):
    silent = socket.create_connection(proxy.address)
    stalled = socket.create_connection(proxy.address)
    stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    try:
        for _ in range(3):
            with Client(proxy.address, ssl_context=certs.good(), timeout=5) as c:
                c.use("beside-the-stalled")
                job_id = c.put(b"x")
                c.delete(job_id)
        assert_still_serves(proxy, certs, good)
    finally:
        silent.close()
        stalled.close()


# --- where the settings come from ---------------------------------------------------
def test_proxy_tls_in_the_config_serves_the_nodes_certificate(nodes, certs, tmp_path):
    path = write_config(tmp_path / "p.toml", [n.port for n in nodes],
                        "proxy_tls = true\n" + tls_table(certs))
    config = load_config(path, env={})
    assert config_values(config.tls) == {"tls_cert": str(certs.node.cert),
                                         "tls_key": str(certs.node.key),
                                         "tls_client_ca": str(certs.ca.cert)}
    with start_proxy(path) as proxy:
        round_trip(proxy.address, certs.good())
        with pytest.raises(ConnectionLostError, match="requires a client certificate"):
            with Client(proxy.address, ssl_context=certs.context(), timeout=10) as c:
                c.stats()


def test_up_proxy_serves_tls_from_wanted_json(nodes, certs, tmp_path):
    """`up --proxy` starts `proxy --wanted wanted.json`: proxy_tls travels in it."""
    path = write_config(tmp_path / "p.toml", [n.port for n in nodes],
                        "proxy_tls = true\n" + tls_table(certs, client_auth=False))
    config = load_config(path, env={})
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps(config.to_dict()))
    assert ClusterConfig.from_dict(json.loads(wanted.read_text())).proxy_tls is True
    argv = [sys.executable, "-m", "bscluster", "proxy", "-l", "127.0.0.1:0",
            "--wanted", str(wanted)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    from bscluster.procs import _listening

    with _listening("proxy", proc) as proxy:
        wait_log(proxy, r"listening on 127\.0\.0\.1:\d+ \(TLS only;")
        round_trip(proxy.address, certs.context())  # no client_auth: no certificate needed


def test_flags_win_over_the_config_and_tls_port_keeps_plain_tcp(config, certs):
    with start_proxy(config, *tls_args(certs, mtls=False), "--tls-port", "0") as proxy:
        line = wait_log(proxy, r"serving TLS on 127\.0\.0\.1:\d+ \(--tls-port")
        tls_port = int(line.split("127.0.0.1:")[1].split()[0])
        wait_log(proxy, r"listening on 127\.0\.0\.1:\d+ \(plain TCP;")
        with Client(proxy.address, timeout=10) as plain, \
                Client(("127.0.0.1", tls_port), ssl_context=certs.context(),
                       timeout=10) as secure:
            plain.use("two-doors")
            job_id = plain.put(b"one queue, two doors")
            assert secure.peek(job_id).body == b"one queue, two doors"
            plain.delete(job_id)


def test_proxy_tls_without_node_cert_is_a_config_error(tmp_path, certs):
    path = write_config(tmp_path / "p.toml", [11990, 11991],
                        f'proxy_tls = true\n[tls]\nca = "{certs.ca.cert}"\n')
    with pytest.raises(ConfigError, match="proxy_tls = true .* needs a \\[tls\\] table with "
                                          "node_cert and node_key"):
        load_config(path, env={})
    assert load_config(path, env={"BSCLUSTER_PROXY_TLS": "false"}).proxy_tls is False


def test_bad_files_and_lone_flags_stop_the_proxy_with_a_reason(config, certs):
    with pytest.raises(RuntimeError, match="cannot load the TLS certificate"):
        start_proxy(config, "--tls-cert", str(certs.node.cert), "--tls-key",
                    str(certs.client.key))
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key go together"):
        start_proxy(config, "--tls-cert", str(certs.node.cert))
    with pytest.raises(RuntimeError, match="need --tls-cert and --tls-key"):
        start_proxy(config, "--tls-port", "0")


# --- in this process: the handshake deadline and reload -------------------------------
class _Listener:
    """ProxyTLS on a gevent StreamServer in this process; each secured connection
    gets one line and is closed.  Clients run in gevent's thread pool."""

    def __init__(self, tls: ProxyTLS) -> None:
        self.tls = tls
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.address = self.server.address[:2]

    def _handle(self, sock, address) -> None:
        conn = self.tls.accept(sock, address)
        if conn is not None:
            conn.close()

    def off_loop(self, fn, *args):
        return gevent.get_hub().threadpool.apply(fn, args)

    def close(self) -> None:
        self.server.stop(timeout=1)


def _silent_until_closed(address) -> float:
    start = time.monotonic()
    with socket.create_connection(address, timeout=30) as silent:
        assert silent.recv(10) == b""
    return time.monotonic() - start


def test_handshake_deadline_closes_a_silent_client(certs, caplog):
    tls = ProxyTLS(TlsPlan(TlsFiles(str(certs.node.cert), str(certs.node.key))),
                   handshake_timeout=0.3)
    listener = _Listener(tls)
    try:
        waited = listener.off_loop(_silent_until_closed, listener.address)
        assert 0.3 <= waited < 10
        assert listener.off_loop(peer_serial, certs.context(), listener.address) == \
            cert_serial(certs.node)
    finally:
        listener.close()
    assert "no TLS handshake within 0.3 s" in caplog.text


def test_reload_serves_the_new_certificate_and_keeps_it_on_bad_files(certs, tmp_path,
                                                                     caplog):
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    shutil.copy(certs.node.cert, cert)
    shutil.copy(certs.node.key, key)
    tls = ProxyTLS(TlsPlan(TlsFiles(str(cert), str(key), str(certs.ca.cert))))
    listener = _Listener(tls)
    try:
        assert listener.off_loop(peer_serial, certs.good(), listener.address) == \
            cert_serial(certs.node)
        shutil.copy(certs.node2.cert, cert)
        shutil.copy(certs.node2.key, key)
        assert tls.reload() is True
        assert listener.off_loop(peer_serial, certs.good(), listener.address) == \
            cert_serial(certs.node2)
        cert.write_text("not a certificate\n")
        assert tls.reload() is False
        assert "TLS certificates not reloaded, still serving the old ones" in caplog.text
        assert listener.off_loop(peer_serial, certs.good(), listener.address) == \
            cert_serial(certs.node2)
    finally:
        listener.close()


def test_plan_reads_flags_over_the_config(tmp_path, certs):
    path = write_config(tmp_path / "p.toml", [11990, 11991],
                        "proxy_tls = true\n" + tls_table(certs))
    config = load_config(path, env={})
    from bscluster.proxy_tls import plan

    assert plan({}, load_config(write_config(tmp_path / "q.toml", [11990]), env={})) is None
    p = plan({"tls_port": 0}, config)
    assert p == TlsPlan(TlsFiles(str(certs.node.cert), str(certs.node.key),
                                 str(certs.ca.cert)), 0)
    p = plan({"tls_cert": str(certs.node2.cert), "tls_key": str(certs.node2.key)}, config)
    assert (p.files.cert, p.files.client_ca, p.port) == (str(certs.node2.cert),
                                                        str(certs.ca.cert), None)


# --- the user's path: `init --tls`, then `up --proxy --proxy-tls` ---------------------
def test_up_proxy_tls_serves_the_trial_certificates(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2,
                extra_env={"BSCLUSTER_BINLOG": "false"})
    port = c.base_port + 2  # free_base_port keeps two ports spare above the nodes
    try:
        c.run("init", "--tls", "--nodes", "2", "--base-port", str(c.base_port),
              "--data-dir", str(c.data_dir), check=True)
        c.start_foreground("--proxy", f"127.0.0.1:{port}", "--proxy-tls")
        d = tmp_path / "tls"
        ctx = client_context(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))

        def served():
            try:
                with Client(("127.0.0.1", port), ssl_context=ctx, timeout=5) as client:
                    return client.put(b"through a TLS proxy")
            except (OSError, ConnectionLostError):
                return None

        job_id = poll(served, 30, what="the proxy to take a put over TLS")
        poll(lambda: "(bscluster proxy, TLS)" in c.output(), what="the banner")
        with Client(("127.0.0.1", port), ssl_context=ctx, timeout=5) as client:
            assert client.peek(job_id).body == b"through a TLS proxy"
            client.delete(job_id)
        with pytest.raises(UnexpectedReplyError, match="serves TLS only"):
            Client(("127.0.0.1", port)).stats()
        with pytest.raises(ConnectionLostError, match="requires a client certificate"):
            with Client(("127.0.0.1", port), ssl_context=client_context(str(d / "ca.pem")),
                        timeout=5) as client:
                client.stats()
    finally:
        c.cleanup()


def test_sighup_reloads_the_listeners_certificate_and_keeps_connections(certs, config, tmp_path):
    """SIGHUP to a running proxy: the node set is re-read and so are the TLS files;
    new handshakes show the new certificate, an old connection carries on."""
    cert, key = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    shutil.copy(certs.node.cert, cert)
    shutil.copy(certs.node.key, key)
    flags = ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(certs.ca.cert))
    with start_proxy(config, *flags) as proxy:
        old = Client(proxy.address, ssl_context=certs.good(), timeout=10, use="kept")
        try:
            job_id = old.put(b"before reload")
            assert peer_serial(certs.good(), proxy.address) == cert_serial(certs.node)
            shutil.copy(certs.node2.cert, cert)
            shutil.copy(certs.node2.key, key)
            mark = len(proxy.lines)
            proxy.signal(signal.SIGHUP)
            wait_log(proxy, r"SIGHUP: TLS certificates reloaded", after=mark)
            assert peer_serial(certs.good(), proxy.address) == cert_serial(certs.node2)
            assert old.peek(job_id).body == b"before reload"
        finally:
            old.close()



def test_lone_puts_of_many_clients_share_one_tls_connection_to_their_node(certs, tmp_path):
    """A plain sidecar's clients that wait for each reply: their puts (bodies of two TLS
    records) go on one TLS connection to the node, opened once (docs/PROXY.md, "Shared
    put connections")."""
    n1 = start_tls_node(certs)
    try:
        config = write_config(tmp_path / "proxy.toml", [n1.port], tls_table(certs))
        with start_proxy(config) as proxy:
            def lone_put(c: Raw, body: bytes) -> bytes:
                c.send(b"put 0 0 60 %d\r\n%s\r\n" % (len(body), body))
                return c.replies(1)[0]

            first = Raw(proxy.address)
            try:  # its first put opens the shared connection, the others take it
                for _ in range(3):
                    assert lone_put(first, b"warm").startswith(b"INSERTED ")
            finally:
                first.close()
            with Client(n1.address, ssl_context=certs.good(), timeout=10) as direct:
                before = int(direct.stats()["total-connections"])
                for i in range(10):
                    c = Raw(proxy.address)
                    try:
                        assert lone_put(c, b"%d" % i * 20000).startswith(b"INSERTED ")
                    finally:
                        c.close()
                assert int(direct.stats()["total-connections"]) == before
                assert int(direct.stats_tube("default")["current-jobs-ready"]) == 13
    finally:
        n1.stop()
