"""Many clients that never read their replies (issue 19, case 5).

500 connections each pipeline ``peek`` of a 60 KB job and read nothing.
One connection's unread replies were bounded already; the total was not:
+552 MB of node RSS (beanstalkd: +30 MB, one reply per connection).  The
node now keeps a budget for the replies it holds across all connections
(``limits.REPLY_BUDGET``); past it, a connection sends each reply before it
runs the next command and parses what it read a slice at a time, so the
connections that hold replies stop reading, and the total stays near
beanstalkd's.  Run against both servers in the same test; the figures are
printed (``pytest -s``) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import resource
import socket
import time

import pytest
from servers import HAVE_BEANSTALKD, start_beanstalkd, start_bsnode
from test_hostile import command, proc_kib

pytestmark = pytest.mark.integration

CONNS = 500
BODY = 60000
PER_CONN = 64 * 1024  # pipelined peeks each connection sends (asking ~500 MB of replies)
SEND_FOR = 3.0  # seconds spent pushing them, at most
MiB = 1024 * 1024
LIMIT = 80 * MiB  # the node's growth allowed (before: +250 MiB here; beanstalkd ~+30 MiB)


def hog_growth(server) -> tuple[int, int]:
    """(RSS growth in bytes, peek bytes the connections got in) for CONNS hogs."""
    setup = server.connect()
    assert command(setup, b"put 0 0 600 %d\r\n" % BODY + b"b" * BODY).startswith(b"INSERTED")
    jid = command(setup, b"peek-ready").split()[1]
    burst = b"peek " + jid + b"\r\n"
    burst = burst * (PER_CONN // len(burst))
    before = proc_kib(server.pid) * 1024
    hogs = []
    try:
        for _ in range(CONNS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(server.address)
            s.setblocking(False)
            hogs.append([s, memoryview(burst)])
        deadline = time.monotonic() + SEND_FOR
        while time.monotonic() < deadline and any(len(v) for _, v in hogs):
            for h in hogs:
                if len(h[1]):
                    try:
                        h[1] = h[1][h[0].send(h[1]):]
                    except BlockingIOError:
                        pass
            time.sleep(0.01)
        sent = sum(PER_CONN - len(v) for _, v in hogs)
        time.sleep(1.0)  # let the node do what it will with what it read
        assert command(setup, b"stats-job " + jid).startswith(b"OK")  # still serving
        grown = proc_kib(server.pid) * 1024 - before
    finally:
        for s, _ in hogs:
            s.close()
        setup.close()
    return grown, sent


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, CONNS * 2 + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_500_clients_that_never_read_cost_a_bounded_total(many_fds):
    with start_bsnode() as node:
        grown, sent = hog_growth(node)
    line = f"bsnode: +{grown / MiB:.0f} MiB RSS, {sent / MiB:.1f} MiB of peeks taken in"
    if HAVE_BEANSTALKD:
        with start_beanstalkd() as ref:
            ref_grown, ref_sent = hog_growth(ref)
        line += f"; beanstalkd: +{ref_grown / MiB:.0f} MiB, {ref_sent / MiB:.1f} MiB taken in"
    print(f"{CONNS} connections, unread peeks of a {BODY}-byte job: {line}")
    assert grown < LIMIT, line
