"""The tube -> node ring: stable, balanced, consistent, ketama-compatible."""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from bsclient import ClusterClient
from bsclient.ring import Ring

NODES4 = ["node1", "node2", "node3", "node4"]
TUBES = [f"tube-{i}" for i in range(10_000)]


def mapping(ring: Ring, keys=TUBES) -> dict[str, str]:
    return {k: ring.node_for(k) for k in keys}


@pytest.mark.parametrize("ketama", [False, True])
def test_same_config_same_mapping_whatever_the_order(ketama):
    a = Ring({"node1": 1, "node2": 2, "node3": 1}, ketama=ketama)
    b = Ring({"node3": 1, "node2": 2, "node1": 1}, ketama=ketama)
    assert mapping(a) == mapping(b)


def test_mapping_is_the_same_in_another_process():
    # md5 only: no dependence on PYTHONHASHSEED or on the process
    script = (
        "import json, sys; from bsclient.ring import Ring; "
        "r = Ring(['node1','node2','node3','node4']); "
        "print(json.dumps({f't{i}': r.node_for(f't{i}') for i in range(500)}))"
    )
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                             text=True, env=env, timeout=60, check=True)
        outs.append(json.loads(out.stdout))
    here = mapping(Ring(NODES4), [f"t{i}" for i in range(500)])
    assert outs[0] == outs[1] == here


def test_node_names_not_addresses_decide_the_mapping():
    a = ClusterClient({f"node{i}": f"127.0.0.1:{11300 + i}" for i in range(1, 5)})
    b = ClusterClient({f"node{i}": f"10.9.9.{i}:{20000 + i}" for i in range(1, 5)})
    assert all(a.node_for(t) == b.node_for(t) for t in TUBES[:2000])


@pytest.mark.parametrize("ketama", [False, True])
def test_balance_of_10000_tubes_over_4_nodes(ketama):
    counts = Counter(mapping(Ring(NODES4, ketama=ketama)).values())
    mean = len(TUBES) / 4
    assert set(counts) == set(NODES4)
    for node, n in counts.items():
        assert abs(n - mean) <= 0.15 * mean, (node, n)


@pytest.mark.parametrize("ketama", [False, True])
def test_adding_a_node_moves_about_one_nth(ketama):
    before = mapping(Ring(NODES4, ketama=ketama))
    after = mapping(Ring(NODES4 + ["node5"], ketama=ketama))
    moved = [t for t in TUBES if before[t] != after[t]]
    assert all(after[t] == "node5" for t in moved)  # nothing shuffles between old nodes
    assert 0.15 <= len(moved) / len(TUBES) <= 0.25  # ~1/5


def test_removing_a_node_moves_only_its_tubes():
    ring = Ring(NODES4)
    before = mapping(ring)
    after = mapping(ring.without_node("node2"))
    for t in TUBES:
        if before[t] != "node2":
            assert after[t] == before[t]
        else:
            assert after[t] != "node2"


def test_weights_shift_the_share():
    counts = Counter(mapping(Ring({"node1": 1, "node2": 2, "node3": 1})).values())
    assert 1.6 < counts["node2"] / counts["node1"] < 2.4
    assert 1.6 < counts["node2"] / counts["node3"] < 2.4


def test_preference_starts_at_the_owner_and_covers_every_node():
    ring = Ring(NODES4)
    for tube in TUBES[:200]:
        pref = ring.preference(tube)
        assert pref[0] == ring.node_for(tube)
        assert sorted(pref) == NODES4
        assert ring.preference(tube) == pref


# --- ketama: compare with an independent reading of libketama ------------------
def ketama_reference(weights: dict[str, int]):
    """libketama's continuum: floor(w/total * 40 * N) digests per server,
    four 32-bit little-endian points per md5 digest of "name-k"; a key goes
    to the first point above its own hash (wrapping)."""
    total = sum(weights.values())
    points = []
    for name, w in weights.items():
        for k in range(int(w / total * 40 * len(weights))):
            d = hashlib.md5(f"{name}-{k}".encode()).digest()
            for h in range(4):
                points.append((int.from_bytes(d[h * 4:h * 4 + 4], "little"), name))
    points.sort()
    values = [p for p, _ in points]

    def lookup(key: str) -> str:
        h = int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little")
        i = bisect.bisect(values, h)
        return points[i % len(points)][1]
    return lookup


@pytest.mark.parametrize("weights", [
    dict.fromkeys(NODES4, 1),
    {"node1": 600, "node2": 400},
    {"node1": 1, "node2": 3, "node3": 2},
])
def test_ketama_mode_matches_libketama(weights):
    ref = ketama_reference(weights)
    ring = Ring(weights, ketama=True)
    assert all(ring.node_for(t) == ref(t) for t in TUBES[:3000])


def test_invalid_rings_are_refused():
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring(["node/1"])
    with pytest.raises(ValueError):
        Ring({"node1": 0})


def test_the_docs_example_names_the_node_emails_really_lands_on():
    # docs/CLIENT.md's ten-line example prints a handle for "emails" on 4 nodes
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CLIENT.md").read_text()
    m = re.search(r'cc\.put\(f"hello \{i\}"\.encode\(\)\)\)\s+# -> "(node\d+)/1"', doc)
    assert m, "the example's handle comment is gone from docs/CLIENT.md"
    assert Ring(NODES4).node_for("emails") == m.group(1)
    assert f'"emails" lands on {m.group(1)}' in doc


def test_preference_tuple_is_preference_cached():
    ring = Ring(NODES4)
    for tube in TUBES[:200]:
        assert list(ring.preference_tuple(tube)) == ring.preference(tube)
        assert ring.preference_tuple(tube) is ring.preference_tuple(tube)
