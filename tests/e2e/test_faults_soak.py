"""The soak's checker on made-up histories, and a short soak for real.

bench/soak.py runs producers and consumers through ClusterClient on three
``bsnode -b DIR -f 0`` processes while it SIGKILLs and restarts them; its
``check`` decides what was lost or duplicated.  The checker is tested first
on histories with known faults (a checker that cannot fail proves nothing),
then a short run must lose nothing.  The long runs are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bscluster import delivery_check as soak

ROOT = Path(__file__).resolve().parents[2]

SHORT_SOAK = ["--duration", "8", "--kill-every", "1", "--down-max", "0.3",
              "--drain-timeout", "90", "--stall", "20", "--json"]


def history(acked=(), attempted=None, unknown=(), deliveries=()) -> soak.History:
    h = soak.History()
    h.acked = {k: f"node1/{i}" for i, k in enumerate(acked, 1)}
    h.unknown = set(unknown)
    h.attempted = set(attempted if attempted is not None else [*acked, *unknown])
    for i, (key, deleted, *intact) in enumerate(deliveries):
        h.deliveries.append(soak.Delivery(key, float(i), intact[0] if intact else True,
                                          deleted))
    return h


def test_a_clean_history_is_ok():
    r = soak.check(history(["a", "b"], deliveries=[("a", True), ("b", True)]))
    assert r.ok and r.lost == 0 and r.duplicated == 0 and r.deleted == 2


def test_an_acknowledged_job_never_delivered_is_lost():
    r = soak.check(history(["a", "b"], deliveries=[("a", True)]))
    assert not r.ok and r.lost == 1 and r.lost_keys == ["b@node1/2"]


def test_a_redelivery_after_an_unacknowledged_delete_is_an_allowed_duplicate():
    r = soak.check(history(["a"], deliveries=[("a", False), ("a", False), ("a", True)]))
    assert r.ok and r.duplicated == 1 and r.duplicated_allowed == 1


def test_a_redelivery_after_an_acknowledged_delete_is_a_resurrection():
    r = soak.check(history(["a"], deliveries=[("a", True), ("a", True)]))
    assert not r.ok and r.resurrected == 1 and r.resurrected_keys == ["a"]


def test_corrupt_and_phantom_bodies_fail_the_run():
    assert not soak.check(history(["a"], deliveries=[("a", True, False)])).ok
    r = soak.check(history(["a"], deliveries=[("a", True), ("zz", True)]))
    assert not r.ok and r.phantom == 1


def test_a_put_of_unknown_fate_may_or_may_not_arrive():
    assert soak.check(history(["a"], unknown=["u"], deliveries=[("a", True)])).ok
    r = soak.check(history(["a"], unknown=["u"], deliveries=[("a", True), ("u", True)]))
    assert r.ok and r.unknown_stored == 1


def test_bodies_check_themselves():
    import random
    body = soak.make_body(3, 17, random.Random(1), 64)
    assert soak.parse_body(body) == ("p3-17", True)
    flipped = body[:-1] + bytes([body[-1] ^ 1])
    assert soak.parse_body(flipped)[1] is False


@pytest.mark.integration
def test_short_soak_with_kills_loses_nothing():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), *SHORT_SOAK],
                       capture_output=True, text=True, timeout=180)
    assert r.stdout.strip(), r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    print({k: report[k] for k in ("put_acknowledged", "reserved", "deleted", "lost",
                                  "duplicated", "kills", "backlog_at_stop", "seconds",
                                  "seed")})
    assert r.returncode == 0, (report, r.stderr[-2000:])
    assert report["lost"] == 0 and report["resurrected"] == 0
    assert report["duplicated"] == report["duplicated_allowed"]
    assert report["kills"] >= 3 and report["restarts"] == report["kills"]
    assert report["put_acknowledged"] >= 1000
    assert report["delivered_jobs"] >= report["put_acknowledged"]
