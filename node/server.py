"""The network shell of bsnode: gevent sockets around the pure store.

How this works
--------------
One greenlet per connection reads what the client sent, lets the codec
(``CommandReader``) cut it into commands, runs them in order and answers all
of them with one ``sendall`` — a pipelined burst costs one read and one
write.  A reserve that has to wait parks the connection: its greenlet keeps
reading (so a hang-up is seen at once) but runs nothing more until the store
wakes it with a job or an Outcome (commands.wake_reply words it); while parked it stops
reading once a bounded backlog of unrun commands has piled up.

One more greenlet is the clock: it sleeps until the scheduler's next
deadline and runs ``store.tick()``; the scheduler wakes it early when a
nearer deadline appears.  No job or connection has a timer of its own.

With ``-f 0`` (sync before answering) the binlog leaves the syncing to
the server (``GroupCommit``; the one question asked of the log is
``wal.reply_sync()``): a connection about to answer waits until
every record written so far is on disk, and one fdatasync, run on a worker
thread while the event loop serves on, covers every write made while the
sync before it ran: many answers for one sync, never an answer early.

What clients can make the node hold is bounded (limits.py): a big read is
parsed 4 KiB at a time as its commands run, and past a node-wide budget of
unsent replies each connection sends every reply before its next command.
Out of descriptors, the accept loop brakes instead of spinning, and neither
the clock loop nor a sync hand-off dies of an exception: each is logged
(rate-limited, ratelog.py) and retried.

A wake-up from another greenlet never writes to this connection's socket
itself (a client that does not read must not stall anyone else): it leaves
the reply with the connection and interrupts the parked read, the way
gevent's own Timeout interrupts a greenlet.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from functools import partial

import gevent
import gevent.threadpool  # noqa: F401 - imported before -u drops privileges (GroupCommit)
from bsclient.protocol import CommandReader
from gevent.event import Event
from gevent.server import StreamServer

from .commands import CLOSE, Commands, wake_reply
from .gc_policy import freeze_survivors
from .lifecycle import Outcome
from .limits import AcceptBrake, ReplyBudget
from .logstamp import log_to_stderr
from .ratelog import Complaints
from .store import Store
from .wal import GroupSync

log = logging.getLogger("bsnode")

RECV_SIZE = 65536
RECV_TIGHT = 4096  # what a connection reads at once while the reply budget is spent
FEED_SLICE = 4096  # a big read is parsed this much at a time, as its commands run
PARKED_BACKLOG = 1 << 20  # unrun bytes we accept from a parked connection
SEND_BATCH = 1 << 18  # replies held before a send, when one read asks for many
SYNC_RETRY = 1.0  # seconds between tries of a failed -f 0 sync (as the binlog's retries)
CLOCK_RETRY = 1.0  # seconds before the clock ticks again after a failure


class _Wakeup(BaseException):
    """Interrupts a parked connection's wait: its reserve has an answer."""


class _Conn:
    """One client socket, driven with raw non-blocking calls and two
    persistent libev watchers (cheaper than gevent's socket wrapper)."""

    __slots__ = ("sock", "raw", "glet", "reply", "in_wait", "session", "budget", "_hub",
                 "_read_ev", "_write_ev")

    def __init__(self, sock, budget: ReplyBudget | None = None) -> None:
        self.sock = sock
        # the node's budget (NodeServer sets it); alone, a connection has its own
        self.budget = budget if budget is not None else ReplyBudget()
        self.raw = getattr(sock, "_sock", sock)
        self.glet = gevent.getcurrent()
        self.reply = None  # the answer to a parked reserve
        self.in_wait = False  # parked and interruptible
        self.session = None
        self._hub = gevent.get_hub()
        self._read_ev = self._hub.loop.io(sock.fileno(), 1)
        self._write_ev = None

    def recv(self) -> bytes:
        """Wait until readable, then read; b"" at end of stream."""
        raw = self.raw
        budget = self.budget
        while True:
            self._hub.wait(self._read_ev)
            try:
                return raw.recv(RECV_SIZE if budget.held < budget.limit else RECV_TIGHT)
            except BlockingIOError:
                continue

    def send(self, data: bytes) -> None:
        raw = self.raw
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        if self._write_ev is None:
            self._write_ev = self._hub.loop.io(self.raw.fileno(), 2)
        held = len(data)  # alive until the client has taken the rest
        budget = self.budget
        budget.held += held
        try:
            while view:
                self._hub.wait(self._write_ev)
                try:
                    view = view[raw.send(view):]
                except BlockingIOError:
                    continue
        finally:
            budget.held -= held

    def close(self) -> None:
        self._read_ev.close()
        if self._write_ev is not None:
            self._write_ev.close()
        self.sock.close()

    def wake(self, value) -> None:
        self.reply = wake_reply(value)  # the store wakes with a job or an Outcome
        if self.in_wait:
            self._hub.loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        if self.in_wait and self.reply is not None:
            self.glet.throw(_Wakeup)


class _DurableConn(_Conn):
    """A connection whose answers wait until every record written so far is
    synced: what it acknowledges, and anything it shows (a reserved or
    peeked job, a count in stats), is on disk first, as under beanstalkd's
    -f 0, which syncs before it serves anything else."""

    __slots__ = ("group",)

    def send(self, data: bytes) -> None:
        self.group.wait()
        _Conn.send(self, data)


class GroupCommit:
    """Syncs for ``-f 0``: one fdatasync for all the writes made while the
    previous one ran.  ``wal`` is what the log's ``reply_sync()`` returned
    (a ``wal.GroupSync``): it decides what a sync covers; this runs it on a
    worker thread and holds the replies until it has."""

    def __init__(self, wal: GroupSync) -> None:
        self.wal = wal
        self.busy = False
        self._round = Event()  # set when the sync in flight ends
        self._pool = gevent.get_hub().threadpool
        self.syncs = 0

    def owed(self) -> bool:
        """Some record written is not yet synced."""
        return self.wal.synced < self.wal.records_written

    def wait(self) -> None:
        """Return once every record written before the call is on disk."""
        wal = self.wal
        target = wal.records_written
        while wal.synced < target:
            if self.busy:  # began before some of our writes, maybe: wait, then look
                self._round.wait()
            else:
                self._sync()

    def _sync(self) -> None:
        wal = self.wal
        self.busy = True
        try:
            err = None
            try:
                fd, upto = wal.sync_start()
            except OSError:  # no descriptor to spare (EMFILE): sync on the event loop
                fd, upto = -1, 0
                try:
                    upto = wal.sync_here()
                except OSError as e:
                    err = e
            if fd >= 0:
                try:
                    self._pool.apply(_sync_and_close, (wal.io, fd))
                except OSError as e:
                    err = e
            self.syncs += 1
            wal.sync_done(upto, err)
            if err is not None:  # answers wait: none may acknowledge what is not on disk
                gevent.sleep(SYNC_RETRY)
        finally:  # even if this greenlet is killed, the others must not wait forever
            self.busy = False
            done, self._round = self._round, Event()
            done.set()


def _sync_and_close(io, fd: int) -> None:
    """On the worker thread: the descriptor is its own until the sync ends."""
    try:
        io.fdatasync(fd)
    finally:
        os.close(fd)


class _Acceptor(AcceptBrake, StreamServer):
    """The protocol's listener."""

    def __init__(self, listener, handle, complaints: Complaints) -> None:
        StreamServer.__init__(self, listener, handle)
        self.complaints = complaints


class NodeServer:
    """Serves one store on a listening socket until stopped."""

    def __init__(self, listener: socket.socket, store: Store, commands: Commands,
                 verbose: int = 0, tls=None, tls_listener: socket.socket | None = None
                 ) -> None:
        self.store = store
        self.commands = commands
        self.verbose = verbose
        self._tick_event = Event()
        store.sched.on_earlier = self._on_earlier
        listener.setblocking(False)  # gevent's accept loop needs it
        self.complaints = Complaints(log)
        self.budget = ReplyBudget()
        # tls (a tls.TlsEndpoint): TLS on tls_listener if given, else on listener
        main_tls = tls if tls_listener is None else None
        self._server = _Acceptor(listener, partial(self._handle, tls=main_tls),
                                 self.complaints)
        self._tls_server = None
        if tls_listener is not None:
            tls_listener.setblocking(False)
            self._tls_server = _Acceptor(tls_listener, partial(self._handle, tls=tls),
                                         self.complaints)
        self._timer = None
        self.group: GroupCommit | None = None

    def _group_syncs(self) -> None:
        """Ask the store's log, once, what replies wait for: under ``-f 0``
        a sync this server groups (see GroupCommit)."""
        if self.group is None:
            sync = self.store.wal.reply_sync()
            if sync is not None:
                self.group = GroupCommit(sync)

    def _on_earlier(self, when: float) -> None:
        self._tick_event.set()

    def _clock_loop(self) -> None:
        """Run every timer when due, for as long as the node runs: a failure
        here (the scheduler already catches its callbacks') is logged,
        rate-limited, and the loop goes on after CLOCK_RETRY seconds."""
        event = self._tick_event
        while True:
            event.clear()
            try:
                delay = self._tick()
            except Exception as e:  # noqa: BLE001 - nothing may stop the node's clock
                self.complaints.error("clock", "clock: %s: %s; ticking again in %.0f s",
                                      type(e).__name__, e, CLOCK_RETRY)
                delay = CLOCK_RETRY
            event.wait(delay)

    def _tick(self) -> float | None:
        delay = self.store.tick()
        group = self.group
        if group is not None and not group.busy and group.owed():
            # written by a timer (a retried DELETE or UPDATE): no answer waits on it
            gevent.spawn(group.wait)
        return delay

    def start(self) -> None:
        self._group_syncs()
        if self._tls_server is not None:
            self._tls_server.start()
        self._server.start()
        self._timer = gevent.spawn(self._clock_loop)

    def serve_forever(self) -> None:
        """Serve until ``stop()`` (SIGTERM/SIGINT)."""
        freeze_survivors()
        self._group_syncs()
        self._timer = gevent.spawn(self._clock_loop)
        if self._tls_server is not None:
            self._tls_server.start()
        self._server.serve_forever()

    def stop(self) -> None:
        if self._tls_server is not None:
            self._tls_server.stop(timeout=1)
        self._server.stop(timeout=1)
        if self._timer is not None:
            self._timer.kill()

    def enter_drain_mode(self) -> None:
        self.store.draining = True
        log.info("SIGUSR1: drain mode on, new jobs are refused with DRAINING")

    def _freed(self) -> None:
        """A connection closed: a descriptor is free, accept again if braked."""
        self._server.unbrake()
        if self._tls_server is not None:
            self._tls_server.unbrake()

    # --- one connection ---------------------------------------------------
    def _handle(self, sock, address, tls=None) -> None:
        if tls is not None:
            conn = tls.accept(sock, address, self.group)  # None: refused (logged)
            if conn is None:
                self._freed()
                return
            conn.budget = self.budget
        elif self.group is None:
            conn = _Conn(sock, self.budget)
        else:
            conn = _DurableConn(sock, self.budget)
            conn.group = self.group
        conn.session = self.store.connect(conn.wake)
        if self.verbose:
            log.info("accept %s", address or "unix")
        try:
            self._serve(conn)
        except (OSError, _Wakeup):
            pass
        finally:
            self.store.disconnect(conn.session)
            conn.close()
            self._freed()
            if self.verbose:
                log.info("close %s", address or "unix")

    def _serve(self, conn: _Conn) -> None:
        reader = CommandReader(self.commands.max_job_size)
        execute = self.commands.execute
        session = conn.session
        recv = conn.recv
        send = conn.send
        while True:
            data = recv()
            if not data:
                return
            if len(data) > FEED_SLICE:  # parsed as it runs: a burst costs its bytes only
                for at in range(0, len(data), FEED_SLICE):
                    events = reader.feed(data[at:at + FEED_SLICE])
                    if events and not self._run(conn, reader, events):
                        return
                continue
            events = reader.feed(data)
            if len(events) == 1:  # the common case: one command, one reply
                r = execute(session, events[0])
                if r.__class__ is bytes:
                    if r:
                        send(r)
                    continue
                if not self._run(conn, reader, events, r):
                    return
            elif events and not self._run(conn, reader, events):
                return

    def _run(self, conn: _Conn, reader: CommandReader, events: list, first=b"") -> bool:
        """Run commands in order, answering them in one send.  ``first`` is
        the result of ``events[0]`` when the caller already ran it.
        Returns False when the connection is to be closed."""
        execute = self.commands.execute
        session = conn.session
        budget = self.budget
        out: list[bytes] = []
        pending = 0  # bytes in out: sent once past SEND_BATCH, so unread replies stay bounded
        if first != b"":
            i, r = 1, first
        else:
            i, r = 1, execute(session, events[0])
        while True:
            if r is None:  # parked in reserve: flush, then wait for its answer
                if out:
                    conn.send(b"".join(out))
                    out = []
                reply, more, closed = self._park(conn, reader)
                out.append(reply)
                events = events[i:] + more
                i = 0
                if closed:
                    self._run_rest(conn, events, out)
                    return False
            elif r is CLOSE:
                if out:
                    conn.send(b"".join(out))
                return False
            elif r:
                out.append(r)
                pending += len(r)
                if pending > SEND_BATCH or budget.held + pending > budget.limit:
                    data = b"".join(out)
                    out = []  # not held twice while the send waits for the client
                    pending = 0
                    conn.send(data)
            if i >= len(events):
                break
            r = execute(session, events[i])
            i += 1
        if out:
            conn.send(out[0] if len(out) == 1 else b"".join(out))
        return True

    def _park(self, conn: _Conn, reader: CommandReader):
        """Wait for the parked reserve's answer, reading meanwhile.

        Returns (reply, events read meanwhile, client hung up)."""
        more: list = []
        while conn.reply is None:
            conn.in_wait = True
            try:
                if reader.buffered + len(more) * 32 > PARKED_BACKLOG:
                    # stop reading: wait for the wake-up alone
                    gevent.get_hub().switch()
                    continue
                data = conn.recv()
            except _Wakeup:
                break
            except OSError:
                data = b""
            finally:
                conn.in_wait = False
            if not data:
                # beanstalkd answers a hung-up waiter TIMED_OUT
                self.store.stop_waiting(conn.session)
                return wake_reply(Outcome.TIMED_OUT), more, True
            more.extend(reader.feed(data))
        reply, conn.reply = conn.reply, None
        return reply, more, False

    def _run_rest(self, conn: _Conn, events: list, out: list) -> None:
        """After a hang-up, run the commands already read (as beanstalkd does)."""
        for ev in events:
            r = self.commands.execute(conn.session, ev)
            if r is None or r is CLOSE:
                break
            out.append(r)
        try:
            conn.send(b"".join(out))
        except OSError:
            pass


def install_signal_handlers(server: NodeServer) -> None:
    gevent.signal_handler(signal.SIGUSR1, server.enter_drain_mode)

    def _stop(signame: str) -> None:
        log.info("%s: shutting down", signame)
        server.stop()

    gevent.signal_handler(signal.SIGTERM, _stop, "SIGTERM")
    gevent.signal_handler(signal.SIGINT, _stop, "SIGINT")


def setup_logging(verbose: int) -> None:
    log_to_stderr("%(asctime)s bsnode[%(process)d]: %(message)s", logging.INFO)
