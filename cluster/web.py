"""`bscluster web`: the dashboard, its JSON API, and the cluster's /metrics.

How this works
--------------
One ``BoundedServer`` (webserver.py: a fixed pool of worker threads, idle
connections capped and timed out, request bodies bounded) serves the
static dashboard from cluster/static/ and a small JSON API (documented in
docs/MONITORING.md).  `bscluster web` runs it on its own; `bscluster up
--web` runs the same thing on threads inside the supervisor (webhost.py).
/metrics is every node's stats as the poller last saw them plus, when a
supervisor runs the cluster, its own series (supervisor_metrics.py).  A poller thread calls ``Monitor.poll()`` every
interval; GET requests read its latest view and history, so any number of
open dashboards cost the nodes one poll per interval.

Reading is open to whoever can reach the port (bound to 127.0.0.1 unless
told otherwise).  Changing data (kick, delete a job, clear a tube, move
jobs, pause/resume) needs the token given with ``--token`` or
``BSCLUSTER_WEB_TOKEN``, sent as ``Authorization: Bearer TOKEN``; without a
configured token those endpoints answer 403 and the UI says why.  The
custom header (no cookies) means a page on another site cannot make a
browser send an action; the Host check stops DNS-rebinding pages from
reading a loopback dashboard.  Actions talk to the nodes over the
protocol with fresh connections, then trigger a poll so the answer shows
at once.  Every loop over jobs is bounded in count and in time.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import secrets
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import click
from bsclient import (
    BeanstalkError,
    Client,
    ClusterClient,
    ConnectionLostError,
    NotFoundError,
)
from bsclient.address import is_loopback, parse_listen
from bsclient.protocol import TUBE_NAME_RULE, is_tube_name
from bscluster.config import DEFAULT_WEB_LISTEN, DEFAULT_WEB_MAX_TUBES, MAX_WEB_MAX_TUBES
from bscluster.monitor import (
    POLL_INTERVAL,
    Monitor,
    MonitorError,
    cluster_ssl_context,
    inspect_job,
    inspect_tube,
    resolve_nodes,
    watch_options,
)
from bscluster.supervisor_metrics import supervisor_metrics
from bscluster.webserver import BoundedHandler, BoundedServer
from bsnode.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_LISTEN = DEFAULT_WEB_LISTEN
ENV_TOKEN = "BSCLUSTER_WEB_TOKEN"
MAX_REQUEST_BODY = 65536
ACTION_LIMIT = 100_000  # jobs one clear/move request handles at most
ACTION_DEADLINE = 30.0  # seconds one clear/move request runs at most
MAX_PAUSE = 2**32 - 1
CLEARABLE = ("ready", "delayed", "buried")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
_GENERATE = "\0generate"  # `--token` given without a value


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the actions ------------------------------------------------------------------------
def _tube(name: str) -> str:
    if not is_tube_name(name):
        raise ApiError(400, f"{name!r} is not a valid tube name ({TUBE_NAME_RULE})")
    return name


def _count(value, name: str, low: int = 0, high: int = MAX_PAUSE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return value


class Actions:
    """The data-changing operations, each against every node that has the tube."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def _holding(self, tube: str, unreachable: list[str]):
        """(name, client) for each node that has ``tube``, in use of it.

        Nodes that cannot be reached are skipped and named in ``unreachable``.
        """
        for node in self.monitor.nodes:
            try:
                c = self.monitor.client(node.name)
            except (OSError, ConnectionLostError):
                unreachable.append(node.name)
                continue
            with c:
                try:
                    c.stats_tube(tube)
                except NotFoundError:
                    continue
                c.use(tube)
                yield node.name, c

    def kick(self, tube: str, bound: int) -> dict:
        left, per_node, down = bound, {}, []
        for name, c in self._holding(tube, down):
            if left <= 0:
                break
            per_node[name] = n = c.kick(left)
            left -= n
        return _with_down({"kicked": bound - left, "nodes": per_node}, down)

    def pause(self, tube: str, seconds: int) -> dict:
        nodes, down = [], []
        for name, c in self._holding(tube, down):
            c.pause_tube(tube, seconds)
            nodes.append(name)
        if not nodes:
            raise ApiError(404, f"no node has a tube named {tube!r}")
        return _with_down({"paused": seconds, "nodes": nodes}, down)

    def clear(self, tube: str, states: list[str]) -> dict:
        deadline = time.monotonic() + ACTION_DEADLINE
        deleted, complete, down = 0, True, []
        for _, c in self._holding(tube, down):
            for state in states:
                peek = getattr(c, f"peek_{state}")
                while True:
                    if deleted >= ACTION_LIMIT or time.monotonic() > deadline:
                        complete = False
                        break
                    try:
                        job = peek()
                    except NotFoundError:
                        break
                    try:
                        c.delete(job.id)
                        deleted += 1
                    except NotFoundError:
                        pass  # a worker took it between the peek and the delete
        return _with_down({"deleted": deleted, "complete": complete}, down)

    def move(self, tube: str, to: str, state: str, limit: int) -> dict:
        """Put the jobs in ``state`` into tube ``to`` (on its owner node), then delete them.

        Each job is reserved first (reserve-job), so no worker runs it while
        it moves; if the put fails it goes back where it was.
        """
        if to == tube:
            raise ApiError(400, "the target tube is the tube itself")
        deadline = time.monotonic() + ACTION_DEADLINE
        moved, complete, down = 0, True, []
        target = ClusterClient(self.monitor.nodes, connect_timeout=2.0, timeout=5.0, use=to,
                               ssl_context=self.monitor.ssl_context)
        try:
            for _, c in self._holding(tube, down):
                peek = getattr(c, f"peek_{state}")
                while moved < limit:
                    if time.monotonic() > deadline:
                        complete = False
                        break
                    try:
                        job = peek()
                        info = c.stats_job(job.id)
                        c.reserve_job(job.id)
                    except NotFoundError:
                        if self._empty(peek):
                            break
                        continue  # taken by a worker meanwhile: try the next one
                    self._move_one(c, target, job, info, state)
                    moved += 1
        finally:
            target.close()
        return _with_down({"moved": moved, "complete": complete, "to": to}, down)

    @staticmethod
    def _empty(peek) -> bool:
        try:
            peek()
            return False
        except NotFoundError:
            return True

    @staticmethod
    def _move_one(c: Client, target: ClusterClient, job, info: dict, state: str) -> None:
        pri, ttr = info["pri"], info["ttr"]
        delay = info["time-left"] if state == "delayed" else 0
        try:
            target.put(job.body, priority=pri, delay=delay, ttr=ttr)
        except BeanstalkError:
            if state == "buried":
                c.bury(job.id, pri)
            else:
                c.release(job.id, pri, delay)
            raise
        c.delete(job.id)

    def delete_job(self, node: str, job_id: int) -> dict:
        with self.monitor.client(node) as c:
            c.delete(job_id)
        return {"deleted": f"{node}/{job_id}"}

    def kick_job(self, node: str, job_id: int) -> dict:
        with self.monitor.client(node) as c:
            c.kick_job(job_id)
        return {"kicked": f"{node}/{job_id}"}


def _with_down(result: dict, down: list[str]) -> dict:
    """Name the nodes an action could not reach (it did what it could elsewhere)."""
    if down:
        result["unreachable"] = down
    return result


# --- the HTTP side -------------------------------------------------------------------------
class Dashboard:
    """The monitor, its poller thread, the actions and the token."""

    def __init__(self, monitor: Monitor, token: str | None,
                 supervisor_state: Callable[[], dict | None] | None = None) -> None:
        self.monitor = monitor
        self.actions = Actions(monitor)
        self.token = token or None
        self.supervisor_state = supervisor_state  # the supervisor's state doc, if one runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="poller", daemon=True)

    def start(self, poll_first: bool = True) -> None:
        """Start the poller; ``poll_first`` polls once before returning."""
        if poll_first:
            self.monitor.poll()
        self._thread.start()

    def overview(self) -> dict:
        """The latest view; with a supervisor, each node row also carries its
        supervision state ({"state", "reason", "restarts", "crashes"})."""
        view = self.monitor.latest() or self.monitor.poll()
        state = self.supervisor_state() if self.supervisor_state is not None else None
        supervised = (state or {}).get("nodes") or {}
        if supervised:
            view = {**view, "nodes": [
                {**row, "supervisor": {k: supervised[row["name"]].get(k) for k in
                                       ("state", "reason", "restarts", "crashes")}}
                if row["name"] in supervised else row for row in view["nodes"]]}
        return {**view, "actions": self.token is not None, "poll_interval": self.monitor.interval}

    def metrics(self) -> str:
        """The cluster's /metrics: the nodes' series, then the supervisor's."""
        state = self.supervisor_state() if self.supervisor_state is not None else None
        return self.monitor.metrics() + supervisor_metrics(state)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.monitor.interval):
            self.monitor.poll()

    def authorized(self, header: str | None) -> bool:
        if self.token is None or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), self.token.encode())


def _segments(path: str) -> list[str]:
    """Split before unquoting, so a tube name may contain '/' (as %2F)."""
    return [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []


class Handler(BoundedHandler):
    server_version = "bscluster-web"
    dashboard: Dashboard  # set on the subclass made by make_server
    allowed_hosts: frozenset[str] | None = None
    quiet = True

    def log_message(self, fmt, *args) -> None:
        if not self.quiet:
            super().log_message(fmt, *args)

    # responses
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc, default=str).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        if self.allowed_hosts is None:
            return True
        host = (self.headers.get("Host") or "").lower()
        return host in self.allowed_hosts

    # dispatch
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _dispatch(self, fn) -> None:
        if not self._host_ok():
            self._error(421, "unexpected Host header; open the dashboard by its address")
            return
        url = urlsplit(self.path)
        try:
            fn(_segments(url.path), parse_qs(url.query))
        except ApiError as e:
            self._error(e.status, str(e))
        except NotFoundError:
            self._error(404, "no such job (or it is reserved by a worker)")
        except MonitorError as e:
            self._error(404, str(e))
        except (OSError, ConnectionLostError) as e:
            self._error(502, f"a node did not answer: {e}")
        except BeanstalkError as e:
            self._error(502, f"a node refused: {e}")

    def _get(self, seg: list[str], query: dict) -> None:
        d = self.dashboard
        if not seg:
            return self._static("index.html")
        if seg[0] == "static" and len(seg) == 2:
            return self._static(seg[1])
        if seg == ["metrics"]:
            body = d.metrics().encode()
            return self._send(200, body, METRICS_CONTENT_TYPE)
        if seg[0] != "api" or len(seg) < 2:
            raise ApiError(404, "not found")
        if seg[1:] == ["overview"]:
            return self._json(200, d.overview())
        if seg[1:] == ["history"]:
            tube = query.get("tube", [None])[0]
            return self._json(200, {"tube": tube, "points": d.monitor.history(tube)})
        if seg[1] == "tubes" and len(seg) == 3:
            found = inspect_tube(d.monitor, _tube(seg[2]))
            if not found["nodes"]:  # every node answered, and none has it
                raise ApiError(404, f"no node has a tube named {seg[2]!r}")
            return self._json(200, found)
        if seg[1] == "jobs" and len(seg) == 4:
            job = inspect_job(d.monitor, seg[2], _job_id(seg[3]))
            if job is None:
                raise ApiError(404, f"{seg[2]} has no job {seg[3]}")
            return self._json(200, job)
        raise ApiError(404, "not found")

    def _post(self, seg: list[str], query: dict) -> None:
        d = self.dashboard
        if d.token is None:
            raise ApiError(403, f"actions are disabled: set {ENV_TOKEN} in the environment of "
                                f"`bscluster up --web` (or start `bscluster web` with --token) "
                                f"to enable them")
        if not d.authorized(self.headers.get("Authorization")):
            raise ApiError(401, "wrong or missing token (Authorization: Bearer TOKEN)")
        args = self._body()
        if len(seg) == 4 and seg[:2] == ["api", "tubes"]:
            result = self._tube_action(_tube(seg[2]), seg[3], args)
        elif len(seg) == 5 and seg[:2] == ["api", "jobs"]:
            result = self._job_action(seg[2], _job_id(seg[3]), seg[4])
        else:
            raise ApiError(404, "not found")
        d.monitor.poll()  # the next overview shows the change
        self._json(200, result)

    def _body(self) -> dict:
        length = _content_length(self.headers.get("Content-Length"))
        if length > MAX_REQUEST_BODY:
            self.close_connection = True  # the body is left unread
            raise ApiError(413, f"request body too large (at most {MAX_REQUEST_BODY} bytes)")
        if not length:
            return {}
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise ApiError(415, "send a JSON body (Content-Type: application/json)")
        try:
            doc = json.loads(self.rfile.read(length))
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "the body must be a JSON object")
        return doc

    def _tube_action(self, tube: str, action: str, args: dict) -> dict:
        a = self.dashboard.actions
        if action == "kick":
            return a.kick(tube, _count(args.get("bound", MAX_PAUSE), "bound", 1))
        if action == "pause":
            return a.pause(tube, _count(args.get("seconds"), "seconds"))
        if action == "resume":
            return a.pause(tube, 0)
        if action == "clear":
            states = args.get("states", list(CLEARABLE))
            if not isinstance(states, list) or not states or not set(states) <= set(CLEARABLE):
                raise ApiError(400, f"states must be a list drawn from {', '.join(CLEARABLE)}")
            return a.clear(tube, states)
        if action == "move":
            state = args.get("state", "buried")
            if state not in CLEARABLE:
                raise ApiError(400, f"state must be one of {', '.join(CLEARABLE)}")
            to = _tube(str(args.get("to", "")))
            return a.move(tube, to, state, _count(args.get("limit", ACTION_LIMIT), "limit", 1,
                                                  ACTION_LIMIT))
        raise ApiError(404, f"no tube action {action!r}")

    def _job_action(self, node: str, job_id: int, action: str) -> dict:
        a = self.dashboard.actions
        if action == "delete":
            return a.delete_job(node, job_id)
        if action == "kick":
            return a.kick_job(node, job_id)
        raise ApiError(404, f"no job action {action!r}")

    def _static(self, name: str) -> None:
        path = (STATIC_DIR / name).resolve()
        if path.parent != STATIC_DIR.resolve() or not path.is_file():
            raise ApiError(404, "not found")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, path.read_bytes(), ctype)


def _content_length(value: str | None) -> int:
    """The request's body length; ApiError 400 unless it is a plain decimal."""
    if value is None or not value.strip():
        return 0
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ApiError(400, f"bad Content-Length {value[:40]!r}: expected a number of bytes")
    return int(value)


def _job_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**64:
        raise ApiError(400, f"{text!r} is not a job id")
    return int(text)


def make_server(dashboard: Dashboard, host: str, port: int, quiet: bool = True,
                log: Callable[[str], None] | None = None, ssl_context=None) -> BoundedServer:
    """Bind the dashboard; the caller runs ``serve_forever`` and ``server_close``.
    ``log`` hears of trouble the server survives (out of descriptors, say).  With
    ``ssl_context`` it serves HTTPS (the handshake runs in each request's thread)."""
    loopback = is_loopback(host)
    handler = type("DashboardHandler", (Handler,), {"dashboard": dashboard, "quiet": quiet})
    server = BoundedServer((host, port), handler, log=log, ssl_context=ssl_context)
    if loopback:
        bound = server.server_address[1]
        handler.allowed_hosts = frozenset(f"{h}:{bound}" for h in LOOPBACK_HOSTS)
    return server


def reload_tls(monitor: Monitor, server: BoundedServer, config) -> None:
    """Read [tls] again (`bscluster reload`, SIGHUP to `bscluster web`): new connections
    to the nodes present its client certificate, new HTTPS clients are shown its
    node certificate; open connections keep theirs.  Raises ConfigError, OSError or
    ssl.SSLError, and changes nothing, when the files cannot be loaded."""
    from bscluster.tls_init import dashboard_context

    client = config.ssl_context()
    https = dashboard_context(config) if server.ssl_context is not None else None
    monitor.use_ssl_context(client)
    if https is not None:
        server.ssl_context = https


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from None


@click.command()
@watch_options
@click.option("--listen", "-l", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
              help="Where the dashboard listens; port 0 picks a free one.")
@click.option("--token", is_flag=False, flag_value=_GENERATE, default=None, metavar="[TOKEN]",
              envvar=ENV_TOKEN, help=f"Enable actions that change data for requests bearing "
              f"this token [env {ENV_TOKEN}]; --token alone makes one up and prints it.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=POLL_INTERVAL,
              show_default=True, metavar="SECONDS", help="Time between polls of the nodes.")
@click.option("--max-tubes", type=click.IntRange(1, MAX_WEB_MAX_TUBES),
              default=DEFAULT_WEB_MAX_TUBES, show_default=True, metavar="N",
              envvar="BSCLUSTER_WEB_MAX_TUBES", help="Tubes listed and charted, busiest "
              "first; quiet tubes beyond this are only counted [env BSCLUSTER_WEB_MAX_TUBES].")
@click.option("--verbose", "-v", is_flag=True, help="Log every request.")
def web(config_file, data_dir, node_flags, listen, token, interval, max_tubes,
        verbose) -> None:
    """Serve the dashboard, its JSON API and the cluster's /metrics.

    Read-only unless a token is set; see docs/MONITORING.md. SIGHUP reads the
    [tls] files again (rotated certificates); open connections keep theirs.
    """
    host, port = _listen(listen)
    try:
        monitor = Monitor(resolve_nodes(config_file, data_dir, node_flags), interval=interval,
                          max_tubes=max_tubes, ssl_context=cluster_ssl_context(config_file))
    except MonitorError as e:
        raise click.ClickException(str(e)) from None
    if token == _GENERATE:
        token = secrets.token_urlsafe(18)
        click.echo(f"token: {token}")
    state = None if node_flags else _supervisor_state_source(config_file, data_dir)
    dashboard = Dashboard(monitor, token, state)
    try:
        https = _https(config_file)
        server = make_server(dashboard, host, port, quiet=not verbose, log=_log_stderr,
                             ssl_context=https)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if handler_open_to_others(host):
        click.echo(f"warning: the dashboard listens on {host}: anyone who can reach it sees "
                   f"job bodies{' and, with the token, can change data' if token else ''}.",
                   err=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    signal.signal(signal.SIGHUP, lambda *_: _reload_on_hup(monitor, server, config_file))
    try:
        dashboard.start()  # the first poll: the URL below is ready when printed
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"dashboard on http{'s' if https else ''}://{shown}:{bound_port}/ watching "
                   f"{', '.join(n.name for n in monitor.nodes)}")
        click.echo("actions enabled (token required)" if token else
                   f"read-only: set --token or {ENV_TOKEN} to enable "
                   f"kick/delete/clear/move/pause")
        sys.stdout.flush()
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.stop()
        server.server_close()


def _reload_on_hup(monitor: Monitor, server: BoundedServer, config_file: str | None) -> None:
    from bscluster.config import ConfigError, load_config

    try:
        config = load_config(config_file, {})
        if config.tls is None:
            _log_stderr("SIGHUP: no [tls] in the config: nothing to read again")
            return
        reload_tls(monitor, server, config)
    except (ConfigError, OSError, ssl.SSLError) as e:
        _log_stderr(f"SIGHUP: TLS files not reloaded, keeping the old ones: {e}")
    else:
        _log_stderr("SIGHUP: TLS files read again; new connections use them")


def _log_stderr(message: str) -> None:
    click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", err=True)


def _https(config_file: str | None):
    """The dashboard's HTTPS context from [tls] (None: plain HTTP)."""
    from bscluster.config import ConfigError, load_config
    from bscluster.tls_init import dashboard_context

    try:
        return dashboard_context(load_config(config_file, {}))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _supervisor_state_source(config_file: str | None,
                             data_dir: str | None) -> Callable[[], dict | None] | None:
    """Reads the state of the supervisor running the cluster, if one does (for /metrics)."""
    from bscluster.config import ConfigError, load_config
    from bscluster.runtime import Paths, read_json, supervisor_alive

    try:
        paths = Paths(load_config(config_file, {"data_dir": data_dir}).data_dir)
    except ConfigError:
        return None
    return lambda: read_json(paths.state) if supervisor_alive(paths) else None


def handler_open_to_others(host: str) -> bool:
    return not is_loopback(host)

