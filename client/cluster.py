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
* Consuming (``consume.py``): ``watch``/``ignore`` are local and copied
  onto each node's connection before it reserves.  ``reserve`` polls the
  nodes with ``reserve-with-timeout 0`` in a rotating order, nodes found
  empty lately last, then blocks in slices on one node at a time.  All
  nodes are visited, not just the owners of the watched tubes, because
  jobs stay where they were put: on a former owner after a ring change, on
  a failover node after an outage.
* Jobs remember their node: ``Job.node`` and the handle "node2/17" that
  ``put`` returns route delete/release/bury/touch/peek/stats-job/kick-job/
  reserve-job to the node (and connection) that holds the job.
* Fan-out commands (``fanout.py``: stats, stats-tube, list-tubes, peek-*,
  kick, pause-tube) ask every available node and merge the answers.
* The members, their connections and the dead-node policy live in
  ``pool.py``; this module decides which node each command goes to.

Not thread-safe: use one ClusterClient per thread or greenlet.
"""


from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping

from . import fanout
from . import protocol as p
from .client import DEFAULT_TUBE, Client, Job
from .config import (
    NodeAddress,
    nodes_from_env,
    nodes_from_mapping,
    read_config_file,
    read_tls_settings,
)
from .consume import (  # noqa: F401 - re-exported
    EMPTY_SKIP_ROUNDS,
    EMPTY_SKIP_SECONDS,
    RESERVE_SLICE,
    Consumer,
    check_tube,
)
from .errors import ConnectionLostError, NoNodeAvailableError
from .fanout import MAX_TUBE_STATS, NON_ADDITIVE_STATS, merge_stats, spread  # noqa: F401
from .pool import (  # noqa: F401 - re-exported
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEAD_TIMEOUT,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_TIMEOUT,
    FAIL_FAST,
    FAILOVER,
    POLICIES,
    Member,
    NodePool,
)
from .ring import OWNER_CACHE_SIZE, Ring

JobHandle = Job | str


def _context(settings) -> ssl.SSLContext | None:
    return None if settings is None else settings.client_context()


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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        pool = self._pool = NodePool(
            policy=policy, failure_threshold=failure_threshold, dead_timeout=dead_timeout,
            connect_timeout=connect_timeout, timeout=timeout, encoding=encoding, clock=clock,
            ssl_context=ssl_context,
        )
        specs = nodes_from_mapping(nodes) if isinstance(nodes, Mapping) else tuple(nodes)
        if not specs:
            raise ValueError("a cluster needs at least one node")
        for spec in specs:
            pool.add(spec.name, spec.address, spec.weight)
        self._nodes = pool.members  # name -> Member, shared with the pool
        self._ring = Ring({m.name: m.weight for m in pool.members.values()},
                          ketama=ketama, vnodes=vnodes)
        self._owner_of: dict[str, Member] = {}  # tube -> owner, a cache of the ring
        self._using = DEFAULT_TUBE
        self._consumer = Consumer(pool)
        if use is not None:
            self.use(use)
        if watch is not None:
            tubes = [watch] if isinstance(watch, str) else list(watch)
            for tube in tubes:
                self.watch(tube)
            for tube in list(self._consumer.watching):
                if tube not in tubes:
                    self.ignore(tube)

    @classmethod
    def from_config(cls, path: str | os.PathLike, **kwargs) -> ClusterClient:
        """Nodes from a bscluster TOML config file (see bsclient.config); TLS
        from its [tls] table and BSCLUSTER_TLS_* unless ``ssl_context`` is given."""
        if "ssl_context" not in kwargs:
            kwargs["ssl_context"] = _context(read_tls_settings(path))
        return cls(read_config_file(path), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs) -> ClusterClient:
        """Nodes from ``BSCLUSTER_NODES`` (or the ``BSCLUSTER_CONFIG`` file);
        TLS from BSCLUSTER_TLS_* (and that file's [tls]) unless ``ssl_context`` is given."""
        if "ssl_context" not in kwargs:
            kwargs["ssl_context"] = _context(read_tls_settings(None, env))
        return cls(nodes_from_env(env), **kwargs)

    # --- settings (kept by the pool) ---------------------------------------------
    @property
    def policy(self) -> str:
        return self._pool.policy

    @property
    def failure_threshold(self) -> int:
        return self._pool.failure_threshold

    @property
    def dead_timeout(self) -> float:
        return self._pool.dead_timeout

    @property
    def connect_timeout(self) -> float | None:
        return self._pool.connect_timeout

    @property
    def timeout(self) -> float | None:
        return self._pool.timeout

    @property
    def encoding(self) -> str | None:
        return self._pool.encoding

    # --- membership -----------------------------------------------------------
    @property
    def nodes(self) -> tuple[str, ...]:
        """Every member node, in natural name order."""
        return tuple(self._pool.order)

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
        self._pool.add(name, address, weight)

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
            self._pool.forget(name)

    def close(self) -> None:
        """Close every connection (reserved jobs go back to ready)."""
        self._pool.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterClient {self.policy} {list(self._pool.order)}>"

    def dead_nodes(self) -> list[str]:
        """Nodes currently marked dead (skipped until their dead timeout passes)."""
        return self._pool.dead_nodes()

    # --- producing ---------------------------------------------------------------
    def use(self, tube: str) -> str:
        """Use ``tube`` for later puts (local; nodes learn it on put)."""
        self._using = check_tube(tube)
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
                self._pool.failed(node)
                if e.sent or self.policy == FAIL_FAST:
                    raise NoNodeAvailableError(node.name, str(e), sent=e.sent) from e
                return self._put_failover(tube, body, priority, delay, ttr, [f"{node.name}: {e}"])
            if node.failures:
                self._pool.ok(node)
            return f"{node.name}/{job_id}"
        return self._put_failover(tube, body, priority, delay, ttr, [])

    def _put_failover(self, tube, body, priority, delay, ttr, reasons: list[str]) -> str:
        """Put on the first node, in the tube's ring order, that takes it."""
        owner = self._ring.node_for(tube)
        node = self._nodes[owner]
        fail_fast = self.policy == FAIL_FAST
        if not reasons and (node.dead_until == 0.0 or fail_fast):
            try:
                return self._put_on(node, tube, body, priority, delay, ttr)
            except NoNodeAvailableError as e:
                if e.sent or fail_fast:
                    raise
                reasons = [f"{owner}: {e.reason}"]
        if fail_fast:
            raise NoNodeAvailableError(owner, "; ".join(reasons))
        for name in self._ring.preference(tube):
            node = self._nodes[name]
            if name == owner and reasons:
                continue  # just failed above
            if not self._pool.available(node):
                reasons.append(f"{name}: marked dead")
                continue
            try:
                return self._put_on(node, tube, body, priority, delay, ttr)
            except NoNodeAvailableError as e:
                if e.sent:
                    raise
                reasons.append(f"{name}: {e.reason}")
        raise NoNodeAvailableError(owner, f"no node took the put to {tube}: " + "; ".join(reasons))

    def _put_on(self, node: Member, tube: str, body, priority, delay, ttr) -> str:
        client = node.client
        if client.using != tube:
            try:
                client.use(tube)
            except ConnectionLostError as e:
                self._pool.failed(node)
                raise NoNodeAvailableError(node.name, str(e), sent=False) from e
        return f"{node.name}/{self._pool.call(node, Client.put, body, priority, delay, ttr)}"

    # --- consuming ---------------------------------------------------------------
    def watch(self, tube: str) -> int:
        """Add ``tube`` to the watch list (local; copied to nodes on reserve)."""
        return self._consumer.watch(tube)

    def ignore(self, tube: str) -> int:
        """Remove ``tube`` from the watch list; NotIgnoredError for the last one."""
        return self._consumer.ignore(tube)

    @property
    def watching(self) -> list[str]:
        return list(self._consumer.watching)

    def list_tubes_watched(self) -> list[str]:
        return list(self._consumer.watching)

    def reserve(self, timeout: float | None = None) -> Job:
        """Reserve a job from any watched tube on any node.

        ``timeout`` None waits forever; otherwise whole seconds (fractions
        round up), 0 polls every node once.  Raises TimedOutError, or
        DeadlineSoonError when no node had a job and one of them reported
        DEADLINE_SOON.  See ``bsclient.consume`` for the order nodes are
        asked in.
        """
        return self._consumer.reserve(timeout)

    # --- by job ------------------------------------------------------------------
    def _locate(self, job: JobHandle) -> tuple[Member, int]:
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
        return self._pool.call(node, fn, job_id, *args)

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

    # --- fan-out (see bsclient.fanout) --------------------------------------------
    def peek_ready(self) -> Job:
        """The used tube's most urgent ready job over all nodes (pri, then age)."""
        return fanout.peek_best(self._pool, self._using, Client.peek_ready, fanout.rank_ready)

    def peek_delayed(self) -> Job:
        """The used tube's delayed job due first over all nodes."""
        return fanout.peek_best(self._pool, self._using, Client.peek_delayed,
                                fanout.rank_delayed)

    def peek_buried(self) -> Job:
        """The oldest of each node's first buried job in the used tube."""
        return fanout.peek_best(self._pool, self._using, Client.peek_buried, fanout.rank_buried)

    def kick(self, bound: int) -> int:
        """Kick up to ``bound`` jobs of the used tube, spread evenly over nodes.

        As in beanstalkd, buried jobs are kicked if any node has some in the
        tube; only otherwise delayed jobs.
        """
        return fanout.kick(self._pool, self._using, bound)

    def stats(self) -> dict:
        """Server stats summed over nodes; ``nodes`` holds each node's own dict.

        ``nodes-unavailable`` lists the members that could not be asked.
        """
        return fanout.stats(self._pool)

    def stats_tube(self, tube: str) -> dict:
        """A tube's stats summed over the nodes that have it (NotFoundError if none)."""
        return fanout.stats_tube(self._pool, check_tube(tube))

    def list_tubes(self) -> list[str]:
        """Every tube that exists on any live node, sorted."""
        return fanout.list_tubes(self._pool)

    def pause_tube(self, tube: str, delay: int) -> None:
        """Pause ``tube`` on every node that has it (NotFoundError if none)."""
        fanout.pause_tube(self._pool, check_tube(tube), delay)
