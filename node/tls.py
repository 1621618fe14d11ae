"""TLS for bsnode (an extension; beanstalkd has none): the server context,
the handshake of each connection, and certificate reload on SIGHUP.

How this works
--------------
``TlsEndpoint`` owns the current ``ssl.SSLContext`` (TLS 1.2 or newer,
Python's default cipher list, which has no weak ciphers; with a client CA,
client certificates are required: mutual TLS).  ``accept`` runs in the
connection's own greenlet, before any command is read:

1. It waits (at most ``HANDSHAKE_TIMEOUT`` seconds) for the first byte and
   peeks at it.  A TLS ClientHello starts with a handshake record (0x16);
   anything else is a plain-text client on a TLS port: it is answered
   ``TLS_REQUIRED`` in clear, logged, and closed.
2. It wraps the socket with the context current at that moment and drives
   the handshake non-blocking on the event loop's watchers, within the
   same deadline, so a silent or slow client holds only its own greenlet.
   A refused handshake (no client certificate, wrong CA, expired
   certificate, bad version) is logged with OpenSSL's reason and closed:
   no command ever runs on it.
3. It returns a ``TlsConn`` (``_DurableTlsConn`` under ``-f 0``), which
   the server drives like any connection (``handshake`` alone, steps 1
   and 2, is what ``bscluster proxy`` uses: cluster/proxy_tls.py).  Reads
   try the TLS socket first and wait only when OpenSSL wants more bytes: a
   record already decrypted and buffered (``pending()``) is never left
   waiting for a readable fd.

``reload()`` (SIGHUP) builds a new context from the same files; new
handshakes use it, connections already open keep theirs.  If the new
files are unreadable or do not match, the old context stays and the error
is logged.  The server sends no TLS 1.3 session tickets (``num_tickets =
0``): nothing arrives unasked after the handshake, so a client's idle-check
(``select`` readable = the server hung up) stays true to its meaning.

Per-certificate tube allow-lists are not implemented: any client with a
certificate the CA signed may run every command (docs/SECURITY.md).
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
from dataclasses import dataclass

import gevent

from .server import RECV_SIZE, _Conn

log = logging.getLogger("bsnode")

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to a finished handshake
LINGER = 1.0  # seconds a refused connection is drained before it is closed
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello
TLS_REQUIRED = b"TLS_REQUIRED\r\n"  # said in clear to a plain-text client
MIN_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsFiles:
    """``--tls-cert``, ``--tls-key`` and (for mutual TLS) ``--tls-client-ca``."""

    cert: str
    key: str
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        """A server context; raises OSError/ssl.SSLError naming a bad file."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = MIN_VERSION
        ctx.num_tickets = 0
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            ctx.load_verify_locations(cafile=self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def describe(self, only: bool = False) -> str:
        what = "TLS only" if only else "TLS"
        return f"{what}, client certificates required" if self.client_ca else what


class TlsRefused(Exception):
    """A connection failed before its handshake finished; the message says why."""


class TlsConn(_Conn):
    """A connection over an ``ssl.SSLSocket`` in non-blocking mode."""

    __slots__ = ()

    def recv(self) -> bytes:
        raw = self.raw
        while True:
            try:
                return raw.recv(RECV_SIZE)
            except ssl.SSLWantReadError:
                self._hub.wait(self._read_ev)
            except ssl.SSLWantWriteError:
                self._hub.wait(self._writable())

    def send(self, data: bytes) -> None:
        raw = self.raw
        view = memoryview(data)
        while view:
            try:
                view = view[raw.send(view):]
            except ssl.SSLWantWriteError:
                self._hub.wait(self._writable())
            except ssl.SSLWantReadError:
                self._hub.wait(self._read_ev)

    def _writable(self):
        if self._write_ev is None:
            self._write_ev = self._hub.loop.io(self.raw.fileno(), 2)
        return self._write_ev


class _DurableTlsConn(TlsConn):
    """TLS under ``-f 0``: answers wait for the sync, as ``_DurableConn``'s do."""

    __slots__ = ("group",)

    def send(self, data: bytes) -> None:
        self.group.wait()
        TlsConn.send(self, data)


class TlsEndpoint:
    """The current server context, and the handshake of each new connection."""

    def __init__(self, files: TlsFiles, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.files = files
        self.handshake_timeout = handshake_timeout
        self.context = files.context()

    def reload(self) -> bool:
        """Re-read the certificate files; keep the old context if they are bad."""
        try:
            self.context = self.files.context()
        except (OSError, ssl.SSLError) as e:
            log.error("SIGHUP: TLS certificates not reloaded, still serving the old ones: %s",
                      e)
            return False
        log.info("SIGHUP: TLS certificates reloaded from %s; new connections use them",
                 self.files.cert)
        return True

    def accept(self, sock, address, group=None) -> TlsConn | None:
        """Handshake in the caller's greenlet; None (logged) if refused."""
        tls = self.handshake(sock, address)
        if tls is None:
            return None
        conn = _DurableTlsConn(tls) if group is not None else TlsConn(tls)
        if group is not None:
            conn.group = group
        return conn

    def handshake(self, sock, address) -> ssl.SSLSocket | None:
        """The connection's TLS socket (non-blocking) once its handshake is done,
        in the caller's greenlet; None (logged) if refused or gone.  ``sock`` is
        detached: the caller owns only what this returns."""
        who = _who(address)
        family, type_ = sock.family, sock.type
        plain = socket.socket(family, type_, fileno=sock.detach())
        plain.setblocking(False)
        try:
            with gevent.Timeout(self.handshake_timeout,
                                TlsRefused(f"no TLS handshake within "
                                           f"{self.handshake_timeout:g} s")):
                tls = self._handshake(plain)
        except TlsRefused as e:
            log.warning("TLS: refused %s: %s", who, e)
            plain.close()
            return None
        if tls is None:  # hung up before saying anything
            plain.close()
        return tls

    def _handshake(self, plain: socket.socket) -> ssl.SSLSocket | None:
        hub = gevent.get_hub()
        read_ev = hub.loop.io(plain.fileno(), 1)
        write_ev = hub.loop.io(plain.fileno(), 2)
        try:
            first = _peek(plain, hub, read_ev)
            if not first:
                return None
            if first[0] != TLS_HANDSHAKE_RECORD:
                try:
                    plain.send(TLS_REQUIRED)
                except OSError:
                    pass
                _linger(plain, hub, read_ev)
                raise TlsRefused("plain-text client on a TLS port (answered TLS_REQUIRED)")
            tls = self.context.wrap_socket(plain, server_side=True,
                                           do_handshake_on_connect=False)
            try:
                _drive(tls.do_handshake, hub, read_ev, write_ev)
            except TlsRefused:
                _linger(tls, hub, read_ev)  # so the client reads OpenSSL's alert
                tls.close()
                raise
            except BaseException:  # the deadline: the fd is tls's now
                tls.close()
                raise
            return tls
        finally:
            read_ev.close()
            write_ev.close()


def _drive(step, hub, read_ev, write_ev) -> None:
    """Run a non-blocking handshake step until done, waiting as OpenSSL asks."""
    while True:
        try:
            step()
            return
        except ssl.SSLWantReadError:
            hub.wait(read_ev)
        except ssl.SSLWantWriteError:
            hub.wait(write_ev)
        except ssl.SSLError as e:
            raise TlsRefused(f"TLS handshake failed: {_reason(e)}") from None
        except OSError as e:
            raise TlsRefused(f"connection lost in the TLS handshake: {e}") from None


def _linger(sock: socket.socket, hub, read_ev) -> None:
    """Close gently: send FIN, then read and drop what the client still sends
    (for at most LINGER seconds).  Closing with unread bytes would send a
    reset, and the client's kernel would drop the alert or TLS_REQUIRED
    line we wrote before the client could read it."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    with gevent.Timeout(LINGER, False):
        while True:
            try:
                if not sock.recv(4096):
                    return
            except (BlockingIOError, ssl.SSLWantReadError):
                hub.wait(read_ev)
            except OSError:
                return


def _peek(plain: socket.socket, hub, read_ev) -> bytes:
    while True:
        try:
            return plain.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            hub.wait(read_ev)
        except OSError:
            return b""


def _reason(e: ssl.SSLError) -> str:
    """OpenSSL's words for why, e.g. 'peer did not return a certificate'."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"client certificate not accepted: {e.verify_message}"
    reason = (e.reason or str(e)).replace("_", " ").lower()
    if reason == "peer did not return a certificate":
        return "the client sent no certificate (one is required here: mutual TLS)"
    return reason


def _who(address) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "unix client"


def install_reload(endpoint: TlsEndpoint) -> None:
    """SIGHUP reloads the certificates (without TLS, bsnode keeps SIGHUP's default)."""
    gevent.signal_handler(signal.SIGHUP, endpoint.reload)


# --- the command-line flags (long options: no beanstalkd flag can clash) ----
FLAGS = {"--tls-cert": "tls_cert", "--tls-key": "tls_key",
         "--tls-client-ca": "tls_client_ca", "--tls-port": "tls_port"}
USAGE = """\
 --tls-cert FILE      serve TLS with this certificate (PEM, chain after the leaf)
 --tls-key FILE       ... and this private key; both reload on SIGHUP
 --tls-client-ca FILE require client certificates signed by this CA (mutual TLS);
                      a client without one is refused at the handshake
 --tls-port PORT      serve TLS on this second port and keep plain TCP on -p
                      (for a migration); without it, -p serves TLS only
"""


def files_from(values: dict) -> TlsFiles | None:
    """The TLS files named by the flags, or None; ValueError if incomplete."""
    cert, key = values.get("tls_cert"), values.get("tls_key")
    if cert is None and key is None:
        if values.get("tls_client_ca") or values.get("tls_port") is not None:
            raise ValueError("--tls-client-ca and --tls-port need --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    return TlsFiles(cert, key, values.get("tls_client_ca"))
