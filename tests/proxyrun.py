"""Start a proxied cluster for tests: N pristine bsnodes and `bscluster proxy` in front.

The nodes bind port 0 and report their ports; the config file written for the
proxy names each node's port in a [nodes.nodeI] table.  The proxy also binds
port 0 and reports "listening on HOST:PORT" on stderr, so nothing probes a
server before the test's own client connects (transcripts compare
total-connections).  ``ProxiedCluster.stop`` stops every process it started.

The code lives in ``bscluster.procs`` (bench/bench_proxy.py uses it too).
``Raw`` is a client that pipelines protocol bytes and reads whole replies.
"""

import socket

from bscluster.procs import ProxiedCluster, start_proxy, write_config  # noqa: F401


class Raw:
    """A client socket that sends bytes and reads whole replies."""

    def __init__(self, address) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[bytes]:
        """``count`` replies, each with its body (RESERVED, FOUND, OK)."""
        out = []
        while len(out) < count:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = self.buf[:end]
                need = end + 2
                if line.split(b" ")[0] in (b"RESERVED", b"FOUND", b"OK"):
                    need += int(line.rsplit(b" ", 1)[1]) + 2
                if len(self.buf) >= need:
                    out.append(self.buf[:need])
                    self.buf = self.buf[need:]
                    continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {out}")
            self.buf += chunk
        return out

    def close(self) -> None:
        self.sock.close()
