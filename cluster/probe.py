"""Ask a node how it is doing, over its own protocol.

How this works
--------------
``node_report(host, port)`` opens one short connection, pipelines
``stats`` and ``list-tubes``, then one ``stats-tube`` per tube, and returns
the parsed YAML dicts (protocol.txt, "Other Commands").  It uses only the
codec in ``bsclient.protocol`` and a blocking socket with a timeout, so
`bscluster status` works against any beanstalkd-speaking node, supervised
by us or not.  A node that does not answer gives ``NodeReport(up=False)``
with the reason, never an exception.
"""

from __future__ import annotations

import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bsclient import tls
from bsclient.address import connect_host
from bsclient.protocol import (
    CMD_LIST_TUBES,
    CMD_STATS,
    CMD_STATS_TUBE,
    ReplyReader,
    encode_command,
)

PROBE_TIMEOUT = 2.0
_RECV = 65536
NO_ANSWER, DOWN = "NO ANSWER", "DOWN"  # (the words status, top and the dashboard show)


@dataclass
class NodeReport:
    up: bool
    stats: dict = field(default_factory=dict)
    tubes: dict[str, dict] = field(default_factory=dict)
    error: str | None = None
    timed_out: bool = False  # no answer in time (hung, a partition), not refused

    @property
    def draining(self) -> bool:
        """It answered, and refuses new jobs (`bscluster drain`, SIGUSR1)."""
        return self.up and str(self.stats.get("draining")) == "true"

    @property
    def silent_state(self) -> str:
        """A node that did not answer: NO ANSWER if it timed out (a process may hold
        its port: hung, stopped, cut off), DOWN if refused or failed at once."""
        return NO_ANSWER if self.timed_out else DOWN


class ProtocolError(Exception):
    pass


def parse_yaml(body: bytes) -> dict | list:
    """The tiny YAML subset beanstalkd writes: a dict of scalars or a list."""
    lines = [ln for ln in body.decode(errors="replace").splitlines() if ln and ln != "---"]
    if lines and lines[0].startswith("- "):
        return [ln[2:] for ln in lines if ln.startswith("- ")]
    out: dict = {}
    for ln in lines:
        key, sep, value = ln.partition(": ")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            out[key] = value[1:-1]
        elif value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _exchange(sock: socket.socket, reader: ReplyReader, data: bytes, count: int) -> list:
    sock.sendall(data)
    replies: list = []
    while len(replies) < count:
        chunk = sock.recv(_RECV)
        if not chunk:
            raise ProtocolError("connection closed mid-reply")
        replies += reader.feed(chunk)
    return replies


def _body(reply: tuple, what: str) -> bytes:
    words, body = reply
    if words[0] != b"OK" or body is None:
        raise ProtocolError(f"{what}: unexpected reply {b' '.join(words).decode(errors='replace')}")
    return body


def node_report(host: str, port: int, timeout: float = PROBE_TIMEOUT,
                ssl_context: ssl.SSLContext | None = None) -> NodeReport:
    """Stats, and per-tube stats, of the node at host:port (over TLS with a context)."""
    try:
        with _open(connect_host(host), port, timeout, ssl_context) as sock:
            reader = ReplyReader()
            stats_r, tubes_r = _exchange(
                sock, reader, encode_command(CMD_STATS) + encode_command(CMD_LIST_TUBES), 2)
            stats = parse_yaml(_body(stats_r, CMD_STATS))
            names = parse_yaml(_body(tubes_r, CMD_LIST_TUBES))
            names = names if isinstance(names, list) else []
            tubes: dict[str, dict] = {}
            if names:
                data = b"".join(encode_command(CMD_STATS_TUBE, n) for n in names)
                for name, reply in zip(names, _exchange(sock, reader, data, len(names)), strict=False):
                    if reply[0][0] == b"OK":  # a tube may vanish between the two calls
                        tubes[name] = parse_yaml(reply[1])
            return NodeReport(up=True, stats=stats, tubes=tubes)
    except (OSError, ProtocolError) as e:
        return NodeReport(up=False, error=_describe(e), timed_out=isinstance(e, socket.timeout))


def presented_certificate(host: str, port: int, ssl_context: ssl.SSLContext,
                          timeout: float = PROBE_TIMEOUT) -> bytes:
    """The certificate (DER) the TLS node at host:port presents to a new connection
    now; raises OSError."""
    with _open(connect_host(host), port, timeout, ssl_context) as sock:
        return sock.getpeercert(binary_form=True)


def _open(host: str, port: int, timeout: float, ssl_context) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock if ssl_context is None else tls.wrap(sock, ssl_context, host)


def _describe(e: Exception) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listening)"
    if isinstance(e, socket.timeout):
        return "no answer (timed out)"
    if isinstance(e, ssl.SSLError):
        return tls.explain(e)
    return str(e) or type(e).__name__


def connectable(host: str, port: int, timeout: float = 0.25) -> bool:
    """Does anything accept TCP connections at host:port?"""
    try:
        socket.create_connection((connect_host(host), port), timeout=timeout).close()
        return True
    except OSError:
        return False


def probe_all(addresses: dict[str, tuple[str, int]], timeout: float = PROBE_TIMEOUT,
              ssl_context: ssl.SSLContext | None = None) -> dict[str, NodeReport]:
    """``node_report`` for every node at once, so one dead node costs one timeout."""
    if not addresses:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        futures = {name: pool.submit(node_report, host, port, timeout, ssl_context)
                   for name, (host, port) in addresses.items()}
        return {name: f.result() for name, f in futures.items()}
