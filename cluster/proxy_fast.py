"""Commands the proxy sends to one node straight from the event loop.

How this works
--------------
Most of what a beanstalkd client sends goes to exactly one node and needs no
waiting: a put to its tube's owner, a delete/release/bury/touch/peek/kick-job
(the proxy id names the node), a reserve that one node can answer at once.
``FastPath.handler(op)`` sends such a command on the client's own connection to
that node (a ``Conn`` of its ClusterClient session: the very connection the
slow lane would use, so which connection holds which job is known in one
place) without any greenlet switch:

* every command dispatched in one turn of the loop goes to its node in one
  write (``flush``), so a pipelining client costs one send per node per read;
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

Only plain TCP node connections take this path (TLS to the nodes: every
command takes the slow lane).  The session internals it touches (``Conn``,
``Session.buffer``, the watch generation) are bsclient's; ``proxy_cluster``
is the other module that does so.
"""

from __future__ import annotations

import logging
from collections import deque

from bsclient import protocol as P
from bsclient.errors import ConnectionLostError
from gevent import get_hub

from . import proxy_ids

log = logging.getLogger("bscluster.proxy")

REDO = object()  # a reply meaning: run this command on the slow lane after all
READ, WRITE = 1, 2
REAP_EVERY = 0.25  # seconds between looks for overdue replies (a hung node)
STALE_AFTER = 1.0  # seconds idle after which a connection is checked before use
MAX_RUN = 256  # commands of one kind dispatched together
# the kinds of command this path takes, by event; a run is consecutive commands of one kind
KINDS = {P.CMD_PUT: "put", P.PUT_BODY: "put", P.CMD_RESERVE: "reserve",
         P.CMD_RESERVE_WITH_TIMEOUT: "reserve", P.CMD_DELETE: "job", P.CMD_RELEASE: "job",
         P.CMD_BURY: "job", P.CMD_TOUCH: "job", P.CMD_KICK_JOB: "job", P.CMD_PEEK: "job"}
# slot fields (proxy_engine owns the layout: [seq, event, reply])
EV, REPLY = 1, 2


class Run:
    """Commands sent on one link together: their slots and how their replies are read."""

    __slots__ = ("slots", "read", "jobs", "start", "done")

    def __init__(self, slots: list, read, jobs, start: int) -> None:
        self.slots = slots  # reply slots, in order (None: a use/watch sent ahead)
        self.read = read  # read(link, run, replies, i) -> index after the replies it took
        self.jobs = jobs  # the node job ids of by-job commands
        self.start = start  # offset of its first byte in the link's output stream
        self.done = 0  # replies read so far


class Link:
    """The fast path's side of one session ``Conn``: runs in flight, bytes to write."""

    __slots__ = ("client", "conn", "member", "number", "name", "expect", "out", "queued",
                 "written", "reader", "writer", "fd", "connects", "since", "used", "turn")

    def __init__(self, client, conn, member, number: int) -> None:
        self.client = client  # the proxy client (proxy_engine.ClientConn)
        self.conn = conn
        self.member = member
        self.number = number  # the node's number in proxy ids
        self.name = member.name
        self.expect: deque[Run] = deque()  # runs whose replies are still (partly) due
        self.out: list[bytes] = []  # dispatched this turn, not yet written
        self.queued = 0  # bytes dispatched so far (``Run.start`` offsets)
        self.written = 0  # bytes the socket took so far
        self.fd = conn.client.fileno()
        self.connects = conn.client.connects
        loop = get_hub().loop
        self.reader = loop.io(self.fd, READ)
        self.writer = loop.io(self.fd, WRITE)
        self.since = 0.0  # when the oldest reply expected was asked for
        self.used = 0.0  # when a command was last dispatched on it
        self.turn = -1  # the client's dispatch turn it was last checked in

    def current(self) -> bool:
        """Still the connection this link was made for (not closed or reopened)."""
        c = self.conn.client
        return c.connects == self.connects and c.fileno() == self.fd

    def stop(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.reader.close()
        self.writer.close()


class FastPath:
    """Dispatch and reply reading for every proxy client (one per ProxyServer)."""

    def __init__(self, commands) -> None:
        self.commands = commands
        self.cc = commands.cc
        self.pool = commands.cc._pool
        self.numbers = commands.numbers
        self.enabled = self.pool.ssl_context is None
        self.busy: set[Link] = set()  # links with replies outstanding (for the reaper)
        self.reaper = get_hub().loop.timer(REAP_EVERY, REAP_EVERY)
        self.reaper.start(self._reap)
        self._runs = {"put": self._puts, "reserve": self._reserves, "job": self._by_job}

    def close(self) -> None:
        self.reaper.stop()
        self.reaper.close()

    # --- dispatch ------------------------------------------------------------------------
    def kind(self, op) -> str | None:
        """The kind of run an ``op`` command joins, or None: the slow lane's."""
        return KINDS.get(op) if self.enabled else None

    def send(self, client, kind: str, slots: list) -> int:
        """Send the commands of ``slots`` (a run of ``kind``) to their nodes: how many, a
        prefix (the first one not sent, and those after it, take the slow lane)."""
        return self._runs[kind](client, slots)

    def _link(self, client, conn, member) -> Link | None:
        """The client's link for ``conn``, if the connection is ready for a command.

        A connection idle for ``STALE_AFTER`` seconds is first checked for a
        close by the node (a restart): then the slow lane reconnects, so that
        case never makes a command's fate unknown."""
        link = client.links.get(conn)
        if link is not None and link.turn == client.turn:
            return link  # checked already in this turn
        if conn.pending or not conn.client.connected:
            return None
        if link is not None and not link.current():
            link.stop()
            link = None
        if link is None:
            link = client.links[conn] = Link(client, conn, member, self.numbers[member.name])
        now = self.pool.clock()
        if not link.expect and now - link.used > STALE_AFTER and not conn.client.still_open():
            return None
        link.used = now
        link.turn = client.turn
        return link

    def _send(self, link: Link, data: bytes, slots: list, read, jobs=None) -> None:
        if not link.expect:
            link.since = link.used
            self.busy.add(link)
        link.expect.append(Run(slots, read, jobs, link.queued))
        link.client.inflight += 1
        link.out.append(data)
        link.queued += len(data)
        link.client.dirty.add(link)

    def _puts(self, client, slots: list) -> int:
        cc, pool, s = self.cc, self.pool, client.session
        tube = client.state.using
        if tube in cc.spread or self.commands.draining:
            return 0
        member = pool.members[cc.node_for(tube)]
        if member.dead_until or member.draining_until:
            return 0
        link = self._link(client, s.conn(member.name, member.address), member)
        if link is None:
            return 0
        if link.conn.client.using != tube:
            self._send(link, link.conn.client.use_command(tube), [None], self._read_prefix)
        data = b"".join([b"put %d %d %d %d\r\n%s\r\n" % (ev[1], ev[2], ev[3], len(ev[4]), ev[4])
                         for ev in [slot[EV] for slot in slots]])
        self._send(link, data, slots, self._read_puts)
        client.state.producer = True
        return len(slots)

    def _by_job(self, client, slots: list) -> int:
        """Consecutive commands on one link go as one run."""
        s, members = client.session, self.pool.members
        sent = 0
        run: list = []
        run_link = None
        for slot in slots:
            ev = slot[EV]
            where = proxy_ids.decode(ev[1])
            member = None if where is None else members.get(where[0])
            if member is None or member.dead_until:
                break
            name, job_id = where
            link = self._link(client, s.holder(name, job_id) or s.conn(name, member.address),
                              member)
            if link is None:
                break
            if link is not run_link and run:
                self._send_jobs(run_link, run)
                run = []
            run_link = link
            run.append((slot, job_id))
            sent += 1
        if run:
            self._send_jobs(run_link, run)
        return sent

    def _send_jobs(self, link: Link, run: list) -> None:
        data = b"".join([_BY_JOB[slot[EV][0]](job_id, slot[EV]) for slot, job_id in run])
        self._send(link, data, [slot for slot, _ in run], self._read_jobs,
                   [job_id for _, job_id in run])

    def _reserves(self, client, slots: list) -> int:
        cc, pool, s = self.cc, self.pool, client.session
        if client.reserve_redone or s.buffer or pool.clock() >= s.next_sweep:
            return 0  # the other nodes are due to be asked: the slow lane sweeps them
        spread = cc.spread
        owners = set()
        for tube in s.watching:
            if tube in spread:
                return 0
            owners.add(cc.node_for(tube))
        if len(owners) != 1:
            return 0
        member = pool.members[owners.pop()]
        if member.dead_until:
            return 0
        link = self._link(client, s.conn(member.name, member.address), member)
        if link is None:
            return 0
        conn = link.conn
        if conn.watch_gen != s.watch_gen:
            data, count = conn.client.watch_commands(s.watching)
            conn.watch_gen = s.watch_gen
            if count:
                self._send(link, data, [None] * count, self._read_prefix)
        self._send(link, b"reserve-with-timeout 0\r\n" * len(slots), slots, self._read_reserves)
        client.state.worker = True
        return len(slots)

    # --- writing -------------------------------------------------------------------------
    def flush(self, link: Link) -> None:
        """Write what was dispatched to ``link`` this turn (the rest when writable)."""
        data = b"".join(link.out) if len(link.out) > 1 else link.out[0]
        link.out = []
        self._write(link, data)
        if link.expect and not link.reader.active:
            link.reader.start(link.client.guard, self._readable, link)

    def _write(self, link: Link, data: bytes) -> None:
        try:
            sent = link.conn.client.send_nowait(data)
        except ConnectionLostError:
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
        client = link.client
        if not link.expect:  # the node closed an idle connection (or wrote out of turn)
            self._idle_closed(link)
            return
        try:
            replies = link.conn.client.read_ready()
        except ConnectionLostError:
            self._lost(link)
            client.after_io()
            return
        expect = link.expect
        i, n = 0, len(replies)
        while i < n:
            if not expect:  # a reply nobody asked for: out of step
                link.conn.client.close()
                self._lost(link)
                break
            run = expect[0]
            i = run.read(link, run, replies, i)
            if run.done == len(run.slots):
                expect.popleft()
                client.inflight -= 1
        if expect:
            link.since = self.pool.clock()
        else:  # the reader stays on until the slow lane runs (``quiet``)
            self.busy.discard(link)
        if link.member.failures:
            self.pool.ok(link.member)
        client.after_io()

    def _read_puts(self, link: Link, run: Run, replies: list, i: int) -> int:
        slots, done = run.slots, run.done
        end = min(len(replies), i + len(slots) - done)
        radix, number = proxy_ids.ID_RADIX, link.number - 1  # proxy_ids.encode, inlined
        redo = []
        for words, _ in replies[i:end]:
            word = words[0]
            slot = slots[done]
            done += 1
            if word == b"INSERTED" or word == b"BURIED":
                slot[REPLY] = b"%s %d\r\n" % (word, int(words[1]) * radix + number)
            elif word == b"DRAINING" or (word == b"OUT_OF_MEMORY" and self.cc.spill_when_full):
                if word == b"DRAINING":
                    self.pool.drained(link.member)
                redo.append(slot)  # the slow lane fails over to the next node
            else:
                slot[REPLY] = b" ".join(words) + P.CRLF
        run.done = done
        for slot in redo:
            link.client.answer(slot, REDO)
        return end

    def _read_jobs(self, link: Link, run: Run, replies: list, i: int) -> int:
        slots, jobs, done = run.slots, run.jobs, run.done
        end = min(len(replies), i + len(slots) - done)
        held = link.conn.held
        for words, body in replies[i:end]:
            slot = slots[done]
            op = slot[EV][0]
            if op in _ENDS_RESERVATION:
                held.pop(jobs[done], None)  # deleted, released or buried: no longer ours
            if body is not None and words[0] == b"FOUND":  # peek
                slot[REPLY] = b"FOUND %d %d\r\n%s\r\n" % (
                    proxy_ids.encode(link.number, int(words[1])), len(body), body)
            else:
                slot[REPLY] = b" ".join(words) + P.CRLF
            done += 1
        run.done = done
        return end

    def _read_reserves(self, link: Link, run: Run, replies: list, i: int) -> int:
        slots, done = run.slots, run.done
        end = min(len(replies), i + len(slots) - done)
        client, conn = link.client, link.conn
        now = self.pool.clock()
        radix, number = proxy_ids.ID_RADIX, link.number - 1  # proxy_ids.encode, inlined
        for reply in replies[i:end]:
            words, body = reply
            slot = slots[done]
            done += 1
            if words[0] != b"RESERVED":
                client.reserve_redone = True  # this and later reserves: the slow lane
                client.answer(slot, REDO)
                continue
            job_id = int(words[1])
            conn.held[job_id] = now
            if client.reserve_redone:  # an earlier reserve went slow: it gets this job first
                client.session.buffer.append((conn.client.job_from(reply), conn, now))
                client.answer(slot, REDO)
                continue
            slot[REPLY] = b"RESERVED %d %d\r\n%s\r\n" % (job_id * radix + number, len(body), body)
        run.done = done
        return end

    def _read_prefix(self, link: Link, run: Run, replies: list, i: int) -> int:
        end = min(len(replies), i + len(run.slots) - run.done)
        for words, _ in replies[i:end]:
            if words[0] != b"USING" and words[0] != b"WATCHING":
                log.warning("%s answered %r to use/watch: connection reset", link.name, words[0])
                link.conn.client.close()
                self._lost(link)
                return len(replies)
            run.done += 1
        return end

    # --- failures ------------------------------------------------------------------------
    def _lost(self, link: Link, hung: bool = False) -> None:
        """The connection failed: the node is told failed, every command in flight
        answered (REDO if never written, else as a lost command)."""
        client = link.client
        if client.links.get(link.conn) is link:
            del client.links[link.conn]
        link.stop()
        self.busy.discard(link)
        client.dirty.discard(link)
        self.pool.failed(link.member, hung=hung)
        client.session.lost(link.conn)
        link.conn.client.close()
        expect, link.expect = link.expect, deque()
        client.inflight -= len(expect)
        for run in expect:
            redo = run.read == self._read_reserves or run.start >= link.written
            for slot in run.slots[run.done:]:
                if slot is not None:
                    # never written, or a reserve (the node released the job): the slow lane
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
        """Replies overdue by the operation timeout: the node hangs (SIGSTOP, a partition)."""
        if not self.busy or not self.pool.op_timeout:
            return
        limit = self.pool.clock() - self.pool.op_timeout
        for link in [lk for lk in self.busy if lk.since < limit]:
            log.warning("%s: no reply within %s s: marked dead", link.name, self.pool.op_timeout)
            link.client.guard(self._hung, link)

    def _hung(self, link: Link) -> None:
        self._lost(link, hung=True)
        link.client.after_io()

    def quiet(self, client) -> None:
        """Stop the readers of ``client``'s links: its slow lane uses the connections now."""
        for link in client.links.values():
            link.reader.stop()

    def forget(self, client) -> None:
        """The client is gone: stop its links (its greenlet closes the connections)."""
        for link in client.links.values():
            link.stop()
            self.busy.discard(link)
        client.links.clear()
        client.inflight = 0


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
