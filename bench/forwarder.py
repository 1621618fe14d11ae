"""A bare TCP forwarder: the floor under any proxy's second hop (bench_proxy.py --forwarder).

How this works
--------------
Each connection accepted on 127.0.0.1:LISTEN gets its own connection to
127.0.0.1:UPSTREAM; bytes read on either side are written to the other from
gevent io-watcher callbacks (no greenlet switch, no parsing, no routing).  It
does what every proxy must do at least (read, write, read, write per command)
and nothing else, so `bscluster proxy`'s figures beside its figures show what
the proxy's own work costs, apart from the hop.  It is a benchmark baseline,
not a beanstalkd proxy: it knows no protocol and serves one node.

    python bench/forwarder.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import socket
import sys

import gevent

READ = 1


def main(listen_port: int, upstream_port: int) -> None:
    loop = gevent.get_hub().loop
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    server.setblocking(False)
    watchers = {}

    def close(*socks) -> None:
        for s in socks:
            w = watchers.pop(s.fileno(), None)
            if w is not None:
                w.stop()
            s.close()

    def relay(src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            close(src, dst)
            return
        try:
            sent = dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(src, dst)
            return
        if sent < len(data):  # rare with a benchmark's small writes: finish blocking
            try:
                dst.setblocking(True)
                dst.sendall(data[sent:])
                dst.setblocking(False)
            except OSError:
                close(src, dst)

    def accept() -> None:
        try:
            client, _ = server.accept()
        except BlockingIOError:
            return
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        for src, dst in ((client, upstream), (upstream, client)):
            w = watchers[src.fileno()] = loop.io(src.fileno(), READ)
            w.start(relay, src, dst)

    acceptor = loop.io(server.fileno(), READ)
    acceptor.start(accept)
    print(f"listening on 127.0.0.1:{listen_port}", file=sys.stderr, flush=True)
    gevent.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
