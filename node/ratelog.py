"""Error lines that could repeat without end, logged at a bounded rate.

How this works
--------------
A node out of descriptors fails every accept, and a timer callback that
raises would fail on every tick: logging each failure floods the log
(beanstalkd wrote 12 MB in a minute of EMFILE).  ``Complaints.error(kind,
...)`` logs the first failure of a kind at once, then at most one line per
``every`` seconds for that kind, saying how many were left out meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

EVERY = 10.0  # seconds between two lines about the same kind of failure


class Complaints:
    """Rate-limited error lines, one budget per kind."""

    def __init__(self, logger: logging.Logger, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}  # failures not logged since the last line

    def error(self, kind: str, message: str, *args) -> bool:
        """Log ``message % args`` unless ``kind`` was logged in the last
        ``every`` seconds; returns whether it was logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return False
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, quiet, now - last)
        self.log.error(message, *args)
        return True
