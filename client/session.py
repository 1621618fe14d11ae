"""One thread's (or greenlet's) side of a ClusterClient: its connections, tubes and held jobs.

How this works
--------------
A beanstalkd connection carries state (the used tube, the watch list, the
jobs it reserved), so each thread, or greenlet under gevent's
monkey-patching (``threading.local`` is greenlet-local then), gets its own
``Session`` from the ``NodePool``.  Two threads that ``use`` different tubes
therefore never put into each other's.  The one exception: a command on a
job another thread reserved goes on that thread's connection (the node
only accepts it there), holding the Client's lock (``Client.exclusive``).

Per node a session keeps a short list of ``Conn`` (at most
``MAX_CONNS_PER_NODE``), each one ``Client`` plus what the multiplexed
reserve (``consume.py``) needs to know:

* ``pending``: a reserve was sent and its reply not read yet.  No other
  command may go on that connection until ``settle`` has read it;
* ``held``: jobs reserved on this connection that the session got (handed
  to the caller, or buffered for the next ``reserve``) and that were not yet
  deleted, released or buried.  A blocking reserve is only ever sent on a
  connection that holds nothing, so a ``delete`` never waits behind one.

``conn`` picks a connection without a pending reserve for a command (opening
one if all are waiting); ``holder`` finds the one a job was reserved on;
``free`` one that holds nothing, for a blocking reserve.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .client import Client, Job
from .errors import ConnectionLostError

MAX_CONNS_PER_NODE = 4  # connections one session may open to one node


@dataclass(eq=False)
class Conn:
    """One connection of a session and its reserve state."""

    client: Client
    pending: bool = False  # a reserve is in flight
    secs: int = 0  # its wait (0: a poll)
    due: float = 0.0  # its reply is overdue after this (clock time): the node hangs
    skip: int = 0  # WATCHING replies to read before the reserve's own
    watch_gen: int = -1  # the session watch list last sent on it
    held: dict[int, float] = field(default_factory=dict)  # job id -> when we got it


class Session:
    """Connections, used tube, watch list and buffered jobs of one thread."""

    def __init__(self, settings, use: str, watch: list[str]) -> None:
        self.settings = settings  # the NodePool: timeouts, encoding, clock
        self.clock: Callable[[], float] = settings.clock
        self.conns: dict[str, list[Conn]] = {}
        self.using = use
        self.watching = list(watch)
        self.watch_gen = 0
        self.buffer: deque[tuple[Job, Conn, float]] = deque()
        self.warm: set[str] = set()  # nodes that just gave a job: asked every round
        self.empty_at: dict[str, float] = {}  # when a node last had no job for us
        self.next_sweep = 0.0  # when the non-hot nodes are asked next
        self.put_turn = 0  # rotation over a spread tube's nodes
        self.routes: dict[str, tuple] = {}  # tube -> (ring, owner, connection): put's cache
        self.last_node = -1  # index of the node the last handed-out job came from

    # --- connections ----------------------------------------------------------
    def _new(self, name: str, address: str) -> Conn:
        conn = Conn(self.settings.new_client(name, address))
        self.conns.setdefault(name, []).append(conn)
        return conn

    def conn(self, name: str, address: str) -> Conn:
        """A connection with no reserve in flight (settling one if all have)."""
        conns = self.conns.get(name)
        if not conns:
            return self._new(name, address)
        for conn in conns:
            if not conn.pending:
                return conn
        if len(conns) < MAX_CONNS_PER_NODE:
            return self._new(name, address)
        self.settle(conns[0])
        return conns[0]

    def free(self, name: str, address: str) -> Conn | None:
        """A connection that holds no job and waits for nothing (None over the cap)."""
        conns = self.conns.get(name, ())
        for conn in conns:
            if not conn.pending and not conn.held:
                return conn
        if len(conns) < MAX_CONNS_PER_NODE:
            return self._new(name, address)
        return None

    def holder(self, name: str, job_id: int) -> Conn | None:
        for conn in self.conns.get(name, ()):
            if job_id in conn.held:
                return conn
        return None

    def ready(self, conn: Conn) -> Conn:
        """``conn``, after reading the reply of a reserve still in flight on it."""
        if conn.pending:
            self.settle(conn)
        return conn

    def settle(self, conn: Conn) -> None:
        """Wait for the pending reserve's reply (bounded by its due time)."""
        wait = max(0.0, conn.due - self.clock())
        try:
            while conn.pending:
                self.accept_all(conn, conn.client.read_replies(wait))
        except ConnectionLostError:
            self.lost(conn)

    def lost(self, conn: Conn) -> None:
        """The connection broke: the node released whatever it had reserved on it."""
        _reset(conn)
        self.buffer = deque(b for b in self.buffer if b[1] is not conn)

    # --- replies to reserves -------------------------------------------------------
    def accept_all(self, conn: Conn, replies: list) -> list[str]:
        """``accept`` each reply; the words of the reserves they answered."""
        words = []
        for reply in replies:
            if not conn.pending:
                conn.client.close()  # a reply nobody asked for: out of step
                self.lost(conn)
                break
            word = self.accept(conn, reply)
            if word is not None:
                words.append(word)
        return words

    def accept(self, conn: Conn, reply: tuple) -> str | None:
        """Take one reply read on a pending connection; the reply word, or None
        while the reserve's own reply is still to come.  A job is buffered."""
        words, _ = reply
        word = words[0]
        if conn.skip:
            if word != b"WATCHING":
                err = conn.client.error_from(words)
                self.lost(conn)
                raise err
            conn.skip -= 1
            return None
        conn.pending = False
        if word == b"RESERVED":
            job = conn.client.job_from(reply)
            now = self.clock()
            conn.held[job.id] = now
            self.buffer.append((job, conn, now))
            return "RESERVED"
        if word in (b"TIMED_OUT", b"DEADLINE_SOON"):
            return word.decode()
        err = conn.client.error_from(words)
        self.lost(conn)
        raise err

    def next_buffered(self, index: dict[str, int]) -> tuple[Job, Conn, float]:
        """Take the buffered job whose node comes first after the last one handed
        out (in member order), so nodes with jobs take turns."""
        last = self.last_node
        size = len(index) or 1
        best = min(range(len(self.buffer)),
                   key=lambda i: (index.get(self.buffer[i][0].node, 0) - last - 1) % size)
        entry = self.buffer[best]
        del self.buffer[best]
        self.last_node = index.get(entry[0].node, -1)
        return entry

    def give_back(self) -> int:
        """Return buffered jobs to their nodes by closing the connections that hold
        nothing else (the node keeps each job's priority); how many were returned."""
        for conns in self.conns.values():
            for conn in conns:
                if conn.pending and conn.secs == 0:
                    self.settle(conn)  # a poll: its answer is on its way
                elif conn.pending and not conn.held:
                    self.lost(conn)  # closing cancels a blocking reserve
        returned = 0
        for conn in {id(c): c for _, c, _ in self.buffer}.values():
            mine = [job.id for job, c, _ in self.buffer if c is conn]
            if set(conn.held) <= set(mine):
                self.lost(conn)
                returned += len(mine)
        return returned

    def holds(self, name: str, job_id: int) -> bool:
        return self.holder(name, job_id) is not None

    def forget(self, name: str) -> None:
        self.routes.clear()
        for conn in self.conns.pop(name, ()):
            conn.client.close()
        self.buffer = deque(b for b in self.buffer if b[0].node != name)

    def use_ssl_context(self, ssl_context) -> None:
        """This session's connections reconnect with ``ssl_context`` (open ones stay)."""
        for conns in self.conns.values():
            for conn in conns:
                conn.client.ssl_context = ssl_context

    def close(self) -> None:
        for conns in self.conns.values():
            for conn in conns:
                _reset(conn)
        self.buffer.clear()


def _reset(conn: Conn) -> None:
    """Close ``conn`` and forget everything it stood for: tubes, reserves in flight, jobs held."""
    conn.client.close()
    conn.client.forget_tubes()
    conn.pending = False
    conn.skip = 0
    conn.watch_gen = -1
    conn.held.clear()
