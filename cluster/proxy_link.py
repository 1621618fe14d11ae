"""A fast-path node connection of the proxy (``Link``), its runs, and what both lanes share.

A ``Link`` is the event loop's side of one node connection: the bytes
dispatched to it in this turn of the loop, the runs whose replies are due (a
``Run``: the commands written in one turn, in order) and its read and write
watchers.  A client's own links belong to its ``proxy_engine.ClientConn``
(``proxy_fast``); the shared put connections' to ``proxy_shared.SharedPuts``.
"""

from __future__ import annotations

from collections import deque

from gevent import get_hub

from . import proxy_ids

REDO = object()  # a reply meaning: run this command on the slow lane after all
READ, WRITE = 1, 2
RECV_SIZE = 65536
# a socket not ready after all (a TLS client's socket says so too: proxy_tls.TlsSocket)
TRY_LATER = (BlockingIOError, InterruptedError)
STALE_AFTER = 1.0  # seconds idle after which a connection is checked before use
# A command's reply slot: [seq, event, reply].  Slots are lists (one is made per
# command, so they must be cheap), ordered by their unique seq, so the slow lane
# (proxy_engine) can keep them sorted.  ``reply`` is None until the reply is in;
# then bytes (maybe empty: no reply), or proxy_commands.CLOSE.
SEQ, EV, REPLY = 0, 1, 2


class Run:
    """The commands sent on one link in one turn, in order, and how far their replies are."""

    __slots__ = ("items", "done")

    def __init__(self) -> None:
        # per command: (its reply slot, or None for a use/watch sent ahead of one;
        # reader(link, job, reply) -> reply bytes or REDO; the node's job id of a
        # by-job command, else 0 (on a shared link: the put's client, given to
        # reader as ``job``); offset of its first byte in the link's stream)
        self.items: list[tuple] = []
        self.done = 0  # replies read so far


class Link:
    """The fast path's side of one session ``Conn``: runs in flight, bytes to write."""

    __slots__ = ("client", "conn", "member", "digits", "name", "expect", "out", "queued",
                 "written", "reader", "writer", "connects", "recv", "send", "feed", "since",
                 "used", "turn", "run", "on_read")

    def __init__(self, client, conn, member, number: int, on_read) -> None:
        self.client = client  # its proxy client (proxy_engine.ClientConn), or SharedPuts
        self.conn = conn
        self.member = member
        self.digits = proxy_ids.digits(number)  # its job ids + these: proxy ids
        self.name = member.name
        self.expect: deque[Run] = deque()  # runs whose replies are still (partly) due
        self.out: list[bytes] = []  # dispatched this turn, not yet written
        self.queued = 0  # bytes dispatched so far (``Run.start`` offsets)
        self.written = 0  # bytes the socket took so far
        self.connects = conn.client.connects
        self.recv, self.send, self.feed = conn.client.nowait_io()
        loop = get_hub().loop
        fd = conn.client.fileno()
        self.reader = loop.io(fd, READ)
        self.writer = loop.io(fd, WRITE)
        self.since = 0.0  # when the oldest reply expected was asked for
        self.used = 0.0  # when a command was last dispatched on it
        self.turn = -1  # the client's dispatch turn it was last checked in
        self.run: Run | None = None  # this turn's commands, until ``flush``
        self.on_read = on_read  # the read watcher's callback

    def stop(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.reader.close()
        self.writer.close()


def put_command(ev: tuple) -> bytes:
    """A put event as written for the node: (op, pri, delay, ttr, body)."""
    return b"put %d %d %d %d\r\n%s\r\n" % (ev[1], ev[2], ev[3], len(ev[4]), ev[4])
