"""Session fixtures for the differential suite: beanstalkd's recordings of
the selected transcripts (the reference) and bsnode's runs of them (the
candidate), both made ahead of need in background threads."""

from __future__ import annotations

import os

import pytest
from servers import HAVE_BEANSTALKD

from .background import BackgroundRuns

# bsnode runs played at once; each starts its own server.
WORKERS = int(os.environ.get("BSDIFF_WORKERS", "2"))


def _selected(session, kinds: tuple[str, ...]) -> list:
    """Transcripts of the selected tests of these kinds, in test order."""
    wanted: dict[str, object] = {}
    for item in session.items:
        spec = getattr(item, "callspec", None)
        if (spec is not None and spec.params.get("kind") in kinds
                and "transcript" in spec.params):
            t = spec.params["transcript"]
            wanted.setdefault(t.name, t)
    return list(wanted.values())


@pytest.fixture(scope="session")
def reference(request):
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    runs = BackgroundRuns("beanstalkd", _selected(request.session, ("beanstalkd", "bsnode")), 1)
    yield runs
    runs.close()


@pytest.fixture(scope="session")
def candidate(request):
    runs = BackgroundRuns("bsnode", _selected(request.session, ("bsnode",)), WORKERS)
    yield runs
    runs.close()
