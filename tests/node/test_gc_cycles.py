"""The node leaves no reference cycle behind (node/gc_policy.py relies on it).

bsnode freezes long-lived objects out of the cyclic GC, so a reference
cycle made while serving would never be freed.  Here a node runs in this
process and serves every kind of connection life — puts and reserves,
errors, bury/kick, pause, timeouts, hang-ups mid-body and mid-reserve, a
reserved job released by its client's hang-up — with the collector
switched off; afterwards a collection must find nothing to free.
"""

from __future__ import annotations

import gc
import socket as pysock

import gevent
import pytest
from bsnode.commands import Commands
from bsnode.server import NodeServer
from bsnode.store import Store
from gevent import socket

DEADLINE = 30.0


@pytest.fixture
def node():
    lst = pysock.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(128)
    store = Store()
    server = NodeServer(lst, store, Commands(store, 65535, 10 << 20))
    server.start()
    try:
        yield lst.getsockname()[1], store
    finally:
        server.stop()
        lst.close()


def ask(s, data: bytes, lines: int = 1) -> bytes:
    s.sendall(data)
    buf = b""
    while buf.count(b"\r\n") < lines:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


def one_life(port: int, i: int) -> None:
    """A client's life; how it ends depends on i."""
    tube = b"t%d" % (i % 7)
    s = socket.create_connection(("127.0.0.1", port))
    ask(s, b"use " + tube + b"\r\n")
    assert ask(s, b"put 1 0 60 3\r\nabc\r\n").startswith(b"INSERTED")
    ask(s, b"watch " + tube + b"\r\n")
    job_id = ask(s, b"reserve-with-timeout 0\r\n", 2).split()[1]
    assert ask(s, b"bury " + job_id + b" 5\r\n") == b"BURIED\r\n"
    assert ask(s, b"kick 1\r\n") == b"KICKED 1\r\n"
    assert ask(s, b"bogus\r\n") == b"UNKNOWN_COMMAND\r\n"
    assert ask(s, b"put 1 0 60 x\r\n") == b"BAD_FORMAT\r\n"
    assert ask(s, b"delete 99999999\r\n") == b"NOT_FOUND\r\n"
    ask(s, b"stats\r\n", 2)
    ask(s, b"stats-tube " + tube + b"\r\n", 2)
    ask(s, b"pause-tube zz 0\r\n")
    ask(s, b"reserve-with-timeout 0\r\n", 2)
    ask(s, b"put 1 1 60 3\r\nabc\r\n")
    ending = i % 4
    if ending == 0:  # holds a job, then hangs up: the job is released
        ask(s, b"reserve\r\n", 2)
    elif ending == 1:  # parked in reserve, then hangs up
        s.sendall(b"watch empty" + tube + b"\r\nignore " + tube + b"\r\nreserve\r\n")
        ask(s, b"", 2)  # WATCHING, WATCHING: the reserve is now parked
    elif ending == 2:  # hangs up in the middle of a body
        s.sendall(b"put 1 0 60 100\r\nab")
    else:  # a reserve that times out, then quit
        assert ask(s, b"watch empty\r\nignore " + tube + b"\r\nreserve-with-timeout 1\r\n",
                   3).endswith(b"TIMED_OUT\r\n")
        s.sendall(b"quit\r\n")
    s.close()


def run_clients(port: int, store: Store, n: int) -> None:
    with gevent.Timeout(DEADLINE):
        gevent.joinall([gevent.spawn(one_life, port, i) for i in range(n)], raise_error=True)
        while store.cur_conns:
            gevent.sleep(0.01)


def test_serving_leaves_no_reference_cycles(node):
    port, store = node
    run_clients(port, store, 8)  # warm-up: first-use caches, lazily built objects
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run_clients(port, store, 120)
        found = gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    assert found == 0, f"{found} objects in reference cycles: {kinds}"
    assert store.cur_conns == 0
