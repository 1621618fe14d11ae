"""Ring.preference() against a ring computed here, from the scheme alone.

The failover order the docs promise is "the owner, then the next node in ring
order": walk the ring clockwise from the tube's point and take each node the
first time it appears.  This file builds the ring points itself with hashlib,
following uhashring's documented layouts, and checks the owner and the whole
order for many tube names, both ring modes, with weights and with vnodes:

* md5 mode: node ``name`` with weight ``w`` has points md5("name-i") for
  i < vnodes * w (vnodes 160 by default), each the full 128-bit digest read
  big-endian; a key's point is md5(key) read the same way.
* ketama mode (libketama's continuum): node ``name`` gets
  vnodes * N * w // total_weight digests md5("name-i") (vnodes 40 by default,
  N nodes), and each digest gives 4 points, its 4-byte groups read
  little-endian; a key's point is the first group of md5(key).

A key belongs to the first point strictly above its own, wrapping round.
"""

from __future__ import annotations

import bisect
import hashlib
import random

import pytest
from bsclient.ring import Ring, natural_key

MD5_VNODES, KETAMA_VNODES, KETAMA_GROUPS = 160, 40, 4
TUBE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+/;.$_()"


def tube_names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f"tube-{i}" for i in range(count // 2)]
    while len(names) < count:
        first = rng.choice(TUBE_CHARS.replace("-", ""))  # a name never starts with '-'
        names.append(first + "".join(rng.choices(TUBE_CHARS, k=rng.randint(0, 40))))
    return names


def digest(text: str) -> bytes:
    return hashlib.md5(text.encode("utf-8")).digest()


def key_point(key: str, ketama: bool) -> int:
    d = digest(key)
    return int.from_bytes(d[:4], "little") if ketama else int.from_bytes(d, "big")


def ring_points(weights: dict[str, int], ketama: bool, vnodes: int | None) -> list[tuple]:
    """Sorted (point, node); a point two nodes share goes to the later node in name order."""
    owner: dict[int, str] = {}
    total = sum(weights.values())
    for name in sorted(weights, key=natural_key):
        if ketama:
            count = (vnodes or KETAMA_VNODES) * len(weights) * weights[name] // total
            for i in range(count):
                d = digest(f"{name}-{i}")
                for g in range(KETAMA_GROUPS):
                    owner[int.from_bytes(d[4 * g:4 * g + 4], "little")] = name
        else:
            for i in range((vnodes or MD5_VNODES) * weights[name]):
                owner[int.from_bytes(digest(f"{name}-{i}"), "big")] = name
    return sorted(owner.items())


def expected_order(points: list[tuple], keys: list[int], key: int, nodes: int) -> list[str]:
    start = bisect.bisect_right(keys, key) % len(points)
    order: list[str] = []
    for _, name in points[start:] + points[:start]:
        if name not in order:
            order.append(name)
            if len(order) == nodes:
                break
    return order


RINGS = {
    "3 equal": ({"node1": 1, "node2": 1, "node3": 1}, None),
    "5 weighted": ({"node1": 1, "node2": 3, "node3": 1, "node4": 2, "node10": 5}, None),
    "12 nodes": ({f"node{i}": 1 + i % 3 for i in range(1, 13)}, None),
    "vnodes 7": ({"a": 1, "b": 2, "c": 1, "d": 1}, 7),
}


@pytest.mark.parametrize("ketama", [False, True], ids=["md5", "ketama"])
@pytest.mark.parametrize("ring_name", list(RINGS))
def test_preference_is_ring_order_from_the_tubes_point(ring_name, ketama):
    weights, vnodes = RINGS[ring_name]
    ring = Ring(weights, ketama=ketama, vnodes=vnodes)
    points = ring_points(weights, ketama, vnodes)
    keys = [p for p, _ in points]
    seen_second = set()
    for tube in tube_names(1500, seed=len(weights)):
        want = expected_order(points, keys, key_point(tube, ketama), len(weights))
        got = ring.preference(tube)
        assert got == want, (tube, got, want)
        assert ring.node_for(tube) == want[0], tube
        seen_second.add((want[0], want[1]))
    # the tubes exercised many (owner, next) pairs, not one lucky layout
    assert len(seen_second) >= min(len(weights) * (len(weights) - 1), 40)


def test_the_independent_ring_has_the_documented_number_of_points():
    weights = {"node1": 1, "node2": 3, "node3": 2}
    assert len(ring_points(weights, False, None)) == 160 * 6
    # ketama: 40 * 3 * w // 6 digests per node (20, 60, 40), 4 points each
    assert len(ring_points(weights, True, None)) == 4 * (20 + 60 + 40)
