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
from .client import DEFAULT_TUBE, Client, Job
from .errors import (
    BadFormatError,
    ConnectionLostError,
    DeadlineSoonError,
    NoNodeAvailableError,
    NotFoundError,
    NotIgnoredError,
    SocketTimeoutError,
    TimedOutError,
)
from .pool import FAIL_FAST, Member, NodePool
from .session import Conn, Session

HOT_WAIT = 20  # seconds one blocking reserve on a hot node may last
SWEEP_SECONDS = 0.5  # cold nodes are polled this often by a waiting consumer
HOLD_TOUCH_AFTER = 0.5  # a buffered job older than this is touched before it is handed out
POLL_GRACE = 0.5  # seconds past the deadline a call waits for polls still unanswered
MAX_WAKE = 1.0  # the wait loop looks at deadlines and health at least this often


def check_tube(tube: str) -> str:
    """The tube name, or BadFormatError/TypeError before anything is sent."""
    if not isinstance(tube, str):
        raise TypeError(f"tube name must be str, not {type(tube).__name__}")
    if not p.valid_tube_name(tube.encode("ascii", "replace")) or not tube.isascii():
        raise BadFormatError(f"BAD_FORMAT: invalid tube name {tube!r}")
    return tube


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
        start = self.clock()
        deadline = None if timeout is None else start + math.ceil(timeout)
        poll_only = deadline == start  # timeout 0: ask every node once, wait for all
        polls: set[Conn] = set()  # zero-wait reserves of this call not answered yet
        first = True
        soon = False
        while True:
            now = self.clock()
            settling = poll_only and not first and polls and now < deadline + POLL_GRACE
            if not settling:
                job = self._hand_out(s)
                if job is not None:
                    return job
                if not first:
                    if soon:
                        raise DeadlineSoonError()
                    if deadline is not None and now >= deadline and (
                            not polls or now >= deadline + POLL_GRACE):
                        raise TimedOutError()
            if first or deadline is None or now < deadline:
                self._send_round(s, now, deadline, first, polls)
            first = False
            soon = self._collect(s, self._wake_at(s, now, deadline, polls), polls) or soon

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

    def _send_round(self, s: Session, now: float, deadline: float | None, first: bool,
                    polls: set[Conn]) -> None:
        """Send the reserves this round needs: block on hot nodes, poll cold ones."""
        pool = self.pool
        live = pool.live()
        hot = self.hot_nodes(s.watching)
        zero = deadline is not None and deadline <= now
        if deadline is None:
            secs = HOT_WAIT
        else:
            secs = min(HOT_WAIT, max(1, math.ceil(deadline - now)))
        sweep = zero or now >= s.next_sweep
        if sweep:
            s.next_sweep = now + SWEEP_SECONDS
        failed = 0
        for member in live:
            try:
                self._send_node(s, member, member.name in hot, secs, zero, sweep, first, polls)
            except NoNodeAvailableError:
                if pool.policy == FAIL_FAST:
                    raise
                failed += 1
        if failed == len(live) and not s.buffer and not any(
                c.pending for conns in s.conns.values() for c in conns):
            pool.raise_none_available()

    def _send_node(self, s: Session, member: Member, hot: bool, secs: int, zero: bool,
                   sweep: bool, first: bool, polls: set[Conn]) -> None:
        conns = s.conns.get(member.name, ())
        if first:  # DEADLINE_SOON, and ready jobs, on connections holding ours
            for conn in list(conns):
                if conn.held and not conn.pending:
                    self._send(s, member, conn, 0)
                    polls.add(conn)
        if any(conn.pending for conn in conns):
            return  # already waiting there
        if hot and not zero:
            conn = s.free(member.name, member.address)
            if conn is not None:
                self._send(s, member, conn, secs)
                return
        if zero or sweep or member.name in s.warm:
            conn = s.conn(member.name, member.address)
            self._send(s, member, conn, 0)
            polls.add(conn)

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
        conn.skip = skip
        conn.due = self.clock() + secs + (op if op is not None else 1e9)

    def _wake_at(self, s: Session, now: float, deadline: float | None,
                 polls: set[Conn]) -> float:
        wake = now + MAX_WAKE
        if deadline is not None:
            wake = min(wake, deadline + POLL_GRACE if deadline <= now and polls else deadline)
        if s.conns and (deadline is None or deadline > now):
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
                if member is not None and member.failures:
                    self.pool.ok(member)
            elif word == "TIMED_OUT":
                s.warm.discard(name)
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
