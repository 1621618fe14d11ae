"""The `bscluster` command: init, up, status, stats, route, restart, down, config.

Commands with a module of their own are registered at the bottom:
drain/undrain/remove (ops.py), logs (logs.py); and, loaded only when run
(``LazyGroup``, so that `bscluster status` does not import a proxy or a
dashboard), top, web, proxy, bench, work and rebalance.

How this works
--------------
Every option defaults to None, so "not given" is visible and
``config.load_config`` can apply the precedence flag > environment > file >
default in one place (pip-tools' trick).  Commands that start things hand
the resolved ``ClusterConfig`` to the supervisor (in this process, or a
detached one via ``control``); commands that look at things read the data
dir and ask the nodes over their protocol (``probe``).  Every error a user
can cause ends as a ``click.ClickException`` with a sentence to act on.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import click
from bsclient import Ring
from bsclient.address import connect_host, is_loopback
from bsclient.protocol import TUBE_NAME_RULE, is_tube_name
from bscluster import control
from bscluster.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_WEB_LISTEN,
    ClusterConfig,
    ConfigError,
    config_path,
    load_config,
    parse_listen,
)
from bscluster.options import (
    NODE_OPTIONS,
    config_option,
    data_dir_option,
    json_option,
    load,
    node_options,
    proxy_option,
    web_option,
)
from bscluster.probe import connectable, probe_all
from bscluster.report import (
    cluster_stats,
    counted,
    human_duration,
    render_stats,
    render_status,
    status_rows,
)
from bscluster.runtime import Paths, read_json
from bscluster.states import START_TIMEOUT, STOP_TIMEOUT, State
from bscluster.template import render_config
from bscluster.truth import (
    ASKING_EXIT_HELP,
    EXIT_CODES_HELP,
    EXIT_NO_CLUSTER,
    EXIT_NODES_DOWN,
    EXIT_OK,
    ClusterView,
    changed_settings,
    cluster_view,
)

_load = load


def _fail(e: Exception):
    raise click.ClickException(str(e)) from None


class LazyGroup(click.Group):
    """A click group whose ``lazy`` commands are imported when run (or listed in --help)."""

    lazy = {  # command name -> (module, the click command in it)
        "top": ("bscluster.top", "top"), "web": ("bscluster.web", "web"),
        "proxy": ("bscluster.proxy", "proxy"), "bench": ("bscluster.bench", "bench"),
        "work": ("bscluster.work", "work"), "rebalance": ("bscluster.rebalance", "rebalance"),
        "reload": ("bscluster.tls_reload", "reload"),
    }

    def list_commands(self, ctx) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bscluster")
def cli() -> None:
    """Run and inspect a cluster of beanstalkd-compatible bsnode processes.

    Start with `bscluster up --nodes 4`, look with `bscluster status`, stop with
    `bscluster down`. Settings come from flags, then BSCLUSTER_* environment
    variables, then the config file (`bscluster init` writes one), then defaults.
    """


# --- init ------------------------------------------------------------------------
@cli.command()
@click.argument("path", required=False, metavar="[PATH]")
@NODE_OPTIONS[0]  # --nodes, --host, --base-port: the values the file starts with
@NODE_OPTIONS[1]
@NODE_OPTIONS[2]
@click.option("--data-dir", metavar="DIR",
              help="Where state, logs and binlogs will live, relative to the file "
                   "(./bscluster-data).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--tls", is_flag=True,
              help="Also make a private CA and node/client certificates for a trial "
                   "(in tls/ beside the file, with openssl) and a [tls] table: nodes "
                   "serve TLS only and require client certificates.")
def init(path, force, tls, **values) -> None:
    """Write a commented config file (./bscluster.toml by default).

    Every setting is in it, commented, with its default; these options set
    the first few. `bscluster up` and ClusterClient.from_config() read it.
    """
    target, _ = config_path(path, os.environ)
    if target.exists() and not force:
        raise click.ClickException(f"{target} already exists; edit it, or overwrite it "
                                   f"with `bscluster init --force`")
    text = render_config(**values)
    if tls:
        text += _trial_tls(target, values.get("host"))
    try:
        target.write_text(text)
        config = load_config(target, {}, env={})
    except ConfigError as e:
        target.unlink()
        _fail(e)
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror}") from None
    first, last = config.nodes[0], config.nodes[-1]
    click.echo(f"wrote {target}: {len(config.nodes)} nodes on {first.host}, ports "
               f"{first.port}-{last.port}, data in {config.data_dir}")
    hint = "" if str(target) == DEFAULT_CONFIG_PATH else f" --config {target}"
    click.echo(f"start the cluster with: bscluster up{hint}")


def _trial_tls(target, host: str | None) -> str:
    from bscluster import tls_init
    from bscluster.config import DEFAULT_HOST

    try:
        table = tls_init.trial_table(target.resolve(), host or DEFAULT_HOST)
    except (tls_init.TlsInitError, OSError) as e:
        _fail(e)
    click.echo(f"wrote a private CA and node/client certificates in "
               f"{target.resolve().parent / tls_init.TRIAL_DIR}")
    click.echo(f"warning: {tls_init.TRIAL_WARNING}", err=True)
    return table


# --- up ----------------------------------------------------------------------------
@cli.command()
@config_option
@node_options
@web_option
@proxy_option
@click.option("--detach", "-d", is_flag=True, help="Run in the background.")
def up(config_file, detach, **flags) -> None:
    """Start the cluster and keep every node running.

    In the foreground (the default) node output is prefixed with the node's
    name and Ctrl-C stops every node. With --detach the supervisor runs in the
    background; `status`, `stats`, `restart` and `down` find it through the
    data dir. Against a running cluster, a larger --nodes adds nodes; new
    weights, leaving flags, ring or [tubes] spread are handed to it (and to
    its proxy); --proxy starts, moves or (off) stops its proxy; changed
    settings for running nodes are refused (`down`, then `up`, applies them),
    and `bscluster remove NODE` takes a node away.

    With --web the supervisor also serves the dashboard, its JSON API and the
    cluster's /metrics (read-only unless BSCLUSTER_WEB_TOKEN is set); `down`
    stops it with the nodes. In the foreground, `up` exits 1 once every node
    is FATAL.
    """
    config = _load(config_file, flags)
    paths = Paths(config.data_dir)
    try:
        control.prepare_data_dir(config.data_dir)
    except control.ClusterError as e:
        _fail(e)
    exposed = sorted({n.host for n in config.nodes if not is_loopback(n.host)})
    if exposed:
        click.echo(f"warning: nodes listen on {', '.join(exposed)}; the beanstalkd protocol "
                   f"has no authentication, so anyone who can reach these ports can read and "
                   f"delete jobs. Firewall them or use 127.0.0.1.", err=True)
    state = control.running_state(paths)
    if state is not None:
        _up_running(config_file, flags, config, paths, state)
        return
    left = control.running_config(paths) if cluster_view(config).orphaned else None
    if left is not None:  # a killed supervisor's nodes (and proxy) run on: resume as they run
        config = _keeping(config_file, flags, config, left)
    if detach:
        since = control.log_size(paths)  # reasons come from this run's lines only
        pid = control.start_detached(config)
        try:
            state = control.wait_settled(paths, pid, since=since, on_poll=_ProgressShown())
            if config.proxy:
                control.wait_proxy(paths, config.proxy, since=since)
        except control.ClusterError as e:
            _fail(e)
        click.echo(banner(config, state))
        if any(e["state"] == State.FATAL.value for e in state["nodes"].values()):
            sys.exit(1)
        return
    from bscluster.proxy_proc import ProxyError
    from bscluster.supervisor import AlreadyRunning, Supervisor
    from bscluster.webhost import WebError

    supervisor = Supervisor(config, on_settled=lambda s: click.echo(banner(config, s.snapshot())))
    try:
        sys.exit(supervisor.run())
    except (AlreadyRunning, WebError, ProxyError) as e:
        _fail(e)


def _keeping(config_file, flags, config: ClusterConfig, current: ClusterConfig) -> ClusterConfig:
    """``config`` with the running cluster's value for every setting the user did not set
    (by file, environment or flag): `up` again keeps --web, --proxy, --nodes..."""
    kept = {k: _flag_value(current, k) for k, src in config.sources.items()
            if src == "default" and k != "data_dir"}  # (the same: it was found there)
    return _load(config_file, {**kept, **{k: v for k, v in flags.items() if v is not None}})


def _up_running(config_file, flags, config: ClusterConfig, paths: Paths, state: dict) -> None:
    running = list(state["nodes"])
    current = control.running_config(paths)
    if current is not None:
        config = _keeping(config_file, flags, config, current)
    gone = [n for n in running if n not in {spec.name for spec in config.nodes}]
    if gone:
        raise click.ClickException(
            f"the running cluster has {', '.join(gone)}, which this config does not, and `up` "
            f"only adds nodes: taking them away would strand the jobs they hold. Remove each "
            f"with `bscluster remove NODE` (it moves the jobs off first)")
    if current is not None:
        _refuse_changes(current, config)
    if current is not None and config.web != current.web:
        serving = state["supervisor"].get("web")
        click.echo(("the running supervisor serves the dashboard at " + serving if serving else
                    "the running supervisor serves no dashboard")
                   + "; a new web setting applies after `bscluster down` and `up` (or run "
                     "`bscluster web` next to it)", err=True)
    proxy_changed = current is not None and config.proxy_settings != current.proxy_settings
    if proxy_changed and config.proxy:
        _check_proxy_address(config.proxy, current.proxy)
    since = control.log_size(paths)  # (reasons come from this change's lines only)
    old_proxy = next(iter(control.proxy_pid(state)), None)  # (before it may be replaced)
    if len(config.nodes) == len(running):
        if current is not None and (config.layout() != current.layout() or proxy_changed):
            control.grow(paths, state, config)  # no new node: the routing or proxy changes
        if current is not None and config.layout() != current.layout():
            click.echo("new weights, leaving nodes, ring or [tubes] spread handed to the "
                       "running supervisor (and its proxy)")
        if proxy_changed:
            _proxy_follows(paths, old_proxy, current, config, since)
        else:
            click.echo(f"the cluster is already running "
                       f"(supervisor pid {state['supervisor']['pid']})")
        click.echo(banner(config, state))
        if any(entry["state"] == State.FATAL.value for entry in state["nodes"].values()):
            sys.exit(1)  # as the first `up -d` would: a script may rerun it to make sure
        return
    added = control.grow(paths, state, config)
    click.echo(f"adding {', '.join(added)} to the running cluster")
    try:
        state = control.wait_settled(paths, control.supervisor_pid(state),
                                     [n.name for n in config.nodes], on_poll=_ProgressShown())
    except control.ClusterError as e:
        _fail(e)
    if proxy_changed:
        _proxy_follows(paths, old_proxy, current, config, since)
    click.echo(banner(config, state))
    if any(state["nodes"][n]["state"] == State.FATAL.value for n in added):
        sys.exit(1)


def _check_proxy_address(listen: str, running: str) -> None:
    """Fail before anything changes if another program holds the port the proxy is to
    serve (not the ``running`` proxy's own: it gives it up for the new one)."""
    from bscluster.proxy_proc import ProxyError, check_address

    if running and parse_listen(running)[1] == parse_listen(listen)[1]:
        return
    try:
        check_address(listen)
    except ProxyError as e:
        _fail(e)


def _proxy_follows(paths: Paths, old: int | None, current: ClusterConfig,
                   config: ClusterConfig, since: int) -> None:
    """The running supervisor was handed new proxy settings: say what it does with its
    proxy (pid ``old``, if one ran) and wait until that is done (a new proxy accepts
    connections, or none runs)."""
    try:
        if not config.proxy:
            click.echo(f"stopping the proxy on {current.proxy} (proxy is off now)")
            control.wait_proxy_gone(paths)
            return
        click.echo(f"restarting the proxy on {config.proxy} with the new settings" if old
                   else f"starting the proxy on {config.proxy}")
        control.wait_proxy(paths, config.proxy, since=since, replacing=old)
    except control.ClusterError as e:
        _fail(e)


class _ProgressShown:
    """Prints a starting node's replay progress each time it changes (stderr)."""

    def __init__(self):
        self.shown: dict[str, str] = {}

    def __call__(self, state: dict) -> None:
        for name, entry in state.get("nodes", {}).items():
            progress = entry.get("progress")
            if progress and self.shown.get(name) != progress:
                self.shown[name] = progress
                click.echo(f"{name} STARTING: binlog {progress}", err=True)


def _refuse_changes(current: ClusterConfig, config: ClusterConfig) -> None:
    """`up` never changes a running node's settings silently: it refuses."""
    started = {n.name: n for n in current.nodes}
    changes = [f"{spec.name}: {', '.join(changed_settings(started[spec.name], spec))}"
               for spec in config.nodes
               if spec.name in started and changed_settings(started[spec.name], spec)]
    if current.node_command != config.node_command:
        changes.append(f"node_command: {shlex.join(current.node_command)} -> "
                       f"{shlex.join(config.node_command)}")
    if changes:
        raise click.ClickException(
            "the running nodes were started with other settings, and `up` does not change "
            "running nodes:\n  " + "\n  ".join(changes) + "\nTo apply them: `bscluster down`, "
            "then `bscluster up` again (binlogs keep the jobs). To add nodes to the running "
            "cluster, leave the other settings as they are.")


def _flag_value(config: ClusterConfig, key: str):
    value = getattr(config, key)
    if key == "nodes":
        return len(value)
    if key == "node_command":
        return shlex.join(value)
    return str(value) if isinstance(value, Path) else value


def _where_flags(config: ClusterConfig) -> str:
    """The flags that let `status` and friends find this cluster again."""
    if config.sources.get("data_dir", "").startswith("flag"):
        return f" --data-dir {shlex.quote(str(config.data_dir))}"
    if config.path is not None and config.path != Path(DEFAULT_CONFIG_PATH).resolve():
        return f" --config {shlex.quote(str(config.path))}"
    return ""


def banner(config: ClusterConfig, state: dict) -> str:
    """Where every node listens and how to connect; or, when no node runs, why."""
    nodes = state["nodes"]
    sup = state["supervisor"]
    up_count = sum(1 for e in nodes.values() if e["state"] == State.RUNNING.value)
    mode = f"detached, log {sup['log']}" if sup.get("detached") else "Ctrl-C stops all"
    lines = [f"bscluster: {up_count} of {len(nodes)} nodes running "
             f"(supervisor pid {sup['pid']}, {mode})" if up_count else
             f"bscluster: none of the {len(nodes)} nodes could start"]
    width = max(len(n) for n in nodes)
    for name, e in nodes.items():
        addr = f"{e['host']}:{e['port']}"
        extra = f"pid {e['pid']}" if e["state"] == State.RUNNING.value else (e["reason"] or "")
        if e.get("metrics") and e["state"] == State.RUNNING.value:
            extra += f", metrics {e['metrics']}"
        lines.append(f"  {name:<{width}}  {addr:<21}  {e['state']:<8}  {extra}")
    if up_count == 0:  # how to connect would be no help: say what to do instead
        lines += ["", control.NONE_RUNNING_HINT,
                  f"(`bscluster config{_where_flags(config)}` shows every setting and where it "
                  f"came from)"]
        return "\n".join(lines)
    addresses = {n: f"{connect_host(e['host'])}:{e['port']}" for n, e in nodes.items()}
    lines += ["", "connect from Python:", "    from bsclient import ClusterClient"]
    if _file_matches(config, addresses):
        lines.append(f'    client = ClusterClient.from_config("{config.path}")')
    else:
        lines.append(f"    client = ClusterClient({json.dumps(addresses)})")
        if config.path:
            lines.append(f"  ({config.path} describes a different cluster because of flags or "
                         f"environment: clients reading it would route tubes elsewhere)")
    first = next(iter(addresses.values()))
    host, port = first.rsplit(":", 1)
    where = _where_flags(config)
    if config.proxy:
        over = ", TLS" if config.proxy_tls else ""
        lines += [f"any beanstalkd client, whole cluster: {config.proxy} (bscluster proxy{over})"]
    by_hand = f"    telnet {host} {port}"
    if config.tls is not None:  # the nodes speak TLS: openssl is the telnet of TLS
        from bscluster.tls_init import by_hand_command
        by_hand = f"    {by_hand_command(config.tls, host, port)}"
    lines += ["talk to one node by hand:", by_hand,
              f"look: bscluster status{where} | bscluster stats{where} | bscluster top{where}",
              (f"dashboard: {sup['web']}  (Prometheus: {sup['web']}metrics)" if sup.get("web")
               else f"dashboard: bscluster web{where}  (then open http://{DEFAULT_WEB_LISTEN}/), "
                    f"or start the cluster with `up --web`"),
              f"stop: bscluster down{where}"]
    return "\n".join(lines)


def _file_matches(config: ClusterConfig, addresses: dict[str, str]) -> bool:
    """Would a client reading the config file alone see these nodes?"""
    if config.path is None:
        return False
    try:
        alone = load_config(config.path, {}, env={})
    except ConfigError:
        return False
    return {n.name: f"{connect_host(n.host)}:{n.port}" for n in alone.nodes} == addresses


# --- looking ------------------------------------------------------------------------
def _nodes_to_probe(config: ClusterConfig, state: dict | None) -> dict[str, dict]:
    if state is not None:
        return {name: {"address": f"{e['host']}:{e['port']}", "host": e["host"],
                       "port": e["port"], "state": e["state"], "pid": e["pid"],
                       "restarts": e["restarts"],
                       "reason": e["reason"] or (f"binlog {e['progress']}"
                                                 if e.get("progress") else None),
                       "crashes": e.get("crashes"), "metrics": e.get("metrics")}
                for name, e in state["nodes"].items()}
    return {n.name: {"address": n.address, "host": n.host, "port": n.port,
                     "metrics": n.metrics_url} for n in config.nodes}


def _look(config_file, data_dir):
    view = cluster_view(_load(config_file, {"data_dir": data_dir}))
    config = view.config
    nodes = _nodes_to_probe(config, view.state)
    try:
        ctx = config.ssl_context()  # [tls]: TLS to the nodes
    except ConfigError as e:
        _fail(e)
    reports = probe_all({n: (i["host"], i["port"]) for n, i in nodes.items()}, ssl_context=ctx)
    return view, nodes, reports


def _look_status(view: ClusterView, up: list[bool]) -> int:
    """The exit status of a looking command (truth.EXIT_*)."""
    if view.orphaned or (not view.supervised and not any(up)):
        return EXIT_NO_CLUSTER
    return EXIT_OK if all(up) else EXIT_NODES_DOWN


def _proxy_row(state: dict | None) -> dict | None:
    """The supervisor's proxy (`up --proxy`), and whether it accepts connections now."""
    entry = (state or {}).get("proxy")
    if not entry:
        return None
    host, port = parse_listen(entry["listen"])
    return {**entry, "up": connectable(host, port, timeout=1.0)}


def _proxy_line(row: dict) -> str:
    if row["up"]:
        return f"proxy: {row['listen']}, pid {row['pid']}, accepting connections"
    why = (f"; it exited {counted(row['exits'], 'time')}, last {row['last_exit']}"
           if row["exits"] else "")
    return (f"proxy: {row['listen']}: NOT ANSWERING{why} (the supervisor restarts it; "
            f"`bscluster logs` says why)")


def _orphan_note(view: ClusterView) -> str:
    return (f"supervisor: GONE (killed?) for {view.config.data_dir}; its nodes run "
            f"unsupervised: `bscluster up -d` adopts them, `bscluster down` stops them")


@cli.command(epilog=EXIT_CODES_HELP)
@config_option
@data_dir_option
@json_option
def status(config_file, data_dir, as_json) -> None:
    """Each node: state, pid, address, uptime, jobs ready/reserved/delayed/buried.

    With a supervisor running, the nodes are those it runs, where they were
    started (a config changed since is listed as pending). Without one, the
    nodes of the config, so it also works for nodes run by systemd and the like.
    """
    view, nodes, reports = _look(config_file, data_dir)
    config, state = view.config, view.state
    rows = status_rows(nodes, reports, {n.name for n in config.nodes if n.leaving})
    proxy = _proxy_row(state)
    code = _look_status(view, [r["up"] for r in rows] + ([proxy["up"]] if proxy else []))
    if as_json:
        click.echo(json.dumps({"supervisor": state["supervisor"] if state else None,
                               "orphaned": view.orphaned, "nodes": rows, "proxy": proxy,
                               "pending": view.pending, "exit": code}, indent=2))
    else:
        if view.orphaned:
            click.echo(_orphan_note(view))
        elif state is None:
            click.echo(f"supervisor: not running for {config.data_dir} (showing the nodes "
                       f"of the config)")
        else:
            sup = state["supervisor"]
            click.echo(f"supervisor: pid {sup['pid']}, up "
                       f"{human_duration(time.time() - sup['started'])}"
                       + (f", log {sup['log']}" if sup.get("log") else "")
                       + (f", dashboard {sup['web']}" if sup.get("web") else ""))
            if proxy:
                click.echo(_proxy_line(proxy))
        click.echo(render_status(rows))
        for note in view.pending:
            click.echo(f"pending: {note}")
    sys.exit(code)


@cli.command(epilog=EXIT_CODES_HELP)
@config_option
@data_dir_option
@json_option
def stats(config_file, data_dir, as_json) -> None:
    """Cluster-wide totals and per-tube rows, summed over the nodes."""
    view, nodes, reports = _look(config_file, data_dir)
    result = cluster_stats({n: i["address"] for n, i in nodes.items()}, reports)
    click.echo(json.dumps(result, indent=2) if as_json else render_stats(result))
    if view.orphaned and not as_json:
        click.echo(_orphan_note(view), err=True)
    sys.exit(_look_status(view, [r.up for r in reports.values()]))


@cli.command()
@config_option
@NODE_OPTIONS[0]  # --nodes, --host, --base-port: the options that say where nodes are
@NODE_OPTIONS[1]
@NODE_OPTIONS[2]
@click.argument("tubes", nargs=-1, required=True, metavar="TUBE...")
@click.option("--ketama", is_flag=True,
              help="libketama's continuum, as ClusterClient(..., ketama=True) "
                   "(overrides ring = \"md5\" in the config).")
@json_option
def route(config_file, tubes, ketama, as_json, **flags) -> None:
    """Which node owns each TUBE, and where its jobs go when that node is down.

    The mapping every ClusterClient built from this config uses (its nodes,
    weights, `leaving` marks and `ring`): for clients in other languages
    (point each tube's producers and workers at its node) and for finding a
    tube. FAILOVER lists the other nodes in the order a client tries them.
    Needs no running cluster; when one runs, ADDRESS is where its node was
    started.
    """
    view = cluster_view(_load(config_file, flags))
    config = view.config  # (the running cluster's, when no file or flag says otherwise)
    for tube in tubes:
        if not is_tube_name(tube):
            raise click.UsageError(f"{tube!r} is not a valid tube name ({TUBE_NAME_RULE})")
    try:
        ring = config.placement()
    except ConfigError as e:
        _fail(e)
    if ketama:
        ring = Ring(ring.weights, ketama=True)
    running = view.addresses() if view.supervised else {}
    rows = []
    for tube in tubes:
        owner, *failover = ring.preference(tube)
        address = (f"{running[owner][0]}:{running[owner][1]}" if owner in running
                   else config.node(owner).address)
        rows.append({"tube": tube, "node": owner, "address": address, "failover": failover})
    for note in view.pending:
        click.echo(f"pending: {note}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    widths = [max(len(head), *(len(r[key]) for r in rows))
              for head, key in (("TUBE", "tube"), ("NODE", "node"), ("ADDRESS", "address"))]
    for cells in [("TUBE", "NODE", "ADDRESS", "FAILOVER")] + [
            (r["tube"], r["node"], r["address"], " ".join(r["failover"])) for r in rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells[:3], widths, strict=True))
                   + "  " + cells[3])


# --- changing ------------------------------------------------------------------------
@cli.command(epilog=ASKING_EXIT_HELP)
@config_option
@data_dir_option
@click.argument("names", nargs=-1, metavar="[NODE]...")
@click.option("--force", is_flag=True, help="Restart nodes that run without a binlog.")
def restart(config_file, data_dir, names, force) -> None:
    """Restart nodes one at a time (all of them if none is named).

    Each node is stopped and started again by the supervisor; with its binlog
    it comes back with every job it held.
    """
    from bscluster.ops import running

    _, paths, state = running(config_file, data_dir)
    known = list(state["nodes"])
    targets = list(names) or known
    for name in targets:
        if name not in known:
            raise click.ClickException(f"no node named {name!r}; the cluster has "
                                       f"{', '.join(known)}")
        if not state["nodes"][name].get("binlog", True) and not force:
            raise click.ClickException(f"{name} runs without a binlog, so a restart loses its "
                                       f"jobs; restart it anyway with --force")
    for name in targets:
        old = read_json(paths.state)["nodes"][name]
        try:
            new = control.request_restart(paths, read_json(paths.state), name,
                                          START_TIMEOUT + STOP_TIMEOUT + 5)
        except control.ClusterError as e:
            _fail(e)
        click.echo(f"{name} restarted on {new['host']}:{new['port']} "
                   + (f"(pid {old['pid']} -> {new['pid']})" if old["pid"] else f"(pid {new['pid']})")
                   + (f"; {new['last_stop']}" if new.get("last_stop") else ""))


@cli.command()
@config_option
@data_dir_option
def down(config_file, data_dir) -> None:
    """Stop every node and the supervisor. Binlogs and logs stay."""
    config = _load(config_file, {"data_dir": data_dir})
    try:
        click.echo(control.down(Paths(config.data_dir)))
    except control.ClusterError as e:
        _fail(e)


@cli.command("config")
@config_option
@node_options
@web_option
def show_config(config_file, **flags) -> None:
    """Show the settings in effect and where each one came from."""
    loaded = _load(config_file, flags)
    view = cluster_view(loaded)
    config = view.config  # (the running cluster's, as started, if nothing says otherwise)
    click.echo(f"# config file: {loaded.path or 'none'}")
    if config is not loaded:
        click.echo("# no file, flag or BSCLUSTER_* variable says otherwise: these are the "
                   "settings the running cluster was started with")
    for key, source in loaded.sources.items():
        click.echo(f"{key} = {json.dumps(_flag_value(config, key))}  # "
                   + (source if config is loaded else "as started"))
    if view.supervised:
        sup = view.state["supervisor"]
        click.echo(f"# a cluster runs from {config.data_dir} (supervisor pid {sup['pid']}); "
                   f"its nodes, as started:")
    for n in config.nodes:
        address = view.address(n.name) if n.name in view.addresses() else n.address
        click.echo(f"# {n.name}: {address} weight {n.weight} data {n.data_dir}"
                   + (f" metrics {n.metrics_url}" if n.metrics_url else "")
                   + (" (leaving)" if n.leaving else ""))
    for note in view.pending:
        click.echo(f"# pending: {note}")
    if config.tls is not None:
        shown = {k: v for k, v in config.tls.to_dict().items() if v not in (None, "")}
        click.echo("# [tls]: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in shown.items()))
    else:
        click.echo("# [tls]: none (plain TCP)")
    if config.web:
        host, port = parse_listen(config.web)
        shown = connect_host(host)
        click.echo(f"# dashboard (up --web): http://{f'[{shown}]' if ':' in shown else shown}"
                   f":{port}/ and /metrics"
                   + (" (port 0: a free port, shown by `up`)" if port == 0 else ""))


@cli.command(hidden=True)
@click.option("--data-dir", required=True)
def supervise(data_dir) -> None:
    """Run the supervisor for `up --detach` (reads wanted.json in the data dir)."""
    paths = Paths(Path(data_dir))
    doc = read_json(paths.wanted)
    if doc is None:
        raise click.ClickException(f"{paths.wanted} is missing: start with `bscluster up -d`")
    from bscluster.proxy_proc import ProxyError
    from bscluster.supervisor import AlreadyRunning, Supervisor
    from bscluster.webhost import WebError

    os.umask(0o077)
    try:
        sys.exit(Supervisor(ClusterConfig.from_dict(doc), detached=True).run())
    except (AlreadyRunning, WebError, ProxyError) as e:
        _fail(e)


from .ops import commands as ops_commands  # noqa: E402

for _command in ops_commands():
    cli.add_command(_command)

from .logs import logs  # noqa: E402

cli.add_command(logs)


def main() -> None:
    cli(prog_name="bscluster")
