"""The proxy's shared put connections: one per node, for the clients that wait for each reply.

How this works
--------------
A client that waits for each reply before sending its next command (most
PHP, Ruby and Python clients do) gives the proxy one command per read, so
each of its commands costs the proxy a write and a read on a node connection
of its own.  Its puts therefore go on one connection per node shared by all
such clients (``SharedPuts``; twemproxy shares its server connections the same
way): every lone put read in one turn of the loop goes to its node in one
write at the end of the turn (``_flush``), and the replies come back in
one read.  Only puts: a job reserved on a shared connection would be every
client's (a delete from another client would succeed, a hang-up would not
release it).  The rules:

* a put goes shared only if its client has nothing in flight and has never
  sent a command before the reply to the last one (``ClientConn.pipelines``:
  a pipelining client batches its own commands, and keeps its connections);
* while its shared put is in flight, a client's later commands wait in its
  queue (``ClientConn.shared``), so none can pass it on another connection;
* the shared connection is opened in a greenlet of its own the first time a
  put needs it (that put, and any until it is open, go the client's way), and
  again after it fails or the node closes it while idle (a restart); failures
  answer as on a client's own connection: REDO if never written, else
  INTERNAL_ERROR; a hung node is found by the same reaper.
"""

from __future__ import annotations

import logging
from collections import deque

import gevent
from bsclient import protocol as P
from bsclient.errors import ConnectionLostError
from bsclient.session import Conn

from .proxy_link import EV, RECV_SIZE, REDO, STALE_AFTER, TRY_LATER, Link, put_command

log = logging.getLogger("bscluster.proxy")

REOPEN_AFTER = 1.0  # seconds before a shared connection that could not open is tried again


class SharedPuts:
    """The shared put links of one proxy (``FastPath.shared``).  It stands in for a
    ClientConn where a ``Link`` asks its client for something (``guard``,
    ``after_io``, ``dirty``, ``inflight``)."""

    def __init__(self, fast) -> None:
        self.fast = fast  # the FastPath: its writing, reply readers, pool and clock
        self.pool, self.clock = fast.pool, fast.clock
        self.links: dict[str, Link] = {}  # node name -> its shared link
        self.dirty: set[Link] = set()  # links with puts to write at the end of this turn
        self.inflight = 0  # runs in flight, as a ClientConn counts them (clients: their puts)
        self.flushing = False  # a write of ``dirty`` is scheduled
        self.opening: set[str] = set()  # nodes a connection is being opened to
        self.retry_at: dict[str, float] = {}  # node -> no new connection before then

    def guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("proxy: shared put connection failed")

    def after_io(self) -> None:
        pass  # (its clients are told one by one: ``_tell``)

    def put(self, client, slot, member) -> bool:
        """Send a lone put to ``member`` on its shared link (False: none is open yet)."""
        link = self._link(member, client.state.using)
        if link is None:
            return False
        fast = self.fast
        fast.send(link, put_command(slot[EV]), slot, fast.read_put, client)
        client.inflight += 1
        client.shared += 1
        if not self.flushing:
            self.flushing = True
            fast.loop.run_callback(self._flush)
        return True

    def _link(self, member, tube: str) -> Link | None:
        """The shared link to ``member`` a put to ``tube`` goes on now (its ``use`` sent
        ahead if needed), or None: the client's own connection then (one is being opened)."""
        link = self.links.get(member.name)
        now = self.clock()
        if link is not None:
            c = link.conn.client
            if link.member is not member or link.connects != c.connects:  # moved, reopened
                self.drop(link)
                link = None
            elif not link.expect and now - link.used > STALE_AFTER and not c.still_open():
                self.drop(link)  # the node closed it (a restart)
                link = None
        if link is None:
            self._open(member, now)
            return None
        link.used = now
        c = link.conn.client
        if c.using != tube:
            self.fast.send(link, c.use_command(tube), None, self.fast.read_prefix)
        return link

    def _open(self, member, now: float) -> None:
        """Open the shared connection to ``member`` in a greenlet of its own (a connect
        may wait; a callback never does)."""
        name = member.name
        if name in self.opening or now < self.retry_at.get(name, 0.0):
            return
        self.opening.add(name)
        gevent.spawn(self._connect, member)

    def _connect(self, member) -> None:
        name = member.name
        client = self.pool.new_client(name, member.address)
        try:
            client.connect()
        except ConnectionLostError:  # (the slow lane meets it too, and says so)
            self.retry_at[name] = self.clock() + REOPEN_AFTER
            return
        finally:
            self.opening.discard(name)
        if self.pool.members.get(name) is not member or name in self.links:
            client.close()  # removed or moved meanwhile
            return
        link = self.links[name] = Link(self, Conn(client), member, self.fast.numbers[name],
                                       self._readable)
        link.used = self.clock()
        link.reader.start(link.on_read, link)  # (a close while idle is seen at once)

    def _flush(self) -> None:
        """The end of a loop turn: every client's lone puts go out, one write per node."""
        self.flushing = False
        dirty, self.dirty = self.dirty, set()
        for link in dirty:
            self.fast.flush(link)

    def _readable(self, link: Link) -> None:
        """A shared link's read watcher: replies go to the slots of many clients."""
        try:
            self._read(link)
        except Exception:
            log.exception("proxy: shared put connection failed")
            self.lost(link)

    def _read(self, link: Link) -> None:
        if not link.expect:  # the node closed it while idle (a restart), or out of step
            self.drop(link)
            return
        try:
            data = link.recv(RECV_SIZE)
        except TRY_LATER:
            return
        except OSError:
            data = b""
        self.fast.poke()
        if not data:
            self.lost(link)
            return
        expect = link.expect
        told = {}
        for reply in link.feed(data):
            if not expect:  # a reply nobody asked for: out of step
                self.lost(link)
                break
            run = expect[0]
            items, i = run.items, run.done
            slot, reader, client, _ = items[i]
            try:
                result = reader(link, client, reply)
            except Exception:  # a bug: it ends that client's connection, not the others'
                if slot is None:
                    raise
                client.failed()
                result = None
            if link.expect is not expect:
                break  # ``lost`` answered every put still due
            if slot is not None:
                client.inflight -= 1
                client.shared -= 1
                if result is not None:
                    client.answer(slot, result)
                    told[client] = True
            run.done = i = i + 1
            if i == len(items):
                expect.popleft()
                self.inflight -= 1
        if link.expect is expect:
            if expect:
                link.since = self.clock()
            else:
                self.fast.busy.discard(link)
            if link.member.failures:
                self.pool.ok(link.member)
        self._tell(told)
        self.fast.done()

    def _tell(self, clients) -> None:
        """Clients whose shared puts were answered: replies out, the next commands in."""
        for client in clients:
            if not client.closing:  # (a gone client's puts still ran, as beanstalkd's)
                client.guard(client.pump)

    def lost(self, link: Link, hung: bool = False) -> None:
        """The link failed: the node is told failed, every put in flight answered (REDO if
        never written, else INTERNAL_ERROR: it may have run)."""
        self.drop(link)
        self.pool.failed(link.member, hung=hung)
        expect, link.expect = link.expect, deque()
        self.inflight -= len(expect)
        told = {}
        for run in expect:
            for slot, _, client, start in run.items[run.done:]:
                if slot is None:
                    continue
                client.inflight -= 1
                client.shared -= 1
                client.answer(slot, REDO if start >= link.written else P.INTERNAL_ERROR)
                told[client] = True
        self._tell(told)

    def drop(self, link: Link) -> None:
        """Close a shared link (its puts still due: ``lost``)."""
        if self.links.get(link.name) is link:
            del self.links[link.name]
        link.stop()
        self.fast.busy.discard(link)
        self.dirty.discard(link)
        link.run = None
        link.conn.client.close()

    def close(self) -> None:
        for link in list(self.links.values()):
            self.drop(link)

    def drop_moved(self) -> None:
        """Close idle links to a node removed or moved (a reload)."""
        members = self.pool.members
        for link in [lk for lk in self.links.values()
                     if members.get(lk.name) is not lk.member and not lk.expect]:
            self.drop(link)
