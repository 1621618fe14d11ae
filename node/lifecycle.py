"""The job lifecycle: its states and the moves between them, as one table.

How this works
--------------
A job is in exactly one state (beanstalkd's protocol.txt, "Job Lifecycle"):

    put with delay               release with delay
  ----------------> [DELAYED] <------------.
                        |                   |
                        | delay due, kick   |
                        v                   |
   put            [READY] ----------> [RESERVED] --------> *poof*
  -----------------> ^       reserve     |  |   delete
                     |  release, TTR due, |  |
                     `-- disconnect ------'  |
                                             | bury
                    [BURIED] <---------------'
                        |  kick
                        `-------> [READY]

``TRANSITIONS`` is that picture as data: event -> (the states it may start
from, the states it may lead to).  A deleted job is INVALID; a job not yet
put is NEW.  The store (node/store.py) makes the moves, the tube
(node/tube.py) files jobs by these states, the binlog (node/binlog/) writes
them as codes (binlog/format.py's STATE_CODES, keyed by these names); the
hypothesis model test (tests/node/test_store_model.py) checks every state change
it sees against ``allowed``.

The states are plain strings (one object each, compared with ``is`` on the
hot paths; `stats-job` shows them as they are).  ``Outcome`` is what the
store answers when a command on a job does not simply happen: the wire
words for it are chosen by node/commands.py alone.
"""

from __future__ import annotations

from enum import Enum

READY = "ready"
RESERVED = "reserved"
DELAYED = "delayed"
BURIED = "buried"
INVALID = "invalid"  # deleted
NEW = "new"  # not yet put (never stored on a job; for the table only)

LIVE = (READY, RESERVED, DELAYED, BURIED)  # the states a stored job can be in

# event -> (from states, to states)
TRANSITIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "put": (frozenset({NEW}), frozenset({READY, DELAYED})),
    "restore": (frozenset({NEW}), frozenset({READY, DELAYED, BURIED})),  # binlog replay
    "reserve": (frozenset({READY}), frozenset({RESERVED})),
    "reserve-job": (frozenset({READY, DELAYED, BURIED}), frozenset({RESERVED})),
    "release": (frozenset({RESERVED}), frozenset({READY, DELAYED})),
    "bury": (frozenset({RESERVED}), frozenset({BURIED})),
    "kick": (frozenset({BURIED, DELAYED}), frozenset({READY})),
    "touch": (frozenset({RESERVED}), frozenset({RESERVED})),
    "delete": (frozenset(LIVE), frozenset({INVALID})),
    "ttr-expired": (frozenset({RESERVED}), frozenset({READY})),
    "delay-due": (frozenset({DELAYED}), frozenset({READY})),
    "disconnect": (frozenset({RESERVED}), frozenset({READY})),  # the reserver hung up
}


def allowed(events, before: str, after: str) -> bool:
    """May one of ``events`` (names in TRANSITIONS) move a job from
    ``before`` to ``after``?  Staying where it is is always allowed."""
    if before is after or before == after:
        return True
    for event in events:
        sources, targets = TRANSITIONS[event]
        if before in sources and after in targets:
            return True
    return False


class Outcome(Enum):
    """The store's answer to a command on a job, when it is not a job or a count."""

    DONE = "done"
    NOT_FOUND = "not-found"  # no such job, or not in a state (or session) that allows it
    NOT_LOGGED = "not-logged"  # the binlog could not take the change: nothing changed
    TIMED_OUT = "timed-out"  # a reserve's wait ended without a job
    DEADLINE_SOON = "deadline-soon"  # a job the session holds is near its TTR
