"""TLS (and mutual TLS) on `bscluster proxy`'s own listener, as bsnode serves it.

How this works
--------------
The proxy takes bsnode's TLS flags with bsnode's meaning (``--tls-cert``,
``--tls-key``, ``--tls-client-ca``, ``--tls-port``), or, with
``proxy_tls = true`` in the config, the certificate the nodes serve: the
``[tls]`` table's ``node_cert``/``node_key``, and its ``ca`` for client
certificates when ``client_auth = true`` (``TlsSettings.node_args``, the
flags ``bscluster up`` gives every node).  A flag wins over the config.

Everything TLS does per connection is bsnode's own code
(``bsnode.tls.TlsEndpoint``): the context (TLS 1.2 or newer, no session
tickets, client certificates required with a client CA), the handshake
within ``HANDSHAKE_TIMEOUT`` in the connection's own greenlet (a silent or
stalled client holds nobody else), ``TLS_REQUIRED`` in clear to a
plain-text client, one log line per refusal, and ``reload`` (new handshakes
use the new files; a bad file keeps the old context).  This module only
adapts the result to the proxy:

* ``ProxyTLS.accept`` is the first thing ``ProxyServer.handle`` does; it
  returns a ``TlsSocket`` (or None if the client was refused), which the
  proxy's data path drives like a plain non-blocking socket from
  readiness callbacks (``proxy_engine.ClientConn``).  Two differences from
  a plain socket are smoothed over by ``bsclient.tls.nowait_calls`` (the
  proxy's TLS connections to the nodes use them too): half a TLS record is
  no data yet (OpenSSL says "want read": here ``BlockingIOError``, as a
  plain socket says it, not an error that would end the connection), and
  bytes OpenSSL has already decrypted are returned with the read, since no
  readiness event would announce them.  A TLS write that would block sends
  0 bytes, and is retried when writable;
* with ``--tls-port``, ``--listen`` stays plain TCP and a second listener
  here does the handshake before handing the socket to the same handler.

``ProxyTLS.reload()`` re-reads the files for both listeners; the proxy's
SIGHUP handler calls it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click
from bsclient.tls import TlsSettings, nowait_calls
from bscluster.runtime import os_error_text
from bsnode import tls as node_tls
from gevent.server import StreamServer

log = logging.getLogger("bscluster.proxy")

LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class TlsPlan:
    """What the proxy serves: these files, on --listen or on ``port`` (--tls-port)."""

    files: node_tls.TlsFiles
    port: int | None = None  # --tls-port: TLS there, plain TCP on --listen


_OPTIONS = [
    click.option("--tls-cert", metavar="FILE",
                 help="Serve TLS with this certificate (PEM, chain after the leaf), as "
                      "bsnode --tls-cert [config: [tls] node_cert when proxy_tls = true]."),
    click.option("--tls-key", metavar="FILE",
                 help="... and this private key [config: [tls] node_key]."),
    click.option("--tls-client-ca", metavar="FILE",
                 help="Require client certificates signed by this CA (mutual TLS); a client "
                      "without one is refused at the handshake [config: [tls] ca when "
                      "client_auth = true]."),
    click.option("--tls-port", type=click.IntRange(0, 65535), metavar="PORT",
                 help="Serve TLS on this second port (0: a free one) and keep plain TCP on "
                      "--listen, for a migration; without it --listen serves TLS only."),
]


def options(f):
    """The TLS flags of `bscluster proxy` (bsnode's names: node/tls.py FLAGS)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def config_values(settings: TlsSettings) -> dict[str, str]:
    """The flag values ``proxy_tls = true`` stands for: the flags the nodes get."""
    args = settings.node_args()
    return {node_tls.FLAGS[flag]: value for flag, value in zip(args[::2], args[1::2], strict=True)}


def plan(flags: Mapping[str, Any], config) -> TlsPlan | None:
    """The TLS to serve from the flags over the config (None: plain TCP only)."""
    values = config_values(config.tls) if config.proxy_tls and config.tls else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        files = node_tls.files_from(values)
    except ValueError as e:
        raise click.UsageError(f"{e} (or set proxy_tls = true in the config, with [tls] "
                               f"node_cert and node_key)") from None
    if files is None:
        return None
    return TlsPlan(files, values.get("tls_port"))


class TlsSocket:
    """A client's TLS connection with a plain non-blocking socket's manners
    (what ``proxy_engine.ClientConn`` calls; see "How this works"): ``recv`` and
    ``send`` are ``bsclient.tls.nowait_calls``'."""

    __slots__ = ("tls", "recv", "send")

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.recv, self.send = nowait_calls(tls)

    def sendall(self, data) -> None:
        self.tls.sendall(data)

    def fileno(self) -> int:
        return self.tls.fileno()

    def setblocking(self, flag: bool) -> None:
        self.tls.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self.tls.settimeout(value)

    def setsockopt(self, *args) -> None:
        self.tls.setsockopt(*args)

    def close(self) -> None:
        self.tls.close()


class ProxyTLS:
    """The proxy's TLS: the handshake of each connection, and its listener for --tls-port."""

    def __init__(self, tls_plan: TlsPlan,
                 handshake_timeout: float = node_tls.HANDSHAKE_TIMEOUT) -> None:
        self.plan = tls_plan
        self.endpoint = node_tls.TlsEndpoint(tls_plan.files, handshake_timeout)
        self.server: StreamServer | None = None  # the --tls-port listener

    @property
    def on_listen(self) -> bool:
        """True: --listen serves TLS only; False: TLS has its own port."""
        return self.plan.port is None

    def accept(self, sock, address):
        """The socket ``ProxyServer.handle`` serves: on a TLS --listen, the TLS
        socket once its handshake is done, or None (refused, logged); with
        --tls-port, ``sock`` as it is (the TLS port's sockets come secured)."""
        if not self.on_listen:
            return sock
        return self.secure(sock, address)

    def secure(self, sock, address) -> TlsSocket | None:
        tls = self.endpoint.handshake(sock, address)
        return TlsSocket(tls) if tls is not None else None

    def reload(self) -> bool:
        """Re-read the certificate files (new handshakes use them); False, logged,
        and the old ones kept if they are unreadable or do not match."""
        return self.endpoint.reload()

    def describe(self) -> str:
        return self.plan.files.describe(only=self.on_listen)

    def start_port(self, host: str, handle: Callable) -> tuple[str, int] | None:
        """Serve TLS on --tls-port, each connection secured then given to ``handle``."""
        if self.on_listen:
            return None

        def serve_one(sock, address) -> None:
            tls = self.secure(sock, address)
            if tls is not None:
                handle(tls, address)

        self.server = StreamServer((host, self.plan.port), serve_one, backlog=LISTEN_BACKLOG)
        try:
            self.server.init_socket()
        except OSError as e:
            self.server = None
            raise click.ClickException(
                f"cannot listen on {host}:{self.plan.port} (--tls-port): {os_error_text(e)}; "
                f"choose another port") from None
        self.server.start()
        bound = self.server.address[:2]
        log.info("serving %s on %s:%d (--tls-port; plain TCP on --listen)",
                 self.plan.files.describe(), bound[0], bound[1])
        return bound

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None


def load(tls_plan: TlsPlan | None) -> ProxyTLS | None:
    """The proxy's TLS, built once the process is patched (so ``ssl`` is gevent's);
    a ClickException naming the files if they cannot be loaded."""
    if tls_plan is None:
        return None
    files = tls_plan.files
    try:
        return ProxyTLS(tls_plan)
    except (OSError, ssl.SSLError) as e:
        raise click.ClickException(
            f"cannot load the TLS certificate {files.cert} / key {files.key}"
            + (f" / client CA {files.client_ca}" if files.client_ca else "")
            + f": {e}") from None
