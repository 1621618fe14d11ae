"""The dashboard's HTTP server: whatever clients do, it costs a bounded share.

How this works
--------------
The dashboard runs inside the supervisor (`up --web`), so no client may
cost the supervisor its descriptors or its threads.  ``BoundedServer``
serves one request per connection (HTTP/1.0, ``BaseHTTPRequestHandler``'s
default) like this:

* one thread (``serve_forever``) owns the listening socket and every
  connection that has sent nothing yet, in one ``selectors`` loop, so an
  idle connection costs a descriptor, never a thread;
* a connection with bytes to read goes to a fixed pool of ``workers``
  threads; the handler must read the whole request (line, headers, body)
  within ``READ_DEADLINE``, each read within ``READ_TIMEOUT``
  (``BoundedHandler``), and writing the answer gets ``WRITE_TIMEOUT``;
* at most ``max_connections`` are open at once: one more closes the
  connection idle the longest (or, when every one is busy, is answered 503
  and closed), and a connection that sends nothing for ``IDLE_TIMEOUT`` is
  closed;
* the kernel's accept queue is ``BACKLOG`` long; when ``accept`` fails for
  lack of descriptors (EMFILE, ENFILE) the loop stops accepting for
  ``ACCEPT_BACKOFF`` seconds, as beanstalkd does, and says so at most once
  a minute (``RateLimitedLog``).

So the server holds at most ``max_connections`` + 1 descriptors and
``workers`` + 1 threads, whatever its clients do, and an error in its loop
is logged and survived, never the end of the dashboard.
"""

from __future__ import annotations

import errno
import io
import queue
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from bscluster.runtime import RateLimitedLog

BACKLOG = 128  # the listen() queue
WORKERS = 8  # threads that run handlers
MAX_CONNECTIONS = 128  # open connections at once, idle or busy
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent after it is accepted
READ_TIMEOUT = 5.0  # seconds one read of a request may wait
READ_DEADLINE = 10.0  # seconds to read a whole request
WRITE_TIMEOUT = 30.0  # seconds to write a whole answer
ACCEPT_BACKOFF = 0.5  # seconds without accepting after EMFILE/ENFILE
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BUSY_REPLY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Retry-After: 1\r\nContent-Length: 57\r\n\r\n"
              b'{"error": "the dashboard is busy; try again in a moment"}')


class _DeadlineIO(socket.SocketIO):
    """A socket reader that gives up once the request's deadline has passed."""

    def __init__(self, sock: socket.socket, deadline: float, per_read: float) -> None:
        super().__init__(sock, "rb")
        self._deadline, self._per_read = deadline, per_read

    def readinto(self, b) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not read in time")
        self._sock.settimeout(min(self._per_read, left))
        return super().readinto(b)


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler whose reads and writes cannot wait for ever."""

    timeout = READ_TIMEOUT  # StreamRequestHandler sets it on the socket
    read_deadline = READ_DEADLINE
    write_timeout = WRITE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        deadline = time.monotonic() + self.read_deadline
        self.rfile = io.BufferedReader(_DeadlineIO(self.connection, deadline, self.timeout))

    def send_response(self, code: int, message: str | None = None) -> None:
        self.connection.settimeout(self.write_timeout)  # the reading is over
        super().send_response(code, message)


class BoundedServer:
    """Serves ``handler`` on ``address`` with bounded connections and threads.

    The same interface as socketserver's servers where the dashboard uses
    them: ``server_address``, ``serve_forever``, ``shutdown``, ``server_close``.
    """

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 workers: int = WORKERS, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT,
                 log: Callable[[str], None] | None = None, ssl_context=None) -> None:
        self.socket = _listen(*address)
        # HTTPS when set: each connection is wrapped as a worker takes it (the handshake
        # runs in that thread); replacing it serves new connections a new certificate
        self.ssl_context = ssl_context
        self.server_address = self.socket.getsockname()
        self.RequestHandlerClass = handler
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.trouble = RateLimitedLog(log or (lambda _msg: None))
        self.evicted = 0  # connections closed to make room or for idling (for tests, docs)
        self._idle: OrderedDict[socket.socket, tuple[object, float]] = OrderedDict()
        self._busy = 0
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._workers = [threading.Thread(target=self._work_loop, name=f"web-worker-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._workers:
            t.start()

    # --- the accept/idle loop ------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._done.clear()
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        self._accepting, self._resume_at = True, 0.0
        try:
            while not self._stop.is_set():
                try:
                    self._turn(sel, poll_interval)
                except Exception as e:  # noqa: BLE001 - the loop must outlive any bug
                    self.trouble("loop", f"dashboard server: {type(e).__name__}: {e}; going on")
                    self._stop.wait(0.05)
        finally:
            for conn in list(self._idle):
                self._close(conn)
            self._idle.clear()
            sel.close()
            self._done.set()

    def _turn(self, sel: selectors.BaseSelector, poll_interval: float) -> None:
        now = time.monotonic()
        timeout = poll_interval
        if self._idle:
            oldest = next(iter(self._idle.values()))[1]
            timeout = min(timeout, max(0.0, oldest + self.idle_timeout - now))
        if not self._accepting:
            timeout = min(timeout, max(0.0, self._resume_at - now))
        accept = False
        for key, _ in sel.select(timeout):
            if key.fileobj is self.socket:
                accept = True  # after the requests that came in: never evict one of them
            elif key.fileobj is self._wake_r:
                _drain(self._wake_r)
            else:
                conn = key.fileobj
                sel.unregister(conn)
                addr, _ = self._idle.pop(conn)
                with self._lock:
                    self._busy += 1
                self._work.put((conn, addr))
        if accept:
            self._accept(sel)
        self._expire(sel, time.monotonic())

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # a bounded batch, then the idle ones get a look
            try:
                conn, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in OUT_OF_DESCRIPTORS:
                    self.trouble("accept", f"dashboard cannot accept connections: "
                                           f"{e.strerror}; pausing {ACCEPT_BACKOFF:g}s")
                    sel.unregister(self.socket)
                    self._accepting = False
                    self._resume_at = time.monotonic() + ACCEPT_BACKOFF
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if not self._make_room(sel):
                _refuse(conn)
                continue
            sel.register(conn, selectors.EVENT_READ)
            self._idle[conn] = (addr, time.monotonic())

    def _make_room(self, sel: selectors.BaseSelector) -> bool:
        """Room for one more connection, closing the one idle the longest if need be."""
        with self._lock:
            busy = self._busy
        if len(self._idle) + busy < self.max_connections:
            return True
        self.evicted += 1
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        sel.unregister(oldest)
        del self._idle[oldest]
        self._close(oldest)
        return True

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        while self._idle:
            conn, (_, since) = next(iter(self._idle.items()))
            if now - since < self.idle_timeout:
                break
            sel.unregister(conn)
            del self._idle[conn]
            self._close(conn)
            self.evicted += 1
        if not self._accepting and now >= self._resume_at:
            sel.register(self.socket, selectors.EVENT_READ)
            self._accepting = True

    @property
    def busy(self) -> int:
        """Connections handed to the workers and not closed yet."""
        with self._lock:
            return self._busy

    # --- the workers ---------------------------------------------------------------------
    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            conn, addr = item
            try:
                conn.setblocking(True)
                ctx = self.ssl_context
                if ctx is not None:
                    conn = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                self.RequestHandlerClass(conn, addr, self)
            except OSError:
                pass  # the client went away
            except Exception as e:  # noqa: BLE001 - one bad request must not end a worker
                self.trouble("handler", f"dashboard request failed: {type(e).__name__}: {e}")
            finally:
                self._close(conn)
                with self._lock:
                    self._busy -= 1

    @staticmethod
    def _close(conn: socket.socket) -> None:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    # --- stopping ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait until it has."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._done.wait()

    def server_close(self) -> None:
        self._stop.set()
        self.socket.close()
        for _ in self._workers:
            self._work.put(None)
        for t in self._workers:
            t.join(1.0)
        self._wake_r.close()
        self._wake_w.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


def _refuse(conn: socket.socket) -> None:
    """Every connection is busy: say so, without waiting for the client."""
    try:
        conn.setblocking(False)
        conn.send(BUSY_REPLY)
    except OSError:
        pass
    BoundedServer._close(conn)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
