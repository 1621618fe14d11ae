"""`bscluster proxy`: one beanstalkd address in front of the whole cluster.

How this works
--------------
A gevent ``StreamServer`` accepts beanstalkd clients (any language); each
connection is a ``proxy_engine.ClientConn``, served by its own greenlet:

* reading, dispatching and answering happen in event-loop callbacks: what one
  node can answer at once goes straight to it (``proxy_fast``), many
  commands in one write, and the replies come back in command order;
* everything else (fan-out, failover, a reserve that must wait on several
  nodes) runs in the connection's greenlet through ``ProxyCommands`` and the
  one shared ``ClusterClient``, which gives each greenlet its own session
  (node connections, used tube, watch list, held jobs) as it gives each
  thread one.

When the client hangs up, its node connections are closed, so every job it
had reserved goes back to ready at once, as with one beanstalkd.  A job the
multiplexed reserve got ahead of the client is handed to the same client's
next reserve only if that reserve is already queued (pipelined); otherwise it
goes back to its node at once (docs/PROXY.md, "Reserve").

The process is gevent-patched in ``serve`` (an entry point, never at import),
so bsclient's blocking sockets and its ``select.poll`` wait cooperate.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import sys

import click
import gevent
from bsclient.protocol import CommandReader
from bscluster import proxy_cluster as pc
from bscluster import proxy_poll, proxy_tls
from bscluster.config import (
    DEFAULT_PROXY_BUSY_POLL,
    DEFAULT_PROXY_LISTEN,
    MAX_PROXY_BUSY_POLL,
    ConfigError,
    parse_listen,
)
from bscluster.proxy_commands import ProxyCommands
from bscluster.proxy_engine import ClientConn
from bscluster.proxy_fast import FastPath
from bscluster.proxy_reload import Reloader, reader
from bscluster.runtime import os_error_text
from bsnode.logstamp import log_to_stderr
from gevent.event import Event
from gevent.server import StreamServer

log = logging.getLogger("bscluster.proxy")

LISTEN_BACKLOG = 1024


class ProxyServer:
    """The listening socket and one ``ClientConn`` per client connection."""

    def __init__(self, cc, max_job_size: int, tls: proxy_tls.ProxyTLS | None = None,
                 busy_poll_us: int = 0) -> None:
        self.cc = cc
        self.tls = tls  # TLS on this listener or beside it (proxy_tls.py); None: plain TCP
        self.max_job_size = max_job_size
        self.commands = ProxyCommands(cc, max_job_size)
        self.poll = proxy_poll.BusyPoll(busy_poll_us)  # proxy_poll.py: the reads poke it
        self.fast = FastPath(self.commands, self.poll)
        self.server = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = StreamServer((host, port), self.handle, backlog=LISTEN_BACKLOG)
        self.server.init_socket()
        self.server.start()
        return self.server.address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None
        self.fast.close()
        self.poll.close()
        self.cc.close()

    def handle(self, sock, addr) -> None:
        if self.tls is not None:
            sock = self.tls.accept(sock, addr)  # None: refused or gone (logged)
            if sock is None:
                return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = self.commands.opened()
        ClientConn(self, sock, state, CommandReader(self.max_job_size)).serve()


def _reload(hup: Reloader, tls: proxy_tls.ProxyTLS | None) -> None:
    """SIGHUP: the node set from the config again, and the listener's certificates."""
    hup.reload()
    if tls is not None:
        tls.reload()


def _drain(server: ProxyServer) -> None:
    server.commands.draining = True
    log.info("SIGUSR1: drain mode on, puts through this proxy get DRAINING")


def raise_nofile() -> int:
    """Raise the descriptor limit to its hard maximum (idle clients are cheap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def build(config):
    """The shared ClusterClient and the proxy's job-size limit, from a ClusterConfig:
    its nodes, ring mode, leaving nodes, spread tubes and TLS to the nodes, read as
    every client of that config reads them (``ClusterConfig.layout``)."""
    cc = pc.make_cluster(config.layout(), config.ssl_context())
    return cc, min(n.max_job_size for n in config.nodes)


def serve(listen: str, config, tls_plan: proxy_tls.TlsPlan | None = None, read=None,
          busy_poll_us: int | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT (patches this process for gevent); SIGHUP
    applies ``read()``, the config read again (``proxy_reload``), and re-reads the
    listener's TLS certificate files.  ``busy_poll_us``: the config's
    proxy_busy_poll unless given."""
    from gevent import monkey

    monkey.patch_all()
    host, port = parse_listen(listen)
    limit = raise_nofile()
    tls = proxy_tls.load(tls_plan)  # after patching: its sockets are gevent's
    cc, max_job_size = build(config)
    window, polling = proxy_poll.window_for(
        config.proxy_busy_poll if busy_poll_us is None else busy_poll_us, proxy_poll.cpu_limit())
    server = ProxyServer(cc, max_job_size, tls, window)
    try:
        bound = server.start(host, port)
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {os_error_text(e)}; choose another address with "
            f"--listen ADDR:PORT (or proxy in the config file)") from None
    if tls is not None:
        tls.start_port(host, server.handle)
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGUSR1, lambda: _drain(server))
    hup = Reloader(cc, server.commands.numbers, config, read or (lambda: config))
    gevent.signal_handler(signal.SIGHUP, lambda: _reload(hup, tls))
    # a supervisor starts its proxy with SIGHUP blocked (proxy_proc): one sent meanwhile
    # is delivered now, to the handler
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    log.info("listening on %s:%d (%s; %d nodes: %s; %d descriptors; %s)", bound[0], bound[1],
             tls.describe() if tls is not None and tls.on_listen else "plain TCP",
             len(cc.nodes), ", ".join(cc.nodes), limit, polling)
    stop.wait()
    log.info("stopping")
    if tls is not None:
        tls.stop()
    server.stop()


@click.command()
@click.option("--listen", "-l", "listen", metavar="ADDR:PORT",
              help=f"Where clients connect [config proxy; default {DEFAULT_PROXY_LISTEN}; "
                   f"port 0: a free one, printed on stderr].")
@click.option("--config", "-c", "config_file", metavar="PATH",
              help="Config file naming the nodes [env BSCLUSTER_CONFIG; default "
                   "./bscluster.toml if present].")
@click.option("--busy-poll", "busy_poll", type=click.IntRange(0, MAX_PROXY_BUSY_POLL),
              metavar="USEC",
              help=f"While clients keep it busy, poll this many microseconds after the work "
                   f"of each read before sleeping: lower latency per hop for some CPU (0: off; never "
                   f"where the proxy may use one CPU or less; docs/PROXY.md, \"Busy poll\") "
                   f"[config proxy_busy_poll; default {DEFAULT_PROXY_BUSY_POLL}].")
@click.option("--wanted", metavar="PATH", hidden=True,
              help="The supervisor's wanted.json (how `up --proxy` starts the proxy).")
@proxy_tls.options
def proxy(listen, config_file, wanted, busy_poll, **tls_flags) -> None:
    """Serve beanstalkd's protocol on one address, routed over the whole cluster.

    Any beanstalkd client (PHP, Ruby, Node, Go, ...) connects to the proxy as
    to one beanstalkd: puts go to their tube's node on the ring, reserves
    wait on every node that can hold the watched tubes, job ids name their
    node.  Run one per application host (a sidecar) or one shared; several
    side by side agree on every id.  Differences from one beanstalkd:
    docs/PROXY.md.

    Plain TCP unless given a certificate: --tls-cert/--tls-key (bsnode's
    flags, same meaning), or proxy_tls = true in the config, which serves
    the nodes' certificate ([tls] node_cert/node_key; with client_auth =
    true, client certificates signed by [tls] ca are required).  A
    plain-text client on a TLS port is answered TLS_REQUIRED.
    docs/PROXY.md, "TLS".

    SIGHUP re-reads the config and applies it without a restart: nodes
    added, marked `leaving = true` (no more puts, still reserved from) or
    removed, a node's new address, weights, the ring and [tubes.NAME]
    spread.  Clients stay connected and keep the jobs they reserved (except
    on a node removed or moved).  The TLS files are read again too: the
    certificate the proxy serves, and [tls] ca/cert/key for node connections
    opened from then on (a rotated client certificate).  A config that does
    not read, or [tls] files for the nodes that do not load, are refused (one
    log line) and the old routing and TLS kept; a served certificate that
    does not load is logged and the old one kept.  Under `bscluster up --proxy`
    the supervisor sends the SIGHUP itself when `up` or `remove` changes the
    cluster.  SIGUSR1: drain mode (puts get DRAINING).
    """
    log_to_stderr("%(asctime)s bscluster proxy: %(message)s", logging.INFO)
    try:
        read = reader(config_file, wanted)
        try:
            config = read()
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        listen = listen or config.proxy or DEFAULT_PROXY_LISTEN
        try:
            parse_listen(listen)
        except ValueError as e:
            raise click.ClickException(f"--listen: {e}") from None
        serve(listen, config, proxy_tls.plan(tls_flags, config), read, busy_poll)
    except click.ClickException as e:  # a line stamped like the rest (a supervisor's log)
        log.error("error: %s", e.format_message())
        sys.exit(e.exit_code)
