"""TLS for clients, and the ``[tls]`` table of bscluster.toml (its one reader).

How this works
--------------
``TlsSettings`` is the ``[tls]`` table, read once with the environment on
top (``BSCLUSTER_TLS_CA``, ``_CERT``, ``_KEY``, ``_VERIFY``; an
environment value wins over the file, as everywhere in bscluster)::

    [tls]
    ca = "tls/ca.pem"          # the CA that signed the nodes' certificates
    cert = "tls/client.pem"    # this client's certificate (for mutual TLS)
    key = "tls/client.key"
    verify = true              # check the node's certificate and host name
    node_cert = "tls/node.pem" # bscluster only: what the nodes serve
    node_key = "tls/node.key"
    client_auth = true         # bscluster only: nodes require client
                               # certificates signed by ca (mutual TLS)

Paths in the file are relative to the file's directory.  A ``[tls]`` table
(or any of the variables) turns TLS on; without one, connections are plain
TCP as in beanstalkd.  ``client_context()`` builds the ``ssl.SSLContext``
that ``Client(ssl_context=...)`` and ``ClusterClient(ssl_context=...)``
take; it needs TLS 1.2 or newer.

``wrap`` performs the handshake on a connected socket and turns OpenSSL's
failures into sentences (``explain``).  Under TLS 1.3 a node that
requires a client certificate refuses a client without one only after
the client's side of the handshake has finished, so that refusal arrives
on the first read; ``explain`` covers both moments.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "BSCLUSTER_TLS_"
FILE_KEYS = ("ca", "cert", "key", "node_cert", "node_key")
BOOL_KEYS = {"verify": True, "client_auth": False}
ENV_KEYS = ("ca", "cert", "key", "verify")  # what a client may set in its environment
NODE_CERT_FLAG = "--tls-cert"  # bsnode's flag: a node started with it serves TLS
MIN_VERSION = ssl.TLSVersion.TLSv1_2
TLS_REQUIRED = "TLS_REQUIRED"  # what bsnode says in clear to a plain client on a TLS port


class HandshakeTimeout(TimeoutError):
    """No answer to the TLS handshake in time: often a server that speaks plain TCP."""


class TlsConfigError(ValueError):
    """A [tls] setting is missing or wrong; the message says which."""


@dataclass(frozen=True)
class TlsSettings:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    node_cert: str | None = None
    node_key: str | None = None
    client_auth: bool = False

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key, self.verify)

    def node_args(self) -> list[str]:
        """bsnode's TLS flags for these settings (none if nodes serve plain TCP)."""
        if not self.node_cert:
            return []
        args = [NODE_CERT_FLAG, self.node_cert, "--tls-key", self.node_key]
        if self.client_auth:
            args += ["--tls-client-ca", self.ca]
        return args

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None,
                   verify: bool = True) -> ssl.SSLContext:
    """A client context: trusts ``ca`` (else the system's CAs), presents
    ``cert``/``key`` if given; ``verify=False`` skips checking the node."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = MIN_VERSION
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load TLS files (ca={ca}, cert={cert}, key={key}): "
                             f"{e}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def settings_from(table: Mapping | None, env: Mapping[str, str] | None = None,
                  base: Path | None = None, where: str = "[tls]") -> TlsSettings | None:
    """The [tls] table (paths relative to ``base``) with the environment on top;
    None when neither turns TLS on."""
    env = os.environ if env is None else env
    values: dict = {}
    for k, v in (table or {}).items():
        if k in FILE_KEYS:
            if not isinstance(v, str) or not v:
                raise TlsConfigError(f"{where}: {k} must be a file path, got {v!r}")
            values[k] = _path(v, base)
        elif k in BOOL_KEYS:
            if not isinstance(v, bool):
                raise TlsConfigError(f"{where}: {k} must be true or false, got {v!r}")
            values[k] = v
        else:
            raise TlsConfigError(f"{where}: unknown key {k!r}; valid keys are "
                                 f"{', '.join(FILE_KEYS + tuple(BOOL_KEYS))}")
    from_env = False
    for k in ENV_KEYS:
        raw = env.get(ENV_PREFIX + k.upper(), "")
        if raw == "":
            continue
        from_env = True
        if k == "verify":
            word = raw.strip().lower()
            if word not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise TlsConfigError(f"{ENV_PREFIX}VERIFY={raw!r}: expected true or false")
            values[k] = word in ("1", "true", "yes", "on")
        else:
            values[k] = _path(raw, None)
    if table is None and not from_env:
        return None
    settings = TlsSettings(**values)
    _check(settings, where)
    return settings


def _path(value: str, base: Path | None) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


def _check(s: TlsSettings, where: str) -> None:
    for k in FILE_KEYS:
        path = getattr(s, k)
        if path is not None and not os.path.isfile(path):
            raise TlsConfigError(f"{where}: {k} = {path}: no such file")
    if bool(s.cert) != bool(s.key):
        raise TlsConfigError(f"{where}: cert and key go together (the client certificate)")
    if bool(s.node_cert) != bool(s.node_key):
        raise TlsConfigError(f"{where}: node_cert and node_key go together")
    if s.client_auth and not (s.ca and s.node_cert):
        raise TlsConfigError(f"{where}: client_auth = true needs ca (the CA client "
                             f"certificates are checked against) and node_cert/node_key")


# --- the client's side of a connection ----------------------------------------
def wrap(sock: socket.socket, ctx: ssl.SSLContext, host: str | None) -> ssl.SSLSocket:
    """Handshake on a connected socket (its timeout applies); ssl errors
    propagate as OSErrors for the caller to word with ``explain``."""
    try:
        return ctx.wrap_socket(sock, server_hostname=host if ctx.check_hostname else None)
    except TimeoutError:
        sock.close()
        raise HandshakeTimeout("no answer to the TLS handshake: does the server serve TLS "
                               "on this port, or plain TCP?") from None
    except BaseException:
        sock.close()
        raise


def explain(e: BaseException) -> str:
    """A sentence for a TLS failure, naming the likely cause."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"the node's certificate was not accepted ({e.verify_message}): is [tls] ca "
                f"(BSCLUSTER_TLS_CA) the CA that signed it, and is it still valid?")
    if not isinstance(e, ssl.SSLError):
        return str(e)
    reason = (e.reason or "").upper()
    hints = {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the node requires a client certificate: set "
                                             "[tls] cert and key (BSCLUSTER_TLS_CERT/_KEY)",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the node refused this client's certificate: "
                                           "it has expired",
        "TLSV1_ALERT_UNKNOWN_CA": "the node does not trust the CA that signed this client's "
                                  "certificate",
        "SSLV3_ALERT_BAD_CERTIFICATE": "the node refused this client's certificate",
        "WRONG_VERSION_NUMBER": "the server did not answer in TLS: does it serve plain TCP "
                                "on this port?",
        "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection in the TLS "
                                        "handshake",
    }
    hint = hints.get(reason)
    return f"TLS failed: {hint} ({e.reason})" if hint else f"TLS failed: {e}"


def read_pending(sock: ssl.SSLSocket) -> bytes:
    """The bytes OpenSSL has already decrypted and buffered (``pending()``):
    a readiness poll on the descriptor cannot see them, so whoever reads
    after a poll must take them too, or they wait until more bytes arrive."""
    out = b""
    while sock.pending():
        out += sock.recv(sock.pending())
    return out


def nowait_calls(sock: ssl.SSLSocket) -> tuple:
    """``(recv, send)`` for an event loop's callbacks on a non-blocking TLS socket,
    with a plain socket's manners: ``recv`` raises BlockingIOError while no whole
    record is in, and returns what OpenSSL has decrypted already with what it read
    (``read_pending``); ``send`` returns 0 when TLS cannot write now (the caller
    writes the same bytes again, maybe with more after them, when writable)."""
    not_now = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

    def recv(size: int) -> bytes:
        try:
            data = sock.recv(size)
        except not_now:
            raise BlockingIOError(errno.EAGAIN, "a TLS record is not complete yet") from None
        return data + read_pending(sock) if data else data

    def send(data) -> int:
        try:
            return sock.send(data)
        except not_now:
            return 0

    return recv, send


def stale(sock: ssl.SSLSocket) -> bool:
    """For an idle TLS socket that select() found readable: did the server
    hang up or write?  Bytes that only carry TLS housekeeping do not count."""
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)  # b"" (hung up) or data nobody asked for: stale either way
        return True
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
