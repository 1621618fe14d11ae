"""The network shell of bsnode: gevent sockets around the pure store.

How this works
--------------
One greenlet per connection reads what the client sent, lets the codec
(``CommandReader``) cut it into commands, runs them in order and answers all
of them with one ``sendall`` — a pipelined burst costs one read and one
write.  A reserve that has to wait parks the connection: its greenlet keeps
reading (so a hang-up is seen at once) but runs nothing more until the store
wakes it with a job, TIMED_OUT or DEADLINE_SOON; while parked it stops
reading once a bounded backlog of unrun commands has piled up.

One more greenlet is the clock: it sleeps until the scheduler's next
deadline and runs ``store.tick()``; the scheduler wakes it early when a
nearer deadline appears.  No job or connection has a timer of its own.

A wake-up from another greenlet never writes to this connection's socket
itself (a client that does not read must not stall anyone else): it leaves
the reply with the connection and interrupts the parked read, the way
gevent's own Timeout interrupts a greenlet.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

import gevent
from bsclient.protocol import TIMED_OUT, CommandReader
from gevent.event import Event
from gevent.server import StreamServer

from .commands import CLOSE, Commands, reserved_reply
from .store import Job, Store

log = logging.getLogger("bsnode")

RECV_SIZE = 65536
PARKED_BACKLOG = 1 << 20  # unrun bytes we accept from a parked connection


class _Wakeup(BaseException):
    """Interrupts a parked connection's read: its reserve has an answer."""


class _Conn:
    __slots__ = ("sock", "glet", "reply", "in_recv", "session")

    def __init__(self, sock) -> None:
        self.sock = sock
        self.glet = gevent.getcurrent()
        self.reply = None  # the answer to a parked reserve
        self.in_recv = False
        self.session = None

    def wake(self, value) -> None:
        self.reply = reserved_reply(value) if value.__class__ is Job else value
        if self.in_recv:
            gevent.get_hub().loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        if self.in_recv and self.reply is not None:
            self.glet.throw(_Wakeup)


class NodeServer:
    """Serves one store on a listening socket until stopped."""

    def __init__(self, listener: socket.socket, store: Store, commands: Commands,
                 verbose: int = 0) -> None:
        self.store = store
        self.commands = commands
        self.verbose = verbose
        self._tick_event = Event()
        store.sched.on_earlier = self._on_earlier
        listener.setblocking(False)  # gevent's accept loop needs it
        self._server = StreamServer(listener, self._handle)
        self._timer = None

    def _on_earlier(self, when: float) -> None:
        self._tick_event.set()

    def _clock_loop(self) -> None:
        store = self.store
        event = self._tick_event
        while True:
            event.clear()
            delay = store.tick()
            event.wait(delay)

    def start(self) -> None:
        self._server.start()
        self._timer = gevent.spawn(self._clock_loop)

    def serve_forever(self) -> None:
        """Serve until ``stop()`` (SIGTERM/SIGINT)."""
        self._timer = gevent.spawn(self._clock_loop)
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.stop(timeout=1)
        if self._timer is not None:
            self._timer.kill()

    def enter_drain_mode(self) -> None:
        self.store.draining = True
        log.info("SIGUSR1: drain mode on, new jobs are refused with DRAINING")

    # --- one connection ---------------------------------------------------
    def _handle(self, sock, address) -> None:
        conn = _Conn(sock)
        conn.session = self.store.connect(conn.wake)
        if self.verbose:
            log.info("accept %s", address or "unix")
        try:
            self._serve(conn, sock)
        except (ConnectionError, OSError, _Wakeup):
            pass
        finally:
            self.store.disconnect(conn.session)
            sock.close()
            if self.verbose:
                log.info("close %s", address or "unix")

    def _serve(self, conn: _Conn, sock) -> None:
        reader = CommandReader(self.commands.max_job_size)
        execute = self.commands.execute
        session = conn.session
        recv = sock.recv
        sendall = sock.sendall
        while True:
            data = recv(RECV_SIZE)
            if not data:
                return
            events = reader.feed(data)
            if not events:
                continue
            out = []
            i = 0
            n = len(events)
            quit_ = False
            while i < n:
                r = execute(session, events[i])
                i += 1
                if r is None:  # parked in reserve
                    if out:
                        sendall(out[0] if len(out) == 1 else b"".join(out))
                        out = []
                    reply, more, closed = self._park(conn, reader)
                    out.append(reply)
                    if more:
                        events = events[i:] + more
                        i, n = 0, len(events)
                    if closed:
                        self._run_rest(conn, events[i:], out)
                        return
                elif r is CLOSE:
                    quit_ = True
                    break
                else:
                    out.append(r)
            if out:
                sendall(out[0] if len(out) == 1 else b"".join(out))
            if quit_:
                return

    def _park(self, conn: _Conn, reader: CommandReader):
        """Wait for the parked reserve's answer, reading meanwhile.

        Returns (reply, events read meanwhile, client hung up)."""
        more: list = []
        sock = conn.sock
        while conn.reply is None:
            if reader.buffered + len(more) * 32 > PARKED_BACKLOG:
                # stop reading: wait for the wake-up alone
                conn.in_recv = True
                try:
                    gevent.get_hub().switch()
                except _Wakeup:
                    pass
                finally:
                    conn.in_recv = False
                continue
            conn.in_recv = True
            try:
                data = sock.recv(RECV_SIZE)
            except _Wakeup:
                break
            except OSError:
                data = b""
            finally:
                conn.in_recv = False
            if not data:
                # beanstalkd answers a hung-up waiter TIMED_OUT
                self.store._stop_waiting(conn.session)
                return TIMED_OUT, more, True
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
            conn.sock.sendall(b"".join(out))
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
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="bsnode[%(process)d]: %(message)s",
    )
