"""The time that starts every log line of bsnode and bscluster: one format for both.

ISO 8601 in local time with milliseconds and the offset
(``2026-12-06T16:10:59.123+00:00``), so that `bscluster logs NODE`, which
interleaves the supervisor's lines with the node's, reads as one log.
bscluster's supervisor, proxy and workers take it from here.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime


def log_stamp(when: float | None = None) -> str:
    """Now, or ``when`` (a time.time()), as a log line's time."""
    moment = datetime.now() if when is None else datetime.fromtimestamp(when)
    return moment.astimezone().isoformat(timespec="milliseconds")


class StampFormatter(logging.Formatter):
    """``%(asctime)s`` as ``log_stamp`` writes it, for processes that log through
    ``logging`` (bsnode, the proxy, `bscluster work`)."""

    def formatTime(self, record, datefmt=None) -> str:  # noqa: N802 - logging's name
        return log_stamp(record.created)


def log_to_stderr(line_format: str, level: int | str) -> None:
    """Configure ``logging`` for a program of the project (bsnode, `bscluster proxy`,
    `bscluster work`): stderr, each line stamped by ``log_stamp``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StampFormatter(line_format))
    logging.basicConfig(level=level, handlers=[handler])
