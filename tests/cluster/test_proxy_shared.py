"""The proxy's shared put connections (cluster/proxy_fast.py, "Shared put connections").

A client that waits for each reply before its next command sends its puts
over one connection per node that every such client shares, so puts of many
clients reach the node in one write.  What a client must never notice: a put
lost or answered twice, a later command of its own overtaking its put, or
another client's trouble (a hung node answers within the reply timeout; a
bug in one reply ends only that client's connection).
"""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest
from bsclient import Client, Ring
from bscluster.procs import poll, start_bsnode
from bscluster.proxy_ids import decode
from proxyrun import ProxiedCluster, Raw

pytestmark = pytest.mark.integration

OP_TIMEOUT = 2.0  # the ClusterClient's reply timeout, which the proxy uses
RING = Ring({f"node{i}": 1 for i in range(1, 4)})


def _tube_on(node: str, prefix: str = "t", skip: int = 0) -> str:
    return [f"{prefix}{i}" for i in range(2000) if RING.node_for(f"{prefix}{i}") == node][skip]


def _put(body: bytes) -> bytes:
    return b"put 10 0 60 %d\r\n%s\r\n" % (len(body), body)


def _id(reply: bytes) -> int:
    return int(reply.split(b" ")[1])


def _lone(client: Raw, data: bytes) -> bytes:
    """Send one command and wait for its reply (as a client that does not pipeline)."""
    client.send(data)
    return client.replies(1)[0]


def _lone_puts_to(c: Raw, tube: bytes, node: str, count: int = 3) -> None:
    """``use tube``, then ``count`` lone puts, all landing on ``node``: the first opens the
    shared connection to it (and goes the client's own way), the rest take it."""
    _lone(c, b"use %s\r\n" % tube)
    for _ in range(count):
        assert decode(_id(_lone(c, _put(b"warm"))))[0] == node


def _total_connections(node) -> int:
    with Client(node.address) as c:
        return int(c.stats()["total-connections"])


def test_lone_puts_of_many_clients_share_one_connection_and_pipelining_keeps_its_own(tmp_path):
    tube = _tube_on("node1").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        node1 = cluster.nodes[0]
        first = Raw(cluster.address)
        try:  # the first lone put opens the shared connection (and goes its own way)
            assert _lone(first, b"use %s\r\n" % tube) == b"USING %s\r\n" % tube
            for _ in range(3):
                assert _lone(first, _put(b"warm")).startswith(b"INSERTED ")
        finally:
            first.close()
        before = _total_connections(node1)
        ids = []
        for i in range(20):  # twenty clients, one put each, each waiting for its reply
            c = Raw(cluster.address)
            try:
                _lone(c, b"use %s\r\n" % tube)
                reply = _lone(c, _put(b"lone%d" % i))
                assert reply.startswith(b"INSERTED "), reply
                ids.append(int(reply.split()[1]))
            finally:
                c.close()
        # one connection for all of them (the stats connection counts once, above)
        assert _total_connections(node1) - before == 1
        assert {decode(i)[0] for i in ids} == {"node1"}
        # a client that pipelines uses a connection of its own, as before
        before = _total_connections(node1)
        c = Raw(cluster.address)
        try:
            c.send(b"use %s\r\n" % tube + _put(b"p1") + _put(b"p2") + _put(b"p3"))
            assert all(r.startswith(b"INSERTED ") for r in c.replies(4)[1:])
        finally:
            c.close()
        assert _total_connections(node1) - before == 1 + 1  # its own, and the stats one
        with Client(node1.address) as direct:
            assert int(direct.stats_tube(tube.decode())["current-jobs-ready"]) == 3 + 20 + 3


def _queued_on(port: int) -> int:
    """How many sockets with local port ``port`` (a stopped node's) hold unread bytes."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, queues = fields[1], fields[4]
                if int(local.rsplit(":", 1)[1], 16) == port and int(queues.split(":")[1], 16):
                    count += 1
    return count


def test_a_command_after_a_lone_put_waits_for_it(tmp_path):
    tube = _tube_on("node2").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        node2 = cluster.nodes[1]
        c, other = Raw(cluster.address), Raw(cluster.address)
        # (else Nagle holds the second command back until the first one's reply)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for command in (b"use %s\r\n" % tube, b"watch %s\r\n" % tube,
                            b"ignore default\r\n"):
                _lone(c, command)
            # warm: its first put opens the shared connection and goes on one of its own
            kept = _id(_lone(c, _put(b"kept")))
            for _ in range(3):
                assert _lone(c, _put(b"warm")).startswith(b"INSERTED ")
                assert _lone(c, b"peek %d\r\n" % kept).startswith(b"FOUND ")
            node2.signal(signal.SIGSTOP)
            try:
                c.send(_put(b"mine"))
                poll(lambda: _queued_on(node2.port), timeout=5, what="the put at node2")
                c.send(b"peek %d\r\n" % kept)  # sent while the put is in flight
                # two round trips of another client: the proxy has read the peek by the
                # second, and holds it back (sent, it would wait at node2 beside the put)
                for _ in range(2):
                    assert _lone(other, b"list-tube-used\r\n") == b"USING default\r\n"
                assert _queued_on(node2.port) == 1
            finally:
                node2.signal(signal.SIGCONT)
            inserted, found = c.replies(2)
            assert inserted.startswith(b"INSERTED ") and found.startswith(b"FOUND %d " % kept)
            # a put and a reserve back to back: the reserve sees the job
            c.send(_put(b"next"))
            c.send(b"reserve-with-timeout 0\r\n")
            inserted, reserved = c.replies(2)
            assert reserved.startswith(b"RESERVED %d " % kept), reserved
        finally:
            c.close()
            other.close()



def test_a_hung_node_answers_every_shared_put_within_the_reply_timeout(tmp_path):
    hung, other = _tube_on("node3").encode(), _tube_on("node1").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        node3 = cluster.nodes[2]
        clients = [Raw(cluster.address) for _ in range(3)]
        bystander = Raw(cluster.address)
        try:
            for c in clients:
                _lone_puts_to(c, hung, "node3", 2)
            _lone(bystander, b"use %s\r\n" % other)
            before = sum("no reply within" in line for line in cluster.proxy.lines)
            node3.signal(signal.SIGSTOP)
            start = time.monotonic()
            for c in clients:
                c.send(_put(b"lost?"))
            assert _lone(bystander, _put(b"meanwhile")).startswith(b"INSERTED ")
            assert time.monotonic() - start < OP_TIMEOUT / 2  # another node: not held up
            for c in clients:  # sent, then silence: the put may have run, so no retry
                assert c.replies(1) == [b"INTERNAL_ERROR\r\n"]
            assert time.monotonic() - start < OP_TIMEOUT + 1.5
            poll(lambda: sum("no reply within" in line for line in cluster.proxy.lines)
                 > before, what="the proxy to log the hung node")
            said = [line for line in cluster.proxy.lines if "no reply within" in line]
            assert re.search(r"node3: no reply within .* s on \d+ connection", said[-1])
            # the node is marked dead: the next put fails over to another node
            assert decode(_id(_lone(clients[0], _put(b"after"))))[0] != "node3"
        finally:
            node3.signal(signal.SIGCONT)
            for c in [*clients, bystander]:
                c.close()


def test_a_restarted_node_gets_a_new_shared_connection_and_no_put_fails(tmp_path):
    tube = _tube_on("node1").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            _lone_puts_to(c, tube, "node1")
            port = cluster.nodes[0].port
            cluster.nodes[0].stop()  # a restart on the same port: the idle connection closes
            cluster.nodes[0] = start_bsnode("-p", str(port))
            replies = [_lone(c, _put(b"after%d" % i)) for i in range(5)]
            assert all(r.startswith(b"INSERTED ") for r in replies), replies
            assert {decode(_id(r))[0] for r in replies} == {"node1"}
        finally:
            c.close()


def test_lone_puts_to_a_draining_node_fail_over(tmp_path):
    tube = _tube_on("node1").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            _lone_puts_to(c, tube, "node1")
            cluster.nodes[0].signal(signal.SIGUSR1)  # node1 drains: it refuses puts
            with Client(cluster.nodes[0].address) as n1:
                poll(lambda: n1.stats()["draining"], what="node1 draining")
            replies = [_lone(c, _put(b"after%d" % i)) for i in range(5)]
            assert all(r.startswith(b"INSERTED ") for r in replies), replies
            assert "node1" not in {decode(_id(r))[0] for r in replies}
        finally:
            c.close()
