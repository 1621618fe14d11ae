"""The consuming half of ClusterClient: the watch list and a multiplexed reserve.

How this works
--------------
Each thread's ``Session`` (session.py) has its own watch list and
connections; ``watch``/``ignore`` change the list locally, and the
watch/ignore commands a connection needs are sent in the same write as its
next reserve (pipelined, one round trip).

``reserve`` waits on many nodes at once from one thread, without threads of
its own: it sends ``reserve-with-timeout`` on several connections, then
waits with ``select.poll`` (gevent's cooperative one when gevent has patched
``select``) until one of them answers (docs/CLIENT.md, "Reserve semantics"):

* **hot** nodes, the ones a watched tube's jobs are put on (its owner, the
  first k ring nodes of a spread tube, and the next node in ring order when
  one of those is dead or draining) each get a *blocking* reserve of up to
  ``HOT_WAIT`` seconds (less if the call's timeout ends sooner), on a
  connection that holds no job, and keep it across calls: an idle
  consumer costs a hot node one command per ``HOT_WAIT`` seconds, and a job
  put there is answered the moment it is ready;
* **cold** nodes (every other member: jobs land there only after a failover
  or a ring change) are polled with ``reserve-with-timeout 0`` every
  ``SWEEP_SECONDS``, and on every round while they keep giving jobs
  (``Session.warm``), so a backlog there drains at full speed;
* ``reserve(timeout=0)`` polls (``reserve-with-timeout 0``) the likely
  nodes first - hot ones not found empty in the last ``SWEEP_SECONDS``,
  ones that just gave a job, cold ones when their sweep is due - and only if
  none had a job every other node not asked yet, so a backlog on one node
  costs about one command per job, and "no job" means every node was asked;
* a reserve still in flight when the call returns stays in flight; the next
  call reuses it.  If it answers RESERVED meanwhile, the job is *buffered*
  (reserved by the client, not yet by the caller) and handed out by the next
  ``reserve`` of the same thread, first; one held longer than
  ``HOLD_TOUCH_AFTER`` is touched first (renewing its TTR, and dropping it if
  the node has meanwhile taken it back).  At most one job per waiting
  connection is buffered; ``close()`` returns them to their nodes.
* A reserve whose reply is overdue (its wait plus the operation timeout)
  means a hung node: the connection is closed and the node marked dead, so a
  SIGSTOPped node costs other tubes nothing.

DEADLINE_SOON is asked for on the connections that hold our jobs (a
``reserve-with-timeout 0`` there at the start of each call) and raised only
if no job came, as beanstalkd answers a ready job before DEADLINE_SOON.
"""

from __future__ import annotations

import math
import select
from collections.abc import Callable

from . import protocol as p
from .client import DEFAULT_TUBE, Client, Job, check_tube
from .errors import (
    ConcurrentUseError,
    ConnectionLostError,
    DeadlineSoonError,
    NoNodeAvailableError,
    NotFoundError,
    NotIgnoredError,
    SocketTimeoutError,
    TimedOutError,
)
from .pool import FAIL_FAST, Member, NodePool
from .session import MAX_CONNS_PER_NODE, Conn, Session

HOT_WAIT = 20  # seconds one blocking reserve on a hot node may last
SWEEP_SECONDS = 0.5  # cold nodes are polled this often by a waiting consumer
HOLD_TOUCH_AFTER = 0.5  # a buffered job older than this is touched before it is handed out
POLL_GRACE = 0.5  # seconds past the deadline a call waits for polls still unanswered
MAX_WAKE = 1.0  # the wait loop looks at deadlines and health at least this often
WAIT, LIKELY, REST = "wait", "likely", "rest"  # what a round of reserves is for


class Consumer:
    """The watch list and the reserve strategy over a ``NodePool``.

    ``hot_nodes(watching)`` names the nodes to wait on (ClusterClient knows
    the ring); everything per thread lives in the pool's sessions.
    """

    def __init__(self, pool: NodePool, hot_nodes: Callable[[list[str]], frozenset]) -> None:
        self.pool = pool
        self.clock = pool.clock
        self.hot_nodes = hot_nodes

    # --- the watch list -----------------------------------------------------------
    @property
    def watching(self) -> list[str]:
        return self.pool.session().watching

    def watch(self, tube: str) -> int:
        check_tube(tube)
        s = self.pool.session()
        if tube not in s.watching:
            s.watching.append(tube)
            self._changed(s)
        return len(s.watching)

    def ignore(self, tube: str) -> int:
        check_tube(tube)
        s = self.pool.session()
        if tube in s.watching:
            if len(s.watching) == 1:
                raise NotIgnoredError()
            s.watching.remove(tube)
            self._changed(s)
            self._return_buffered(s)
        return len(s.watching)

    def _changed(self, s: Session) -> None:
        """Reserves in flight were sent with the old list: end them."""
        s.watch_gen += 1
        s.warm.clear()
        s.empty_at.clear()
        for conns in s.conns.values():
            for conn in conns:
                if conn.pending:
                    if conn.held:
                        s.settle(conn)  # a poll: answered at once
                    else:
                        s.lost(conn)  # closing cancels it; the node keeps any job

    def _return_buffered(self, s: Session) -> None:
        """Give back buffered jobs (they may be from the ignored tube)."""
        s.give_back()

    # --- reserve ----------------------------------------------------------------------
    def reserve(self, timeout: float | None) -> Job:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 (None waits forever)")
        s = self.pool.session()
        if timeout is not None and math.ceil(timeout) == 0:
            return self._poll_every_node(s)
        return self._wait(s, None if timeout is None else self.clock() + math.ceil(timeout))

    def _wait(self, s: Session, deadline: float | None) -> Job:
        """Block on the hot nodes, sweep the cold ones, until a job or the deadline."""
        polls: set[Conn] = set()  # zero-wait reserves not answered yet
        first = True
        soon = False
        while True:
            job = self._hand_out(s)
            if job is not None:
                return job
            now = self.clock()
            if not first:
                if soon:
                    job = self._ask_before_deadline_soon(s, polls)
                    if job is not None:
                        return job
                    raise DeadlineSoonError()
                if deadline is not None and now >= deadline and (
                        not polls or now >= deadline + POLL_GRACE):
                    raise TimedOutError()
            if first or deadline is None or now < deadline:
                secs = HOT_WAIT if deadline is None else min(
                    HOT_WAIT, max(1, math.ceil(deadline - now)))
                self._send_round(s, WAIT, first, polls, secs=secs)
            first = False
            soon = self._collect(s, self._wake_at(s, now, deadline, polls), polls) or soon

    def _ask_before_deadline_soon(self, s: Session, polls: set[Conn]) -> Job | None:
        """beanstalkd answers a ready job before DEADLINE_SOON.  A job put on a
        node whose blocking reserve has not answered yet may be on its way, so
        each such node is polled once more on another connection, and the
        answers (POLL_GRACE at most) are read before DEADLINE_SOON is raised."""
        start = self.clock()
        for member in self.pool.live():
            conns = s.conns.get(member.name, ())
            if not any(c.pending and c.secs > 0 for c in conns):
                continue
            if any(c.pending and c.secs == 0 for c in conns):
                continue  # a poll is in flight there already: waited for below
            if all(c.pending for c in conns) and len(conns) >= MAX_CONNS_PER_NODE:
                continue
            conn = s.conn(member.name, member.address)
            try:
                self._send(s, member, conn, 0)
            except NoNodeAvailableError:
                continue
            polls.add(conn)
        while polls and self.clock() < start + POLL_GRACE:
            self._collect(s, start + POLL_GRACE, polls)
        return self._hand_out(s)

    def _poll_every_node(self, s: Session) -> Job:
        """``reserve(timeout=0)``: the likely nodes first, then, if none had a job,
        every other node not asked yet; every answer of a phase is waited for
        (POLL_GRACE at most), so the nodes that had jobs take turns."""
        start = self.clock()
        polls: set[Conn] = set()
        asked: set[str] = set()
        soon = self._collect(s, start, polls)  # answers already in
        for mode in (LIKELY, REST):
            job = self._hand_out(s)
            if job is not None:
                return job
            self._send_round(s, mode, mode == LIKELY, polls, asked=asked)
            while polls and self.clock() < start + POLL_GRACE:  # all answers: fair turns
                soon = self._collect(s, start + POLL_GRACE, polls) or soon
        job = self._hand_out(s)
        if job is not None:
            return job
        if soon:
            raise DeadlineSoonError()
        raise TimedOutError()

    def _hand_out(self, s: Session) -> Job | None:
        """The next buffered job still ours, nodes taking turns (touched if held long)."""
        pool = self.pool
        while s.buffer:
            job, conn, got_at = s.next_buffered(pool.index)
            if job.id not in conn.held:
                continue  # its connection was lost: the node has it back
            if self.clock() - got_at > HOLD_TOUCH_AFTER:
                member = pool.members.get(job.node)
                try:
                    if member is None:
                        raise NotFoundError()
                    pool.call_on(member, s.ready(conn), Client.touch, job.id)
                except (NotFoundError, NoNodeAvailableError):
                    conn.held.pop(job.id, None)  # the node took it back (TTR)
                    continue
            return job
        return None

    def _send_round(self, s: Session, mode: str, first: bool, polls: set[Conn], *,
                    secs: int = 0, asked: set[str] | None = None) -> None:
        """Send the reserves this round needs (see ``_send_node``)."""
        pool = self.pool
        now = self.clock()
        live = pool.live()
        hot = self.hot_nodes(s.watching)
        sweep = mode != REST and now >= s.next_sweep
        if sweep:
            s.next_sweep = now + SWEEP_SECONDS
        failed = 0
        for member in live:
            try:
                self._send_node(s, member, mode, member.name in hot, sweep, first, polls,
                                secs, asked)
            except NoNodeAvailableError:
                if pool.policy == FAIL_FAST:
                    raise
                failed += 1
        if failed == len(live) and not s.buffer and not any(
                c.pending for conns in s.conns.values() for c in conns):
            pool.raise_none_available()

    def _send_node(self, s: Session, member: Member, mode: str, hot: bool, sweep: bool,
                   first: bool, polls: set[Conn], secs: int, asked: set[str] | None) -> None:
        """What one node gets this round.

        WAIT: a blocking reserve if hot, a poll if cold and the sweep is due
        or it just gave a job.  LIKELY (timeout 0, first): a poll if hot and
        not found empty in the last sweep period, or it just gave a job, or
        the sweep is due.  REST: a poll for every node not asked yet.  A node
        with a reserve in flight is never sent another.
        """
        name = member.name
        conns = s.conns.get(name, ())
        if first:  # DEADLINE_SOON, and ready jobs, on connections holding ours
            for conn in list(conns):
                if conn.held and not conn.pending:
                    try:
                        self._send(s, member, conn, 0)
                    except ConcurrentUseError:
                        continue  # another thread is touching one of its jobs
                    polls.add(conn)
        pending = [conn for conn in conns if conn.pending]
        if pending:
            if asked is not None:
                asked.add(name)
                # a poll still unanswered (from an earlier call) is waited for;
                # a blocking reserve would have answered already if a job were there
                polls.update(conn for conn in pending if conn.secs == 0)
            return
        if mode == WAIT and hot:
            conn = s.free(name, member.address)
            if conn is not None:
                self._send(s, member, conn, secs)
                return
        if mode == REST:
            wanted = name not in asked
        else:
            recently_empty = self.clock() - s.empty_at.get(name, -1e18) < SWEEP_SECONDS
            wanted = sweep or name in s.warm or (mode == LIKELY and hot and not recently_empty)
        if wanted:
            conn = s.conn(name, member.address)
            self._send(s, member, conn, 0)
            polls.add(conn)
            if asked is not None:
                asked.add(name)

    def _send(self, s: Session, member: Member, conn: Conn, secs: int) -> None:
        """Send (pipelined) the watch list changes and ``reserve-with-timeout secs``."""
        client = conn.client
        try:
            if not client.connected:
                client.forget_tubes()  # a fresh connection: nothing to replay
                client.connect()
            data, skip = b"", 0
            if conn.watch_gen != s.watch_gen:
                data, skip = client.watch_commands(s.watching)
                conn.watch_gen = s.watch_gen
            client.send(data + p.encode_command(p.CMD_RESERVE_WITH_TIMEOUT, secs))
        except ConnectionLostError as e:
            self.pool.failed(member, hung=isinstance(e, SocketTimeoutError))
            s.lost(conn)
            raise NoNodeAvailableError(member.name, str(e), sent=False) from e
        op = self.pool.op_timeout
        conn.pending = True
        conn.secs = secs
        conn.skip = skip
        conn.due = self.clock() + secs + (op if op is not None else 1e9)

    def _wake_at(self, s: Session, now: float, deadline: float | None,
                 polls: set[Conn]) -> float:
        wake = now + MAX_WAKE
        if deadline is not None:
            wake = min(wake, deadline + POLL_GRACE if deadline <= now and polls else deadline)
        if deadline is None or deadline > now:
            wake = min(wake, s.next_sweep)
        for conns in s.conns.values():
            for conn in conns:
                if conn.pending:
                    wake = min(wake, conn.due)
        return wake

    def _collect(self, s: Session, wake_at: float, polls: set[Conn]) -> bool:
        """Wait until a pending reserve answers or ``wake_at``; read every answer.

        Returns True if a node said DEADLINE_SOON.  Overdue reserves mark
        their node hung.
        """
        waiting = {}
        for name, conns in s.conns.items():
            for conn in conns:
                if conn.pending:
                    waiting[conn.client.fileno()] = (name, conn)
        soon = False
        for fd in _readable(list(waiting), max(0.0, wake_at - self.clock())):
            name, conn = waiting[fd]
            soon = self._read(s, name, conn, polls) or soon
        now = self.clock()
        for name, conn in waiting.values():
            if conn.pending and now > conn.due:
                member = self.pool.members.get(name)
                s.lost(conn)
                polls.discard(conn)
                if member is not None:
                    self.pool.failed(member, hung=True)
        return soon

    def _read(self, s: Session, name: str, conn: Conn, polls: set[Conn]) -> bool:
        """Read a readable pending connection; True if it said DEADLINE_SOON."""
        member = self.pool.members.get(name)
        try:
            words = s.accept_all(conn, conn.client.read_ready())
        except ConnectionLostError:
            polls.discard(conn)
            s.lost(conn)
            if member is not None:
                self.pool.failed(member)
            return False
        if not conn.pending:
            polls.discard(conn)
        for word in words:
            if word == "RESERVED":
                s.warm.add(name)  # asked again next round, hot or not
                s.empty_at.pop(name, None)
                if member is not None and member.failures:
                    self.pool.ok(member)
            elif word == "TIMED_OUT":
                s.warm.discard(name)
                s.empty_at[name] = self.clock()
        return "DEADLINE_SOON" in words


def _readable(fds: list[int], timeout: float) -> list[int]:
    """The descriptors among ``fds`` with something to read (or closed) within ``timeout``."""
    poll = getattr(select, "poll", None)
    if poll is None:  # pragma: no cover - platforms without poll
        return select.select(fds, [], [], timeout)[0]
    poller = poll()  # with no descriptors it just sleeps for the timeout
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return [fd for fd, _ in poller.poll(timeout * 1000)]


__all__ = ["Consumer", "check_tube", "DEFAULT_TUBE", "HOT_WAIT", "SWEEP_SECONDS",
           "HOLD_TOUCH_AFTER"]
