"""Addresses: the one parser for "host:port" and "ADDR:PORT", and where to connect.

How this works
--------------
Every program in the project (clients, the supervisor, the dashboard, the
node's metrics endpoint) reads addresses through these functions, so a
bracketed IPv6 literal, an empty host or a bad port mean the same thing
everywhere:

- ``parse_address`` reads a server address to connect to ("host:port",
  "host", ``(host, port)`` or "unix:/path"); the port must be 1..65535.
- ``parse_listen`` reads where to listen ("ADDR:PORT"); port 0 picks a free
  one and an empty ADDR means 127.0.0.1.
- ``connect_host`` turns a listening host (0.0.0.0, ::, "") into one a
  client on this machine can connect to; ``is_loopback`` says whether a host
  is reachable only from this machine.

Standard library only, no sockets opened: the node imports it too.
"""

from __future__ import annotations

from .protocol import DEFAULT_PORT

DEFAULT_HOST = "127.0.0.1"
MAX_PORT = 65535
_CONNECT_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "localhost": "127.0.0.1"}


def parse_address(address: str | tuple[str, int]) -> tuple[str, int] | str:
    """``"host:port"``, ``"host"``, ``(host, port)`` or ``"unix:/path"``.

    Returns ``(host, port)`` for TCP, or the socket path for a unix socket.
    IPv6 literals take brackets when a port follows (``"[::1]:11300"``).
    A port that is not a whole number in 1..65535 raises ``ValueError``.
    """
    if isinstance(address, tuple):
        host, port = address
        return (host, _check_port(port, address))
    if address.startswith("unix:"):
        return address[len("unix:"):]
    host, sep, port = address.rpartition(":")
    if not sep or (":" in host and not host.endswith("]")):  # no port, or bare IPv6
        return (address.strip("[]"), DEFAULT_PORT)
    return (host.strip("[]") or DEFAULT_HOST, _check_port(port, address))


def _check_port(port: str | int, address: object) -> int:
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = None
    if isinstance(port, str) and not (port.isascii() and port.isdigit()):
        number = None
    if isinstance(port, bool) or number is None or not 1 <= number <= MAX_PORT:
        raise ValueError(f"bad port in address {address!r}: {port!r} "
                         f"(a TCP port is a whole number from 1 to {MAX_PORT})")
    return number


def format_address(addr: tuple[str, int] | str) -> str:
    """The inverse of ``parse_address``: "host:port" or "unix:/path"."""
    return f"unix:{addr}" if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"


def parse_listen(text: str, example: str = f"{DEFAULT_HOST}:0") -> tuple[str, int]:
    """``ADDR:PORT`` or ``[v6]:PORT`` -> (host, port); ValueError if malformed.

    An empty ADDR means 127.0.0.1; port 0 picks a free one.  ``example``
    is shown in the error, so the reader sees a value that would work.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise ValueError(f"expected ADDR:PORT (e.g. {example}), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or DEFAULT_HOST, int(port)


def connect_host(host: str) -> str:
    """Where to connect to reach a server listening on ``host``."""
    return _CONNECT_HOSTS.get(host, host)


def is_loopback(host: str) -> bool:
    """Is ``host`` (bracketed or not) reachable only from this machine?"""
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
