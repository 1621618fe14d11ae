"""The proxy's two lanes (cluster/proxy_engine.py, proxy_fast.py) seen from a client.

Commands one node can answer go straight to it from the event loop, many in
one write; everything else runs on the connection's slow lane.  What a client
must never notice: replies out of order, a command lost between the lanes, a
job held that it was not given.  Each test pipelines raw protocol bytes (the
way PHP and Ruby clients batch) and checks every reply.
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
from proxyrun import ProxiedCluster, Raw, start_proxy, write_config

pytestmark = pytest.mark.integration

OP_TIMEOUT = 2.0  # the ClusterClient's reply timeout, which the proxy uses


def _tube_on(node: str, nodes: int = 3, skip: int = 0) -> str:
    ring = Ring({f"node{i}": 1 for i in range(1, nodes + 1)})
    return [f"t{i}" for i in range(2000) if ring.node_for(f"t{i}") == node][skip]


def _put(body: bytes, pri: int = 10) -> bytes:
    return b"put %d 0 60 %d\r\n%s\r\n" % (pri, len(body), body)


def _id(reply: bytes) -> int:
    return int(reply.split(b" ")[1])


def test_pipelined_commands_over_three_nodes_and_both_lanes_answer_in_order(tmp_path):
    tubes = [_tube_on(f"node{i}") for i in (1, 2, 3)]
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            batch = b""
            for t in tubes:  # use is the slow lane, put the fast one
                batch += b"use %s\r\n" % t.encode() + _put(t.encode())
            batch += b"list-tube-used\r\n"
            c.send(batch)
            r = c.replies(7)
            assert r[0::2][:3] == [b"USING %s\r\n" % t.encode() for t in tubes]
            ids = [_id(x) for x in r[1:6:2]]
            assert all(x.startswith(b"INSERTED ") for x in r[1:6:2])
            assert [decode(i)[0] for i in ids] == ["node1", "node2", "node3"]
            assert r[6] == b"USING %s\r\n" % tubes[2].encode()
            # peeks on three nodes, a fan-out in between, deletes: all in command order
            c.send(b"".join(b"peek %d\r\n" % i for i in ids) + b"stats-tube %s\r\n" % tubes[0].encode()
                   + b"".join(b"delete %d\r\n" % i for i in ids) + b"peek %d\r\n" % ids[0])
            r = c.replies(8)
            assert r[:3] == [b"FOUND %d %d\r\n%s\r\n" % (i, len(t), t.encode())
                             for i, t in zip(ids, tubes, strict=True)]
            assert r[3].startswith(b"OK ") and b"name: %s\n" % tubes[0].encode() in r[3]
            assert r[4:] == [b"DELETED\r\n"] * 3 + [b"NOT_FOUND\r\n"]
        finally:
            c.close()


def test_a_reserve_run_that_runs_dry_holds_no_job_it_did_not_hand_out(tmp_path):
    tube = _tube_on("node2").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            c.send(b"use %s\r\nwatch %s\r\nignore default\r\n" % (tube, tube))
            c.replies(3)
            c.send(b"".join(_put(b"j%d" % i) for i in range(3)))
            ids = [_id(x) for x in c.replies(3)]
            c.send(b"reserve-with-timeout 0\r\n" * 5)
            r = c.replies(5)
            assert [x.split(b" ")[0] for x in r] == [b"RESERVED"] * 3 + [b"TIMED_OUT\r\n"] * 2
            assert sorted(_id(x) for x in r[:3]) == sorted(ids)
            c.send(b"stats-tube %s\r\n" % tube)
            stats = c.replies(1)[0]
            assert b"current-jobs-reserved: 3\n" in stats and b"current-jobs-ready: 0\n" in stats
            c.send(b"".join(b"release %d 5 0\r\n" % i for i in ids)
                   + b"reserve-with-timeout 0\r\n" * 4)
            r = c.replies(7)
            assert r[:3] == [b"RELEASED\r\n"] * 3
            assert [x.split(b" ")[0] for x in r[3:]] == [b"RESERVED"] * 3 + [b"TIMED_OUT\r\n"]
        finally:
            c.close()
        # the connection is gone: every job it held is ready again at once
        with Client(cluster.nodes[1].address) as node:
            assert poll(lambda: node.stats_tube(tube.decode())["current-jobs-ready"] == 3,
                        what="jobs released when the proxy client hung up")


def test_puts_to_a_draining_node_fail_over_in_one_pipelined_write(tmp_path):
    tube = _tube_on("node1")
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            c.send(b"use %s\r\n" % tube.encode() + _put(b"before"))
            first = _id(c.replies(2)[1])
            assert decode(first)[0] == "node1"
            cluster.nodes[0].signal(signal.SIGUSR1)  # node1 drains: it refuses puts
            with Client(cluster.nodes[0].address) as n1:
                poll(lambda: n1.stats()["draining"], what="node1 draining")
            c.send(b"".join(_put(b"p%d" % i) for i in range(20)) + b"list-tube-used\r\n")
            r = c.replies(21)
            assert r[20] == b"USING %s\r\n" % tube.encode()
            ids = [_id(x) for x in r[:20]]
            assert all(x.startswith(b"INSERTED ") for x in r[:20])
            assert all(decode(i)[0] != "node1" for i in ids)
            c.send(b"".join(b"peek %d\r\n" % i for i in ids))
            bodies = [x.split(b"\r\n")[1] for x in c.replies(20)]
            assert bodies == [b"p%d" % i for i in range(20)]
        finally:
            c.close()


def test_a_node_that_hangs_with_commands_in_flight_answers_within_the_reply_timeout(tmp_path):
    hung_tube, other_tube = _tube_on("node3").encode(), _tube_on("node1").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        c, c2, other = Raw(cluster.address), Raw(cluster.address), Raw(cluster.address)
        node3 = cluster.nodes[2]
        try:
            for client in (c, c2):
                client.send(b"use %s\r\n" % hung_tube + _put(b"warm"))
                client.replies(2)
            other.send(b"use %s\r\n" % other_tube)
            other.replies(1)
            node3.signal(signal.SIGSTOP)
            start = time.monotonic()
            c.send(_put(b"a") + _put(b"b"))
            c2.send(_put(b"c"))
            other.send(_put(b"meanwhile"))  # another node's client is not held up
            assert other.replies(1)[0].startswith(b"INSERTED ")
            assert time.monotonic() - start < OP_TIMEOUT / 2
            r = c.replies(2)
            waited = time.monotonic() - start
            # sent to a node that then said nothing: the put may have run, so no retry
            assert r == [b"INTERNAL_ERROR\r\n"] * 2
            assert c2.replies(1) == [b"INTERNAL_ERROR\r\n"]
            assert OP_TIMEOUT - 0.1 < waited < OP_TIMEOUT + 1.5
            c.send(_put(b"after"))  # the node is marked dead: the next put fails over
            after = _id(c.replies(1)[0])
            assert decode(after)[0] != "node3"
            # a log line for the node with the count of connections, not one a client
            # (one line, unless the two fell due in different ticks of the reaper)
            said = [line for line in cluster.proxy.lines if "no reply within" in line]
            counts = [int(re.search(r"node3: .* on (\d+) connection", line).group(1))
                      for line in said]
            assert sum(counts) == 2 and len(said) <= 2, said
        finally:
            node3.signal(signal.SIGCONT)
            for client in (c, c2, other):
                client.close()


def test_a_restarted_node_costs_the_next_command_nothing(tmp_path):
    """kill -9 and restart a node between two puts: the proxy saw its idle
    connection close, so the second put goes on a new connection."""
    from bscluster.procs import start_bsnode

    tube = _tube_on("node2").encode()
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            c.send(b"use %s\r\n" % tube + _put(b"one"))
            assert decode(_id(c.replies(2)[1]))[0] == "node2"
            port = cluster.nodes[1].port
            cluster.nodes[1].kill()
            cluster.nodes[1] = start_bsnode("-p", str(port))
            c.send(_put(b"two"))
            reply = c.replies(1)[0]
            assert reply.startswith(b"INSERTED "), reply
            assert decode(_id(reply))[0] == "node2"
        finally:
            c.close()


# a proxy that never checks an idle connection before use (proxy_fast.STALE_AFTER):
# only its watcher on the idle connection can see a node close it
_NO_IDLE_CHECK_PROXY = """
from bscluster import proxy_fast
from bscluster.cli import main

proxy_fast.STALE_AFTER = 3600.0
main()
"""


@pytest.mark.parametrize("last", [b"use again", b"stats"])
def test_a_node_restarted_after_a_slow_lane_command_costs_the_next_put_nothing(tmp_path, last):
    """The slow lane stops the watchers of the client's node connections while it
    uses them; they watch again when it is done, so a node killed and restarted
    right after a slow command (``use``, ``stats``) is seen to close the idle
    connection, and the next put, within a second, goes on a new one."""
    tube = _tube_on("node2").encode()
    nodes = [start_bsnode() for _ in range(3)]
    proxy = None
    try:
        config = write_config(tmp_path / "proxy.toml", [n.port for n in nodes])
        proxy = start_proxy(config, python_args=("-c", _NO_IDLE_CHECK_PROXY))
        c = Raw(("127.0.0.1", proxy.port))
        c.send(b"use %s\r\n" % tube + _put(b"one") + _put(b"two"))  # (two: the fast lane)
        assert decode(_id(c.replies(3)[2]))[0] == "node2"
        c.send(b"use %s\r\n" % tube if last == b"use again" else b"stats\r\n")
        assert c.replies(1)[0].startswith(b"USING " if last == b"use again" else b"OK ")
        port = nodes[1].port
        nodes[1].kill()
        nodes[1] = start_bsnode("-p", str(port))
        c.send(_put(b"three"))
        reply = c.replies(1)[0]
        assert reply.startswith(b"INSERTED "), reply
        assert decode(_id(reply))[0] == "node2"
        c.close()
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            n.stop()


def test_a_half_closed_client_gets_every_reply_then_the_close(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        c = Raw(cluster.address)
        try:
            c.send(b"".join(_put(b"x%d" % i) for i in range(50)) + b"stats\r\n"
                   + b"reserve-with-timeout 0\r\n" * 3)
            c.sock.shutdown(socket.SHUT_WR)
            r = c.replies(54)
            assert all(x.startswith(b"INSERTED ") for x in r[:50])
            assert r[50].startswith(b"OK ")
            assert all(x.startswith(b"RESERVED ") for x in r[51:])
            assert c.sock.recv(10) == b""
        finally:
            c.close()


# The proxy with two bugs planted: a put to tube "bug-in-dispatch" raises in the fast
# lane's dispatch (the client socket's callback), a put to "bug-in-reply" raises where
# the node's reply is read (the node socket's callback).
_BUGGY_PROXY = """
import sys
from bscluster import proxy_fast
from bscluster.cli import main

put, read_put = proxy_fast.FastPath._put, proxy_fast.FastPath.read_put

def buggy_put(self, client, slot):
    if client.state.using == "bug-in-dispatch":
        raise RuntimeError("planted bug in dispatch")
    return put(self, client, slot)

def buggy_read_put(self, link, job, reply):
    client = job if link.client is self.shared else link.client  # (a shared link: many)
    if client.state.using.startswith("bug-in-reply"):
        raise RuntimeError("planted bug in reply reading")
    return read_put(self, link, job, reply)

proxy_fast.FastPath._put, proxy_fast.FastPath.read_put = buggy_put, buggy_read_put
main()
"""


def test_a_bug_in_a_callback_ends_that_connection_only_and_is_logged(tmp_path):
    nodes = [start_bsnode() for _ in range(3)]
    proxy = None
    try:
        config = write_config(tmp_path / "proxy.toml", [n.port for n in nodes])
        proxy = start_proxy(config, python_args=("-c", _BUGGY_PROXY))
        address = ("127.0.0.1", proxy.port)
        bystander = Raw(address)
        bystander.send(_put(b"before"))
        assert bystander.replies(1)[0].startswith(b"INSERTED ")

        def victim(tube: str, planted: str, puts_before: int) -> None:
            v = Raw(address)
            v.send(b"use %s\r\n" % tube.encode() + _put(b"ok") * puts_before)
            assert v.replies(1 + puts_before)[0] == b"USING %s\r\n" % tube.encode()
            v.send(_put(b"boom"))
            assert v.sock.recv(100) == b"", "\n".join(proxy.lines)  # closed, no reply
            v.close()
            poll(lambda: any(planted in line for line in proxy.lines),
                 what=f"the proxy to log {planted!r}")
            # the proxy, and everyone else on it, carry on
            bystander.send(_put(b"after") + b"reserve-with-timeout 0\r\n")
            inserted, reserved = bystander.replies(2)
            assert inserted.startswith(b"INSERTED ") and reserved.startswith(b"RESERVED ")
            assert proxy.proc.poll() is None

        victim("bug-in-dispatch", "planted bug in dispatch", 0)
        # a new connection's first put opens its link to the node on the slow lane: the
        # second takes the fast lane, whose reply reading has the bug
        victim("bug-in-reply", "planted bug in reply reading", 1)
        # a lone put, on the connection to its node that the bystander's puts share
        # (opened by its first put): only the victim's connection ends
        ring = Ring({f"node{i}": 1 for i in (1, 2, 3)})
        shared_tube = next(f"bug-in-reply-{i}" for i in range(1000)
                           if ring.node_for(f"bug-in-reply-{i}") == ring.node_for("default"))
        victim(shared_tube, "planted bug in reply reading", 0)
        poll(lambda: sum("proxy connection failed" in line for line in proxy.lines) == 3,
             what="three connections ended, each logged")
        assert any("proxy_shared.py" in line for line in proxy.lines)  # (its traceback)
        after = Raw(address)  # the shared connection serves on
        after.send(_put(b"lone"))
        assert after.replies(1)[0].startswith(b"INSERTED ")
        after.close()
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            n.stop()
