"""Hold many mostly idle connections and tubes open on a server (the scale target).

    python bench/idle_conns.py --port P [--conns 10000] [--tubes 10000] [--waiting 1000]

Connection i uses tube ``idle-(i % tubes)``, so ``tubes`` tubes exist while
it runs; the first ``waiting`` connections also watch their own tube, ignore
``default`` and send a blocking ``reserve`` that nothing will ever answer.
Connections are opened in batches, each batch's replies read before the next
(so the server's accept backlog never overflows).  When all are set up it
prints ``ready CONNS TUBES WAITING`` on stdout and holds them until stdin
closes or the deadline (--hold seconds) passes, then closes them all.
"""

from __future__ import annotations

import argparse
import resource
import select
import socket
import sys
import time

BATCH = 256
REPLY_TIMEOUT = 30.0


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if max(soft, target) < want:
        raise SystemExit(f"idle_conns: RLIMIT_NOFILE hard limit {hard} < {want} needed")


def _setup_commands(i: int, tubes: int, waiting: int) -> tuple[bytes, int]:
    """The commands for connection i and how many reply lines to wait for."""
    tube = f"idle-{i % tubes}".encode()
    if i < waiting:
        own = f"idle-{i}".encode()  # waiting connections block on a tube of their own
        return (b"use %s\r\nwatch %s\r\nignore default\r\nreserve\r\n" % (tube, own), 3)
    return b"use %s\r\n" % tube, 1


def _read_lines(sock: socket.socket, lines: int) -> None:
    buf = b""
    end = time.monotonic() + REPLY_TIMEOUT
    while buf.count(b"\r\n") < lines:
        left = end - time.monotonic()
        if left <= 0:
            raise SystemExit(f"idle_conns: no reply after {REPLY_TIMEOUT:.0f}s")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("idle_conns: server closed a connection during setup")
        buf += chunk
    if b"USING" not in buf:
        raise SystemExit(f"idle_conns: unexpected setup reply {buf[:80]!r}")


def open_idle(host: str, port: int, conns: int, tubes: int, waiting: int,
              progress=None) -> list[socket.socket]:
    """Open and set up the connections; returns them (the caller closes them)."""
    socks: list[socket.socket] = []
    try:
        for start in range(0, conns, BATCH):
            batch = []
            for i in range(start, min(conns, start + BATCH)):
                s = socket.create_connection((host, port), timeout=REPLY_TIMEOUT)
                socks.append(s)
                data, lines = _setup_commands(i, tubes, waiting)
                s.sendall(data)
                batch.append((s, lines))
            for s, lines in batch:
                _read_lines(s, lines)
            if progress is not None:
                progress(len(socks))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--tubes", type=int, default=10000)
    ap.add_argument("--waiting", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=3600.0, help="give up after this many seconds")
    args = ap.parse_args(argv)
    if args.host != "127.0.0.1":
        raise SystemExit("idle_conns: only 127.0.0.1 is allowed")
    _raise_nofile(args.conns + 64)
    started = time.monotonic()

    def progress(n: int) -> None:
        if n % 2048 < BATCH or n == args.conns:
            print(f"idle_conns: {n}/{args.conns} connections", file=sys.stderr, flush=True)

    socks = open_idle(args.host, args.port, args.conns, min(args.tubes, args.conns),
                      min(args.waiting, args.conns), progress)
    print(f"ready {len(socks)} {min(args.tubes, args.conns)} {args.waiting} "
          f"{time.monotonic() - started:.1f}", flush=True)
    try:
        select.select([sys.stdin], [], [], args.hold)  # until stdin closes (or the deadline)
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    main()
