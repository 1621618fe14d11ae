"""What a worker does with a job once its handler has run: the retry policy.

How this works
--------------
``settle`` is a pure function from "how did the handler end" (nothing
raised, ``Retry``, ``Bury`` or any other exception) and "which attempt was
this" to an ``Action``: delete, release after a delay, or bury.  The worker
(``bsclient.worker``) performs the action; nothing here talks to a server,
so the whole policy is tested with plain values.

* Attempts are counted by the server, not by the worker, so they survive a
  worker's restart and are shared by every worker: the attempt a job is on
  is ``releases + timeouts + 1`` from ``stats-job``.  A TTR timeout counts
  because a handler that kills its worker process (out of memory, a
  segfault) would otherwise be retried forever.  A job handed back by
  closing the connection (a worker stopping) does not count.  A kicked job
  keeps its counts: it gets one more attempt, not a fresh set.
* A failure before ``max_attempts`` releases the job with
  ``backoff(attempt)`` seconds of delay and its own priority; failure number
  ``max_attempts`` applies ``on_exhausted`` (bury, the default, or delete).
  ``max_attempts=None`` retries forever.
* ``Retry(delay)`` from a handler is a failure with a delay of its choosing;
  ``Bury(reason)`` buries at once.
* ``Backoff`` is exponential, capped, with "equal jitter" (the delay is
  drawn between half and all of the exponential value) so a burst of
  failures does not come back as a burst.  Delays are whole seconds, as the
  protocol's ``release`` takes them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

DELETE = "delete"
RELEASE = "release"
BURY = "bury"
ON_EXHAUSTED = (BURY, DELETE)  # what may happen to a job out of attempts

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_BACKOFF_BASE = 2.0  # seconds before the first retry (before jitter)
DEFAULT_BACKOFF_CAP = 3600.0  # no retry waits longer than this
DEFAULT_JITTER = 0.5  # up to this fraction of a delay is taken off at random
MAX_DOUBLINGS = 64  # 2**64 * base is beyond any cap: keeps the float finite


class Retry(Exception):
    """Raise from a handler: try the job again after ``delay`` seconds.

    ``delay`` None uses the worker's backoff.  It counts as an attempt, so a
    job that keeps asking is still settled by ``max_attempts``.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds")
        self.delay = delay
        super().__init__(reason or ("retry requested" if delay is None
                                    else f"retry requested in {delay} s"))


class Bury(Exception):
    """Raise from a handler: bury the job now (no more attempts)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "bury requested")


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1``: ``base * 2**(n-1)``, capped, with jitter.

    ``Backoff()(1)`` is 1..2 s, ``(5)`` 16..32 s, ``(13)`` and later about
    an hour at most.
    """

    base: float = DEFAULT_BACKOFF_BASE
    cap: float = DEFAULT_BACKOFF_CAP
    jitter: float = DEFAULT_JITTER
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be >= 0 seconds")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def __call__(self, attempt: int) -> int:
        delay = min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), MAX_DOUBLINGS))
        delay -= delay * self.jitter * self.rng.random()
        return max(0, round(delay))


BackoffFn = Callable[[int], float]


@dataclass(frozen=True)
class Policy:
    """How failed jobs are retried; the worker's settings, checked once."""

    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    backoff: BackoffFn = field(default_factory=Backoff)
    on_exhausted: str = BURY

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (None retries forever)")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise ValueError(f"on_exhausted must be one of {', '.join(ON_EXHAUSTED)}, "
                             f"not {self.on_exhausted!r}")


@dataclass(frozen=True)
class Action:
    """What to do with the job: ``kind`` is DELETE, RELEASE or BURY."""

    kind: str
    delay: int = 0  # RELEASE only: whole seconds
    why: str = ""  # for the log line: "attempts used up", "asked by the handler"


def attempt_of(stats: dict) -> int:
    """The attempt a reserved job is on, from its ``stats-job`` dict."""
    return int(stats.get("releases", 0)) + int(stats.get("timeouts", 0)) + 1


def settle(error: BaseException | None, attempt: int, policy: Policy) -> Action:
    """The action for a handler that ended with ``error`` (None: it returned)."""
    if error is None:
        return Action(DELETE)
    if isinstance(error, Bury):
        return Action(BURY, why="asked by the handler")
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        return Action(policy.on_exhausted, why="attempts used up")
    if isinstance(error, Retry) and error.delay is not None:
        return Action(RELEASE, max(0, round(error.delay)))
    return Action(RELEASE, max(0, round(policy.backoff(attempt))))
