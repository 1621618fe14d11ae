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
from servers import HAVE_BEANSTALKD

from .runner import Run, compare, run
from .suite import transcripts

pytestmark = pytest.mark.differential

KINDS = ("beanstalkd", "bsnode")
TRANSCRIPTS = transcripts()
HAVE_BSNODE = importlib.util.find_spec("bsnode.cli") is not None


def play(pools, kind: str, t) -> Run:
    server = pools(kind).take(t.flags)
    try:
        return run(t, server.host, server.port, server.pid)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "kind,transcript",
    [pytest.param(k, t, id=f"{k}:{t.name}") for t in TRANSCRIPTS for k in KINDS],
)
def test_transcript(kind, transcript, pools, reference_runs):
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    reference = reference_runs.get(transcript.name)
    if reference is None or kind == "beanstalkd":
        reference = reference_runs[transcript.name] = play(pools, "beanstalkd", transcript)
    if kind == "beanstalkd":
        assert not reference.problems, (
            f"beanstalkd disagrees with transcript {transcript.name} ({transcript.where}):\n"
            + "\n".join(reference.problems)
        )
        return
    if not HAVE_BSNODE:
        pytest.skip("bsnode is not built yet (no bsnode.cli)")
    candidate = play(pools, "bsnode", transcript)
    diffs = compare(reference, candidate)
    assert not diffs, (
        f"bsnode differs from beanstalkd in {transcript.name} ({transcript.where}):\n"
        + "\n".join(diffs)
    )
