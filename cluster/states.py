"""The life of one supervised node, as a transition table.

How this works
--------------
A node is always in one ``State``; the supervisor feeds it ``Event``s and
``TRANSITIONS`` says where it goes (supervisor's process states, cut down)::

    STOPPED --spawn--> STARTING --ready--> RUNNING
                          |                   |
                     exit/timeout            exit
                          v                   v
    FATAL <--give_up-- BACKOFF <--------------'
                          |--spawn--> STARTING

A node that dies while STARTING (before it accepted a connection) has
failed to start: it is retried ``START_RETRIES`` times with a growing delay,
then it is FATAL and stays down until someone asks for it again (a port
taken by another program or an unusable data dir never fix themselves).
A node that dies while RUNNING is restarted at once; only if it keeps
dying does the delay grow, up to ``CRASH_BACKOFF_MAX``.  ``CrashPolicy``
decides: crashes closer together than its ``window`` count as a loop, and
the ``limit``-th crash inside one window gives up (FATAL), because a node
that dies every few seconds is broken, not unlucky, and restarting it for
ever only hides that.  ``limit = 0`` never gives up.  Stopping is a
separate path (STOPPING -> STOPPED) that never restarts.

A node whose command cannot even be launched is FATAL at once (no such
program), unless the reason is one that passes: the supervisor itself is
short of descriptors, processes or memory (``TRANSIENT_LAUNCH_ERRNOS``).
Then it waits in BACKOFF and tries again after ``launch_retry_delay``, for
as long as it takes; such attempts are not failed starts.

Everything here is pure: times are passed in, so tests need no clock.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

# --- supervision policy (the one place these numbers live) ----------------
START_RETRIES = 3  # failed starts before FATAL
START_BACKOFF = 0.25  # seconds before retry k is START_BACKOFF * 2**(k-1)
START_TIMEOUT = 15.0  # a node must accept connections within this
CRASH_WINDOW = 60  # seconds: crashes inside one window count as a crash loop
CRASH_LIMIT = 5  # the 5th crash inside one window makes the node FATAL (0: never)
MAX_CRASH_LIMIT = 64  # crashes remembered per node, so the largest crash_limit
CRASH_BACKOFF = 0.5  # first delay inside a crash loop, doubling
CRASH_BACKOFF_MAX = 30.0
STOP_TIMEOUT = 10.0  # SIGTERM, then SIGKILL after this
LAUNCH_BACKOFF = 0.25  # first delay after a launch failed for a passing reason, doubling
LAUNCH_BACKOFF_MAX = 5.0
# why a launch may fail and work later: no descriptor, process slot or memory left
TRANSIENT_LAUNCH_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class State(str, Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"


class Event(str, Enum):
    SPAWN = "spawn"  # a process was started
    READY = "ready"  # it accepts connections
    EXIT = "exit"  # it died (or could not be started at all)
    GIVE_UP = "give_up"  # no retries left, or no point trying
    ADOPT = "adopt"  # found alive, left by an earlier supervisor
    STOP = "stop"  # we asked it to stop
    STOPPED = "stopped"  # it is gone after we asked


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.STOPPED, E.SPAWN): S.STARTING,
    (S.BACKOFF, E.SPAWN): S.STARTING,
    (S.FATAL, E.SPAWN): S.STARTING,  # only on an explicit restart request
    (S.STARTING, E.READY): S.RUNNING,
    (S.STARTING, E.EXIT): S.BACKOFF,
    (S.RUNNING, E.EXIT): S.BACKOFF,
    (S.STOPPED, E.EXIT): S.BACKOFF,  # spawning failed outright (bad command)
    (S.BACKOFF, E.EXIT): S.BACKOFF,  # launching failed again, for a passing reason
    (S.FATAL, E.EXIT): S.BACKOFF,  # a restart request could not launch it yet
    (S.BACKOFF, E.GIVE_UP): S.FATAL,
    (S.STOPPED, E.GIVE_UP): S.FATAL,  # cannot even try (port taken, bad dir)
    (S.FATAL, E.GIVE_UP): S.FATAL,  # asked again, still cannot
    (S.STOPPED, E.ADOPT): S.RUNNING,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.STOPPING, E.STOPPED): S.STOPPED,
    (S.STOPPING, E.STOP): S.STOPPING,
    (S.STOPPING, E.EXIT): S.STOPPED,
    (S.BACKOFF, E.STOP): S.STOPPED,
    (S.FATAL, E.STOP): S.FATAL,
    (S.STOPPED, E.STOP): S.STOPPED,
}

# states in which a process of ours exists
HAS_PROCESS = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
# states `up` waits for before it reports
SETTLED = frozenset({S.RUNNING, S.FATAL})


class BadTransition(RuntimeError):
    """A bug: the supervisor fed an event the table has no row for."""


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise BadTransition(f"no transition from {state.value} on {event.value}") from None


def start_retry_delay(failed_starts: int) -> float | None:
    """Seconds to wait after the n-th failed start, or None: give up (FATAL)."""
    if failed_starts > START_RETRIES:
        return None
    return START_BACKOFF * 2 ** (failed_starts - 1)


def launch_retry_delay(failures: int) -> float:
    """Seconds to wait after the n-th launch in a row that failed for a passing
    reason (``TRANSIENT_LAUNCH_ERRNOS``); these never give up."""
    return min(LAUNCH_BACKOFF_MAX, LAUNCH_BACKOFF * 2 ** (max(1, failures) - 1))


def crash_delay(recent_crashes: int) -> float:
    """Seconds to wait before restarting a node that died while RUNNING.

    ``recent_crashes`` counts earlier crashes within the crash window; the
    first crash in a while is restarted at once, so one kill -9 costs only
    the time the node takes to replay its binlog.
    """
    if recent_crashes <= 0:
        return 0.0
    return min(CRASH_BACKOFF_MAX, CRASH_BACKOFF * 2 ** (recent_crashes - 1))


@dataclass(frozen=True)
class CrashPolicy:
    """When a node that keeps dying after it ran is given up on."""

    limit: int = CRASH_LIMIT  # crashes inside one window that make it FATAL; 0 = never
    window: float = CRASH_WINDOW  # seconds

    def in_window(self, crash_times: Sequence[float], now: float) -> int:
        """How many of ``crash_times`` (monotonic) fall inside the window ending now."""
        return sum(1 for t in crash_times if now - t < self.window)

    def after_crash(self, earlier: Sequence[float], now: float) -> float | None:
        """Seconds to wait before restarting after a crash at ``now``, or None:
        give up (FATAL).  ``earlier`` are the times of the crashes before it."""
        recent = self.in_window(earlier, now)
        if self.limit and recent + 1 >= self.limit:
            return None
        return crash_delay(recent)
