"""`bscluster rebalance`: move every job to the node that owns its tube.

How this works
--------------
Jobs stay where they were put, so after a grow (about 1/N of the tubes get a
new owner), a failover (puts went to the next node while the owner was
down), or for a node that is leaving or drained, some nodes hold jobs of
tubes they do not own.  ``survey`` asks every node for its tubes
(``stats``, ``stats-tube``: probe.py) and works out each tube's *target*
with the config's ring (``ClusterConfig.placement``, the ring clients
use: leaving nodes own nothing): the owner, or, when the owner is drained,
the next node in the tube's failover order (where clients put meanwhile).
A hot tube (``[tubes.NAME] spread = k``) has k targets, its first k nodes
that are not drained; its jobs on any of them stay.
``plan`` lists one ``Move`` per (node, tube) whose jobs are elsewhere than
their target, ``execute`` moves them with ``mover.move_tube`` (put on the
target before delete on the source: a crash duplicates, never loses).

Reserved jobs are left where they are until their worker lets go; a
target that does not answer leaves its tubes alone (reported, never moved to
a third node).  A node that does not answer cannot be looked at: its jobs
may be misplaced too, so it is reported (``Survey.unreachable``) and, as for
a tube left behind, the command exits 1 (``finished`` is that rule; the dry
run follows it too).  Moved jobs get new ids.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import click
from bsclient import Ring
from bsclient.address import connect_host
from bscluster.config import ConfigError
from bscluster.mover import BATCH, MOVED_STATES, Limiter, MoveError, Pipe, move_tube
from bscluster.options import config_option, data_dir_option, json_option, load
from bscluster.probe import NodeReport, probe_all
from bscluster.truth import EXIT_ERROR, ClusterView, cluster_view

NOT_STARTED = "in the config but not started (`bscluster up` starts it)"


@dataclass
class Move:
    source: str
    tube: str
    target: str | None  # None: nowhere to move to now (see ``skipped``)
    ready: int = 0
    delayed: int = 0
    buried: int = 0
    reserved: int = 0  # left in place
    skipped: str | None = None
    moved: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def movable(self) -> int:
        return self.ready + self.delayed + self.buried


@dataclass
class Survey:
    addresses: dict[str, tuple[str, int]]
    reports: dict[str, NodeReport]
    ring: Ring
    leaving: set[str]  # nodes that own nothing: leaving in the config, or not in it
    spread: dict[str, int] = field(default_factory=dict)  # hot tube -> how many nodes share it
    not_started: set[str] = field(default_factory=set)  # configured; the running cluster lacks

    def unreachable(self) -> dict[str, str]:
        """The nodes that did not answer the survey, and why: their jobs were not looked at."""
        return {name: (NOT_STARTED if name in self.not_started else rep.error or "no answer")
                for name, rep in self.reports.items() if not rep.up}

    def draining(self, name: str) -> bool:
        rep = self.reports.get(name)
        return rep is not None and rep.draining

    def targets(self, tube: str) -> tuple[list[str], str | None]:
        """(the nodes the tube's jobs belong on, None) or ([], why there are none now).

        One node (the owner, or the next one that is not drained), or for a
        hot tube spread over k nodes, the first k of its ring order that are
        not drained; the jobs of a node outside them go to the first."""
        found: list[str] = []
        for name in self.ring.preference(tube):
            rep = self.reports.get(name)
            if rep is None or not rep.up:
                if not found:
                    return [], f"its target {name} " + ("is not started" if name in
                                                        self.not_started else "does not answer")
                break
            if not self.draining(name):
                found.append(name)
                if len(found) == self.spread.get(tube, 1):
                    break
        if not found:
            return [], "every node that could own it is drained"
        return found, None


def survey(view: ClusterView, spread: dict[str, int] | None = None) -> Survey:
    """Every node's tubes, the put ring and the hot tubes (``spread``: the config's
    [tubes.*] tables unless given), so ``plan`` keeps a spread tube's jobs on any of
    its first k nodes."""
    addresses = view.addresses()
    not_started = {spec.name for spec in view.config.nodes if spec.name not in addresses}
    for spec in view.config.nodes:  # configured but not (yet) running: still a possible owner
        addresses.setdefault(spec.name, (spec.host, spec.port))
    configured = {n.name for n in view.config.nodes}
    leaving = {n.name for n in view.config.nodes if n.leaving} | (set(addresses) - configured)
    try:
        ring = view.config.placement()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    spread = dict(view.config.spread if spread is None else spread)
    ctx = view.config.ssl_context()  # [tls]: the nodes speak TLS
    return Survey(addresses, probe_all(addresses, ssl_context=ctx), ring, leaving, spread,
                  not_started)


def plan(s: Survey) -> list[Move]:
    moves = []
    for name, rep in s.reports.items():
        if not rep.up:
            continue
        for tube, st in sorted(rep.tubes.items()):
            counts = {k: int(st.get(f"current-jobs-{k}", 0) or 0)
                      for k in (*MOVED_STATES, "reserved")}
            if not any(counts.values()):
                continue
            targets, why = s.targets(tube)
            if name in targets:
                continue
            moves.append(Move(name, tube, targets[0] if targets else None, skipped=why,
                              **counts))
    return moves


def execute(moves: list[Move], addresses: dict[str, tuple[str, int]], rate: float | None,
            on_moved: Callable[[int], None] = lambda n: None, ssl_context=None) -> None:
    """Carry out every move that has a target; fills in ``moved`` and ``error``."""
    limiter = Limiter(rate)
    targets: dict[str, Pipe] = {}
    try:
        for move in moves:
            if move.target is None or not move.movable:
                continue
            try:
                dst = targets.get(move.target) or _pipe(move.target, addresses, ssl_context)
                targets[move.target] = dst
                src = _pipe(move.source, addresses, ssl_context)
            except MoveError as e:
                move.error = str(e)
                continue
            try:  # a fresh source connection per tube: it watches that tube alone
                result = move_tube(src, dst, move.tube, limiter,
                                   budget=2 * move.movable + BATCH, on_moved=on_moved)
            finally:
                src.close()
            move.moved, move.error = result.moved, result.error
            if result.error and "connection" in result.error:
                targets.pop(move.target, None)
                dst.close()
    finally:
        for pipe in targets.values():
            pipe.close()


def _pipe(name: str, addresses: dict[str, tuple[str, int]], ssl_context=None) -> Pipe:
    host, port = addresses[name]
    return Pipe(name, connect_host(host), port, ssl_context=ssl_context)


def run(view: ClusterView, rate: float | None, progress: bool) -> tuple[list[Move], float]:
    """Survey, plan and move once; returns the moves and the seconds it took."""
    _, moves, seconds = survey_and_move(view, rate, progress)
    return moves, seconds


def survey_and_move(view: ClusterView, rate: float | None,
                    progress: bool) -> tuple[Survey, list[Move], float]:
    """``run``, also returning the survey (which nodes did not answer)."""
    started = time.monotonic()
    s = survey(view)
    moves = plan(s)
    total = sum(m.movable for m in moves if m.target)
    if progress and total:
        with click.progressbar(length=total, label="moving jobs", file=sys.stderr,
                               show_pos=True, show_eta=True) as bar:
            execute(moves, s.addresses, rate, bar.update, view.config.ssl_context())
    else:
        execute(moves, s.addresses, rate, ssl_context=view.config.ssl_context())
    return s, moves, time.monotonic() - started


# --- reporting ---------------------------------------------------------------------
def finished(moves: list[Move], unreachable: dict[str, str]) -> bool:
    """Did rebalance do what it was asked: every node looked at, and every tube
    with jobs to move moved (none skipped, none failed)?  False means exit 1."""
    return not unreachable and not any(m.error or (m.skipped and m.movable) for m in moves)


def summary(moves: list[Move], seconds: float | None,
            unreachable: dict[str, str] | None = None) -> dict:
    """The report (`--json` prints it); ``ok`` is ``finished``, the exit status's rule."""
    unreachable = unreachable or {}
    moved = dict.fromkeys(MOVED_STATES, 0)
    for m in moves:
        for k, v in m.moved.items():
            moved[k] += v
    return {
        "moved": moved, "moved_total": sum(moved.values()),
        "seconds": None if seconds is None else round(seconds, 3),
        "left_reserved": sum(m.reserved for m in moves),
        "skipped": [f"{m.source} {m.tube}: {m.skipped}" for m in moves if m.skipped],
        "errors": [f"{m.source} -> {m.target} {m.tube}: {m.error}" for m in moves if m.error],
        "unreachable": [{"node": n, "error": why} for n, why in unreachable.items()],
        "ok": finished(moves, unreachable),
        "moves": [asdict(m) for m in moves],
    }


def render_plan(moves: list[Move], unreachable: dict[str, str] | None = None) -> str:
    from bscluster.report import table

    lines = _unreachable_lines(unreachable or {})
    if not moves:
        return "\n".join(lines or ["every job is on its tube's node: nothing to move"])
    rows = [[m.source, m.tube, m.target or "-", m.ready, m.delayed, m.buried, m.reserved,
             m.skipped or ""] for m in moves]
    return "\n".join([table(["FROM", "TUBE", "TO", "READY", "DELAYED", "BURIED",
                             "RESERVED (stay)", ""], rows), *lines])


def _unreachable_lines(unreachable: dict[str, str]) -> list[str]:
    return [f"{name} is {why}: the tubes it owns stay where they are" if why == NOT_STARTED
            else f"{name} could not be asked: {why}; its jobs were not looked at"
            for name, why in unreachable.items()]


def render_summary(result: dict) -> str:
    m = result["moved"]
    lines = [f"moved {result['moved_total']} jobs in {result['seconds']:.1f}s (ready "
             f"{m['ready']}, delayed {m['delayed']}, buried {m['buried']}); moved jobs "
             f"have new ids on their new node"]
    for mv in result["moves"]:
        n = sum(mv["moved"].values())
        if n:
            lines.append(f"  {mv['source']} -> {mv['target']}  {mv['tube']}: {n}")
    if result["left_reserved"]:
        lines.append(f"left {result['left_reserved']} reserved jobs where they are; they move "
                     f"once their workers release them (run rebalance again)")
    lines += [f"not moved: {s}" for s in result["skipped"]]
    lines += [f"error: {e}" for e in result["errors"]]
    lines += _unreachable_lines({u["node"]: u["error"] for u in result["unreachable"]})
    return "\n".join(lines)


@click.command()
@config_option
@data_dir_option
@click.option("--dry-run", "-n", is_flag=True, help="Show what would move; move nothing.")
@click.option("--rate", type=click.FloatRange(min=1), metavar="JOBS",
              help="Move at most JOBS jobs a second (default: as fast as the nodes go).")
@json_option
def rebalance(config_file, data_dir, dry_run, rate, as_json) -> None:
    """Move jobs to the node that owns their tube.

    After `up` added nodes, after a failover, or to empty a drained or
    leaving node: every ready, delayed and buried job on a node that is not
    its tube's owner (by the config's ring, the one clients use) is put on
    the owner and then deleted where it was. Priority, TTR, the remaining
    delay and the buried state are kept; reserved jobs stay until their
    worker releases or deletes them. Moved jobs get NEW IDS. Safe while
    producers and workers run: each job is reserved before it is copied, so
    no worker gets it mid-move, and a crash duplicates at most a batch.

    \b
    Exit status: 0 done (or nothing to do); 1 some tube could not be moved,
    or some node did not answer, so its jobs were not looked at (the report
    says which; what moved stays moved; --json: "ok" is false). --dry-run
    exits 1 in the same cases.
    """
    config = load(config_file, {"data_dir": data_dir})
    view = cluster_view(config)
    if dry_run:
        s = survey(view)
        moves = plan(s)
        result = summary(moves, None, s.unreachable())
        click.echo(json.dumps(result, indent=2) if as_json
                   else render_plan(moves, s.unreachable()))
    else:
        s, moves, seconds = survey_and_move(view, rate,
                                            progress=not as_json and sys.stderr.isatty())
        result = summary(moves, seconds, s.unreachable())
        click.echo(json.dumps(result, indent=2) if as_json else render_summary(result))
    if not result["ok"]:
        sys.exit(EXIT_ERROR)
