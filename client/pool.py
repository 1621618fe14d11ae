"""The ClusterClient's members and their health, and each thread's session.

How this works
--------------
A ``NodePool`` holds a ``Member`` per node name (its address, ring weight
and health, shared by every thread) and the names in natural order.  The
connections are not shared: ``session()`` gives the calling thread (or
greenlet) its own ``Session`` (session.py) with its own connections, used
tube and watch list.  The first session made is the creating thread's (the
ClusterClient makes it); every later one starts with that session's used
tube and watch list as they are at that moment.

Every command a ClusterClient sends to a node goes through ``call``/
``call_on``, which turn a ``ConnectionLostError`` into a
``NoNodeAvailableError`` naming the node and keep the count of consecutive
failures.  The dead-node policy is explicit (docs/CLIENT.md, "Dead nodes"):

* ``failover``: after ``failure_threshold`` consecutive failures a node is
  dead for ``dead_timeout`` seconds; a node that does not answer within the
  operation timeout (hung: SIGSTOP, a paused VM, a silent partition) is dead
  at once.  ``live`` leaves dead nodes out (unless every node is dead: then
  all are tried rather than none), and the first success afterwards makes
  the node healthy again;
* ``fail_fast``: nothing is ever marked dead; ``each`` raises for the first
  node that cannot be reached.

A node that answers a put with DRAINING is marked draining for
``DRAIN_RECHECK`` seconds: puts skip it, reserves still empty it.

The pool knows nothing about tubes or the ring; ClusterClient decides which
node a command goes to.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .client import DEFAULT_TUBE, Client
from .errors import ConnectionLostError, NoNodeAvailableError, SocketTimeoutError
from .ring import natural_key
from .session import Conn, Session

log = logging.getLogger("bsclient")

FAILOVER = "failover"
FAIL_FAST = "fail_fast"
POLICIES = (FAILOVER, FAIL_FAST)
DEFAULT_FAILURE_THRESHOLD = 2
DEFAULT_DEAD_TIMEOUT = 10.0
DEFAULT_OP_TIMEOUT = 2.0  # seconds to wait for any reply (a reserve: its own wait longer)
DEFAULT_TIMEOUT = DEFAULT_OP_TIMEOUT  # the old name
DRAIN_RECHECK = 5.0  # seconds puts skip a node that answered DRAINING
FAN_OUT_THREADS = 16  # nodes a fan-out asks at the same time (``_at_once``)


@dataclass(eq=False)
class Member:
    """One member node: where it is and its health (shared by all threads)."""

    name: str
    address: str
    weight: int = 1
    failures: int = 0  # consecutive connection failures
    dead_until: float = 0.0  # monotonic time; 0 means alive
    draining_until: float = 0.0  # it answered DRAINING; puts skip it until then


class NodePool:
    """Members by name, in natural order, with the dead-node policy."""

    def __init__(
        self,
        *,
        policy: str,
        failure_threshold: int,
        dead_timeout: float,
        connect_timeout: float | None,
        op_timeout: float | None,
        encoding: str | None,
        clock: Callable[[], float],
        use: str = DEFAULT_TUBE,
        watch: tuple[str, ...] = (DEFAULT_TUBE,),
        ssl_context=None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.policy = policy
        self.failure_threshold = failure_threshold
        self.dead_timeout = dead_timeout
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self.encoding = encoding
        self.clock = clock
        self.default_use = use  # a new session starts with these tubes
        self.default_watch = tuple(watch)
        self.ssl_context = ssl_context  # every connection uses it (TLS) if set
        self.members: dict[str, Member] = {}
        self.order: list[str] = []  # member names in natural order
        self.index: dict[str, int] = {}  # name -> its position in ``order``
        self._local = threading.local()  # greenlet-local under gevent's patching
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()
        self._template: Session | None = None  # the creating thread's: new ones copy its tubes

    # --- sessions -----------------------------------------------------------------
    def session(self) -> Session:
        """The calling thread's (or greenlet's) session, created on first use."""
        try:
            return self._local.session
        except AttributeError:
            pass
        template = self._template
        if template is None:
            session = Session(self, self.default_use, list(self.default_watch))
            self._template = session
        else:
            session = Session(self, template.using, list(template.watching))
        self._local.session = session
        with self._sessions_lock:
            self._sessions.add(session)
        weakref.finalize(session, _thread_ended, session.conns).atexit = False
        return session

    def sessions(self) -> list[Session]:
        with self._sessions_lock:
            return list(self._sessions)

    # --- membership -------------------------------------------------------------
    def add(self, name: str, address: str, weight: int = 1) -> Member:
        if name in self.members:
            raise ValueError(f"node {name} is already a member")
        member = self.members[name] = Member(name, address, weight)
        self._reorder()
        return member

    def forget(self, name: str) -> None:
        """Drop a member and close every thread's connections to it."""
        self.members.pop(name)
        for session in self.sessions():
            session.forget(name)
        self._reorder()

    def move(self, name: str, address: str) -> None:
        """Point a member at a new address: every thread's connections to the old
        one close (jobs reserved on them go back to ready there) and the next
        command connects to ``address``.  The member is a new ``Member`` with fresh
        health, so a command still in flight on an old connection, failing now,
        marks only the old one failed."""
        old = self.members[name]
        self.members[name] = Member(name, address, old.weight)
        for session in self.sessions():
            session.forget(name)

    def use_ssl_context(self, ssl_context) -> None:
        """Every connection opened from now on (new ones, and every thread's reconnects)
        uses ``ssl_context``; open ones keep theirs."""
        self.ssl_context = ssl_context
        for session in self.sessions():
            session.use_ssl_context(ssl_context)

    def _reorder(self) -> None:
        self.order = sorted(self.members, key=natural_key)
        self.index = {name: i for i, name in enumerate(self.order)}

    def close(self) -> None:
        """Close every thread's connections (jobs they reserved go back to ready)."""
        for session in self.sessions():
            session.close()

    # --- health -------------------------------------------------------------------
    def available(self, member: Member) -> bool:
        return member.dead_until == 0.0 or self.clock() >= member.dead_until

    def dead_nodes(self) -> list[str]:
        return [n for n in self.order if not self.available(self.members[n])]

    def draining(self, member: Member) -> bool:
        if member.draining_until == 0.0:
            return False
        if self.clock() < member.draining_until:
            return True
        member.draining_until = 0.0  # time to try it again
        return False

    def drained(self, member: Member) -> None:
        """It answered DRAINING: puts skip it for DRAIN_RECHECK seconds."""
        member.draining_until = self.clock() + DRAIN_RECHECK

    def failed(self, member: Member, hung: bool = False) -> None:
        """A failure; ``hung`` (no reply within the timeout) makes it dead at once."""
        member.failures = max(member.failures + 1, self.failure_threshold if hung else 0)
        if self.policy == FAILOVER and member.failures >= self.failure_threshold:
            member.dead_until = self.clock() + self.dead_timeout

    def ok(self, member: Member) -> None:
        member.failures = 0
        member.dead_until = 0.0

    def new_client(self, name: str, address: str) -> Client:
        """A connection (not opened yet) with this pool's timeouts, encoding and TLS."""
        return Client(address, name=name, connect_timeout=self.connect_timeout,
                      timeout=self.op_timeout, encoding=self.encoding, lazy=True,
                      ssl_context=self.ssl_context)

    def conn(self, member: Member) -> Conn:
        """This thread's connection to ``member`` for a command."""
        return self.session().conn(member.name, member.address)

    def client(self, member: Member) -> Client:
        return self.conn(member).client

    def call(self, member: Member, fn: Callable, *args):
        """Run ``fn(client, *args)`` on one node; a lost connection names the node."""
        return self.call_on(member, self.conn(member), fn, *args)

    def call_on(self, member: Member, conn: Conn, fn: Callable, *args):
        """``call`` on a given connection of this thread's session."""
        try:
            with conn.client.exclusive(self.op_timeout):  # another thread may be touching
                result = fn(conn.client, *args)
        except ConnectionLostError as e:
            raise self._lost(member, conn, e) from e
        if member.failures:
            self.ok(member)
        return result

    def _lost(self, member: Member, conn: Conn, e: ConnectionLostError) -> NoNodeAvailableError:
        """Count a lost connection against ``member``; the error naming the node."""
        self.failed(member, hung=isinstance(e, SocketTimeoutError))
        self.session().lost(conn)
        return NoNodeAvailableError(member.name, str(e), sent=e.sent)

    def live(self) -> list[Member]:
        """Members to visit for fan-out and reserve, in natural order."""
        members = [self.members[n] for n in self.order]
        if self.policy == FAIL_FAST:
            return members
        live = [m for m in members if self.available(m)]
        return live or members  # all marked dead: try them all rather than none

    def call_all(self, calls: list[tuple[Member, Callable, tuple]]) -> list[list]:
        """Each ``(member, fn, args)`` run at once (``_at_once``) on this thread's
        connections: ``[result, error]`` per call, in order.  As ``call`` does, a lost
        connection is counted against its node and comes back as the
        NoNodeAvailableError naming it; a success makes its node healthy."""
        session = self.session()
        conns = [session.conn(m.name, m.address) for m, _, _ in calls]
        outcomes = _at_once([(conn.client, fn, args, self.op_timeout)
                             for conn, (_, fn, args) in zip(conns, calls, strict=True)])
        for (member, _, _), conn, outcome in zip(calls, conns, outcomes, strict=True):
            error = outcome[1]
            if isinstance(error, ConnectionLostError):
                outcome[1] = self._lost(member, conn, error)
                outcome[1].__cause__ = error
            elif error is None and member.failures:
                self.ok(member)
        return outcomes

    def each(self, fn: Callable, *args, skip: tuple = (),
             missed: list[str] | None = None) -> dict:
        """``{name: fn(client, *args)}`` over live nodes; ``skip`` errors are left out.

        The nodes are asked at once (``call_all``), so k hung nodes cost one
        operation timeout, not k (up to ``FAN_OUT_THREADS`` of them).  Failover
        drops nodes that fail; fail_fast raises for the first one in member order,
        once every node's answer is in and counted.  Any other error (a reply
        error not in ``skip``) is raised the same way.  ``missed`` (a list) gets
        the members that did not answer: marked dead and not asked, or failed now,
        so a caller can tell "no node has it" from "no node that answered has it".
        """
        out = {}
        answered: set[str] = set()
        members = self.live()
        if self.policy != FAIL_FAST and not any(self.available(m) for m in members):
            # every member marked dead: ask the one dead longest, not each again (a
            # hung one costs op_timeout and a connection on every fan-out)
            members = [min(members, key=lambda m: m.dead_until)]
        outcomes = self.call_all([(m, fn, args) for m in members])
        first_error = None
        for member, (result, error) in zip(members, outcomes, strict=True):
            if isinstance(error, NoNodeAvailableError):
                if self.policy == FAIL_FAST:
                    first_error = first_error or error
                continue
            if error is None:
                out[member.name] = result
            elif not isinstance(error, skip):
                first_error = first_error or error
                continue
            answered.add(member.name)
        if first_error is not None:
            raise first_error
        if not answered:
            self.raise_none_available()
        if missed is not None:
            missed.extend(name for name in self.order if name not in answered)
        return out

    def raise_none_available(self):
        raise NoNodeAvailableError(",".join(self.order), "no node could be reached")


def _one(client: Client, fn: Callable, args: tuple, timeout: float | None) -> list:
    """``fn(client, *args)`` holding the client: ``[result, None]`` or ``[None, error]``."""
    try:
        with client.exclusive(timeout):
            return [fn(client, *args), None]
    except Exception as e:  # (handed to the caller's thread, which raises it)
        return [None, e]


def _at_once(calls: list[tuple]) -> list[list]:
    """Each (client, fn, args, timeout) of ``calls`` run at once: ``[result, error]`` per
    call, in order.  Up to ``FAN_OUT_THREADS`` threads (this one among them) take the
    calls in turn, so up to that many hung nodes cost one timeout together.  Under
    gevent's patching the threads are greenlets."""
    outcomes: list = [None] * len(calls)
    turns = iter(range(len(calls)))  # (next() on it is atomic: the threads share it)

    def work() -> None:
        for i in turns:
            outcomes[i] = _one(*calls[i])

    threads = [threading.Thread(target=work, daemon=True)
               for _ in range(min(len(calls), FAN_OUT_THREADS) - 1)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    return outcomes


def _thread_ended(conns: dict[str, list[Conn]]) -> None:
    """A thread (greenlet) that used the client ended: close its connections now.  Jobs
    it still held go back to ready on their nodes, as at any hang-up: said, since a
    job handed to another thread is then no longer reserved (docs/CLIENT.md)."""
    held = [f"{name}/{job_id}" for name, cs in conns.items() for c in cs for job_id in c.held]
    for cs in conns.values():
        for c in cs:
            c.client.close()
    if held:
        log.warning("a thread ended holding %d reserved job(s) (%s): its connections closed, "
                    "so the nodes made them ready again; delete, release or bury a job "
                    "before the thread that reserved it ends", len(held), ", ".join(held[:5]))
