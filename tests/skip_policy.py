"""Every skip is counted and named; under CI an unexpected one fails the run.

How this works
--------------
A pytest plugin (tests/conftest.py lists it in ``pytest_plugins``).  It
records every test, fixture or module that was skipped and every xfail,
with its reason, and ends each run with one line::

    skips: 3 (/usr/bin/beanstalkd is not installed: 2, xfail: a known bug: 1)

``EXPECTED`` is the allow-list: skips CI may legitimately see, each with why
(none today).
When the environment variable ``CI`` is true (CI systems set it; .ci/run
does too), any skip or xfail not on that list turns the run's exit status to
1, and the lines that were skipped are listed: CI installs everything the
suite needs, so a skip there means a test that could not fail.  Outside CI
the line is only information.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Expected:
    """A skip CI may see: where (a node-id glob), what it says, and why that is fine."""

    nodeid: str
    reason: str  # a substring of the skip's reason
    why: str


# Empty: .ci/run installs every tool the suite uses and runs it as root, so
# no skip is expected there.  An entry needs a reason a reviewer accepts.
EXPECTED: tuple[Expected, ...] = ()


@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    where: str  # file:line of the skip, when pytest knows it

    def expected(self) -> bool:
        return any(fnmatch.fnmatchcase(self.nodeid, e.nodeid) and e.reason in self.reason
                   for e in EXPECTED)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_of(report) -> Skip | None:
    if hasattr(report, "wasxfail"):
        if not report.skipped:  # an xfail that passed: pytest judges it already
            return None
        return Skip(report.nodeid, f"xfail: {report.wasxfail or 'no reason given'}", "")
    if not report.skipped:
        return None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, reason = longrepr
        where = f"{path}:{line}" if line is not None else str(path)
    else:
        reason, where = str(longrepr), ""
    return Skip(report.nodeid, reason.removeprefix("Skipped: "), where)


class SkipPolicy:
    def __init__(self) -> None:
        self.skips: list[Skip] = []

    def _record(self, report) -> None:
        skip = _skip_of(report)
        if skip is not None:
            self.skips.append(skip)

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_collectreport(self, report) -> None:
        self._record(report)

    def unexpected(self) -> list[Skip]:
        return [s for s in self.skips if not s.expected()]

    def summary(self) -> str:
        counts = Counter(s.reason for s in self.skips)
        parts = ", ".join(f"{reason}: {n}" for reason, n in counts.most_common())
        return f"skips: {len(self.skips)}" + (f" ({parts})" if parts else "")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        if in_ci() and self.unexpected() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_line(self.summary())
        bad = self.unexpected()
        if in_ci() and bad:
            terminalreporter.write_line(
                f"CI: {len(bad)} unexpected skip(s) fail this run (tests/skip_policy.py "
                f"EXPECTED lists the ones CI may see):", red=True)
            for s in bad:
                terminalreporter.write_line(f"  {s.nodeid}  {s.where}  {s.reason}", red=True)


def pytest_configure(config) -> None:
    config.pluginmanager.register(SkipPolicy(), "skip_policy_state")
