"""put-reserve-delete through `bscluster proxy` beside a direct connection to one node.

How this works
--------------
Three bsnodes and a proxy in front of them are started once.  The load is
cycles of ``put`` / ``reserve`` / ``delete`` on one tube with ``--pipeline P``
commands in flight per connection, from ``--clients`` connections (2 and 8 by
default: a few clients wait on the proxy's round trips, many keep it busy).  Direct
runs connect to the tube's owner node itself; proxied runs connect to the
proxy, which sends the jobs to that same node.  Rounds alternate direct and
proxied, so both see the same machine; the report gives each round's rates,
the medians, the ratio proxied/direct, and the proxy's own CPU per command
(from /proc, over the proxied rounds).

Two clients (``--client``):

* ``loadgen`` (default): the project's compiled load generator
  (bench/loadgen.c, one process, ``--clients`` connections; each keeps P
  cycles' commands in flight, so puts, reserves and deletes interleave).  A
  client that costs little CPU measures the servers, not the client;
* ``python``: ``--clients`` Python processes on plain sockets, each writing
  P commands of a kind, then reading their replies (P puts, P reserves, P
  deletes): how a pipelining script uses the proxy, client CPU included.

With ``--forwarder`` a bare TCP forwarder to the same node
(bench/forwarder.c, an epoll loop that copies bytes) is measured in the same
rounds: the second hop alone, which any proxy must make, under the proxy's
own work.

The proxy polls for ``--busy-poll`` microseconds after each read (its
default unless given; cluster/proxy_poll.py).  With ``--unpolled`` a second
proxy with polling off (``--busy-poll 0``) is measured in the same rounds.

With ``--tls`` the nodes serve mutual TLS (a trial CA made for the run) and
the proxy talks TLS to them while serving its clients plain TCP, as a sidecar
on 127.0.0.1 does (docs/PROXY.md, "Deployment"); direct clients (and the
forwarder's, end to end) use TLS to the node.  The load is Python clients
then: the load generator has no TLS.

    python bench/bench_proxy.py --pipeline 1 --pipeline 16 --seconds 5 --rounds 3
    python bench/bench_proxy.py --client python --forwarder --json ...
    python bench/bench_proxy.py --tls --clients 2 --clients 8
    python bench/bench_proxy.py --unpolled --forwarder --clients 2 --clients 8 --clients 32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from bsclient import Ring
from bsclient.tls import client_context
from bscluster.procs import ProxiedCluster, Server, free_port, start_proxy, wait_connectable
from bscluster.tls_init import make_trial
from harness import cpu_seconds, find_forwarder, find_loadgen, median, run_loadgen

TUBE = "bench"  # the python client's tube (loadgen uses "default")
BODY = b"x" * 100


def _read_replies(sock: socket.socket, buf: bytearray, count: int, word: bytes) -> None:
    """Read ``count`` replies; RESERVED carries a body (counted by its size)."""
    got = 0
    while got < count:
        end = buf.find(b"\r\n")
        if end < 0:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
            continue
        line = bytes(buf[:end])
        if not line.startswith(word):
            raise RuntimeError(f"expected {word!r}, got {line!r}")
        need = end + 2
        if word == b"RESERVED":
            need += int(line.rsplit(b" ", 1)[1]) + 2
        while len(buf) < need:
            buf += sock.recv(1 << 16)
        yield line
        del buf[:need]
        got += 1


def client(port: int, pipeline: int, seconds: float, out, tls: tuple | None = None) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:  # (ca, cert, key) paths: a context is not sent to a process
        sock = client_context(*tls).wrap_socket(sock, server_hostname="127.0.0.1")
    buf = bytearray()
    sock.sendall(b"use %s\r\nwatch %s\r\nignore default\r\n" % (TUBE.encode(), TUBE.encode()))
    list(_read_replies(sock, buf, 1, b"USING"))
    list(_read_replies(sock, buf, 2, b"WATCHING"))
    put = b"put 1024 0 60 %d\r\n%s\r\n" % (len(BODY), BODY)
    cycles = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.sendall(put * pipeline)
        list(_read_replies(sock, buf, pipeline, b"INSERTED"))
        sock.sendall(b"reserve\r\n" * pipeline)
        ids = [line.split(b" ")[1] for line in _read_replies(sock, buf, pipeline, b"RESERVED")]
        sock.sendall(b"".join(b"delete %s\r\n" % i for i in ids))
        list(_read_replies(sock, buf, pipeline, b"DELETED"))
        cycles += pipeline
    sock.close()
    out.put(cycles)


def run_loadgen_cycles(loadgen: str, port: int, clients: int, pipeline: int,
                       seconds: float) -> float:
    """put-reserve-delete cycles per second from the compiled generator."""
    result = run_loadgen(loadgen, port, "put-reserve-delete", conns=clients, pipeline=pipeline,
                         size=len(BODY), seconds=seconds, core=None)
    return result["jobs"] / result["elapsed_s"]


def run(port: int, clients: int, pipeline: int, seconds: float,
        tls: tuple | None = None) -> float:
    """put-reserve-delete cycles per second over ``clients`` processes."""
    q = mp.Queue()
    procs = [mp.Process(target=client, args=(port, pipeline, seconds, q, tls))
             for _ in range(clients)]
    start = time.monotonic()
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(10)
    return total / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", type=int, action="append", help="(repeatable; default 1, 16)")
    ap.add_argument("--client", choices=("loadgen", "python"), default="loadgen",
                    help="the load: compiled generator (default) or Python processes")
    ap.add_argument("--clients", type=int, action="append",
                    help="connections (repeatable; default 2, 8)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forwarder", action="store_true",
                    help="also measure a bare TCP forwarder to the node (bench/forwarder.c, "
                         "built with cc): the cost of the second hop alone")
    ap.add_argument("--busy-poll", type=int, metavar="USEC",
                    help="the proxy's proxy_busy_poll (default: the proxy's own)")
    ap.add_argument("--unpolled", action="store_true",
                    help="also measure a second proxy with its busy poll off (--busy-poll 0)")
    ap.add_argument("--tls", action="store_true",
                    help="nodes serve mutual TLS; the proxy talks TLS to them and serves "
                         "plain TCP (a sidecar); direct clients use TLS (implies --client "
                         "python)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.tls:
        args.client = "python"
    pipelines = args.pipeline or [1, 16]
    counts = args.clients or [2, 8]
    tube = TUBE if args.client == "python" else "default"
    owner = Ring({f"node{i}": 1 for i in range(1, 4)}).node_for(tube)
    report: dict = {"client": args.client, "tls": args.tls, "busy_poll": args.busy_poll,
                    "seconds": args.seconds,
                    "rounds": args.rounds, "tube": tube, "tube_owner": owner, "runs": []}
    if args.client == "python":
        load = run
    else:
        loadgen = find_loadgen()

        def load(port, clients, pipeline, seconds, tls=None):  # (no TLS: see --tls)
            return run_loadgen_cycles(loadgen, port, clients, pipeline, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        trial = make_trial(Path(tmp) / "tls", ["127.0.0.1"]) if args.tls else None
        _measure(load, trial, owner, counts, pipelines, args, report, Path(tmp))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"put-reserve-delete, {args.client} client, {args.seconds:g} s x {args.rounds} "
              f"rounds each, tube {tube!r} on {owner}"
              + (", nodes over mutual TLS (the proxy's clients: plain TCP)" if args.tls else ""))
        for r in report["runs"]:
            print(f"  {r['clients']} connections, pipeline {r['pipeline']:>3}: direct "
                  f"{r['direct_cycles_per_s']} cycles/s, proxy {r['proxy_cycles_per_s']}; "
                  f"ratio {r['ratio']:.2f}; proxy CPU {r['proxy_cpu_us_per_command']} us/command")
            for name, label in (("unpolled", "proxy, busy poll off"),
                                ("forwarder", "bare forwarder")):
                if f"{name}_ratio" in r:
                    print(f"      {label} {r[f'{name}_cycles_per_s']}; ratio "
                          f"{r[f'{name}_ratio']:.2f}; its CPU "
                          f"{r[f'{name}_cpu_us_per_command']} us/command")
    return report


def _compare(load, cluster, direct_port: int, unpolled, forwarder, clients: int,
             pipeline: int, args, tls: tuple | None) -> dict:
    """Rounds of direct, proxied (and unpolled, forwarded): the rates, median ratios,
    CPU per command."""
    # name -> (port, pid, its clients' TLS files: the proxy's are plain, a sidecar's)
    targets = {"proxy": (cluster.port, cluster.proxy.pid, None)}
    if unpolled is not None:
        targets["unpolled"] = (unpolled.port, unpolled.pid, None)
    if forwarder is not None:
        targets["forwarder"] = (forwarder.port, forwarder.pid, tls)  # (TLS end to end)
    rows: dict = {"direct": [], **{name: [] for name in targets}}
    cpu = dict.fromkeys(targets, 0.0)
    cycles = dict.fromkeys(targets, 0.0)
    for _ in range(args.rounds):
        rows["direct"].append(load(direct_port, clients, pipeline, args.seconds, tls))
        for name, (port, pid, client_tls) in targets.items():
            before = cpu_seconds(pid)
            t0 = time.monotonic()
            rate = load(port, clients, pipeline, args.seconds, client_tls)
            cpu[name] += cpu_seconds(pid) - before
            cycles[name] += rate * (time.monotonic() - t0)
            rows[name].append(rate)
    out = {"clients": clients, "pipeline": pipeline,
           "direct_cycles_per_s": [round(x) for x in rows["direct"]]}
    for name in targets:
        out.update({
            f"{name}_cycles_per_s": [round(x) for x in rows[name]],
            f"{name}_ratio": round(median(rows[name]) / median(rows["direct"]), 3),
            f"{name}_cpu_us_per_command": round(cpu[name] / (3 * cycles[name]) * 1e6, 1),
        })
    out["ratio"] = out.pop("proxy_ratio")
    return out


def _measure(load, trial, owner: str, counts, pipelines, args, report: dict,
             tmp: Path) -> None:
    """Start the nodes (mutual TLS with ``trial``'s files) and the proxy, run the grid."""
    flags: tuple = ()
    table = ""
    tls = None  # the direct (and forwarded) clients' (ca, cert, key)
    if trial is not None:
        flags = ("--tls-cert", str(trial.node.cert), "--tls-key", str(trial.node.key),
                 "--tls-client-ca", str(trial.ca.cert))
        tls = (str(trial.ca.cert), str(trial.client.cert), str(trial.client.key))
        table = f'[tls]\nca = "{tls[0]}"\ncert = "{tls[1]}"\nkey = "{tls[2]}"\n'
    if args.busy_poll is not None:  # ([cluster], before any table)
        table = f"proxy_busy_poll = {args.busy_poll}\n{table}"
    with ProxiedCluster(tmp, 3, *flags, extra=table) as cluster:
        direct_port = cluster.nodes[int(owner[4:]) - 1].port
        unpolled = start_proxy(cluster.config, "--busy-poll", "0") if args.unpolled else None
        forwarder = _start_forwarder(direct_port) if args.forwarder else None
        try:
            for clients in counts:
                for pipeline in pipelines:
                    report["runs"].append(_compare(load, cluster, direct_port, unpolled,
                                                   forwarder, clients, pipeline, args, tls))
        finally:
            for server in (unpolled, forwarder):
                if server is not None:
                    server.kill()


def _start_forwarder(node_port: int) -> Server:
    port = free_port()
    proc = subprocess.Popen([find_forwarder(), str(port), str(node_port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_connectable(port, time.monotonic() + 20, proc)
    return Server("forwarder", proc, port, deque())


if __name__ == "__main__":
    main()
