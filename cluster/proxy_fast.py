"""Commands the proxy sends to one node straight from the event loop.

How this works
--------------
Most of what a beanstalkd client sends goes to exactly one node and needs no
waiting: a put to its tube's owner, a delete/release/bury/touch/peek/kick-job
(the proxy id names the node), a reserve that one node can answer at once.
``FastPath.handlers[op]`` sends such a command on the client's own connection to
that node (a ``Conn`` of its ClusterClient session: the very connection the
slow lane would use, so which connection holds which job is known in one
place) without any greenlet switch:

* every command dispatched to one node in one turn of the loop (a ``Run``) goes
  there in one write (``flush``): a pipelining client costs one send per node per read;
* the node's replies are read by a watcher callback on the connection
  (``Link``), rewritten (proxy ids, ``proxy_ids``) and put in the client's
  reply slots, which go out in command order (``proxy_engine``).

A command is only sent this way when nothing unusual can happen on the way
(its handler returns False otherwise, and the client's greenlet runs it
through ``ProxyCommands``, which has every rule: failover, draining, the
multiplexed reserve, DEADLINE_SOON):

* put: the used tube is not spread, the proxy is not draining, its owner is
  alive and not draining;
* by job: the id decodes to a member; the connection that reserved the job
  (else any of the client's) is connected and idle;
* reserve: the watched tubes have one owner, not spread, no job is buffered
  and the other nodes were swept (by the slow lane's reserve) less than
  ``SWEEP_SECONDS`` ago; the owner is asked ``reserve-with-timeout 0``.

A reply that turns out unusual sends its command to the slow lane after all
(``REDO``): DRAINING (the slow put fails over), a reserve that found no job
(the slow reserve waits on every node; a job reserved by a later pipelined
reserve of the same run is buffered in the session, so the slow reserve hands
it out first), a connection lost before the command was written.  A lost
connection is the node's failure (``NodePool.failed``; a reply overdue by the
operation timeout marks a hung node dead at once), and a command that may
have run answers INTERNAL_ERROR, as the slow lane does.

Lone puts of clients that wait for each reply go on a connection per node
that all such clients share instead (``proxy_shared``).

TLS node connections take this path too (``Client.nowait_io``: OpenSSL's
buffered records are read with the rest).  A connection is made non-blocking
again in each turn it is used, since the slow lane's blocking commands set
its timeout.  The session internals it touches (``Conn``,
``Session.buffer``, the watch generation) are bsclient's; ``proxy_cluster``
is the other module that does so.
"""

from __future__ import annotations

import logging
from collections import Counter, deque

from bsclient import protocol as P
from gevent import get_hub

from . import proxy_ids
from .proxy_link import EV, RECV_SIZE, REDO, REPLY, STALE_AFTER, TRY_LATER, Link, Run, put_command
from .proxy_shared import SharedPuts

log = logging.getLogger("bscluster.proxy")

REAP_EVERY = 0.25  # seconds between looks for overdue replies (a hung node)


class FastPath:
    """Dispatch and reply reading for every proxy client (one per ProxyServer)."""

    def __init__(self, commands, poll) -> None:
        self.commands = commands
        # told of each read from a node, and when its work ended (proxy_poll.BusyPoll)
        self.poke, self.done = poll.poke, poll.done
        self.cc = commands.cc
        self.pool = commands.cc._pool
        self.clock = self.pool.clock
        self.numbers = commands.numbers
        self.busy: set[Link] = set()  # links with replies outstanding (for the reaper)
        self.loop = get_hub().loop
        self.shared = SharedPuts(self)  # proxy_shared.py
        self.reaper = self.loop.timer(REAP_EVERY, REAP_EVERY)
        self.reaper.start(self._reap)
        # op -> handler(client, slot) -> bool: sends the command to its node now if
        # nothing unusual can happen (False otherwise); an op not here: the slow lane's
        self.handlers = {P.CMD_PUT: self._put, P.PUT_BODY: self._put,
                         P.CMD_RESERVE: self._reserve, P.CMD_RESERVE_WITH_TIMEOUT: self._reserve,
                         **dict.fromkeys(_BY_JOB, self._by_job)}

    def close(self) -> None:
        self.reaper.stop()
        self.reaper.close()
        self.shared.close()

    # --- dispatch ------------------------------------------------------------------------

    def _link(self, client, conn, member) -> Link | None:
        """The client's link for ``conn``, if the connection is ready for a command
        (None: no connection yet, or one that is not ready: the slow lane's).

        A connection idle for ``STALE_AFTER`` seconds is first checked for a
        close by the node (a restart): then the slow lane reconnects, so that
        case never makes a command's fate unknown."""
        if conn is None:
            return None
        link = client.links.get(conn)
        if link is not None and link.turn == client.turn:
            return link  # checked already in this turn
        c = conn.client
        if conn.pending or not c.connected:
            return None
        if link is not None and link.connects != c.connects:  # closed and opened again since
            link.stop()
            link = None
        if link is None:
            link = client.links[conn] = Link(client, conn, member, self.numbers[member.name],
                                             self._readable)
        now = self.clock()
        if not link.expect and now - link.used > STALE_AFTER and not c.still_open():
            return None
        c.nonblocking()  # (the slow lane may have used it, with its timeout)
        link.used = now
        link.turn = client.turn
        return link

    def send(self, link: Link, data: bytes, slot, reader, job: int = 0) -> None:
        run = link.run
        if run is None:  # the link's first command this turn
            if not link.expect:
                link.since = link.used
                self.busy.add(link)
            run = link.run = Run()
            link.expect.append(run)
            link.client.inflight += 1
            link.client.dirty.add(link)
        run.items.append((slot, reader, job, link.queued))
        link.out.append(data)
        link.queued += len(data)

    def _put(self, client, slot) -> bool:
        tube = client.state.using
        if not (client.pipelines or client.inflight):  # a lone put: a shared connection
            member = self._put_member(tube)
            if member is not None and self.shared.put(client, slot, member):
                client.state.producer = True
                return True
        route = client.put_route  # (turn, tube, link): the last put's, this turn
        if route[0] == client.turn and route[1] is tube:
            link = route[2]
        else:
            link = self._put_link(client, tube)
            if link is None:
                return False
            client.put_route = (client.turn, tube, link)
        self.send(link, put_command(slot[EV]), slot, self.read_put)
        return True

    def _put_link(self, client, tube: str) -> Link | None:
        """The link a put to ``tube`` goes on now (its ``use`` sent ahead if needed)."""
        member = self._put_member(tube)
        if member is None:
            return None
        link = self._link(client, _idle_conn(client.session, member.name), member)
        if link is None:
            return None
        if link.conn.client.using != tube:
            self.send(link, link.conn.client.use_command(tube), None, self.read_prefix)
        client.state.producer = True
        return link

    def _put_member(self, tube: str):
        """The node a put to ``tube`` goes to from the fast path, or None: the slow lane's
        (a spread tube, the proxy draining, the owner dead or draining: failover)."""
        cc = self.cc
        if cc.is_spread(tube) or self.commands.draining:
            return None
        member = self.pool.members[cc.node_for(tube)]
        if member.dead_until or member.draining_until:
            return None
        return member

    def _by_job(self, client, slot) -> bool:
        ev = slot[EV]
        where = proxy_ids.decode(ev[1])
        if where is None:
            return False
        name, job_id = where
        member = self.pool.members.get(name)
        if member is None or member.dead_until:
            return False
        s = client.session
        link = self._link(client, s.holder(name, job_id) or _idle_conn(s, name), member)
        if link is None:
            return False
        reader = self._read_done if ev[0] in _ENDS_RESERVATION else self._read_job
        self.send(link, _BY_JOB[ev[0]](job_id, ev), slot, reader, job_id)
        return True

    def _reserve(self, client, slot) -> bool:
        route = client.reserve_route  # (turn, link): the last reserve's, this turn
        if route[0] == client.turn:
            link = route[1]
        else:
            link = self._reserve_link(client)
            if link is None:
                return False
            client.reserve_route = (client.turn, link)
        self.send(link, b"reserve-with-timeout 0\r\n", slot, self._read_reserve)
        return True

    def _reserve_link(self, client) -> Link | None:
        """The link a reserve asks now: the one owner node of the watched tubes, if the
        reserve needs nothing more (else None: the slow lane's multiplexed reserve)."""
        cc, pool, s = self.cc, self.pool, client.session
        if client.reserve_redone or s.buffer or self.clock() >= s.next_sweep:
            return None  # the other nodes are due to be asked: the slow lane sweeps them
        owners = set()
        for tube in s.watching:
            if cc.is_spread(tube):
                return None
            owners.add(cc.node_for(tube))
        if len(owners) != 1:
            return None
        member = pool.members[owners.pop()]
        if member.dead_until:
            return None
        link = self._link(client, _idle_conn(s, member.name), member)
        if link is None:
            return None
        conn = link.conn
        if conn.watch_gen != s.watch_gen:
            data, count = conn.client.watch_commands(s.watching)
            conn.watch_gen = s.watch_gen
            for i in range(count):  # one reply each; the bytes go with the first
                self.send(link, data if i == 0 else b"", None, self.read_prefix)
        client.state.worker = True
        return link

    # --- writing -------------------------------------------------------------------------
    def flush(self, link: Link) -> None:
        """Write what was dispatched to ``link`` this turn (the rest when writable)."""
        link.run = None
        out = link.out
        link.out = []
        self._write(link, out[0] if len(out) == 1 else b"".join(out))
        if link.expect and not link.reader.active:
            link.reader.start(link.on_read, link)

    def _write(self, link: Link, data: bytes) -> None:
        try:
            sent = link.send(data)
        except TRY_LATER:
            sent = 0
        except OSError:  # (not logged per link: a node's failure would flood the log)
            self._lost(link)
            return
        link.written += sent
        if sent < len(data):
            link.out = [data[sent:]]
            link.client.dirty.discard(link)
            if not link.writer.active:
                link.writer.start(link.client.guard, self._writable, link)

    def _writable(self, link: Link) -> None:
        link.writer.stop()
        if link.out:
            data, link.out = link.out[0], []
            self._write(link, data)
        link.client.after_io()

    # --- reading -------------------------------------------------------------------------
    def _readable(self, link: Link) -> None:
        """The read watcher's callback: a bug ends the client's connection, not the loop."""
        try:
            self._read(link)
        except Exception:
            link.client.failed()

    def _read(self, link: Link) -> None:
        client = link.client
        if not link.expect:  # the node closed an idle connection (or wrote out of turn)
            self._idle_closed(link)
            return
        try:
            data = link.recv(RECV_SIZE)
        except TRY_LATER:
            return
        except OSError:
            data = b""  # (as an end of stream: lost)
        self.poke()
        if not data:  # (an EOF with replies due: the node died or closed it)
            self._lost(link)
            client.after_io()
            return
        replies = link.feed(data)
        expect = link.expect
        answer = client.answer
        for reply in replies:
            if not expect:  # a reply nobody asked for: out of step
                link.conn.client.close()
                self._lost(link)
                break  # (``_lost`` gave the link a new, empty expect: handled below)
            run = expect[0]
            items, i = run.items, run.done
            slot, reader, job, _ = items[i]
            result = reader(link, job, reply)
            if link.expect is not expect:
                break  # the reader found the connection out of step: ``_lost`` answered all
            if slot is not None:
                if result is REDO:
                    answer(slot, REDO)
                else:
                    slot[REPLY] = result
            run.done = i = i + 1
            if i == len(items):
                expect.popleft()
                client.inflight -= 1
        if link.expect is not expect:
            client.after_io()  # lost meanwhile
            return
        if expect:
            link.since = self.clock()
        else:  # the reader stays on until the slow lane runs (``quiet``, ``listen``)
            self.busy.discard(link)
        if link.member.failures:
            self.pool.ok(link.member)
        client.after_io()
        self.done()

    def read_put(self, link: Link, job: int, reply: tuple):
        words = reply[0]
        word = words[0]
        if word == b"INSERTED" or word == b"BURIED":
            return b"%s %d%s\r\n" % (word, int(words[1]), link.digits)
        if word == b"DRAINING":
            self.pool.drained(link.member)
            return REDO  # the slow lane fails over to the next node
        if word == b"OUT_OF_MEMORY" and self.cc.spill_when_full:
            return REDO
        return b" ".join(words) + P.CRLF

    def _read_done(self, link: Link, job: int, reply: tuple):
        """delete, release, bury: whatever the answer, the job is no longer held."""
        link.conn.held.pop(job, None)
        return b" ".join(reply[0]) + P.CRLF

    def _read_job(self, link: Link, job: int, reply: tuple):
        words, body = reply
        if body is not None and words[0] == b"FOUND":  # peek
            return b"FOUND %d%s %d\r\n%s\r\n" % (int(words[1]), link.digits, len(body), body)
        return b" ".join(words) + P.CRLF

    def _read_reserve(self, link: Link, job: int, reply: tuple):
        words, body = reply
        client = link.client
        if words[0] != b"RESERVED":
            client.reserve_redone = True  # this and the reserves after it: the slow lane
            return REDO
        conn = link.conn
        now = self.clock()
        job_id = int(words[1])
        conn.held[job_id] = now
        if client.reserve_redone:  # an earlier reserve went slow: it gets this job first
            client.session.buffer.append((conn.client.job_from(reply), conn, now))
            return REDO
        return b"RESERVED %d%s %d\r\n%s\r\n" % (job_id, link.digits, len(body), body)

    def read_prefix(self, link: Link, job: int, reply: tuple):
        word = reply[0][0]
        if word != b"USING" and word != b"WATCHING":
            log.warning("%s answered %r to use/watch: connection reset", link.name, word)
            link.conn.client.close()
            self._lost(link)
        return None

    # --- failures ------------------------------------------------------------------------
    def _lost(self, link: Link, hung: bool = False) -> None:
        """The connection failed: the node is told failed, every command in flight
        answered (REDO if never written, else as a lost command)."""
        client = link.client
        if client is self.shared:
            self.shared.lost(link, hung)
            return
        if client.links.get(link.conn) is link:
            del client.links[link.conn]
        link.stop()
        self.busy.discard(link)
        client.dirty.discard(link)
        link.run = None
        self.pool.failed(link.member, hung=hung)
        client.session.lost(link.conn)
        link.conn.client.close()
        expect, link.expect = link.expect, deque()
        client.inflight -= len(expect)
        for run in expect:
            for slot, reader, _, start in run.items[run.done:]:
                if slot is None:
                    continue
                # never written, or a reserve (the node released the job): the slow lane
                redo = start >= link.written or reader == self._read_reserve
                client.answer(slot, REDO if redo else P.INTERNAL_ERROR)

    def _idle_closed(self, link: Link) -> None:
        """Readable with no reply expected: a node restart closed it (the slow lane will
        reconnect; the node is not failed for that), or it is out of step."""
        if not link.conn.client.still_open():
            link.client.links.pop(link.conn, None)
            link.stop()
            link.conn.client.close()
            link.client.session.lost(link.conn)

    def _reap(self) -> None:
        """Replies overdue by the operation timeout: the node hangs (SIGSTOP, a partition).
        Idle shared links to a node removed or moved (a reload) are closed."""
        self.shared.drop_moved()
        if not self.busy or not self.pool.op_timeout:
            return
        limit = self.clock() - self.pool.op_timeout
        overdue = [lk for lk in self.busy if lk.since < limit]
        per_node = Counter(lk.name for lk in overdue)
        for name, count in sorted(per_node.items()):  # one line a node, not a client
            log.warning("%s: no reply within %s s on %d connection%s: marked dead", name,
                        self.pool.op_timeout, count, "" if count == 1 else "s")
        for link in overdue:
            link.client.guard(self._hung, link)

    def _hung(self, link: Link) -> None:
        self._lost(link, hung=True)
        link.client.after_io()

    def quiet(self, client) -> None:
        """Stop the readers of ``client``'s links: its slow lane uses the connections now."""
        for link in client.links.values():
            link.reader.stop()

    def listen(self, client) -> None:
        """The slow lane is done: watch ``client``'s idle links again, so that a node
        closing one (a restart) is seen (``_idle_closed``) before a command is
        written to it.  Not a connection with a reserve in flight (the slow lane
        reads that reply) or one opened again since its link was made."""
        for conn, link in client.links.items():
            c = conn.client
            if (not link.reader.active and not conn.pending and c.connected
                    and link.connects == c.connects):
                link.reader.start(link.on_read, link)

    def forget(self, client) -> None:
        """The client is gone: stop its links (its greenlet closes the connections)."""
        for link in client.links.values():
            link.stop()
            self.busy.discard(link)
        client.links.clear()
        client.inflight = 0


def _idle_conn(session, name: str):
    """One of the session's connections to ``name`` with no reserve in flight, or None
    (never opens or waits: ``Session.conn`` may do both, the slow lane may)."""
    for conn in session.conns.get(name, ()):
        if not conn.pending:
            return conn
    return None


# by-job commands as written for the node, from the node's job id and the event
_BY_JOB = {
    P.CMD_DELETE: lambda j, ev: b"delete %d\r\n" % j,
    P.CMD_RELEASE: lambda j, ev: b"release %d %d %d\r\n" % (j, ev[2], ev[3]),
    P.CMD_BURY: lambda j, ev: b"bury %d %d\r\n" % (j, ev[2]),
    P.CMD_TOUCH: lambda j, ev: b"touch %d\r\n" % j,
    P.CMD_KICK_JOB: lambda j, ev: b"kick-job %d\r\n" % j,
    P.CMD_PEEK: lambda j, ev: b"peek %d\r\n" % j,
}
_ENDS_RESERVATION = frozenset({P.CMD_DELETE, P.CMD_RELEASE, P.CMD_BURY})
