"""One proxy client connection: commands in, replies out in order, two lanes between.

How this works
--------------
A ``ClientConn`` is driven by watcher callbacks on the event loop, with no
greenlet switch on the way of an ordinary command:

* the client socket's read watcher reads, cuts the bytes into commands with
  the node's own codec (``CommandReader``) and queues them (``pump``);
* each command gets a reply *slot*, in order.  ``FastPath.handlers`` send
  what one node can answer at once (``proxy_fast``); its reply fills the
  slot from the node connection's watcher.  Everything else goes to the
  *slow lane*: this connection's own greenlet runs it through
  ``ProxyCommands`` (the shared ClusterClient, in this greenlet's session),
  and may wait there (a reserve);
* slots are answered in command order, as many as are ready in one send;
  what the socket does not take now is written when it is writable.

The lanes never overlap: the slow lane runs only when no fast command is in
flight (so the two never share a node connection, and a command sees the
effects of every command before it), and nothing is dispatched while the
slow lane has work.  A client that waits for each reply has its puts sent on
a node connection every such client shares (``proxy_shared``); nothing of
its own is dispatched while one is in flight, so nothing passes it.  A fast command whose reply says it needs the slow lane
after all (``proxy_fast.REDO``) is queued there in its place.

Flow control: the client's commands are read ahead only up to ``BACKLOG``
unanswered ones, and not while more than ``OUT_LIMIT`` reply bytes wait for
the client to read them (a slow or silent client costs bounded memory).

Ending: at end of stream the commands already read are still answered
(beanstalkd does the same), unless the slow lane is waiting in a reserve,
which ends at once with TIMED_OUT (beanstalkd's answer to a hang-up while
waiting).  The greenlet then closes the session's node connections, so every
job the client had reserved goes back to ready at once.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque

import gevent
from bsclient.protocol import CMD_RESERVE, CMD_RESERVE_WITH_TIMEOUT, ERROR, TIMED_OUT
from gevent.event import Event

from . import proxy_cluster as pc
from .proxy_commands import CLOSE
from .proxy_link import EV, READ, RECV_SIZE, REDO, REPLY, TRY_LATER, WRITE

log = logging.getLogger("bscluster.proxy")

BACKLOG = 1024  # unanswered commands read ahead per connection
OUT_LIMIT = 1 << 20  # reply bytes waiting for a slow client before reading pauses
LAST_WORDS_SECONDS = 10  # a closing connection's unsent replies get this long
RESERVES = frozenset({CMD_RESERVE, CMD_RESERVE_WITH_TIMEOUT})


class ClientGone(BaseException):
    """The client hung up while its slow lane waited in a reserve."""


class ClientConn:
    """A client connection: its socket, queued commands, reply slots and lanes."""

    def __init__(self, server, sock, state, codec) -> None:
        self.server = server
        self.commands = server.commands
        self.fast = server.fast
        self.sock = sock
        self.state = state  # ProxyCommands.ClientState: what beanstalkd counts
        self.codec = codec
        self.session = pc.session(server.cc)  # this greenlet's: the slow lane's too
        self.greenlet = gevent.getcurrent()
        self.queue: deque = deque()  # commands read, not yet dispatched
        self.slots: deque[list] = deque()  # dispatched, in order, answered or not
        self.lane: list[list] = []  # slots waiting for the slow lane, in order
        self.links: dict = {}  # session Conn -> proxy_link.Link
        self.dirty: set = set()  # links with commands to write this turn
        self.inflight = 0  # runs sent to nodes whose replies are not all in (proxy_fast)
        self.shared = 0  # of them, puts on a shared connection (nothing passes them)
        self.pipelines = False  # it sent a command before the last reply: no shared puts
        self.reserve_redone = False  # a fast reserve found no job: the rest go slow
        self.seq = 0
        self.turn = 0  # pump rounds (a link checked once per round: proxy_fast)
        self.put_route = (-1, None, None)  # proxy_fast's (turn, tube, link) of the last put
        self.reserve_route = (-1, None)  # and (turn, link) of the last reserve
        self.out: list[bytes] = []  # replies the socket did not take yet
        self.out_bytes = 0
        self.eof = False
        self.closing = False
        self.aborted = False
        self.in_reserve = False  # the slow lane waits in a reserve
        self.wake = Event()
        # never wait: gevent's socket wraps a non-blocking one, whose own calls save a
        # Python frame per read and write (a TLS client's TlsSocket is used as it is)
        raw = getattr(sock, "_sock", sock)
        self.recv, self.send = raw.recv, raw.send
        self.poke, self.done = server.poll.poke, server.poll.done  # (proxy_poll.BusyPoll)
        loop = gevent.get_hub().loop
        fd = sock.fileno()
        self.reader = loop.io(fd, READ)
        self.writer = loop.io(fd, WRITE)

    # --- the greenlet: the slow lane ------------------------------------------------------
    def serve(self) -> None:
        """Run the slow lane until the connection ends (in the connection's greenlet)."""
        self.sock.setblocking(False)
        self.reader.start(self._readable)
        try:
            while not self.closing:
                self.wake.wait()
                self.wake.clear()
                self._run_lane()
                self.guard(self.pump)
        except ClientGone:
            pass  # the hang-up reached the greenlet after its reserve had ended
        finally:
            self.reader.stop()
            self.writer.stop()
            self._last_words()
            self.fast.forget(self)
            self.commands.closed(self.state)
            self.reader.close()
            self.writer.close()
            try:
                self.sock.close()
            except OSError:
                pass

    def _last_words(self) -> None:
        """Replies a slow reader has not taken yet are still sent (bounded) before closing."""
        if self.out and not self.aborted:
            try:
                self.sock.settimeout(LAST_WORDS_SECONDS)
                self.sock.sendall(b"".join(self.out))
            except OSError:
                pass

    def _run_lane(self) -> None:
        ran = bool(self.lane) and not self.inflight
        if ran:
            self.fast.quiet(self)
        while self.lane and not self.inflight and not self.closing:
            slot = self.lane[0]
            reply = self._slow(slot[EV])
            del self.lane[0]
            self.answer(slot, reply)
            self._flush()
        if not self.lane and not self.inflight:
            self.reserve_redone = False
            if ran and not self.closing:
                self.fast.listen(self)

    def _slow(self, ev: tuple):
        if ev[0] not in RESERVES:
            return self.commands.execute(self.state, ev)
        if self.eof:  # hung up: a job ready now is still answered, but nothing waits
            ev = (CMD_RESERVE_WITH_TIMEOUT, 0)
        self.in_reserve = True
        try:
            reply = self.commands.execute(self.state, ev)
        except ClientGone:
            reply = TIMED_OUT  # beanstalkd's answer to a hang-up while waiting
        finally:
            self.in_reserve = False
        if self.eof and reply == TIMED_OUT:
            self.closing = True
        if pc.has_buffered(self.server.cc) and not self._reserve_next():
            pc.give_back(self.server.cc)  # no job held that the client did not get
        return reply

    def _reserve_next(self) -> bool:
        """The client's next command is a reserve (pipelined): a buffered job is its."""
        nxt = self.lane[1] if len(self.lane) > 1 else None
        ev = nxt[EV] if nxt is not None else (self.queue[0] if self.queue else None)
        return ev is not None and ev[0] in RESERVES

    # --- reading and dispatching ----------------------------------------------------------
    def guard(self, fn, *args) -> None:
        """Run a callback; a bug ends this connection, never the loop."""
        try:
            fn(*args)
        except Exception:
            self.failed()

    def failed(self) -> None:
        """A callback raised (a bug): log it and end this connection, never the loop."""
        log.exception("proxy connection failed")
        self.abort()

    def _readable(self) -> None:
        """The read watcher's callback (guarded here, not by ``guard``: a frame less)."""
        try:
            try:
                data = self.recv(RECV_SIZE)
            except TRY_LATER:
                return
            except OSError:
                data = b""
            self.poke()
            if data:
                queue = self.queue
                queue.extend(self.codec.feed(data))
                if len(queue) > 1 or self.slots:  # (a lone command: a reply awaited)
                    self.pipelines = True
            else:
                self.reader.stop()
                self.eof = True
                if self.in_reserve:
                    self.greenlet.kill(ClientGone, block=False)
            self.pump()  # (its after_io throttles the reading)
            self.done()
        except Exception:
            self.failed()

    def _throttle(self) -> None:
        """Read ahead only while the client's backlog and unread replies are bounded."""
        if len(self.queue) + len(self.slots) >= BACKLOG or self.out_bytes > OUT_LIMIT:
            self.reader.stop()
        elif not self.eof and not self.closing and not self.reader.active:
            self.reader.start(self._readable)

    def pump(self) -> None:
        """Dispatch queued commands (fast ones now, the first slow one to the lane)."""
        queue, slots, lane = self.queue, self.slots, self.lane
        count, state, handlers = self.commands.count, self.state, self.fast.handlers
        seq = self.seq
        self.turn += 1
        while queue and not lane and not self.closing and not self.shared:
            ev = queue.popleft()
            count(state, ev)
            seq += 1
            if ev[0] is ERROR:
                if ev[1]:
                    slots.append([seq, ev, ev[1]])
                continue
            slot = [seq, ev, None]
            slots.append(slot)
            send = handlers.get(ev[0])
            if send is None or not send(self, slot):
                lane.append(slot)
        self.seq = seq
        if self.dirty:
            flush = self.fast.flush
            for link in self.dirty:
                flush(link)
            self.dirty.clear()
        self.after_io()

    def answer(self, slot: list, reply) -> None:
        """A slot's reply is in (REDO: the slow lane runs its command after all)."""
        if reply is REDO:
            bisect.insort(self.lane, slot)
        else:
            slot[REPLY] = reply

    def after_io(self) -> None:
        """After any event: send the replies now due, wake the slow lane, or end."""
        slots = self.slots
        if slots and slots[0][REPLY] is not None:
            self._flush()
        if self.lane and not self.inflight:
            self.wake.set()
        elif self.eof and not self.queue and not slots and not self.lane:
            self.closing = True
            self.wake.set()
        elif (not self.reader.active or self.out_bytes > OUT_LIMIT
              or len(self.queue) + len(slots) >= BACKLOG):
            self._throttle()  # (the common case, reading on and within bounds, needs nothing)

    # --- writing --------------------------------------------------------------------------
    def _flush(self) -> None:
        slots, out = self.slots, self.out
        queued = len(out)
        while slots and slots[0][REPLY] is not None:
            reply = slots.popleft()[REPLY]
            if reply is CLOSE:
                self.closing = True
                slots.clear()
                self.queue.clear()
                self.wake.set()
                break
            if reply:
                out.append(reply)
        if len(out) > queued:
            if self.writer.active:  # the client is not reading: count what waits
                self.out_bytes += sum(len(r) for r in out[queued:])
            else:
                self._write()

    def _write(self) -> None:
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = self.send(data)
        except TRY_LATER:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent == len(data):
            self.out, self.out_bytes = [], 0
            if self.writer.active:
                self.writer.stop()
            return
        self.out, self.out_bytes = [data[sent:]], len(data) - sent
        if not self.writer.active:
            self.writer.start(self.guard, self._writable)

    def _writable(self) -> None:
        self.writer.stop()
        self._write()
        self._throttle()

    def abort(self) -> None:
        """The client is gone (or a bug): stop everything, let the greenlet close."""
        self.closing = True
        self.aborted = True
        self.eof = True
        self.reader.stop()
        self.writer.stop()
        self.fast.forget(self)  # (no run in flight after this)
        if self.in_reserve:
            self.greenlet.kill(ClientGone, block=False)
        self.wake.set()
