"""The ClusterClient's members: one lazily connected Client per node, and their health.

How this works
--------------
A ``NodePool`` holds a ``Member`` per node name (its ``Client``, ring weight
and health) and the names in natural order.  Every command a ClusterClient
sends to a node goes through ``call``, which turns a ``ConnectionLostError``
into a ``NoNodeAvailableError`` naming the node and keeps the count of
consecutive failures.  The dead-node policy is explicit (docs/CLIENT.md,
"Dead nodes"):

* ``failover``: after ``failure_threshold`` consecutive failures a node is
  dead for ``dead_timeout`` seconds; ``live`` leaves it out (unless every
  node is dead: then all are tried rather than none), and the first success
  afterwards makes it healthy again;
* ``fail_fast``: nothing is ever marked dead; ``each`` raises for the first
  node that cannot be reached.

The pool knows nothing about tubes or the ring; ClusterClient decides which
node a command goes to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .client import Client
from .errors import ConnectionLostError, NoNodeAvailableError
from .ring import natural_key

FAILOVER = "failover"
FAIL_FAST = "fail_fast"
POLICIES = (FAILOVER, FAIL_FAST)
DEFAULT_FAILURE_THRESHOLD = 2
DEFAULT_DEAD_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 30.0


@dataclass(eq=False)
class Member:
    """One member node: its connection, its health, and what reserve knows of it."""

    name: str
    client: Client
    weight: int = 1
    failures: int = 0  # consecutive connection failures
    dead_until: float = 0.0  # monotonic time; 0 means alive
    watch_gen: int = -1  # the watch-list generation last copied to it
    empty_round: int | None = None  # the poll round in which it last had no job for us
    empty_at: float = 0.0  # and when (clock time)


class NodePool:
    """Members by name, in natural order, with the dead-node policy."""

    def __init__(
        self,
        *,
        policy: str,
        failure_threshold: int,
        dead_timeout: float,
        connect_timeout: float | None,
        timeout: float | None,
        encoding: str | None,
        clock: Callable[[], float],
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
        self.timeout = timeout
        self.encoding = encoding
        self.clock = clock
        self.ssl_context = ssl_context  # every member connects with it (TLS) if set
        self.members: dict[str, Member] = {}
        self.order: list[str] = []  # member names in natural order
        self.index: dict[str, int] = {}  # name -> its position in ``order``

    # --- membership -------------------------------------------------------------
    def add(self, name: str, address: str, weight: int = 1) -> Member:
        if name in self.members:
            raise ValueError(f"node {name} is already a member")
        client = Client(address, name=name, connect_timeout=self.connect_timeout,
                        timeout=self.timeout, encoding=self.encoding, lazy=True,
                        ssl_context=self.ssl_context)
        member = self.members[name] = Member(name, client, weight)
        self._reorder()
        return member

    def forget(self, name: str) -> None:
        """Drop a member and close its connection."""
        self.members.pop(name).client.close()
        self._reorder()

    def _reorder(self) -> None:
        self.order = sorted(self.members, key=natural_key)
        self.index = {name: i for i, name in enumerate(self.order)}

    def close(self) -> None:
        for member in self.members.values():
            member.client.close()

    # --- health -------------------------------------------------------------------
    def available(self, member: Member) -> bool:
        return member.dead_until == 0.0 or self.clock() >= member.dead_until

    def dead_nodes(self) -> list[str]:
        return [n for n in self.order if not self.available(self.members[n])]

    def failed(self, member: Member) -> None:
        member.failures += 1
        if self.policy == FAILOVER and member.failures >= self.failure_threshold:
            member.dead_until = self.clock() + self.dead_timeout

    def ok(self, member: Member) -> None:
        member.failures = 0
        member.dead_until = 0.0

    def call(self, member: Member, fn: Callable, *args):
        """Run ``fn(client, *args)`` on one node; a lost connection names the node."""
        try:
            result = fn(member.client, *args)
        except ConnectionLostError as e:
            self.failed(member)
            raise NoNodeAvailableError(member.name, str(e), sent=e.sent) from e
        if member.failures:
            self.ok(member)
        return result

    def live(self) -> list[Member]:
        """Members to visit for fan-out and reserve, in natural order."""
        members = [self.members[n] for n in self.order]
        if self.policy == FAIL_FAST:
            return members
        live = [m for m in members if self.available(m)]
        return live or members  # all marked dead: try them all rather than none

    def each(self, fn: Callable, *args, skip: tuple = ()) -> dict:
        """``{name: fn(client, *args)}`` over live nodes; ``skip`` errors are left out.

        Failover drops nodes that fail; fail_fast raises for the first one.
        """
        out = {}
        answered = False
        for member in self.live():
            try:
                out[member.name] = self.call(member, fn, *args)
            except skip:
                pass
            except NoNodeAvailableError:
                if self.policy == FAIL_FAST:
                    raise
                continue
            answered = True
        if not answered:
            self.raise_none_available()
        return out

    def raise_none_available(self):
        raise NoNodeAvailableError(",".join(self.order), "no node could be reached")
