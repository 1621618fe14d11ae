"""`bscluster drain`, `undrain` and `remove`: take a node out with nothing lost.

How this works
--------------
Draining is the node's own mode (beanstalkd's SIGUSR1: every ``put``
is answered DRAINING, everything else works).  The supervisor sends it,
and sends it again whenever it restarts the node, because the set of
drained nodes is the supervisor's (a request in its mailbox + SIGHUP, as
``control.request_restart`` does).  A node cannot leave drain mode, so
``undrain`` restarts it.

``remove NODE`` is the safe order of everything else:

1. mark it ``leaving = true`` in the config file, so clients that read the
   file stop putting there (they still reserve from it), and in the
   supervisor's ``wanted.json`` (+ SIGHUP), so the proxy it runs does too;
2. drain it, so clients with an older copy of the file move their puts on;
3. rebalance until it holds no job, waiting (up to ``--timeout``) for
   workers to give back the jobs they have reserved there;
4. have the supervisor stop it and forget it (``wanted.json`` + SIGHUP);
5. take it out of the file: ``nodes`` goes down by one when it is the last
   node, else its table becomes ``removed = true`` (names are never reused,
   so no tube moves because of a renumbering).

Each step can be run again: a `remove` that timed out leaves the node
leaving and drained, with its remaining jobs, and the next one goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import click
from bscluster import control
from bscluster.config import DEFAULT_NODES, ClusterConfig, load_config, read_file
from bscluster.config_edit import EditError, edit_file
from bscluster.options import config_option, data_dir_option, load
from bscluster.probe import node_report
from bscluster.rebalance import run as rebalance_once
from bscluster.rebalance import summary
from bscluster.report import counted
from bscluster.runtime import Paths, read_json, write_json
from bscluster.states import START_TIMEOUT, STOP_TIMEOUT, State
from bscluster.truth import ASKING_EXIT_HELP, EXIT_NO_CLUSTER, cluster_view

REMOVE_TIMEOUT = 300.0  # seconds `remove` waits for reserved jobs to come back
POLL = 0.1
DRAIN_TIMEOUT = 10.0


class NoCluster(click.ClickException):
    """No supervisor runs for the data dir: exit status 4, as `status` gives."""

    exit_code = EXIT_NO_CLUSTER


def running(config_file, data_dir) -> tuple[ClusterConfig, Paths, dict]:
    """The config, paths and state of the cluster whose supervisor a command asks
    (NoCluster if none runs)."""
    config = load(config_file, {"data_dir": data_dir})
    paths = Paths(config.data_dir)
    state = control.running_state(paths)
    if state is None:
        command = click.get_current_context().info_name
        if cluster_view(config).orphaned:
            raise NoCluster(
                f"the supervisor for {config.data_dir} is gone (killed?) and its nodes run "
                f"unsupervised: `bscluster up -d` adopts them, then run `bscluster "
                f"{command}` again")
        raise NoCluster(f"no cluster is running for {config.data_dir}; start it with "
                        f"`bscluster up -d` (`bscluster {command}` needs its supervisor)")
    return config, paths, state


def _known(state: dict, name: str) -> None:
    if name not in state["nodes"]:
        raise click.ClickException(f"no node named {name!r}; the cluster runs "
                                   f"{', '.join(state['nodes'])}")


def wait_for(paths: Paths, test, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = read_json(paths.state) or {}
        if test(state):
            return state
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} did not happen within {timeout:g}s; see "
                                       f"`bscluster logs`")
        time.sleep(POLL)


def drain_node(paths: Paths, state: dict, name: str, ssl_context=None) -> None:
    """Ask the supervisor to drain ``name`` and wait until the node says it is."""
    control.send_request(paths, state, "drain", name)
    wait_for(paths, lambda s: s.get("nodes", {}).get(name, {}).get("draining"),
             DRAIN_TIMEOUT, f"draining {name}")
    entry = (read_json(paths.state) or {})["nodes"][name]
    if entry["state"] != State.RUNNING.value:
        return  # drained as soon as it runs
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        rep = node_report(entry["host"], entry["port"], ssl_context=ssl_context)
        if not rep.up:
            raise click.ClickException(f"{name}: {rep.error}; it drains as soon as it runs "
                                       f"again (`bscluster restart {name}`)")
        if rep.draining:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"{name} does not report draining: true; is it a "
                                       f"node that handles SIGUSR1 (bsnode, beanstalkd)?")
        time.sleep(POLL)


@click.command(epilog=ASKING_EXIT_HELP)
@config_option
@data_dir_option
@click.argument("name", metavar="NODE")
def drain(config_file, data_dir, name) -> None:
    """Stop NODE taking new jobs; everything else keeps working.

    Puts to NODE are answered DRAINING (ClusterClient puts them on the next
    node of the tube's failover order); its jobs can still be reserved,
    deleted, released. The supervisor drains it again whenever it restarts
    it. `status` shows DRAINING. Its jobs stay until `bscluster rebalance`
    moves them; `bscluster remove NODE` does all of it.
    """
    config, paths, state = running(config_file, data_dir)
    _known(state, name)
    drain_node(paths, state, name, config.ssl_context())
    back = (f"`bscluster undrain {name}` takes it back" if state["nodes"][name].get("binlog", True)
            else f"`bscluster undrain --force {name}` takes it back: a restart, which loses "
                 f"the jobs of a node without a binlog")
    click.echo(f"{name} is draining: it refuses new jobs, its jobs stay until `bscluster "
               f"rebalance` moves them ({back})")


@click.command(epilog=ASKING_EXIT_HELP)
@config_option
@data_dir_option
@click.argument("name", metavar="NODE")
@click.option("--force", is_flag=True, help="Undrain a node that runs without a binlog.")
def undrain(config_file, data_dir, name, force) -> None:
    """Let a drained NODE take new jobs again (restarts it: a node cannot leave drain mode).

    With its binlog it comes back with every job it held.
    """
    _, paths, state = running(config_file, data_dir)
    _known(state, name)
    entry = state["nodes"][name]
    if not entry.get("draining"):
        click.echo(f"{name} is not drained")
        return
    if not entry.get("binlog", True) and not force:
        raise click.ClickException(f"{name} runs without a binlog, so the restart that "
                                   f"undrains it loses its jobs; do it anyway with --force")
    control.send_request(paths, state, "undrain", name)
    wait_for(paths, lambda s: (e := s.get("nodes", {}).get(name, {})).get("state") ==
             State.RUNNING.value and e.get("pid") != entry["pid"] and not e.get("draining"),
             START_TIMEOUT + STOP_TIMEOUT + 5, f"restarting {name}")
    click.echo(f"{name} takes new jobs again")


# --- remove --------------------------------------------------------------------------
def _left_on(name: str, entry: dict, ssl_context=None) -> dict[str, int]:
    """The jobs still on the node; an error when it does not answer (a node that
    is down may hold any number of jobs in its binlog)."""
    rep = node_report(entry["host"], entry["port"], ssl_context=ssl_context)
    if not rep.up:
        raise click.ClickException(
            f"{name}: {rep.error}, so its jobs cannot be moved or counted; "
            f"start it again (`bscluster restart {name}`), then run `bscluster remove {name}` "
            f"again")
    return {k: int(rep.stats.get(f"current-jobs-{k}", 0) or 0)
            for k in ("ready", "delayed", "buried", "reserved")}


def _mark_leaving(config: ClusterConfig, name: str) -> str:
    """Mark the node leaving where clients read it; returns what was done."""
    if config.path is None:
        return (f"no config file: clients configured by hand must stop putting to {name} "
                f"themselves (it is drained, so their puts fail over)")
    try:
        edit_file(config.path, [(f"nodes.{name}", "leaving", True)])
    except EditError as e:
        raise click.ClickException(str(e)) from None
    return f"{config.path}: {name} marked leaving = true"


def _running_leaving(paths: Paths, state: dict, name: str) -> None:
    """Mark the node leaving in the supervisor's wanted.json too, so the proxy it
    runs (`up --proxy`) stops putting there now (the supervisor passes it on)."""
    running = control.running_config(paths)
    if running is None or all(n.leaving for n in running.nodes if n.name == name):
        return
    write_json(paths.wanted, {**running.to_dict(), "nodes": [
        {**n.to_dict(), "leaving": n.leaving or n.name == name} for n in running.nodes]})
    os.kill(control.supervisor_pid(state), signal.SIGHUP)


def _take_out_of_file(config: ClusterConfig, name: str) -> str:
    if config.path is None:
        return f"no config file: start the cluster without {name} from now on"
    if not any(n.name == name for n in config.nodes):
        return f"{config.path} already leaves {name} out"
    count = read_file(config.path, True).get("cluster", {}).get("nodes", DEFAULT_NODES)
    index = int(name[4:])
    try:
        if index == count:
            edit_file(config.path, [("cluster", "nodes", index - 1)], drop=(f"nodes.{name}",))
            return f"{config.path}: nodes = {index - 1}"
        edit_file(config.path, [(f"nodes.{name}", "removed", True),
                                (f"nodes.{name}", "leaving", None)])
    except EditError as e:
        raise click.ClickException(str(e)) from None
    return f"{config.path}: [nodes.{name}] removed = true"


def _empty_node(config_file, data_dir, name: str, timeout: float, rate) -> int:
    """Rebalance until ``name`` holds no job; returns how many moved."""
    deadline = time.monotonic() + timeout
    moved = 0
    told: set[str] = set()  # what was said already (each pass may meet it again)
    while True:
        config = load(config_file, {"data_dir": data_dir})
        view = cluster_view(config)
        if view.state is None:
            raise click.ClickException("the supervisor stopped while jobs were being moved; "
                                       "nothing was lost: start it, then run remove again")
        moves, _ = rebalance_once(view, rate, progress=sys.stderr.isatty())
        result = summary(moves, None)
        moved += result["moved_total"]
        left = _left_on(name, view.state["nodes"][name], config.ssl_context())
        if not any(left.values()):
            return moved
        _tell_once(told, [f"warning: {e}; trying again" for e in result["errors"]]
                   + [f"warning: not moved: {s}; trying again" for s in result["skipped"]]
                   + ([f"waiting for the {counted(left['reserved'], 'job')} reserved on {name} "
                       f"to be released or deleted (--timeout {timeout:g}s)"]
                      if left["reserved"] else []))
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"{name} still holds {left['reserved']} reserved, {left['ready']} ready, "
                f"{left['delayed']} delayed, {left['buried']} buried jobs after {timeout:g}s"
                + (f" ({'; '.join(result['errors'] + result['skipped'])})"
                   if result["errors"] or result["skipped"] else "")
                + f"; nothing was lost: it stays drained and leaving. Run `bscluster remove "
                  f"{name}` again once its workers let go (or with a longer --timeout)")
        time.sleep(0.5 if left["reserved"] else POLL)


def _tell_once(told: set[str], lines: list[str]) -> None:
    """Say each line on stderr the first time it comes up (``remove`` waits in passes)."""
    for line in lines:
        if line not in told:
            told.add(line)
            click.echo(line, err=True)


@click.command(epilog=ASKING_EXIT_HELP)
@config_option
@data_dir_option
@click.argument("name", metavar="NODE")
@click.option("--timeout", type=click.FloatRange(min=0), default=REMOVE_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="How long to wait for jobs reserved on NODE to be released or deleted.")
@click.option("--rate", type=click.FloatRange(min=1), metavar="JOBS",
              help="Move at most JOBS jobs a second.")
def remove(config_file, data_dir, name, timeout, rate) -> None:
    """Take NODE out of the cluster, moving every job it holds first.

    \b
    1. marks it `leaving = true` in the config file (clients stop putting there;
       so does the proxy of `up --proxy`),
    2. drains it (clients with an older config move their puts on),
    3. rebalances until it holds no job (waits up to --timeout for reserved ones),
    4. stops it, and
    5. takes it out of the file (`nodes` down by one for the last node, else
       `removed = true` in its table: names are never reused).
    Safe to run again after a timeout. Moved jobs get new ids.
    """
    config, paths, state = running(config_file, data_dir)
    _known(state, name)
    if [n for n in state["nodes"] if n != name] == []:
        raise click.ClickException(f"{name} is the only node; `bscluster down` stops it")
    if config.path is None and name != list(state["nodes"])[-1]:
        raise click.ClickException(f"removing {name} needs a config file to record it in "
                                   f"(`bscluster init`); without one only the last node "
                                   f"({list(state['nodes'])[-1]}) can be removed")
    if any(n.name == name for n in config.nodes):
        click.echo(_mark_leaving(config, name))
        if config.path is not None:  # the file was edited: did the edit take?
            check = load_config(config_file, {"data_dir": data_dir})
            if any(n.name == name and not n.leaving for n in check.nodes):
                raise click.ClickException(f"{name} is still a full member after editing the "
                                           f"file (flags or BSCLUSTER_* settings decide the "
                                           f"nodes?)")
        _running_leaving(paths, state, name)
    if not state["nodes"][name].get("draining"):
        drain_node(paths, state, name, config.ssl_context())
        click.echo(f"{name} drained")
    moved = _empty_node(config_file, data_dir, name, timeout, rate)
    click.echo(f"{name} is empty ({counted(moved, 'job')} moved; they have new ids)")
    wanted = control.running_config(paths)
    if wanted is not None:
        write_json(paths.wanted, {**wanted.to_dict(),
                                  "nodes": [n.to_dict() for n in wanted.nodes if n.name != name]})
    os.kill(control.supervisor_pid(state), signal.SIGHUP)
    wait_for(paths, lambda s: name not in s.get("nodes", {}), STOP_TIMEOUT + 5,
             f"stopping {name}")
    click.echo(f"{name} stopped")
    click.echo(_take_out_of_file(load(config_file, {"data_dir": data_dir}), name))
    data = state["nodes"][name].get("data_dir")
    click.echo(f"removed {name}" + (f"; its binlog directory {data} holds no job and can be "
                                     f"deleted" if data else ""))


def commands() -> list[click.Command]:
    return [drain, undrain, remove]

