"""The consuming half of ClusterClient: the watch list and reserve across nodes.

How this works
--------------
``watch``/``ignore`` change a local list; a node's connection is brought up
to date (watch/ignore sent) just before it is asked for a job.

``reserve`` runs poll rounds of ``reserve-with-timeout 0`` and, while they
find nothing, blocks on one node at a time for slices of ``RESERVE_SLICE``
seconds, rotating, with a poll round after each slice, until the deadline
(docs/CLIENT.md, "Reserve semantics").  A poll round:

* visits the live nodes in a rotating order that starts after the node that
  gave the previous job, so nodes with jobs take turns;
* asks first the nodes not known to be empty, and only then, if none of
  them had a job, the nodes that were empty in one of the last
  ``EMPTY_SKIP_ROUNDS`` rounds and less than ``EMPTY_SKIP_SECONDS`` ago.
  When one node holds the whole backlog a reserve therefore costs one round
  trip, not one per node; an empty node is asked again at least every
  ``EMPTY_SKIP_ROUNDS`` reserves (or ``EMPTY_SKIP_SECONDS``), so a job that
  arrives there waits no longer than that;
* stops at the first job and hands it to the caller: there is never more
  than one reserve in flight, so no job is held that the caller did not get.

Every node is asked before a round reports "nothing": ``reserve(timeout=0)``
polls all nodes, and the client never blocks while a job is ready anywhere.
DEADLINE_SOON is raised only when a round found no job at all and a node
said DEADLINE_SOON (beanstalkd answers a ready job first, too).
"""

from __future__ import annotations

import math

from . import protocol as p
from .client import DEFAULT_TUBE, Client, Job
from .errors import (
    BadFormatError,
    DeadlineSoonError,
    NoNodeAvailableError,
    NotIgnoredError,
    TimedOutError,
)
from .pool import FAIL_FAST, Member, NodePool

RESERVE_SLICE = 1  # seconds one blocking reserve may wait on one node
EMPTY_SKIP_ROUNDS = 32  # a node found empty is asked last for this many poll rounds
EMPTY_SKIP_SECONDS = 0.5  # ... and for no longer than this


def check_tube(tube: str) -> str:
    """The tube name, or BadFormatError/TypeError before anything is sent."""
    if not isinstance(tube, str):
        raise TypeError(f"tube name must be str, not {type(tube).__name__}")
    if not p.valid_tube_name(tube.encode("ascii", "replace")) or not tube.isascii():
        raise BadFormatError(f"BAD_FORMAT: invalid tube name {tube!r}")
    return tube


class Consumer:
    """The watch list and the reserve strategy over a ``NodePool``."""

    def __init__(self, pool: NodePool) -> None:
        self.pool = pool
        self.clock = pool.clock
        self.watching = [DEFAULT_TUBE]
        self.watch_gen = 0
        self.poll_start = 0  # rotation: the member index the next round starts at
        self.block_next = 0  # rotation: the next node to block on
        self.round = 0  # poll rounds so far

    # --- the watch list -----------------------------------------------------------
    def watch(self, tube: str) -> int:
        check_tube(tube)
        if tube not in self.watching:
            self.watching.append(tube)
            self._changed()
        return len(self.watching)

    def ignore(self, tube: str) -> int:
        check_tube(tube)
        if tube in self.watching:
            if len(self.watching) == 1:
                raise NotIgnoredError()
            self.watching.remove(tube)
            self._changed()
        return len(self.watching)

    def _changed(self) -> None:
        self.watch_gen += 1
        for member in self.pool.members.values():
            member.empty_round = None  # empty for the old list says nothing of the new one

    def _sync_watch(self, client: Client, member: Member) -> None:
        wanted = self.watching
        have = client.watching
        for tube in wanted:
            if tube not in have:
                client.watch(tube)
        for tube in client.watching:
            if tube not in wanted:
                client.ignore(tube)
        member.watch_gen = self.watch_gen

    def _reserve_on(self, client: Client, member: Member, secs: int | None) -> Job:
        if member.watch_gen != self.watch_gen:
            self._sync_watch(client, member)
        return client.reserve(secs)

    # --- reserve ----------------------------------------------------------------------
    def reserve(self, timeout: float | None) -> Job:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 (None waits forever)")
        deadline = None if timeout is None else self.clock() + math.ceil(timeout)
        while True:
            job = self.poll_round()
            if job is not None:
                return job
            if deadline is None:
                secs = None
            else:
                secs = round(deadline - self.clock())
                if secs <= 0:
                    raise TimedOutError()
            job = self.block_slice(secs)
            if job is not None:
                return job

    def _round_order(self, live: list[Member]) -> list[Member]:
        """``live`` rotated to start at ``poll_start``, nodes known empty last."""
        index = self.pool.index
        start = self.poll_start % len(index)
        rotated = [m for m in live if index[m.name] >= start]
        rotated += [m for m in live if index[m.name] < start]
        now = self.clock()
        recent = self.round - EMPTY_SKIP_ROUNDS
        first = []
        last = []
        for m in rotated:
            if (m.empty_round is not None and m.empty_round >= recent
                    and now - m.empty_at < EMPTY_SKIP_SECONDS):
                last.append(m)
            else:
                first.append(m)
        return first + last if last else first

    def poll_round(self) -> Job | None:
        """One ``reserve-with-timeout 0`` per live node at most; the first job wins."""
        pool = self.pool
        live = pool.live()
        self.round += 1
        deadline_soon = False
        for member in self._round_order(live):
            try:
                job = pool.call(member, self._reserve_on, member, 0)
            except TimedOutError:
                self._empty(member)
                continue
            except DeadlineSoonError:
                self._empty(member)
                deadline_soon = True
                continue
            except NoNodeAvailableError:
                if pool.policy == FAIL_FAST:
                    raise
                continue
            self.poll_start = pool.index[member.name] + 1
            return job
        if deadline_soon:
            raise DeadlineSoonError()
        if not any(m.client.connected for m in live):
            pool.raise_none_available()
        return None

    def _empty(self, member: Member) -> None:
        member.empty_round = self.round
        member.empty_at = self.clock()

    def block_slice(self, secs: int | None) -> Job | None:
        """Block on the next live node for one slice; None if it had nothing."""
        pool = self.pool
        live = pool.live()
        if len(pool.order) > 1:
            secs = RESERVE_SLICE if secs is None else min(secs, RESERVE_SLICE)
        member = live[self.block_next % len(live)]
        self.block_next += 1
        try:
            return pool.call(member, self._reserve_on, member, secs)
        except (TimedOutError, DeadlineSoonError):
            return None  # the poll round that follows decides: a ready job wins
        except NoNodeAvailableError:
            if pool.policy == FAIL_FAST:
                raise
            return None
