"""ClusterClient's fan-out commands: ask every live node, merge the answers.

How this works
--------------
Each function takes the ``NodePool`` (and the used tube where the command
works on it), sends one command per live node through ``NodePool.each``
(the nodes asked at once; so are a peek's and a kick's follow-up commands,
through ``NodePool.call_all``) and merges (docs/CLIENT.md, "Fan-out commands"):

* stats and stats-tube: numeric fields summed, except the per-process ones
  (``NON_ADDITIVE_STATS``) and the pause fields (``MAX_TUBE_STATS``, max);
  each node's own dict is kept under ``"nodes"``;
* peek-ready/-delayed/-buried: each node's candidate, ranked with its
  stats-job (priority then age; time-left; age);
* kick: buried jobs if any node has some in the tube, else delayed ones
  (beanstalkd's rule, cluster-wide), the bound spread evenly over nodes;
* list-tubes: the union; pause-tube: every node that has the tube.

Under the failover policy a node that cannot be reached is left out; under
fail_fast it raises.  A node without the tube (NOT_FOUND) is left out.  An
answer that a node left out could make false is not given: a peek that found
nothing, a kick that kicked nothing, a stats-tube of a tube no answering
node has raise ``NoNodeAvailableError`` instead of NOT_FOUND / 0, and
pause-tube raises it after pausing the nodes that answered (pausing again is
harmless).  stats and stats-tube say which members did not answer
(``nodes-unavailable``); list-tubes is the union of the answering nodes'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .client import Client, Job
from .errors import NoNodeAvailableError, NotFoundError
from .pool import FAIL_FAST, NodePool

# stats fields that do not add up across nodes; kept per node only
NON_ADDITIVE_STATS = frozenset({
    "pid", "uptime", "max-job-size", "binlog-oldest-index", "binlog-current-index",
    "binlog-max-size", "rusage-utime", "rusage-stime",
})
# stats-tube fields merged with max() rather than a sum
MAX_TUBE_STATS = frozenset({"pause", "pause-time-left"})


# how each peek ranks its candidates (lowest wins), from their stats-job
def rank_ready(stats_job: dict) -> tuple:
    return (stats_job["pri"], -stats_job["age"])


def rank_delayed(stats_job: dict) -> tuple:
    return (stats_job["time-left"], stats_job["pri"])


def rank_buried(stats_job: dict) -> tuple:
    return (-stats_job["age"],)


def with_used(tube: str, fn: Callable) -> Callable:
    """``fn`` run on a connection that uses ``tube`` (sent only if it does not yet)."""
    def run(client: Client, *args):
        if client.using != tube:
            client.use(tube)
        return fn(client, *args)
    return run


def unanswered(missed: list[str], what: str) -> NoNodeAvailableError:
    """The error for a fan-out whose answer the members in ``missed`` could change."""
    return NoNodeAvailableError(",".join(missed), f"{what} without them would be a guess")


def peek_best(pool: NodePool, tube: str, fn: Callable, rank: Callable[[dict], tuple]) -> Job:
    """Each node's ``fn`` peek in ``tube``; the lowest ``rank`` wins (NotFoundError if none,
    NoNodeAvailableError if none of the nodes that answered has one and some did not)."""
    missed: list[str] = []
    found = pool.each(with_used(tube, fn), skip=(NotFoundError,), missed=missed)
    ranked = pool.call_all([(pool.members[name], Client.stats_job, (job.id,))
                            for name, job in found.items()])
    best, best_key = None, None
    for index, (job, (stats, error)) in enumerate(zip(found.values(), ranked, strict=True)):
        if isinstance(error, (NotFoundError, NoNodeAvailableError)):
            continue  # gone meanwhile
        if error is not None:
            raise error
        key = (*rank(stats), index)
        if best_key is None or key < best_key:
            best, best_key = job, key
    if best is None:
        raise unanswered(missed, "NOT_FOUND") if missed else NotFoundError()
    return best


def kick(pool: NodePool, tube: str, bound: int) -> int:
    """Kick up to ``bound`` jobs of ``tube``: buried ones if any node has some, else delayed
    (NoNodeAvailableError when none was kicked and some node did not answer)."""
    missed: list[str] = []
    stats = pool.each(Client.stats_tube, tube, skip=(NotFoundError,), missed=missed)
    buried = {n: s["current-jobs-buried"] for n, s in stats.items()}
    counts = buried if any(buried.values()) else {
        n: s["current-jobs-delayed"] for n, s in stats.items()
    }
    shares = spread(bound, counts)
    outcomes = pool.call_all([(pool.members[name], with_used(tube, Client.kick), (share,))
                              for name, share in shares.items()])
    kicked = 0
    for name, (count, error) in zip(shares, outcomes, strict=True):
        if error is None:
            kicked += count
        elif isinstance(error, NoNodeAvailableError) and pool.policy != FAIL_FAST:
            missed.append(name)
        else:
            raise error
    if not kicked and missed:
        raise unanswered(missed, "KICKED 0")
    return kicked


def stats(pool: NodePool) -> dict:
    """Server stats summed over nodes, with ``nodes`` and ``nodes-unavailable``."""
    missed: list[str] = []
    per_node = pool.each(Client.stats, missed=missed)
    merged = merge_stats(per_node.values(), NON_ADDITIVE_STATS, frozenset())
    merged["draining"] = any(s.get("draining") for s in per_node.values())
    merged["nodes"] = per_node
    merged["nodes-unavailable"] = missed
    return merged


def stats_tube(pool: NodePool, tube: str) -> dict:
    """A tube's stats summed over the nodes that have it, with ``nodes-unavailable``
    (NotFoundError if none has it, NoNodeAvailableError if none that answered has it
    and some did not)."""
    missed: list[str] = []
    per_node = pool.each(Client.stats_tube, tube, skip=(NotFoundError,), missed=missed)
    if not per_node:
        raise unanswered(missed, "NOT_FOUND") if missed else NotFoundError()
    merged = merge_stats(per_node.values(), frozenset(), MAX_TUBE_STATS)
    merged["name"] = tube
    merged["nodes"] = per_node
    merged["nodes-unavailable"] = missed
    return merged


def list_tubes(pool: NodePool) -> list[str]:
    """Every tube that exists on any live node, sorted."""
    tubes: set[str] = set()
    for names in pool.each(Client.list_tubes).values():
        tubes.update(names)
    return sorted(tubes)


def pause_tube(pool: NodePool, tube: str, delay: int) -> None:
    """Pause ``tube`` on every node that has it (NotFoundError if none; NoNodeAvailableError,
    after pausing the others, if some node did not answer: it may have the tube)."""
    missed: list[str] = []
    paused = pool.each(Client.pause_tube, tube, delay, skip=(NotFoundError,), missed=missed)
    if missed:
        raise unanswered(missed, "PAUSED" if paused else "NOT_FOUND")
    if not paused:
        raise NotFoundError()


def merge_stats(dicts: Iterable[Mapping], leave_out: frozenset = frozenset(),
                take_max: frozenset = frozenset()) -> dict:
    """Sum the numeric fields of several stats dicts (``take_max`` ones: max).

    The one stats merge: ClusterClient.stats/stats_tube, ``bscluster stats``
    (report.py) and the dashboard's totals (monitor.py) all add up through
    it.  Booleans and non-numbers (strings, None) are not summed, so a key
    no dict has a number for is absent from the result.
    """
    merged: dict = {}
    for one in dicts:
        for key, value in one.items():
            if key in leave_out or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key in take_max:
                merged[key] = max(merged.get(key, value), value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def spread(bound: int, counts: Mapping[str, int]) -> dict[str, int]:
    """Split ``bound`` over nodes as evenly as their ``counts`` allow."""
    left = {n: c for n, c in counts.items() if c > 0}
    shares = dict.fromkeys(left, 0)
    remaining = bound
    while remaining > 0 and left:
        each = max(1, remaining // len(left))
        for name in list(left):
            give = min(each, left[name], remaining)
            shares[name] += give
            left[name] -= give
            remaining -= give
            if left[name] == 0:
                del left[name]
            if remaining == 0:
                break
    return {n: s for n, s in shares.items() if s}
