"""ClusterClient: many independent nodes used as if they were one beanstalkd.

How this works
--------------
Nodes never talk to each other; all distribution lives here.  The client
holds one lazily connected ``Client`` per node and a ``Ring`` over stable
node names (see docs/CLIENT.md for the full semantics).

* Producing: ``use`` is local; ``put`` goes to the used tube's owner on the
  ring.  Under the "failover" policy a node that cannot be reached is
  skipped for the next node in the tube's ring order, and after
  ``failure_threshold`` consecutive failures it is marked dead for
  ``dead_timeout`` seconds, then tried again.  A put whose connection broke
  after it was sent is never retried (it may have been stored): it raises
  ``NoNodeAvailableError`` with ``sent=True``.
* Consuming: ``watch``/``ignore`` are local and copied onto each node's
  connection before it reserves.  ``reserve`` first polls every available
  node with ``reserve-with-timeout 0``, starting after the node that gave
  the previous job (so no node starves), then blocks in slices of
  ``RESERVE_SLICE`` seconds on one node at a time, rotating, with a poll
  round between slices, until the caller's deadline.  Every RESERVED reply
  is handed to the caller at once, so no job is ever held that the caller
  did not get.  All nodes are visited, not just the owners of the watched
  tubes, because jobs stay where they were put: on a former owner after a
  ring change, on a failover node after an outage.
* Jobs remember their node: ``Job.node`` and the handle "node2/17" that
  ``put`` returns route delete/release/bury/touch/peek/stats-job/kick-job/
  reserve-job to the node (and connection) that holds the job.
* Fan-out commands (stats, stats-tube, list-tubes, peek-*, kick,
  pause-tube) ask every available node and merge the answers.

Not thread-safe: use one ClusterClient per thread or greenlet.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from . import protocol as p
from .client import DEFAULT_TUBE, Client, Job
from .config import NodeAddress, nodes_from_env, nodes_from_mapping, read_config_file
from .errors import (
    BadFormatError,
    ConnectionLostError,
    DeadlineSoonError,
    NoNodeAvailableError,
    NotFoundError,
    NotIgnoredError,
    TimedOutError,
)
from .ring import OWNER_CACHE_SIZE, Ring, natural_key

FAILOVER = "failover"
FAIL_FAST = "fail_fast"
POLICIES = (FAILOVER, FAIL_FAST)
DEFAULT_FAILURE_THRESHOLD = 2
DEFAULT_DEAD_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 30.0
RESERVE_SLICE = 1  # seconds one blocking reserve may wait on one node

# stats fields that do not add up across nodes; kept per node only
NON_ADDITIVE_STATS = frozenset({
    "pid", "uptime", "max-job-size", "binlog-oldest-index", "binlog-current-index",
    "binlog-max-size", "rusage-utime", "rusage-stime",
})
# stats-tube fields merged with max() rather than a sum
MAX_TUBE_STATS = frozenset({"pause", "pause-time-left"})

JobHandle = Job | str


@dataclass(eq=False)
class _Node:
    """One member node: its connection and its health."""

    name: str
    client: Client
    weight: int = 1
    failures: int = 0  # consecutive connection failures
    dead_until: float = 0.0  # monotonic time; 0 means alive
    watch_gen: int = -1  # the watch-list generation last copied to it


def _check_tube(tube: str) -> str:
    if not isinstance(tube, str):
        raise TypeError(f"tube name must be str, not {type(tube).__name__}")
    if not p.valid_tube_name(tube.encode("ascii", "replace")) or not tube.isascii():
        raise BadFormatError(f"BAD_FORMAT: invalid tube name {tube!r}")
    return tube


class ClusterClient:
    """A sharded beanstalkd: a ring of named nodes behind one client.

    ``nodes`` is ``{"node1": "127.0.0.1:11300", ...}`` (values may also be
    ``{"address": ..., "weight": 2}``) or a sequence of ``NodeAddress``.
    """

    def __init__(
        self,
        nodes: Mapping | Iterable[NodeAddress],
        *,
        policy: str = FAILOVER,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        dead_timeout: float = DEFAULT_DEAD_TIMEOUT,
        ketama: bool = False,
        vnodes: int | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        encoding: str | None = None,
        use: str | None = None,
        watch: str | Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        specs = nodes_from_mapping(nodes) if isinstance(nodes, Mapping) else tuple(nodes)
        if not specs:
            raise ValueError("a cluster needs at least one node")
        self.policy = policy
        self.failure_threshold = failure_threshold
        self.dead_timeout = dead_timeout
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.encoding = encoding
        self._clock = clock
        self._nodes: dict[str, _Node] = {}
        for spec in specs:
            self._nodes[spec.name] = self._make_node(spec.name, spec.address, spec.weight)
        self._ring = Ring({n.name: n.weight for n in self._nodes.values()},
                          ketama=ketama, vnodes=vnodes)
        self._order = list(self._ring.nodes)  # members in natural order
        self._owner_of: dict[str, _Node] = {}  # tube -> owner node, a cache of the ring
        self._using = DEFAULT_TUBE
        self._watching = [DEFAULT_TUBE]
        self._watch_gen = 0
        self._poll_start = 0  # rotation: where the next poll round starts
        self._block_next = 0  # rotation: the next node to block on
        if use is not None:
            self.use(use)
        if watch is not None:
            tubes = [watch] if isinstance(watch, str) else list(watch)
            for tube in tubes:
                self.watch(tube)
            for tube in list(self._watching):
                if tube not in tubes:
                    self.ignore(tube)

    @classmethod
    def from_config(cls, path: str | os.PathLike, **kwargs) -> ClusterClient:
        """Nodes from a bscluster TOML config file (see bsclient.config)."""
        return cls(read_config_file(path), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs) -> ClusterClient:
        """Nodes from ``BSCLUSTER_NODES`` (or the ``BSCLUSTER_CONFIG`` file)."""
        return cls(nodes_from_env(env), **kwargs)

    def _make_node(self, name: str, address: str, weight: int) -> _Node:
        client = Client(address, name=name, connect_timeout=self.connect_timeout,
                        timeout=self.timeout, encoding=self.encoding, lazy=True)
        return _Node(name, client, weight)

    # --- membership -----------------------------------------------------------
    @property
    def nodes(self) -> tuple[str, ...]:
        """Every member node, in natural name order."""
        return tuple(self._order)

    @property
    def ring(self) -> Ring:
        return self._ring

    def client(self, name: str) -> Client:
        """The per-node Client (for inspection; do not change its tubes)."""
        return self._nodes[name].client

    def node_for(self, tube: str) -> str:
        """The node that owns ``tube`` on the ring (alive or not)."""
        return self._ring.node_for(tube)

    def add_node(self, name: str, address: str, weight: int = 1) -> None:
        """Add a node to the ring; tubes it now owns send their puts to it."""
        if name in self._nodes:
            raise ValueError(f"node {name} is already a member")
        self._ring = self._ring.with_node(name, weight)
        self._owner_of.clear()
        self._nodes[name] = self._make_node(name, address, weight)
        self._order = sorted(self._nodes, key=natural_key)

    def remove_node(self, name: str, *, drain: bool = True) -> None:
        """Take a node off the ring.

        With ``drain`` (default) it stays a member that reserve, peek and
        stats still visit, so its jobs are consumed; without, it is
        forgotten and its connection closed.
        """
        if name not in self._nodes:
            raise KeyError(name)
        if name in self._ring.weights:
            self._ring = self._ring.without_node(name)
            self._owner_of.clear()
        if not drain:
            self._nodes.pop(name).client.close()
            self._order.remove(name)

    def close(self) -> None:
        """Close every connection (reserved jobs go back to ready)."""
        for node in self._nodes.values():
            node.client.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterClient {self.policy} {list(self._order)}>"

    # --- health ----------------------------------------------------------------
    def _available(self, node: _Node) -> bool:
        return node.dead_until == 0.0 or self._clock() >= node.dead_until

    def dead_nodes(self) -> list[str]:
        """Nodes currently marked dead (skipped until their dead timeout passes)."""
        return [n for n in self._order if not self._available(self._nodes[n])]

    def _failed(self, node: _Node) -> None:
        node.failures += 1
        if self.policy == FAILOVER and node.failures >= self.failure_threshold:
            node.dead_until = self._clock() + self.dead_timeout

    def _ok(self, node: _Node) -> None:
        node.failures = 0
        node.dead_until = 0.0

    def _call(self, node: _Node, fn: Callable, *args):
        """Run ``fn(client, *args)`` on one node; a lost connection names the node."""
        try:
            result = fn(node.client, *args)
        except ConnectionLostError as e:
            self._failed(node)
            raise NoNodeAvailableError(node.name, str(e), sent=e.sent) from e
        if node.failures:
            self._ok(node)
        return result

    def _live(self) -> list[_Node]:
        """Nodes to visit for fan-out and reserve, in natural order."""
        nodes = [self._nodes[n] for n in self._order]
        if self.policy == FAIL_FAST:
            return nodes
        live = [n for n in nodes if self._available(n)]
        return live or nodes  # all marked dead: try them all rather than none

    def _each(self, fn: Callable, *args, skip: tuple = ()) -> dict:
        """``{name: fn(client, *args)}`` over live nodes; ``skip`` errors are left out.

        Failover drops nodes that fail; fail_fast raises for the first one.
        """
        out = {}
        answered = False
        for node in self._live():
            try:
                out[node.name] = self._call(node, fn, *args)
            except skip:
                pass
            except NoNodeAvailableError:
                if self.policy == FAIL_FAST:
                    raise
                continue
            answered = True
        if not answered:
            self._raise_none_available()
        return out

    def _raise_none_available(self):
        raise NoNodeAvailableError(",".join(self._order), "no node could be reached")

    # --- producing ---------------------------------------------------------------
    def use(self, tube: str) -> str:
        """Use ``tube`` for later puts (local; nodes learn it on put)."""
        self._using = _check_tube(tube)
        return tube

    @property
    def using(self) -> str:
        return self._using

    def list_tube_used(self) -> str:
        return self._using

    def put(
        self,
        body: bytes | str,
        priority: int = p.DEFAULT_PRIORITY,
        delay: int = p.DEFAULT_DELAY,
        ttr: int = p.DEFAULT_TTR,
    ) -> str:
        """Put into the used tube on its owner (or failover node); returns "node/id"."""
        tube = self._using
        node = self._owner_of.get(tube)
        if node is None:
            if len(self._owner_of) >= OWNER_CACHE_SIZE:
                self._owner_of.clear()
            node = self._owner_of[tube] = self._nodes[self._ring.node_for(tube)]
        if node.dead_until == 0.0 and node.client._using == tube:  # the hot path
            try:
                job_id = node.client.put(body, priority, delay, ttr)
            except ConnectionLostError as e:
                self._failed(node)
                if e.sent or self.policy == FAIL_FAST:
                    raise NoNodeAvailableError(node.name, str(e), sent=e.sent) from e
                return self._put_failover(tube, body, priority, delay, ttr, [f"{node.name}: {e}"])
            if node.failures:
                self._ok(node)
            return f"{node.name}/{job_id}"
        return self._put_failover(tube, body, priority, delay, ttr, [])

    def _put_failover(self, tube, body, priority, delay, ttr, reasons: list[str]) -> str:
        """Put on the first node, in the tube's ring order, that takes it."""
        owner = self._ring.node_for(tube)
        node = self._nodes[owner]
        if not reasons and (node.dead_until == 0.0 or self.policy == FAIL_FAST):
            try:
                return self._put_on(node, tube, body, priority, delay, ttr)
            except NoNodeAvailableError as e:
                if e.sent or self.policy == FAIL_FAST:
                    raise
                reasons = [f"{owner}: {e.reason}"]
        if self.policy == FAIL_FAST:
            raise NoNodeAvailableError(owner, "; ".join(reasons))
        for name in self._ring.preference(tube):
            node = self._nodes[name]
            if name == owner and reasons:
                continue  # just failed above
            if not self._available(node):
                reasons.append(f"{name}: marked dead")
                continue
            try:
                return self._put_on(node, tube, body, priority, delay, ttr)
            except NoNodeAvailableError as e:
                if e.sent:
                    raise
                reasons.append(f"{name}: {e.reason}")
        raise NoNodeAvailableError(owner, f"no node took the put to {tube}: " + "; ".join(reasons))

    def _put_on(self, node: _Node, tube: str, body, priority, delay, ttr) -> str:
        client = node.client
        if client.using != tube:
            try:
                client.use(tube)
            except ConnectionLostError as e:
                self._failed(node)
                raise NoNodeAvailableError(node.name, str(e), sent=False) from e
        return f"{node.name}/{self._call(node, Client.put, body, priority, delay, ttr)}"

    # --- consuming ---------------------------------------------------------------
    def watch(self, tube: str) -> int:
        """Add ``tube`` to the watch list (local; copied to nodes on reserve)."""
        _check_tube(tube)
        if tube not in self._watching:
            self._watching.append(tube)
            self._watch_gen += 1
        return len(self._watching)

    def ignore(self, tube: str) -> int:
        """Remove ``tube`` from the watch list; NotIgnoredError for the last one."""
        _check_tube(tube)
        if tube in self._watching:
            if len(self._watching) == 1:
                raise NotIgnoredError()
            self._watching.remove(tube)
            self._watch_gen += 1
        return len(self._watching)

    @property
    def watching(self) -> list[str]:
        return list(self._watching)

    def list_tubes_watched(self) -> list[str]:
        return list(self._watching)

    def _sync_watch(self, client: Client, node: _Node) -> None:
        if node.watch_gen == self._watch_gen:
            return
        wanted = self._watching
        have = client.watching
        for tube in wanted:
            if tube not in have:
                client.watch(tube)
        for tube in client.watching:
            if tube not in wanted:
                client.ignore(tube)
        node.watch_gen = self._watch_gen

    def _reserve_on(self, client: Client, node: _Node, secs: int | None) -> Job:
        self._sync_watch(client, node)
        return client.reserve(secs)

    def reserve(self, timeout: float | None = None) -> Job:
        """Reserve a job from any watched tube on any node.

        ``timeout`` None waits forever; otherwise whole seconds (fractions
        round up), 0 polls every node once.  Raises TimedOutError, or
        DeadlineSoonError when no node had a job and one of them reported
        DEADLINE_SOON.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 (None waits forever)")
        deadline = None if timeout is None else self._clock() + math.ceil(timeout)
        while True:
            job = self._poll_round()
            if job is not None:
                return job
            if deadline is None:
                secs = None
            else:
                secs = round(deadline - self._clock())
                if secs <= 0:
                    raise TimedOutError()
            job = self._block_slice(secs)
            if job is not None:
                return job

    def _poll_round(self) -> Job | None:
        """One ``reserve-with-timeout 0`` on every live node, rotating the start."""
        live = self._live()
        order = self._order
        start = self._poll_start % len(order)
        live.sort(key=lambda n: (order.index(n.name) - start) % len(order))
        deadline_soon = False
        for node in live:
            try:
                job = self._call(node, self._reserve_on, node, 0)
            except TimedOutError:
                continue
            except DeadlineSoonError:
                deadline_soon = True
                continue
            except NoNodeAvailableError:
                if self.policy == FAIL_FAST:
                    raise
                continue
            self._poll_start = order.index(node.name) + 1
            return job
        if deadline_soon:
            raise DeadlineSoonError()
        if not any(n.client.connected for n in live):
            self._raise_none_available()
        return None

    def _block_slice(self, secs: int | None) -> Job | None:
        """Block on the next live node for one slice; None if it had nothing."""
        live = self._live()
        if len(self._order) > 1:
            secs = RESERVE_SLICE if secs is None else min(secs, RESERVE_SLICE)
        node = live[self._block_next % len(live)]
        self._block_next += 1
        try:
            return self._call(node, self._reserve_on, node, secs)
        except (TimedOutError, DeadlineSoonError):
            return None  # the poll round that follows decides: a ready job wins
        except NoNodeAvailableError:
            if self.policy == FAIL_FAST:
                raise
            return None

    # --- by job ------------------------------------------------------------------
    def _locate(self, job: JobHandle) -> tuple[_Node, int]:
        if isinstance(job, Job):
            name, job_id = job.node, job.id
        elif isinstance(job, str):
            name, sep, num = job.rpartition("/")
            if not sep or not num.isdigit():
                raise ValueError(f"bad job handle {job!r}; expected 'node/id' like 'node2/17'")
            job_id = int(num)
        else:
            raise TypeError(
                "a job id alone is ambiguous in a cluster: pass the Job or its handle 'node2/17'"
            )
        node = self._nodes.get(name)
        if node is None:
            raise ValueError(f"job {job!r} names unknown node {name!r}")
        return node, job_id

    def _by_job(self, fn: Callable, job: JobHandle, *args):
        node, job_id = self._locate(job)
        return self._call(node, fn, job_id, *args)

    def delete(self, job: JobHandle) -> None:
        self._by_job(Client.delete, job)

    def release(
        self, job: JobHandle, priority: int = p.DEFAULT_PRIORITY, delay: int = p.DEFAULT_DELAY
    ) -> None:
        self._by_job(Client.release, job, priority, delay)

    def bury(self, job: JobHandle, priority: int = p.DEFAULT_PRIORITY) -> None:
        self._by_job(Client.bury, job, priority)

    def touch(self, job: JobHandle) -> None:
        self._by_job(Client.touch, job)

    def peek(self, job: JobHandle) -> Job:
        return self._by_job(Client.peek, job)

    def stats_job(self, job: JobHandle) -> dict:
        return self._by_job(Client.stats_job, job)

    def kick_job(self, job: JobHandle) -> None:
        self._by_job(Client.kick_job, job)

    def reserve_job(self, job: JobHandle) -> Job:
        return self._by_job(Client.reserve_job, job)

    # --- fan-out -----------------------------------------------------------------
    def _with_used(self, fn: Callable) -> Callable:
        tube = self._using

        def run(client: Client, *args):
            if client.using != tube:
                client.use(tube)
            return fn(client, *args)
        return run

    def _peek_best(self, fn: Callable, rank: Callable[[dict], tuple]) -> Job:
        found = self._each(self._with_used(fn), skip=(NotFoundError,))
        best, best_key = None, None
        for index, (name, job) in enumerate(found.items()):
            try:
                stats = self._call(self._nodes[name], Client.stats_job, job.id)
            except (NotFoundError, NoNodeAvailableError):
                continue  # gone meanwhile
            key = (*rank(stats), index)
            if best_key is None or key < best_key:
                best, best_key = job, key
        if best is None:
            raise NotFoundError()
        return best

    def peek_ready(self) -> Job:
        """The used tube's most urgent ready job over all nodes (pri, then age)."""
        return self._peek_best(Client.peek_ready, lambda s: (s["pri"], -s["age"]))

    def peek_delayed(self) -> Job:
        """The used tube's delayed job due first over all nodes."""
        return self._peek_best(Client.peek_delayed, lambda s: (s["time-left"], s["pri"]))

    def peek_buried(self) -> Job:
        """The oldest of each node's first buried job in the used tube."""
        return self._peek_best(Client.peek_buried, lambda s: (-s["age"],))

    def kick(self, bound: int) -> int:
        """Kick up to ``bound`` jobs of the used tube, spread evenly over nodes.

        As in beanstalkd, buried jobs are kicked if any node has some in the
        tube; only otherwise delayed jobs.
        """
        tube = self._using
        stats = self._each(Client.stats_tube, tube, skip=(NotFoundError,))
        buried = {n: s["current-jobs-buried"] for n, s in stats.items()}
        counts = buried if any(buried.values()) else {
            n: s["current-jobs-delayed"] for n, s in stats.items()
        }
        kicked = 0
        for name, share in spread(bound, counts).items():
            try:
                kicked += self._call(self._nodes[name], self._with_used(Client.kick), share)
            except NoNodeAvailableError:
                if self.policy == FAIL_FAST:
                    raise
        return kicked

    def stats(self) -> dict:
        """Server stats summed over nodes; ``nodes`` holds each node's own dict.

        ``nodes-unavailable`` lists the members that could not be asked.
        """
        per_node = self._each(Client.stats)
        merged = merge_stats(per_node.values(), NON_ADDITIVE_STATS, frozenset())
        merged["draining"] = any(s.get("draining") for s in per_node.values())
        merged["nodes"] = per_node
        merged["nodes-unavailable"] = [n for n in self._order if n not in per_node]
        return merged

    def stats_tube(self, tube: str) -> dict:
        """A tube's stats summed over the nodes that have it (NotFoundError if none)."""
        _check_tube(tube)
        per_node = self._each(Client.stats_tube, tube, skip=(NotFoundError,))
        if not per_node:
            raise NotFoundError()
        merged = merge_stats(per_node.values(), frozenset(), MAX_TUBE_STATS)
        merged["name"] = tube
        merged["nodes"] = per_node
        return merged

    def list_tubes(self) -> list[str]:
        """Every tube that exists on any live node, sorted."""
        tubes: set[str] = set()
        for names in self._each(Client.list_tubes).values():
            tubes.update(names)
        return sorted(tubes)

    def pause_tube(self, tube: str, delay: int) -> None:
        """Pause ``tube`` on every node that has it (NotFoundError if none)."""
        _check_tube(tube)
        if not self._each(Client.pause_tube, tube, delay, skip=(NotFoundError,)):
            raise NotFoundError()


def merge_stats(dicts: Iterable[dict], leave_out: frozenset, take_max: frozenset) -> dict:
    """Sum the numeric fields of several stats dicts (``take_max`` ones: max)."""
    merged: dict = {}
    for stats in dicts:
        for key, value in stats.items():
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
