"""Client for one beanstalkd-protocol server (beanstalkd itself or bsnode).

How this works
--------------
One ``Client`` owns one TCP (or unix) socket and speaks doc/protocol.txt of
beanstalkd 1.12: every command is a method, sent as one write, and exactly
one reply is read back with ``protocol.ReplyReader`` before the method
returns.  Error reply words become the exception classes of ``errors``.

* Plain blocking sockets, nothing else: under gevent's monkey-patching the
  ``socket`` and ``select`` modules this module looks up at call time are the
  cooperative ones, so the client works in threads and in greenlets alike.
  A Client is not thread-safe: use one per thread or greenlet.
* The connection state the server keeps for us (the used tube and the
  watch list) is mirrored client-side in ``using`` and ``watching``.  If the
  connection is lost it is closed; the next command reconnects and replays
  ``use``/``watch``/``ignore`` first.  The failed command itself is never
  retried: ``ConnectionLostError.sent`` tells whether it may have run.
  Jobs reserved on a lost connection are released by the server.
* Before a command is sent on an idle connection, a zero-timeout
  ``select`` checks that the server has not closed it meanwhile (a restarted
  server leaves such a stale socket behind); a stale socket is replaced
  first, so that case never turns into an ambiguous failure.
* ``timeout`` bounds the wait for every reply (``reserve-with-timeout N``
  waits N seconds longer); on expiry the connection is closed, since a late
  reply would otherwise be read as the answer to the next command.
* Every TCP connection has keepalive on (``KEEPALIVE_IDLE``/``_INTERVAL``/
  ``_COUNT``), so a blocking ``reserve`` on a connection whose peer vanished
  without a reset (a dead host, a partition) ends with ConnectionLostError
  instead of hanging forever.
* Concurrent use is refused, not corrupted: a command started while another
  thread or greenlet is inside one on the same Client raises
  ``ConcurrentUseError`` at once (the stream is left intact).
* ``send``/``read_ready`` split a command from its reply for callers that
  wait on many connections at once (ClusterClient's reserve): send, wait
  until the socket is readable, then read.  ``nowait_io`` goes one step
  further for an event loop's callbacks (the proxy): the socket's own
  non-blocking calls and the reply reader.
"""

from __future__ import annotations

import math
import operator
import select
import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from . import flat_yaml, tls
from . import protocol as p
from .address import DEFAULT_HOST, MAX_PORT, format_address, parse_address  # noqa: F401
from .errors import (
    ConcurrentUseError,
    ConnectionLostError,
    ExpectedCrlfError,
    InvalidTubeNameError,
    SocketTimeoutError,
    UnexpectedReplyError,
    reply_error,
)

# seconds a TCP (and TLS) connect may take, for Client and ClusterClient alike: a
# reachable server answers in milliseconds, so a longer wait only delays the error
# (and, in a cluster, the failover to the next node)
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 30.0
RECV_SIZE = 65536
DEFAULT_TUBE = "default"
# TCP keepalive on every connection: first probe after KEEPALIVE_IDLE s of
# silence, then every KEEPALIVE_INTERVAL s; KEEPALIVE_COUNT unanswered
# probes and the kernel reports the connection dead (about 40 s in all).
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3


def set_keepalive(sock: socket.socket) -> None:
    """SO_KEEPALIVE with the KEEPALIVE_* timings (where the platform has them)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


@dataclass(frozen=True, slots=True)
class Job:
    """A job as a server returned it: ``id``, ``body`` and the ``node`` it is on.

    ``node`` is the cluster node name, or the single client's ``name``
    (its address unless given).  ``handle`` ("node2/17") is printable and
    accepted back by every ClusterClient method that takes a job.
    """

    id: int
    body: bytes | str
    node: str = ""

    @property
    def handle(self) -> str:
        return f"{self.node}/{self.id}" if self.node else str(self.id)


JobRef = Job | int


def _u(value) -> int:
    """An integer argument; rejects anything that is not an int (no injection)."""
    return operator.index(value)


def check_tube(name: str) -> str:
    """The tube name, or TypeError/InvalidTubeNameError before anything is sent.

    The rule itself is ``protocol.is_tube_name``; every client entry point
    (Client, ClusterClient, Worker) calls this.
    """
    if not isinstance(name, str):
        raise TypeError(f"tube name must be str, not {type(name).__name__}")
    if not p.is_tube_name(name):
        raise InvalidTubeNameError(f"BAD_FORMAT: invalid tube name {name!r} ({p.TUBE_NAME_RULE})")
    return name


class Client:
    """A connection to one server; every protocol command is a method.

    ``address`` is ``"host:port"``, ``(host, port)`` or ``"unix:/path"``.
    ``encoding`` set (e.g. "utf-8") makes job bodies come back as str.
    ``use``/``watch`` set the initial tubes.  With ``lazy=True`` nothing is
    connected until the first command.
    """

    def __init__(
        self,
        address: str | tuple[str, int] = f"{DEFAULT_HOST}:{p.DEFAULT_PORT}",
        *,
        name: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        encoding: str | None = None,
        use: str | None = None,
        watch: str | list[str] | tuple[str, ...] | None = None,
        lazy: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # TLS when set (tls.py builds one from [tls]); replaceable: the next connection
        # uses the new one, an open one keeps what it was opened with
        self.ssl_context = ssl_context
        self._tls = False  # the open connection is TLS
        self._addr = parse_address(address)
        self.address = format_address(self._addr)
        self.name = name or self.address
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.encoding = encoding
        self._sock: socket.socket | None = None
        self._sock_timeout: float | None = -1.0
        self._reader = p.ReplyReader()
        self._busy = threading.RLock()  # held while a command is in progress
        self.connects = 0  # connections opened so far (a new one: a new socket)
        self._using = DEFAULT_TUBE
        self._watching = [DEFAULT_TUBE]
        watch = [watch] if isinstance(watch, str) else watch
        if lazy:  # the first connect replays these
            if use is not None:
                self._using = check_tube(use)
            if watch:
                self._watching = list(dict.fromkeys(check_tube(t) for t in watch))
            return
        self.connect()
        if use is not None:
            self.use(use)
        if watch:
            self._watch_exactly(list(watch))

    # --- connection -------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._sock is not None else "disconnected"
        return f"<Client {self.name} {state}>"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection now (commands also do this when needed)."""
        if self._sock is None:
            self._connect()

    def close(self) -> None:
        """Close the connection; jobs it had reserved go back to ready."""
        sock, self._sock = self._sock, None
        self._reader = p.ReplyReader()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def quit(self) -> None:
        """Send ``quit`` and close."""
        if self._sock is not None:
            try:
                self._sock.sendall(p.encode_command(p.CMD_QUIT))
            except OSError:
                pass
        self.close()

    def _connect(self) -> socket.socket:
        addr = self._addr
        try:
            if isinstance(addr, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                try:
                    sock.connect(addr)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(addr, timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                set_keepalive(sock)
            if self.ssl_context is not None:
                sock = tls.wrap(sock, self.ssl_context, addr[0] if addr.__class__ is tuple
                                else None)
            self._tls = self.ssl_context is not None
        except TimeoutError as e:
            hint = f": {e}" if isinstance(e, tls.HandshakeTimeout) else ""
            raise SocketTimeoutError(
                f"connect to {self.address} timed out{hint}", address=self.address, sent=False
            ) from e
        except OSError as e:
            raise ConnectionLostError(
                f"cannot connect to {self.address}: {tls.explain(e)}", address=self.address,
                sent=False) from e
        self._sock = sock
        self._sock_timeout = -1.0
        self._reader = p.ReplyReader()
        self.connects += 1
        try:
            self._replay()
        except ConnectionLostError as e:
            e.sent = False  # the caller's command was not sent yet
            raise
        except BaseException:
            self.close()
            raise
        return sock

    def _replay(self) -> None:
        """Restore the used tube and the watch list on a fresh connection."""
        if self._using != DEFAULT_TUBE:
            self._expect(p.encode_command(p.CMD_USE, self._using), b"USING")
        watching = [DEFAULT_TUBE]
        for tube in self._watching:
            if tube != DEFAULT_TUBE:
                self._expect(p.encode_command(p.CMD_WATCH, tube), b"WATCHING")
                watching.append(tube)
        if DEFAULT_TUBE not in self._watching:
            self._expect(p.encode_command(p.CMD_IGNORE, DEFAULT_TUBE), b"WATCHING")
            remove_watched(watching, DEFAULT_TUBE)
        self._watching = watching

    def _stale(self, sock: socket.socket) -> bool:
        """True if the server closed (or wrote to) an idle connection."""
        try:
            readable = bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True
        return readable and (not self._tls or tls.stale(sock))

    def _call(self, data: bytes, wait: float | None | bool = True) -> tuple[list, bytes | None]:
        """Send one command, return its reply ``(words, body)``.

        ``wait`` is the reply timeout: True means ``self.timeout``.
        """
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(
                f"Client for {self.name} is already in a command in another thread or "
                f"greenlet; a Client is one connection: use one per thread (ClusterClient "
                f"keeps one set per thread for you)"
            )
        try:
            return self._call_locked(data, wait)
        finally:
            self._busy.release()

    def _broken(self, e: BaseException, wait) -> BaseException:
        """Close after a failure mid-exchange (the stream is out of step) and say
        what to raise: SocketTimeoutError for a timeout, ConnectionLostError for
        any other socket error, else ``e`` itself (ConnectionLostError, or an
        interrupt such as KeyboardInterrupt or gevent.Timeout)."""
        self.close()
        if isinstance(e, TimeoutError):
            return SocketTimeoutError(f"no reply from {self.address} within {wait} s",
                                      address=self.address)
        if isinstance(e, OSError):
            return ConnectionLostError(f"connection to {self.address} lost: {tls.explain(e)}",
                                       address=self.address)
        return e

    def _usable_socket(self) -> socket.socket:
        """The connected socket; (re)connected first if there is none or it went stale."""
        sock = self._sock
        if sock is None:
            return self._connect()
        if self._stale(sock):
            self.close()
            return self._connect()
        return sock

    def _call_locked(self, data: bytes, wait) -> tuple[list, bytes | None]:
        sock = self._usable_socket()
        if wait is True:
            wait = self.timeout
        try:
            if wait != self._sock_timeout:
                sock.settimeout(wait)
                self._sock_timeout = wait
            sock.sendall(data)
            reader = self._reader
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    raise ConnectionLostError(
                        f"{self.address} closed the connection", address=self.address
                    )
                replies = reader.feed(chunk)
                if replies:
                    if len(replies) > 1:
                        self.close()  # more replies than commands: out of step
                    return replies[0]
        except BaseException as e:
            error = self._broken(e, wait)
            if error is e:
                raise
            raise error from e

    def _expect(self, data: bytes, ok: bytes, wait: float | None | bool = True) -> tuple:
        """Send, and return the reply if its word is ``ok``; else raise."""
        words, body = self._call(data, wait)
        if words[0] == ok:
            return words, body
        raise self._error(words)

    @contextmanager
    def exclusive(self, timeout: float | None):
        """Hold this Client for a few commands from another thread, waiting up to
        ``timeout`` seconds for the thread using it (ConcurrentUseError after)."""
        if not self._busy.acquire(timeout=-1 if timeout is None else timeout):
            raise ConcurrentUseError(
                f"Client for {self.name} stayed busy in another thread for {timeout} s")
        try:
            yield self
        finally:
            self._busy.release()

    # --- one command, reply later (for waiting on many connections) ---------
    def send(self, data: bytes) -> None:
        """Send an encoded command without reading its reply (see ``read_ready``).

        Reconnects first if needed.  The caller must read the reply before
        any other command is sent on this Client.
        """
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(f"Client for {self.name} is in a command in another "
                                     f"thread or greenlet")
        try:
            self._send_locked(data)
        finally:
            self._busy.release()

    def _send_locked(self, data: bytes) -> None:
        sock = self._usable_socket()
        try:
            if self._sock_timeout != self.timeout:
                sock.settimeout(self.timeout)
                self._sock_timeout = self.timeout
            sock.sendall(data)
        except OSError as e:
            raise self._broken(e, self.timeout) from e

    def nowait_io(self) -> tuple:
        """``(recv, send, feed)`` for an event-loop caller that reads and writes this
        connection itself (the proxy's fast path).

        ``recv`` and ``send`` never wait (they raise BlockingIOError instead, or
        send takes 0 bytes); ``feed`` turns what ``recv`` returned into replies, as
        ``read_ready`` does.  They are valid while ``connects`` stays the same, and
        a blocking command in between puts the socket's timeout back: call
        ``nonblocking`` before using them after one (a plain gevent socket's are
        the non-blocking socket it wraps, which never waits anyway).  The caller
        closes the Client when a call fails, or when ``recv`` returns b"" (the
        server closed the connection)."""
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"{self.address}: not connected", address=self.address,
                                      sent=False)
        feed = self._reader.feed
        if self._tls:
            self.nonblocking()
            return (*tls.nowait_calls(sock), feed)
        raw = getattr(sock, "_sock", None)  # gevent's socket wraps a non-blocking one
        if raw is not None:
            return raw.recv, raw.send, feed
        self.nonblocking()
        return sock.recv, sock.send, feed

    def use_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None:
        """The next connection uses ``ssl_context`` (None: plain TCP); an open one keeps
        what it was opened with (as ``ClusterClient.use_ssl_context``)."""
        self.ssl_context = ssl_context

    def nonblocking(self) -> None:
        """Make the socket's calls never wait (again, after a blocking command)."""
        if self._sock is not None and self._sock_timeout != 0.0:
            self._sock.setblocking(False)
            self._sock_timeout = 0.0

    def still_open(self) -> bool:
        """Connected, and the server has not closed (or written to) the idle connection
        meanwhile; never waits, so an event-loop callback may ask."""
        sock = self._sock
        if sock is None:
            return False
        if self._tls:
            return not tls.stale(sock)  # (TLS housekeeping records do not count)
        try:
            self.nonblocking()
            sock.recv(1, socket.MSG_PEEK)  # anything, even EOF: closed or out of step
            return False
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def fileno(self) -> int:
        """The socket's descriptor (-1 when not connected)."""
        return -1 if self._sock is None else self._sock.fileno()

    def read_ready(self) -> list[tuple[list, bytes | None]]:
        """Read what a readable socket has: the replies completed by it (maybe none)."""
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"{self.address}: not connected", address=self.address)
        try:
            self.nonblocking()
            chunk = sock.recv(RECV_SIZE)
            if chunk and self._tls:
                chunk += tls.read_pending(sock)  # poll() cannot see what OpenSSL holds
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return []  # (TLS: a record not complete yet, or housekeeping only)
        except OSError as e:
            raise self._broken(e, 0.0) from e
        if not chunk:
            self.close()
            raise ConnectionLostError(f"{self.address} closed the connection",
                                      address=self.address)
        return self._reader.feed(chunk)

    def read_replies(self, wait: float | None) -> list[tuple[list, bytes | None]]:
        """Block up to ``wait`` seconds for the next reply (or replies) to ``send``."""
        sock = self._sock
        if sock is None:
            raise ConnectionLostError(f"{self.address}: not connected", address=self.address)
        try:
            sock.settimeout(wait)
            self._sock_timeout = wait
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    raise ConnectionLostError(
                        f"{self.address} closed the connection", address=self.address
                    )
                if self._tls:
                    chunk += tls.read_pending(sock)  # a later poll() could not see it
                replies = self._reader.feed(chunk)
                if replies:
                    return replies
        except BaseException as e:
            error = self._broken(e, wait)
            if error is e:
                raise
            raise error from e

    def job_from(self, reply: tuple) -> Job:
        """The Job of a RESERVED reply (as ``reserve`` would return it)."""
        return self._job(reply)

    def error_from(self, words: list) -> BaseException:
        """The exception for an error reply (as a command would raise it)."""
        return self._error(words)

    def _error(self, words: list):
        err = reply_error(words)
        if isinstance(err, (UnexpectedReplyError, ExpectedCrlfError)):
            # out of step: after EXPECTED_CRLF the server reads what followed the
            # body's first bytes as commands, and their replies may come later
            # (beanstalkd writes each on its own), so no next reply can be trusted
            self.close()
        return err

    def execute(self, line: bytes, body: bytes | None = None) -> tuple[list[bytes], bytes | None]:
        """Low level: send a raw command line (no CRLF) and maybe a body.

        Returns the reply as ``(words, body)``; error words raise.  Meant for
        tests and for commands this class does not know.
        """
        words, data = self._call(line + p.CRLF + (b"" if body is None else body + p.CRLF))
        if words[0].decode("ascii", "replace") in p.ERROR_WORDS:
            raise self._error(words)
        return words, data

    # --- producer -----------------------------------------------------------
    def put(
        self,
        body: bytes | str,
        priority: int = p.DEFAULT_PRIORITY,
        delay: int = p.DEFAULT_DELAY,
        ttr: int = p.DEFAULT_TTR,
    ) -> int:
        """Put a job into the used tube; returns its id."""
        if isinstance(body, str):
            body = body.encode(self.encoding or "utf-8")
        words, _ = self._call(p.encode_command(
            p.CMD_PUT, _u(priority), _u(delay), _u(ttr), len(body), body=body,
        ))
        if words[0] == b"INSERTED":
            return int(words[1])
        raise self._error(words)

    def use(self, tube: str) -> str:
        """Use ``tube`` for later puts; returns the tube name."""
        words, _ = self._expect(p.encode_command(p.CMD_USE, check_tube(tube)), b"USING")
        self._using = words[1].decode("ascii")
        return self._using

    @property
    def using(self) -> str:
        """The tube puts go to (tracked client-side)."""
        return self._using

    # --- consumer -----------------------------------------------------------
    def reserve(self, timeout: float | None = None) -> Job:
        """Reserve a job from the watched tubes.

        ``timeout`` None waits forever; otherwise seconds (fractions round up;
        0 polls).  Raises TimedOutError or DeadlineSoonError.
        """
        if timeout is None:
            return self._job(self._expect(p.encode_command(p.CMD_RESERVE), b"RESERVED", None))
        if timeout < 0:
            raise ValueError("timeout must be >= 0 (None waits forever)")
        secs = math.ceil(timeout)
        wait = None if self.timeout is None else secs + self.timeout
        reply = self._expect(
            p.encode_command(p.CMD_RESERVE_WITH_TIMEOUT, secs), b"RESERVED", wait
        )
        return self._job(reply)

    def reserve_job(self, job: JobRef) -> Job:
        """Reserve a specific job by id."""
        return self._job(self._expect(
            p.encode_command(p.CMD_RESERVE_JOB, _job_id(job)), b"RESERVED"
        ))

    def _job(self, reply: tuple) -> Job:
        words, body = reply
        if self.encoding is not None:
            body = body.decode(self.encoding)
        return Job(int(words[1]), body, self.name)

    def delete(self, job: JobRef) -> None:
        self._expect(p.encode_command(p.CMD_DELETE, _job_id(job)), b"DELETED")

    def release(
        self, job: JobRef, priority: int = p.DEFAULT_PRIORITY, delay: int = p.DEFAULT_DELAY
    ) -> None:
        """Release a reserved job (BuriedError if the server had to bury it)."""
        words, _ = self._call(p.encode_command(
            p.CMD_RELEASE, _job_id(job), _u(priority), _u(delay)
        ))
        if words[0] != b"RELEASED":
            raise self._error(words)

    def bury(self, job: JobRef, priority: int = p.DEFAULT_PRIORITY) -> None:
        self._expect(p.encode_command(p.CMD_BURY, _job_id(job), _u(priority)), b"BURIED")

    def touch(self, job: JobRef) -> None:
        self._expect(p.encode_command(p.CMD_TOUCH, _job_id(job)), b"TOUCHED")

    def watch(self, tube: str) -> int:
        """Watch ``tube``; returns how many tubes are watched."""
        words, _ = self._expect(p.encode_command(p.CMD_WATCH, check_tube(tube)), b"WATCHING")
        if tube not in self._watching:
            self._watching.append(tube)
        return int(words[1])

    def ignore(self, tube: str) -> int:
        """Stop watching ``tube``; NotIgnoredError for the last one."""
        words, _ = self._expect(p.encode_command(p.CMD_IGNORE, check_tube(tube)), b"WATCHING")
        remove_watched(self._watching, tube)
        return int(words[1])

    def watch_commands(self, tubes: list[str]) -> tuple[bytes, int]:
        """The watch/ignore commands that make the watch list ``tubes``, and their count.

        For pipelining ahead of a ``send``: the local copy is updated now, so
        the caller must read (and check) that many WATCHING replies first.
        """
        data = []
        for tube in tubes:
            if tube not in self._watching:
                data.append(p.encode_command(p.CMD_WATCH, check_tube(tube)))
                self._watching.append(tube)
        for tube in list(self._watching):
            if tube not in tubes:
                data.append(p.encode_command(p.CMD_IGNORE, check_tube(tube)))
                remove_watched(self._watching, tube)
        return b"".join(data), len(data)

    def use_command(self, tube: str) -> bytes:
        """The ``use`` command for ``tube``, for pipelining ahead of a ``send``: the
        local copy is updated now, so the caller must read (and check) its USING reply."""
        self._using = check_tube(tube)
        return p.encode_command(p.CMD_USE, tube)

    def forget_tubes(self) -> None:
        """Back to the server defaults (use and watch "default"); only when closed,
        so that the next connect replays nothing."""
        if self._sock is None:
            self._using = DEFAULT_TUBE
            self._watching = [DEFAULT_TUBE]

    def _watch_exactly(self, tubes: list[str]) -> None:
        for tube in tubes:
            self.watch(tube)
        for tube in list(self._watching):
            if tube not in tubes:
                self.ignore(tube)

    @property
    def watching(self) -> list[str]:
        """The watched tubes, in the server's order (tracked client-side)."""
        return list(self._watching)

    # --- other commands -----------------------------------------------------
    def peek(self, job: JobRef) -> Job:
        return self._job(self._expect(p.encode_command(p.CMD_PEEK, _job_id(job)), b"FOUND"))

    def peek_ready(self) -> Job:
        return self._job(self._expect(p.encode_command(p.CMD_PEEK_READY), b"FOUND"))

    def peek_delayed(self) -> Job:
        return self._job(self._expect(p.encode_command(p.CMD_PEEK_DELAYED), b"FOUND"))

    def peek_buried(self) -> Job:
        return self._job(self._expect(p.encode_command(p.CMD_PEEK_BURIED), b"FOUND"))

    def kick(self, bound: int) -> int:
        """Kick up to ``bound`` buried (else delayed) jobs of the used tube."""
        words, _ = self._expect(p.encode_command(p.CMD_KICK, _u(bound)), b"KICKED")
        return int(words[1])

    def kick_job(self, job: JobRef) -> None:
        self._expect(p.encode_command(p.CMD_KICK_JOB, _job_id(job)), b"KICKED")

    def stats(self) -> dict:
        _, body = self._expect(p.encode_command(p.CMD_STATS), b"OK")
        return flat_yaml.parse_yaml_dict(body, flat_yaml.STATS_STR_KEYS)

    def stats_job(self, job: JobRef) -> dict:
        _, body = self._expect(p.encode_command(p.CMD_STATS_JOB, _job_id(job)), b"OK")
        return flat_yaml.parse_yaml_dict(body, flat_yaml.STATS_JOB_STR_KEYS)

    def stats_tube(self, tube: str) -> dict:
        _, body = self._expect(p.encode_command(p.CMD_STATS_TUBE, check_tube(tube)), b"OK")
        return flat_yaml.parse_yaml_dict(body, flat_yaml.STATS_TUBE_STR_KEYS)

    def list_tubes(self) -> list[str]:
        _, body = self._expect(p.encode_command(p.CMD_LIST_TUBES), b"OK")
        return flat_yaml.parse_yaml_list(body)

    def list_tube_used(self) -> str:
        """Ask the server which tube is used (``using`` is the local copy)."""
        words, _ = self._expect(p.encode_command(p.CMD_LIST_TUBE_USED), b"USING")
        return words[1].decode("ascii")

    def list_tubes_watched(self) -> list[str]:
        """Ask the server which tubes are watched (``watching`` is the local copy)."""
        _, body = self._expect(p.encode_command(p.CMD_LIST_TUBES_WATCHED), b"OK")
        return flat_yaml.parse_yaml_list(body)

    def pause_tube(self, tube: str, delay: int) -> None:
        """Hold back reserves from ``tube`` for ``delay`` seconds."""
        self._expect(p.encode_command(p.CMD_PAUSE_TUBE, check_tube(tube), _u(delay)), b"PAUSED")


def remove_watched(tubes: list[str], tube: str) -> None:
    """Drop ``tube`` from a watch list as beanstalkd's ``ignore`` does (its ms_remove):
    the last entry fills the hole, so list-tubes-watched comes out in its order."""
    if tube in tubes:
        i = tubes.index(tube)
        tubes[i] = tubes[-1]
        tubes.pop()


def _job_id(job: JobRef) -> int:
    return job.id if isinstance(job, Job) else _u(job)

