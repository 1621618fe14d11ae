"""Every transcript against /usr/bin/beanstalkd and against bsnode.

``beanstalkd:<name>`` checks the transcript itself: the real server must
give exactly the replies the transcript expects.  ``bsnode:<name>`` plays the
same transcript on a fresh bsnode and compares every reply with beanstalkd's
recording of it (normalised as normalise.py says), so it fails on any
difference the transcript's own expectations do not spell out (full stats
bodies, for example).  See docs/CONFORMANCE.md.
"""

from __future__ import annotations

import pytest

from .runner import compare
from .suite import transcripts

pytestmark = pytest.mark.differential

KINDS = ("beanstalkd", "bsnode")
TRANSCRIPTS = transcripts()


@pytest.mark.parametrize(
    "kind,transcript",
    [pytest.param(k, t, id=f"{k}:{t.name}") for t in TRANSCRIPTS for k in KINDS],
)
def test_transcript(kind, transcript, reference, request):
    recorded = reference.get(transcript)
    if kind == "beanstalkd":
        assert not recorded.problems, (
            f"beanstalkd disagrees with transcript {transcript.name} ({transcript.where}):\n"
            + "\n".join(recorded.problems)
        )
        return
    got = request.getfixturevalue("candidate").get(transcript)
    diffs = compare(recorded, got)
    assert not diffs, (
        f"bsnode differs from beanstalkd in {transcript.name} ({transcript.where}):\n"
        + "\n".join(diffs)
    )
