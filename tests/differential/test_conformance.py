"""Every transcript against /usr/bin/beanstalkd and against bsnode.

``beanstalkd:<name>`` checks the transcript itself: the real server must
give exactly the replies the transcript expects.  ``bsnode:<name>`` plays the
same transcript on a fresh bsnode and compares every reply with beanstalkd's
recording of it (normalised as normalise.py says), so it fails on any
difference the transcript's own expectations do not spell out (full stats
bodies, for example).  See docs/CONFORMANCE.md.
"""

from __future__ import annotations

import importlib.util

import pytest

from .runner import Run, compare, run
from .suite import transcripts

pytestmark = pytest.mark.differential

KINDS = ("beanstalkd", "bsnode")
TRANSCRIPTS = transcripts()
HAVE_BSNODE = importlib.util.find_spec("bsnode.cli") is not None


def play(pool, t) -> Run:
    server = pool.take(t.flags)
    try:
        return run(t, server.host, server.port, server.pid)
    finally:
        pool.give_back(server)


@pytest.mark.parametrize(
    "kind,transcript",
    [pytest.param(k, t, id=f"{k}:{t.name}") for t in TRANSCRIPTS for k in KINDS],
)
def test_transcript(kind, transcript, reference, bsnode_pool):
    recorded = reference.get(transcript)
    if kind == "beanstalkd":
        assert not recorded.problems, (
            f"beanstalkd disagrees with transcript {transcript.name} ({transcript.where}):\n"
            + "\n".join(recorded.problems)
        )
        return
    if not HAVE_BSNODE:
        pytest.skip("bsnode is not built yet (no bsnode.cli)")
    candidate = play(bsnode_pool, transcript)
    diffs = compare(recorded, candidate)
    assert not diffs, (
        f"bsnode differs from beanstalkd in {transcript.name} ({transcript.where}):\n"
        + "\n".join(diffs)
    )
