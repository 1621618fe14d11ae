"""The ``bsnode`` command: beanstalkd 1.12's flags, parsed the way it parses them.

Flags may be glued to their value (``-p11300``) or separate (``-p 11300``),
and bare flags combine (``-VV``).  Unknown flags and stray arguments print
the usage and exit with status 5, as beanstalkd does.  Options are parsed
once into a frozen ``NodeOptions``; nothing reads argv after that.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import resource
import socket
import stat
import sys
from dataclasses import dataclass, replace

from bsclient.address import parse_listen
from bsclient.protocol import DEFAULT_MAX_JOB_SIZE, DEFAULT_PORT, MAX_JOB_SIZE_LIMIT

from . import caps, tls
from .caps import NO_CAPS, Caps
from .commands import PROTOCOL_VERSION, VERSION
from .defaults import DEFAULT_BINLOG_SIZE, DEFAULT_FSYNC_MS
from .tls import TlsFiles

log = logging.getLogger("bsnode")

UNIX_PROBE_TIMEOUT = 1.0  # seconds to wait for a server on an existing socket file

USAGE = """\
Use: {prog} [OPTIONS]

Options:
 -b DIR   write-ahead log directory
 -f MS    fsync at most once every MS milliseconds (default is {fsync}ms);
          use -f0 for "always fsync"
 -F       never fsync
 -l ADDR  listen on address (default is 0.0.0.0); unix:PATH for a UNIX socket
 -p PORT  listen on port (default is {port}); 0 picks a free port
 -u USER  become user and group
 -z BYTES set the maximum job size in bytes (default is {maxjob});
          max allowed is {maxlimit} bytes
 -s BYTES set the size of each write-ahead log file (default is {binlog});
          will be rounded up to a multiple of 4096 bytes
 -v       show version information
 -V       increase verbosity
 -h       show this help

Extension (not in beanstalkd; off unless given):
 --metrics ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics
 --metrics-max-tubes N  per-tube series for the N tubes with the most jobs
                      (default {maxtubes}); the others are only counted
 --binlog-recover     start past damage in the middle of the binlog, skipping
                      the damaged bytes, or a segment that is missing or lost
                      its end (jobs in them are lost, deleted ones may come
                      back; a warning says what); the default is to refuse to
                      start and name the file (and offset)
{tls}{caps}
bsnode speaks the beanstalkd {proto} protocol.  Once listening it writes
"listening on ADDR:PORT" to stderr.  Under systemd socket activation
(LISTEN_FDS) it serves the socket it is given and ignores -l and -p.
The protocol has no authentication: bind to 127.0.0.1 (-l 127.0.0.1) or a
private network unless every host that can reach the port is trusted.
"""


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class NodeOptions:
    listen: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    binlog_dir: str | None = None
    fsync_ms: int | None = DEFAULT_FSYNC_MS  # None: never fsync
    max_job_size: int = DEFAULT_MAX_JOB_SIZE
    binlog_size: int = DEFAULT_BINLOG_SIZE
    user: str | None = None
    verbose: int = 0
    listen_given: bool = False
    port_given: bool = False
    metrics: tuple[str, int] | None = None  # --metrics ADDR:PORT (an extension)
    metrics_max_tubes: int | None = None  # --metrics-max-tubes N (None: the default)
    binlog_recover: bool | None = None  # --binlog-recover (an extension)
    tls: TlsFiles | None = None  # --tls-cert/--tls-key/--tls-client-ca (tls.py)
    tls_port: int | None = None  # --tls-port: TLS there, plain TCP on -p
    caps: Caps = NO_CAPS  # --max-jobs/--max-job-bytes (caps.py)


def _size(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"invalid size: {text}")
    return int(text)


def parse_args(argv: list[str]) -> NodeOptions | str:
    """Parse flags; returns NodeOptions, or "help"/"version" for -h/-v."""
    o: dict = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"unknown argument: {arg}")
        i += 1
        if arg.startswith("--"):
            i = _long_option(o, arg, args, i)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "plzsfub":
                if j < len(arg):
                    value, j = arg[j:], len(arg)
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise UsageError(f"flag requires an argument: -{c}")
                _set_valued(o, c, value)
            elif c in "cn":
                log.warning("-%s flag was removed. binlog is always compacted.", c)
            elif c == "F":
                o["fsync_ms"] = None
            elif c == "V":
                o["verbose"] = o.get("verbose", 0) + 1
            elif c == "h":
                return "help"
            elif c == "v":
                return "version"
            else:
                raise UsageError(f"unknown flag: -{c}")
    _extensions(o, o.pop("ext", {}))
    return NodeOptions(**o)


def _extensions(o: dict, ext: dict) -> None:
    """The TLS and caps options, checked as a whole."""
    try:
        o["tls"] = tls.files_from(ext)
        o["caps"] = caps.parse(ext)
    except ValueError as e:
        raise UsageError(str(e)) from None
    port = ext.get("tls_port")
    if port is not None:
        if not port.isdigit() or int(port) > 65535:
            raise UsageError(f"invalid --tls-port: {port}")
        o["tls_port"] = int(port)


def _long_option(o: dict, arg: str, args: list[str], i: int) -> int:
    """Our extensions are long options, so no beanstalkd flag can clash."""
    name, eq, value = arg.partition("=")
    if name == "--binlog-recover" and not eq:
        o["binlog_recover"] = True
        return i
    key = tls.FLAGS.get(name) or caps.FLAGS.get(name)
    if key is not None:
        if not eq:
            if i >= len(args):
                raise UsageError(f"option requires an argument: {name}")
            value, i = args[i], i + 1
        o.setdefault("ext", {})[key] = value
        return i
    if name not in ("--metrics", "--metrics-max-tubes"):
        raise UsageError(f"unknown option: {name}")
    if not eq:
        if i >= len(args):
            raise UsageError(f"option requires an argument: {name}")
        value, i = args[i], i + 1
    if name == "--metrics-max-tubes":
        if not value.isdigit():
            raise UsageError(f"--metrics-max-tubes: expected a number, got {value!r}")
        o["metrics_max_tubes"] = int(value)
        return i
    try:
        o["metrics"] = parse_listen(value)
    except ValueError as e:
        raise UsageError(f"--metrics: {e}") from None
    return i


def _set_valued(o: dict, c: str, value: str) -> None:
    if c == "p":
        if not value.isdigit() or int(value) > 65535:
            raise UsageError(f"invalid port: {value}")
        o["port"] = int(value)
        o["port_given"] = True
    elif c == "l":
        o["listen"] = value
        o["listen_given"] = True
    elif c == "z":
        size = _size(value)
        if size > MAX_JOB_SIZE_LIMIT:
            log.warning("maximum job size was set to %d", MAX_JOB_SIZE_LIMIT)
            size = MAX_JOB_SIZE_LIMIT
        o["max_job_size"] = size
    elif c == "s":
        o["binlog_size"] = _size(value)
    elif c == "f":
        o["fsync_ms"] = _size(value)
    elif c == "u":
        o["user"] = value
    elif c == "b":
        o["binlog_dir"] = value


# --- the listening socket -----------------------------------------------------
def systemd_socket() -> socket.socket | None:
    """The socket systemd passed us (LISTEN_FDS), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    if count > 1:
        log.warning("systemd passed %d sockets; serving the first", count)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return socket.socket(fileno=3)


def make_listener(opts: NodeOptions) -> tuple[socket.socket, str]:
    """Bind the listening socket; returns it and a printable address.

    The socket is bound (so a taken port fails at once) but listens only
    once the binlog is replayed: a node that accepts connections is ready,
    which is what a supervisor or a client waiting for it can rely on."""
    sock = systemd_socket()
    if sock is not None:
        if opts.listen_given or opts.port_given:
            log.warning("inherited a socket from systemd: -l and -p are ignored")
        _tcp_options(sock)
        return sock, _describe(sock)
    if opts.listen.startswith("unix:"):
        path = opts.listen[5:]
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        return sock, f"unix:{path}"
    infos = socket.getaddrinfo(opts.listen, opts.port, socket.AF_UNSPEC,
                               socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _tcp_options(sock)
    sock.bind(addr)
    return sock, _describe(sock)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a server that is gone (as after a crash).

    A socket some server still answers on is left alone: OSError
    (EADDRINUSE), and the caller exits 111.  Anything but a socket is never
    removed (bind then fails with EADDRINUSE)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(UNIX_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise  # cannot tell (EACCES, a full backlog): do not take it over
    else:
        raise OSError(errno.EADDRINUSE, f"{path}: another server is listening on it")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _tcp_options(sock: socket.socket) -> None:
    """beanstalkd's socket options, which accepted connections inherit:
    keepalive (dead peers are found), and no Nagle delay on replies."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return f"unix:{name}"


def _metrics_listener(opts: NodeOptions) -> socket.socket:
    from .metrics import bind

    host, port = opts.metrics
    try:
        return bind(host, port)
    except OSError as e:
        log.error("cannot listen for metrics on %s:%s: %s", host, port, e.strerror or e)
        raise SystemExit(111) from None


def drop_privileges(user: str) -> None:
    """Become ``user`` and its group, as beanstalkd's -u does."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        log.error('getpwnam("%s"): no such user', user)
        raise SystemExit(33) from None
    except OSError as e:
        log.error('getpwnam("%s"): %s', user, e)
        raise SystemExit(32) from None
    try:
        os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [pw.pw_gid])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        log.error('cannot become user "%s" (uid %d, gid %d): %s', user, pw.pw_uid,
                  pw.pw_gid, e.strerror or e)
        raise SystemExit(34) from None


def raise_fd_limit() -> None:
    """One descriptor per client: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def lock_binlog(opts: NodeOptions):
    """Lock -b DIR (exit 10 if another process holds it, as beanstalkd)."""
    from . import binlog

    try:
        return binlog.lock_dir(opts.binlog_dir)
    except binlog.BinlogError as e:
        log.error("%s", e)
        raise SystemExit(e.exit_code) from None


def attach_binlog(opts: NodeOptions, store, lock=None) -> None:
    """Open the binlog in -b DIR, replay it into the store and keep it attached."""
    from . import binlog

    try:
        binlog.attach(store, opts.binlog_dir, segment_size=opts.binlog_size,
                      fsync_ms=opts.fsync_ms, recover=opts.binlog_recover, lock=lock)
    except binlog.BinlogError as e:
        log.error("%s", e)
        raise SystemExit(e.exit_code) from None


def main(argv: list[str] | None = None) -> None:
    from .server import setup_logging

    prog = "bsnode"
    setup_logging(0)
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        print(_usage(prog), file=sys.stderr, end="")
        raise SystemExit(5) from None
    if opts == "help":
        print(_usage(prog), file=sys.stderr, end="")
        raise SystemExit(0)
    if opts == "version":
        print(f"bsnode {VERSION} (beanstalkd {PROTOCOL_VERSION} protocol)")
        raise SystemExit(0)
    run(opts)


def _usage(prog: str) -> str:
    from .metrics import DEFAULT_MAX_TUBES

    return USAGE.format(prog=prog, fsync=DEFAULT_FSYNC_MS, port=DEFAULT_PORT,
                        maxtubes=DEFAULT_MAX_TUBES,
                        maxjob=DEFAULT_MAX_JOB_SIZE, maxlimit=MAX_JOB_SIZE_LIMIT,
                        binlog=DEFAULT_BINLOG_SIZE, proto=PROTOCOL_VERSION,
                        tls=tls.USAGE, caps=caps.USAGE)


def _tls_endpoint(opts: NodeOptions):
    """The TLS endpoint and its own listener (--tls-port), if TLS is on."""
    if opts.tls is None:
        return None, None
    try:
        endpoint = tls.TlsEndpoint(opts.tls)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        log.error("cannot load the TLS certificate %s / key %s: %s", opts.tls.cert,
                  opts.tls.key, e)
        raise SystemExit(6) from None
    tls.install_reload(endpoint)
    if opts.tls_port is None:
        return endpoint, None
    try:
        sock, _ = make_listener(replace(opts, port=opts.tls_port))
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", opts.listen, opts.tls_port, e.strerror or e)
        raise SystemExit(111) from None
    return endpoint, sock


def run(opts: NodeOptions) -> None:
    from .commands import Commands
    from .server import NodeServer, install_signal_handlers
    from .store import Store

    if opts.verbose:
        log.info("pid %d", os.getpid())
    # The binlog's lock first: a second node on the same DIR is refused
    # before it touches anything of the running one's (its UNIX socket file).
    lock = lock_binlog(opts) if opts.binlog_dir else None
    try:
        listener, where = make_listener(opts)
    except OSError as e:
        asked = opts.listen if opts.listen.startswith("unix:") else f"{opts.listen}:{opts.port}"
        log.error("cannot listen on %s: %s", asked, e.strerror or e)
        raise SystemExit(111) from None
    metrics_listener = _metrics_listener(opts) if opts.metrics else None
    raise_fd_limit()
    # Build everything that imports code before -u: the new user may not be
    # able to read the Python installation.
    if opts.binlog_dir:
        from . import binlog  # noqa: F401
    store = Store()
    store.caps = opts.caps
    commands = Commands(store, opts.max_job_size, opts.binlog_size)
    endpoint, tls_listener = _tls_endpoint(opts)
    server = NodeServer(listener, store, commands, opts.verbose, endpoint, tls_listener)
    install_signal_handlers(server)
    if metrics_listener is not None:
        from . import metrics

        max_tubes = opts.metrics_max_tubes
        metrics.serve(metrics_listener, commands, store, opts.binlog_dir,
                      metrics.DEFAULT_MAX_TUBES if max_tubes is None else max_tubes)
        log.info("metrics on http://%s/metrics", _describe(metrics_listener))
    if opts.user:
        if lock is not None:
            lock.give_to(opts.user)  # the binlog's files are the user's (beanstalkd: -u first)
        drop_privileges(opts.user)
    os.umask(0o077)  # binlog files are the owner's alone
    if opts.binlog_dir:
        attach_binlog(opts, store, lock)
    listener.listen(1024)  # a no-op for a socket systemd already listens on
    if tls_listener is not None:
        tls_listener.listen(1024)
        log.info("serving %s on %s", opts.tls.describe(), _describe(tls_listener))
    elif opts.tls is not None:
        where += f" ({opts.tls.describe(only=True)})"
    log.info("listening on %s", where)
    try:
        server.serve_forever()
    finally:
        store.wal.close()
