"""ClusterClient: many independent nodes used as if they were one beanstalkd.

How this works
--------------
Nodes never talk to each other; all distribution lives here.  The client
holds a ``Ring`` over stable node names and a ``NodePool`` of members and
their health (see docs/CLIENT.md for the full semantics).  Connections are
per thread (or greenlet): the pool gives each its own ``Session``, so one
ClusterClient can be shared, and ``use``/``watch`` are per thread like a
beanstalkd connection's.

* Producing: ``put`` goes to the tube's owner on the ring, or, for a tube
  spread over k nodes (``spread={"emails": 2}`` or ``[tubes.emails] spread``
  in the config), to its first k ring nodes in turn.  A node that cannot be
  reached, or answers DRAINING, is skipped for the next node in the tube's
  ring order ("failover" policy); failure counting and dead marking are the
  pool's.  A put whose connection broke after it was sent is never retried
  (it may have been stored): it raises ``NoNodeAvailableError`` with
  ``sent=True``.  Every reply is awaited at most ``op_timeout`` seconds.
* Consuming (``consume.py``): one blocking reserve per hot node (the nodes
  the watched tubes' puts go to), waited on together with ``poll``; the
  other nodes are polled every half second, since jobs stay where they were
  put (on a former owner after a ring change, on a failover node).
* Jobs remember their node: ``Job.node`` and the handle "node2/17" that
  ``put`` returns route delete/release/bury/touch/peek/stats-job/kick-job/
  reserve-job to the node, on the connection that reserved the job.
* Fan-out commands (``fanout.py``: stats, stats-tube, list-tubes, peek-*,
  kick, pause-tube) ask every available node and merge the answers.
"""


from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping

from . import fanout
from . import protocol as p
from .client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TUBE, Client, Job
from .config import (
    ClusterLayout,
    NodeAddress,
    check_spread,
    layout_from_env,
    nodes_from_mapping,
    read_layout,
    read_tls_context,
)
from .consume import (  # noqa: F401 - re-exported
    HOLD_TOUCH_AFTER,
    HOT_WAIT,
    SWEEP_SECONDS,
    Consumer,
    check_tube,
)
from .errors import (
    ConcurrentUseError,
    ConnectionLostError,
    DrainingError,
    NoNodeAvailableError,
    OutOfMemoryError,
)
from .fanout import MAX_TUBE_STATS, NON_ADDITIVE_STATS, merge_stats  # noqa: F401
from .pool import (  # noqa: F401 - re-exported
    DEFAULT_DEAD_TIMEOUT,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_OP_TIMEOUT,
    DEFAULT_TIMEOUT,
    FAIL_FAST,
    FAILOVER,
    POLICIES,
    Member,
    NodePool,
)
from .ring import OWNER_CACHE_SIZE, RING_KETAMA, RING_MD5, Ring, placement

JobHandle = Job | str


class ClusterClient:
    """A sharded beanstalkd: a ring of named nodes behind one client.

    ``nodes`` is ``{"node1": "127.0.0.1:11300", ...}`` (values may also be
    ``{"address": ..., "weight": 2, "leaving": True}``) or a sequence of
    ``NodeAddress``.  A leaving node is reserved from but never put to: the
    put ring (``ring.placement``) leaves it out.
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
        op_timeout: float | None = DEFAULT_OP_TIMEOUT,
        timeout: float | None = None,
        encoding: str | None = None,
        use: str | None = None,
        watch: str | Iterable[str] | None = None,
        spread: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        spill_when_full: bool = False,
    ) -> None:
        if timeout is not None:  # the old name of op_timeout
            op_timeout = timeout
        watching = [DEFAULT_TUBE] if watch is None else (
            [watch] if isinstance(watch, str) else list(dict.fromkeys(watch)))
        for tube in watching:
            check_tube(tube)
        if not watching:
            raise ValueError("watch needs at least one tube")
        pool = self._pool = NodePool(
            policy=policy, failure_threshold=failure_threshold, dead_timeout=dead_timeout,
            connect_timeout=connect_timeout, op_timeout=op_timeout, encoding=encoding,
            clock=clock, use=check_tube(use) if use is not None else DEFAULT_TUBE,
            watch=tuple(watching), ssl_context=ssl_context,
        )
        specs = nodes_from_mapping(nodes) if isinstance(nodes, Mapping) else tuple(nodes)
        if not specs:
            raise ValueError("a cluster needs at least one node")
        for spec in specs:
            pool.add(spec.name, spec.address, spec.weight)
        self._nodes = pool.members  # name -> Member, shared with the pool
        self._ring = placement(specs, RING_KETAMA if ketama else RING_MD5, vnodes=vnodes)
        self._spread = check_spread(spread or {}, "spread")
        # OUT_OF_MEMORY (a node at its --max-jobs/--max-job-bytes cap) is raised to
        # the producer as back-pressure unless asked to try the next node (CLIENT.md)
        self.spill_when_full = spill_when_full
        self._consumer = Consumer(pool, self._hot_nodes)
        pool.session()  # this thread's: other threads start from its tubes

    @classmethod
    def from_config(cls, path: str | os.PathLike, **kwargs) -> ClusterClient:
        """Nodes, ring and spread tubes from a bscluster TOML config file (bsclient.config).

        Removed nodes are left out, leaving ones are reserved from but not put
        to, ``[cluster] ring = "ketama"`` means ``ketama=True`` (a ``ketama``
        argument wins).  A ``spread`` argument adds to, and wins over, the
        file's [tubes.*] tables.  TLS comes from its [tls] table and
        BSCLUSTER_TLS_* unless ``ssl_context`` is given.
        """
        if "ssl_context" not in kwargs:
            kwargs["ssl_context"] = read_tls_context(path)
        return cls.from_layout(read_layout(path), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs) -> ClusterClient:
        """Nodes from ``BSCLUSTER_NODES`` (or the ``BSCLUSTER_CONFIG`` file);
        TLS from BSCLUSTER_TLS_* (and that file's [tls]) unless ``ssl_context`` is given."""
        if "ssl_context" not in kwargs:
            kwargs["ssl_context"] = read_tls_context(None, env)
        return cls.from_layout(layout_from_env(env), **kwargs)

    @classmethod
    def from_layout(cls, layout: ClusterLayout, **kwargs) -> ClusterClient:
        """A client of ``layout`` (``read_layout``, ``ClusterConfig.layout()``)."""
        spread = {**layout.spread, **(kwargs.pop("spread", None) or {})}
        kwargs.setdefault("ketama", layout.ring == RING_KETAMA)
        return cls(layout.nodes, spread=spread, **kwargs)

    def clone(self) -> ClusterClient:
        """A new ClusterClient with this one's nodes (as they are now: added,
        removed, leaving), ring, spread tubes and settings (TLS too), and no
        connections."""
        pool = self._pool
        nodes = [NodeAddress(m.name, m.address, m.weight, leaving=m.name not in self._ring.weights)
                 for m in (pool.members[name] for name in pool.order)]
        return type(self)(
            nodes, policy=pool.policy, failure_threshold=pool.failure_threshold,
            dead_timeout=pool.dead_timeout, ketama=self._ring.ketama, vnodes=self._ring.vnodes,
            connect_timeout=pool.connect_timeout, op_timeout=pool.op_timeout,
            encoding=pool.encoding, use=pool.default_use, watch=pool.default_watch,
            spread=self._spread, clock=pool.clock, ssl_context=pool.ssl_context,
            spill_when_full=self.spill_when_full)

    def work(self, handler: Callable[[Job], object], tubes: str | Iterable[str] = (DEFAULT_TUBE,),
             **options) -> bool:
        """Run ``handler`` over ``tubes`` with a ``bsclient.Worker`` until stopped
        (SIGTERM/SIGINT); each slot gets its own ``clone()``.  ``options`` are the
        Worker's (concurrency, mode, max_attempts, ...); returns ``Worker.run()``'s
        answer (True if every handler finished)."""
        from .worker import Worker

        return Worker(self.clone, handler, tubes, **options).run()

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
    def op_timeout(self) -> float | None:
        return self._pool.op_timeout

    timeout = op_timeout  # the old name

    @property
    def spread(self) -> dict[str, int]:
        """Tubes spread over more than one node: {tube: k}."""
        return dict(self._spread)

    def is_spread(self, tube: str) -> bool:
        """``tube in spread``, without the copy (for hot paths: the proxy's)."""
        return tube in self._spread

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
        """This thread's Client for a node (for inspection; do not change its tubes)."""
        return self._pool.client(self._nodes[name])

    def node_for(self, tube: str) -> str:
        """The node that owns ``tube`` on the ring (alive or not)."""
        return self._ring.node_for(tube)

    def add_node(self, name: str, address: str, weight: int = 1) -> None:
        """Add a node to the ring; tubes it now owns send their puts to it."""
        if name in self._nodes:
            raise ValueError(f"node {name} is already a member")
        self._ring = self._ring.with_node(name, weight)
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
        if not drain:
            self._pool.forget(name)

    def apply_layout(self, layout: ClusterLayout) -> None:
        """Make this client's nodes, ring and spread tubes those of ``layout`` (the
        config read again), keeping its settings and every thread's session.

        Nodes new to it are added; leaving ones stay members (reserved from, never
        put to); members ``layout`` leaves out are forgotten, as ``remove_node(name,
        drain=False)``; a member whose address changed has every thread's
        connections to it closed (``NodePool.move``); weights, the ring mode and the
        spread tubes are ``layout``'s (``ring.placement``, the one rule).  Connections
        to unchanged nodes, and the jobs reserved on them, are kept.  ValueError,
        with nothing changed, for a layout with no node, every node leaving, or a
        bad spread.
        """
        specs = tuple(layout.nodes)
        if not specs:
            raise ValueError("a cluster needs at least one node")
        ring = placement(specs, layout.ring, vnodes=self._ring.vnodes)
        spread = check_spread(layout.spread, "spread")
        pool = self._pool
        for spec in specs:
            member = pool.members.get(spec.name)
            if member is None:
                pool.add(spec.name, spec.address, spec.weight)
                continue
            member.weight = spec.weight
            if member.address != spec.address:
                pool.move(spec.name, spec.address)
        self._ring, self._spread = ring, spread  # members first: the ring names only members
        for name in set(pool.members) - {spec.name for spec in specs}:
            pool.forget(name)

    def use_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None:
        """Connections opened from now on, by every thread, use ``ssl_context`` (None:
        plain TCP); open ones keep what they were opened with, and the jobs reserved
        on them.  For certificates rotated while the client runs: build a context from
        the new files (``bsclient.tls.client_context``) and pass it here."""
        self._pool.use_ssl_context(ssl_context)

    def close(self) -> None:
        """Close every thread's connections (reserved and buffered jobs go back to ready)."""
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
        """Use ``tube`` for later puts from this thread (local; nodes learn it on put)."""
        self._pool.session().using = check_tube(tube)
        return tube

    @property
    def using(self) -> str:
        return self._pool.session().using

    def list_tube_used(self) -> str:
        return self.using

    def put(
        self,
        body: bytes | str,
        priority: int = p.DEFAULT_PRIORITY,
        delay: int = p.DEFAULT_DELAY,
        ttr: int = p.DEFAULT_TTR,
        *,
        tube: str | None = None,
    ) -> str:
        """Put into ``tube`` (default: this thread's used tube); returns "node/id".

        The job goes to the tube's owner (a spread tube's nodes in turn); a
        node that cannot be reached or is draining is skipped for the next in
        ring order.
        """
        s = self._pool.session()
        tube = s.using if tube is None else check_tube(tube)
        route = s.routes.get(tube)  # (ring, owner, connection) of an unspread tube
        if route is not None and route[0] is self._ring and not route[2].pending:
            _, first, conn = route
            order = None
        else:
            order = self._put_order(tube, s)
            first = self._nodes[order[0]]
            conn = s.conn(first.name, first.address)
            if tube not in self._spread:
                if len(s.routes) >= OWNER_CACHE_SIZE:
                    s.routes.clear()
                s.routes[tube] = (self._ring, first, conn)
        client = conn.client
        if client.using == tube and first.dead_until == 0.0 and first.draining_until == 0.0:
            try:  # the hot path: one round trip, no health bookkeeping
                return f"{first.name}/{client.put(body, priority, delay, ttr)}"
            except DrainingError:
                if self.policy == FAIL_FAST:
                    raise
                self._pool.drained(first)
                order = order or self._ring.preference_tuple(tube)
                return self._put_failover(tube, order, body, priority, delay, ttr,
                                          [f"{first.name}: draining"], skip=first.name)
            except OutOfMemoryError:
                if not self.spill_when_full or self.policy == FAIL_FAST:
                    raise
                order = order or self._ring.preference_tuple(tube)
                return self._put_failover(tube, order, body, priority, delay, ttr,
                                          [f"{first.name}: full"], skip=first.name)
            except ConnectionLostError as e:
                self._pool.failed(first, hung=isinstance(e, TimeoutError))
                s.lost(conn)
                if e.sent or self.policy == FAIL_FAST:
                    raise NoNodeAvailableError(first.name, str(e), sent=e.sent) from e
                order = order or self._ring.preference_tuple(tube)
                return self._put_failover(tube, order, body, priority, delay, ttr,
                                          [f"{first.name}: {e}"], skip=first.name)
        order = order or self._put_order(tube, s)
        return self._put_failover(tube, order, body, priority, delay, ttr, [])

    def _put_order(self, tube: str, s) -> tuple[str, ...]:
        """The nodes a put to ``tube`` tries, in order (a spread tube rotates its first k)."""
        pref = self._ring.preference_tuple(tube)
        k = self._spread.get(tube, 1)
        if k <= 1:
            return pref
        k = min(k, len(pref))
        s.put_turn += 1
        turn = s.put_turn % k
        return pref[turn:k] + pref[:turn] + pref[k:]

    def _put_failover(self, tube, order, body, priority, delay, ttr,
                      reasons: list[str], skip: str | None = None) -> str:
        """Put on the first node, in ``order``, that takes it (``skip`` just failed)."""
        pool = self._pool
        if self.policy == FAIL_FAST:
            if reasons:
                raise NoNodeAvailableError(order[0], "; ".join(reasons))
            return self._put_on(self._nodes[order[0]], tube, body, priority, delay, ttr)
        for name in order:
            if name == skip:
                continue
            node = self._nodes[name]
            if not pool.available(node):
                reasons.append(f"{name}: marked dead")
                continue
            if pool.draining(node):
                reasons.append(f"{name}: draining")
                continue
            try:
                return self._put_on(node, tube, body, priority, delay, ttr)
            except DrainingError:
                pool.drained(node)
                reasons.append(f"{name}: draining")
            except OutOfMemoryError:
                if not self.spill_when_full:
                    raise
                reasons.append(f"{name}: full")
            except NoNodeAvailableError as e:
                if e.sent:
                    raise
                reasons.append(f"{name}: {e.reason}")
        raise NoNodeAvailableError(order[0], f"no node took the put to {tube}: "
                                   + "; ".join(reasons))

    def _put_on(self, node: Member, tube: str, body, priority, delay, ttr) -> str:
        pool = self._pool
        conn = pool.conn(node)
        if conn.client.using != tube:
            try:
                pool.call_on(node, conn, Client.use, tube)
            except NoNodeAvailableError as e:
                e.sent = False  # the put itself was not sent
                raise
        return f"{node.name}/{pool.call_on(node, conn, Client.put, body, priority, delay, ttr)}"

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

    def return_buffered(self) -> int:
        """Give back the jobs this thread's reserves got ahead of the caller.

        ``reserve`` waits on several nodes at once; when two answer together the
        second job is kept for this thread's next ``reserve`` (docs/CLIENT.md,
        "Jobs reserved ahead").  This returns them to their nodes now, priority
        untouched (e.g. before a long pause); returns how many.
        """
        return self._pool.session().give_back()

    def buffer_returner(self) -> Callable[[], int]:
        """``return_buffered`` for this thread's jobs, callable from another thread.

        For a supervisor of this thread (the Worker's keeper): call it only
        while this thread is not inside a call of this client (e.g. while it
        runs a handler), and under a lock this thread also takes.
        """
        return self._pool.session().give_back

    def _hot_nodes(self, watching: list[str]) -> frozenset:
        """The nodes puts to ``watching`` go to now: each tube's owner (or first
        k nodes), and the next usable node in ring order if one of those is
        dead or draining."""
        pool = self._pool
        hot = set()
        for tube in watching:
            pref = self._ring.preference_tuple(tube)
            k = min(self._spread.get(tube, 1), len(pref))
            hot.update(pref[:k])
            if all(pool.available(self._nodes[n]) and not pool.draining(self._nodes[n])
                   for n in pref[:k]):
                continue
            for name in pref[k:]:
                node = self._nodes[name]
                if pool.available(node) and not pool.draining(node):
                    hot.add(name)
                    break
        return frozenset(hot)

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

    def _by_job(self, fn: Callable, job: JobHandle, *args, done: bool = False):
        """``fn`` on the connection that reserved the job: this thread's, or another
        thread's (then it waits up to ``op_timeout`` for that thread to be out of
        its own command); any of this thread's if no thread of ours reserved it.

        ``done``: the command ends the reservation (delete, release, bury).
        """
        node, job_id = self._locate(job)
        pool = self._pool
        s = pool.session()
        conn = s.holder(node.name, job_id)
        if conn is not None:
            result = pool.call_on(node, s.ready(conn), fn, job_id, *args)
        else:
            owner = self._holder_elsewhere(node.name, job_id)
            if owner is None:
                result = pool.call(node, fn, job_id, *args)
            else:
                conn = owner
                result = self._call_foreign(node, conn, fn, job_id, *args)
        if done and conn is not None:
            conn.held.pop(job_id, None)
        return result

    def _holder_elsewhere(self, name: str, job_id: int):
        me = self._pool.session()
        for s in self._pool.sessions():
            if s is not me:
                conn = s.holder(name, job_id)
                if conn is not None:
                    return conn
        return None

    def _call_foreign(self, node: Member, conn, fn: Callable, *args):
        """``fn`` on another thread's connection, while that thread is not using it."""
        pool = self._pool
        with conn.client.exclusive(pool.op_timeout):
            if conn.pending:
                raise ConcurrentUseError(
                    f"job {node.name}/{args[0]}: the thread that reserved it is waiting for "
                    f"a reserve on that connection; touch, release, bury or delete it from "
                    f"that thread")
            try:
                result = fn(conn.client, *args)
            except ConnectionLostError as e:
                pool.failed(node, hung=isinstance(e, TimeoutError))
                conn.held.clear()  # the node released them; the owner's next use
                conn.watch_gen = -1  # reconnects and sends its watch list again
                raise NoNodeAvailableError(node.name, str(e), sent=e.sent) from e
        return result

    def delete(self, job: JobHandle) -> None:
        self._by_job(Client.delete, job, done=True)

    def release(
        self, job: JobHandle, priority: int = p.DEFAULT_PRIORITY, delay: int = p.DEFAULT_DELAY
    ) -> None:
        self._by_job(Client.release, job, priority, delay, done=True)

    def bury(self, job: JobHandle, priority: int = p.DEFAULT_PRIORITY) -> None:
        self._by_job(Client.bury, job, priority, done=True)

    def touch(self, job: JobHandle) -> None:
        self._by_job(Client.touch, job)

    def peek(self, job: JobHandle) -> Job:
        return self._by_job(Client.peek, job)

    def stats_job(self, job: JobHandle) -> dict:
        return self._by_job(Client.stats_job, job)

    def kick_job(self, job: JobHandle) -> None:
        self._by_job(Client.kick_job, job)

    def reserve_job(self, job: JobHandle) -> Job:
        """Reserve a specific job (on this thread's connection to its node)."""
        node, job_id = self._locate(job)
        conn = self._pool.conn(node)
        got = self._pool.call_on(node, conn, Client.reserve_job, job_id)
        conn.held[job_id] = self._pool.clock()
        return got

    # --- fan-out (see bsclient.fanout) --------------------------------------------
    def peek_ready(self) -> Job:
        """The used tube's most urgent ready job over all nodes (pri, then age)."""
        return fanout.peek_best(self._pool, self.using, Client.peek_ready, fanout.rank_ready)

    def peek_delayed(self) -> Job:
        """The used tube's delayed job due first over all nodes."""
        return fanout.peek_best(self._pool, self.using, Client.peek_delayed,
                                fanout.rank_delayed)

    def peek_buried(self) -> Job:
        """The oldest of each node's first buried job in the used tube."""
        return fanout.peek_best(self._pool, self.using, Client.peek_buried, fanout.rank_buried)

    def kick(self, bound: int) -> int:
        """Kick up to ``bound`` jobs of the used tube, spread evenly over nodes.

        As in beanstalkd, buried jobs are kicked if any node has some in the
        tube; only otherwise delayed jobs.
        """
        return fanout.kick(self._pool, self.using, bound)

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
