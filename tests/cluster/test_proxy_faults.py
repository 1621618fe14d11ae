"""The proxy under faults: a node killed or hung, the proxy killed, slow and idle clients.

What each test holds is what docs/PROXY.md ("When a node fails", "When the
proxy dies") promises.  Every wait is bounded; loads are small.
"""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time

import greenstalk
import pytest
from bsclient import Ring
from bscluster.proxy_ids import decode
from proxyrun import ProxiedCluster, start_proxy, write_config
from servers import free_port, start_bsnode

pytestmark = pytest.mark.integration

OP_TIMEOUT = 2.0  # the ClusterClient's default reply timeout, which the proxy uses


def _tube_on(node: str, nodes: int = 3) -> str:
    ring = Ring({f"node{i}": 1 for i in range(1, nodes + 1)})
    return next(f"t{i}" for i in range(1000) if ring.node_for(f"t{i}") == node)


def test_kill_9_a_node_under_load_loses_no_acknowledged_job(tmp_path):
    """Producers and a consumer through the proxy; node2 (binlog on) is killed
    with SIGKILL mid-stream and restarted on its port: every put the proxy
    acknowledged with INSERTED is consumed (at-least-once)."""
    dirs = [tmp_path / f"n{i}" for i in range(1, 4)]
    nodes = [start_bsnode("-b", str(d), "-f", "0") for d in dirs]
    proxy = None
    try:
        config = write_config(tmp_path / "p.toml", [n.port for n in nodes])
        proxy = start_proxy(config)
        tubes = [_tube_on(f"node{i}") for i in (1, 2, 3)]
        acked: set[str] = set()
        got: set[str] = set()
        stop = threading.Event()

        def produce(k: int) -> None:
            with greenstalk.Client(("127.0.0.1", proxy.port)) as c:
                for i in range(400):
                    tube = tubes[i % 3]
                    c.use(tube)
                    body = f"{k}-{i}"
                    try:
                        c.put(body)
                        acked.add(body)
                    except greenstalk.Error:
                        pass  # not acknowledged (the node died under it)

        def consume() -> None:
            with greenstalk.Client(("127.0.0.1", proxy.port), watch=tubes) as c:
                while not stop.is_set():
                    try:
                        job = c.reserve(timeout=1)
                    except greenstalk.TimedOutError:
                        continue
                    got.add(job.body)
                    try:
                        c.delete(job)
                    except greenstalk.Error:
                        pass  # its node died: it comes back and is seen again

        workers = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        consumer = threading.Thread(target=consume)
        for t in workers + [consumer]:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes[1].kill()  # SIGKILL
        nodes[1] = start_bsnode("-b", str(dirs[1]), "-f", "0", "-p", str(nodes[1].port))
        for t in workers:
            t.join(60)
        deadline = time.monotonic() + 40
        while not acked <= got and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        consumer.join(10)
        assert len(acked) > 400, "too few puts were acknowledged to mean anything"
        assert acked - got == set(), f"{len(acked - got)} acknowledged jobs were lost"
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            n.stop()


def test_proxy_killed_reserved_job_is_ready_at_once_and_its_id_still_works(tmp_path):
    """kill -9 of the proxy closes its node connections: the nodes release the
    jobs its clients had reserved at once (not after the TTR); a new proxy on
    the same address hands out the same ids."""
    port = free_port()
    with ProxiedCluster(tmp_path, 3) as cluster:
        cluster.proxy.kill()
        cluster.proxy = start_proxy(cluster.config, "-l", f"127.0.0.1:{port}")
        c = greenstalk.Client(("127.0.0.1", port))
        job_id = c.put("held", ttr=600)
        assert c.reserve(timeout=0).id == job_id
        cluster.proxy.kill()
        name, node_id = decode(job_id)
        node = cluster.nodes[int(name[4:]) - 1]
        with greenstalk.Client(node.address) as direct:
            deadline = time.monotonic() + 5
            while direct.stats_job(node_id)["state"] != "ready":
                assert time.monotonic() < deadline, "the job stayed reserved"
                time.sleep(0.05)
        cluster.proxy = start_proxy(cluster.config, "-l", f"127.0.0.1:{port}")
        with greenstalk.Client(("127.0.0.1", port)) as again:
            assert again.peek(job_id).body == "held"
            job = again.reserve(timeout=1)
            assert (job.id, job.body) == (job_id, "held")
            again.delete(job)


def test_hung_node_costs_a_waiting_client_no_more_than_its_timeout(tmp_path):
    """SIGSTOP the node that owns the watched tube while a client waits in
    reserve-with-timeout 2: the client gets TIMED_OUT at its timeout (plus the
    proxy's reply timeout at most), puts to that tube fail over to the next
    node, and ids of the failover node route back."""
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = _tube_on("node2")
        stopped = cluster.nodes[1]
        with greenstalk.Client(cluster.address, use=tube, watch=tube) as c:
            c.put("warm")
            c.delete(c.reserve(timeout=0))  # connections to node2 are open
            stopped.signal(signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(greenstalk.TimedOutError):
                    c.reserve(timeout=2)
                assert time.monotonic() - start < 2 + OP_TIMEOUT + 1.5
                replies = []
                start = time.monotonic()
                for _ in range(3):
                    try:
                        replies.append(c.put("after"))
                    except greenstalk.Error as e:
                        replies.append(type(e).__name__)
                assert time.monotonic() - start < 2 * OP_TIMEOUT + 2
                moved = [r for r in replies if isinstance(r, int)]
                assert moved, f"no put failed over: {replies}"
                assert all(decode(r)[0] != "node2" for r in moved)
                assert c.peek(moved[-1]).body == "after"
            finally:
                stopped.signal(signal.SIGCONT)


def _ask(sock: socket.socket, line: str) -> bytes:
    """One command, its whole reply (a stats body included)."""
    sock.sendall(line.encode() + b"\r\n")
    data = b""
    while not data.endswith(b"\r\n") or (data.startswith(b"OK ") and data.count(b"\r\n") < 2):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_fan_outs_through_a_hung_node_answer_internal_error_not_a_guess(tmp_path):
    """The tube's jobs are all on node2, which hangs: peeks, kick and pause-tube answer
    INTERNAL_ERROR (NOT_FOUND, KICKED 0 or PAUSED on the others would be false);
    stats and stats-tube end with nodes-unavailable: 1."""
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = _tube_on("node2")
        with greenstalk.Client(cluster.address, use=tube, watch=tube) as c:
            c.put("buried")
            c.bury(c.reserve(timeout=1))
            c.put("delayed", delay=60)
            c.put("ready")
        cluster.nodes[1].signal(signal.SIGSTOP)
        try:
            with socket.create_connection(cluster.address, timeout=10) as sock:
                assert _ask(sock, f"use {tube}") == f"USING {tube}\r\n".encode()
                start = time.monotonic()
                for line in ("peek-ready", "peek-delayed", "peek-buried", "kick 10",
                             f"pause-tube {tube} 1"):
                    assert _ask(sock, line) == b"INTERNAL_ERROR\r\n", line
                assert time.monotonic() - start < OP_TIMEOUT + 1.5  # one timeout, then dead
                for line in (f"stats-tube {tube}", "stats"):
                    assert _ask(sock, line).endswith(b"\nnodes-unavailable: 1\n\r\n"), line
        finally:
            cluster.nodes[1].signal(signal.SIGCONT)


def test_a_fan_out_asks_two_hung_nodes_at_once(tmp_path):
    """Two of three nodes hang: `stats` answers with the third's figures after one reply
    timeout, not one per hung node (the nodes are asked at once)."""
    with ProxiedCluster(tmp_path, 3) as cluster:
        for node in (cluster.nodes[0], cluster.nodes[2]):
            node.signal(signal.SIGSTOP)
        try:
            with socket.create_connection(cluster.address, timeout=10) as sock:
                start = time.monotonic()
                reply = _ask(sock, "stats")
                took = time.monotonic() - start
            assert reply.endswith(b"\nnodes-unavailable: 2\n\r\n")
            assert OP_TIMEOUT * 0.9 <= took < OP_TIMEOUT * 1.6  # (one at a time: 2 x 2 s)
        finally:
            for node in (cluster.nodes[0], cluster.nodes[2]):
                node.signal(signal.SIGCONT)


def test_a_client_that_does_not_read_stalls_no_one_else(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        big = "x" * 60000
        with greenstalk.Client(cluster.address) as c:
            job_id = c.put(big)
        slow = socket.create_connection(cluster.address)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"peek %d\r\n" % job_id * 500)  # 30 MB of replies, never read
        try:
            time.sleep(0.5)
            with greenstalk.Client(cluster.address) as other:
                start = time.monotonic()
                for _ in range(20):
                    other.put("y")
                assert other.stats()["current-connections"] == 2
                assert time.monotonic() - start < 5
        finally:
            slow.close()


def test_five_thousand_idle_clients(tmp_path):
    want = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want + 200), hard))
    try:
        with ProxiedCluster(tmp_path, 3) as cluster:
            idle = []
            try:
                for _ in range(want):
                    idle.append(socket.create_connection(cluster.address, timeout=10))
                with greenstalk.Client(cluster.address) as c:
                    deadline = time.monotonic() + 20
                    while c.stats()["current-connections"] < want + 1:
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                    job_id = c.put("still served")
                    assert c.reserve(timeout=1).id == job_id
                idle[0].sendall(b"list-tube-used\r\n")
                assert idle[0].recv(100) == b"USING default\r\n"
            finally:
                for s in idle:
                    s.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
