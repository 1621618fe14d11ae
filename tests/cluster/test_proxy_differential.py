"""The differential suite's transcripts (tests/differential/) through the proxy.

Every transcript is played on a fresh /usr/bin/beanstalkd (the reference,
as the differential suite records it) and on a fresh proxy in front of three
fresh bsnodes, and the replies are compared step by step with the suite's
own normalisation (job ids become #1, #2, ... in order of appearance, so the
proxy's ids compare equal; times within a tick).

``DIFFERENT`` lists the transcripts where the proxy answers otherwise, each
with the reason (docs/PROXY.md, "Where the proxy differs from one
beanstalkd") and the transcript lines where it may.  A listed transcript
may differ only at those lines (some differences are races that a quiet
machine may not show); every other transcript must match exactly.
"""

from __future__ import annotations

import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from differential.background import play_fresh
from differential.runner import compare, run
from differential.suite import transcripts
from proxyrun import ProxiedCluster
from servers import HAVE_BEANSTALKD

pytestmark = [pytest.mark.integration, pytest.mark.differential]

WORKERS = 3
NODES = 3
TRANSCRIPTS = transcripts()

_KEPT = ("a tube lives on a node while a proxy connection there still uses or watches "
         "it: the proxy's node connections keep the last tube a put or reserve needed "
         "(docs/PROXY.md, \"Tubes\")")
_HOP = ("a client's hang-up reaches the nodes one hop later: a command another client "
        "sends at once may still see the job it held as reserved")
_ACROSS = ("priority (and age among equals) is exact within a node; tubes on different "
           "nodes take turns, so a job on one node can come before a more urgent or older "
           "one on another (docs/CLIENT.md, \"Reserve semantics\")")
# transcript name -> (why the proxy differs, the transcript lines whose replies may differ)
DIFFERENT: dict[str, tuple[str, tuple[int, ...]]] = {
    "line-222-bytes-accepted": (
        "the transcript pads a job id to a 222-byte line; a proxy id has three more "
        "digits, so the line is too long (BAD_FORMAT, as beanstalkd would answer it)", (12,)),
    "list-tubes-order-after-removal": (
        "list-tubes is default, then each node's tubes in node order; one beanstalkd's "
        "order after a tube disappears (its last tube moves into the gap) is not kept "
        "across nodes", (186, 190, 194, 198)),
    "stats-connection-counters": (_HOP, (188,)),
    "reserve-waiter-disconnects": (_HOP, (388, 390)),
    "reserve-multi-tube-priority": (_ACROSS, (201, 203, 205)),
    "reserve-multi-tube-equal-priority": (_ACROSS, (222, 224)),
    "pause-tube-ends": (
        "pause-tube goes to every node that has the tube and each ends the pause by its "
        "own clock; just when it ends, a node that has not yet reset it still reports "
        "pause: 1 (stats-tube takes the largest)", (50,)),
    "pause-tube-empty-tube-disappears": (_KEPT, (127, 131)),
    "tube-kept-by-jobs": (_KEPT, (238, 240)),
    "tube-kept-by-buried-and-delayed": (_KEPT, (269,)),
}
_LINE = re.compile(r"\S+\.bst:(\d+) ")


def _play_proxied(t):
    with tempfile.TemporaryDirectory() as tmp, ProxiedCluster(Path(tmp), NODES, *t.flags) as c:
        return run(t, "127.0.0.1", c.port, c.proxy.pid)


@pytest.fixture(scope="module")
def runs():
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    with ThreadPoolExecutor(WORKERS) as pool:
        ref = {t.name: pool.submit(play_fresh, "beanstalkd", t) for t in TRANSCRIPTS}
        got = {t.name: pool.submit(_play_proxied, t) for t in TRANSCRIPTS}
        yield ref, got
        for f in list(ref.values()) + list(got.values()):
            f.cancel()


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=[t.name for t in TRANSCRIPTS])
def test_transcript_through_the_proxy(transcript, runs):
    ref, got = runs
    diffs = compare(ref[transcript.name].result(), got[transcript.name].result())
    if transcript.name not in DIFFERENT:
        assert not diffs, (f"the proxy differs from beanstalkd in {transcript.name} "
                           f"({transcript.where}):\n" + "\n".join(diffs))
        return
    why, lines = DIFFERENT[transcript.name]
    elsewhere = [d for d in diffs if int(_LINE.match(d).group(1)) not in lines]
    assert not elsewhere, (f"{transcript.name} may differ only at lines {lines} ({why}):\n"
                           + "\n".join(elsewhere))
