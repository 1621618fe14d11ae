"""The consistent-hash ring that maps tube names to node names.

How this works
--------------
A thin, immutable wrapper over ``uhashring.HashRing``.  Ring points are
derived from node *names* ("node1", "node2", ...), never addresses, so moving
a node to another host keeps its tubes, and every client that reads the same
node names and weights maps every tube to the same node (md5 only; no
dependence on Python's randomised ``hash()`` or on dict order: nodes are
inserted in natural name order).

Two modes:

* default: uhashring's own ring, 160 points per unit of weight, each point
  and each key hashed with the full 128-bit md5;
* ``ketama=True``: libketama's continuum (40 * N * weight / total-weight
  md5 digests per node, 4 points per digest, 32-bit little-endian hashes),
  so the mapping matches other ketama clients given the same names.

``preference(tube)`` lists the owner first and then every other node in
ring order from the tube's point: the deterministic failover order.

``placement(nodes, mode)`` is the one rule for which nodes own tubes: every
node not marked ``leaving``, with its weight, hashed as ``mode`` ("md5" or
"ketama") says.  ClusterClient's put ring, ``bscluster route`` and
``bscluster rebalance`` (through ``ClusterConfig.placement``) all ask it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from uhashring import HashRing

OWNER_CACHE_SIZE = 8192
RING_MD5 = "md5"  # uhashring's own ring (the default)
RING_KETAMA = "ketama"  # libketama's continuum
RING_MODES = (RING_MD5, RING_KETAMA)
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that puts node2 before node10."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


class Ring:
    """Maps keys (tube names) to node names; immutable, rebuild to change."""

    def __init__(
        self,
        nodes: Mapping[str, int] | Iterable[str],
        *,
        ketama: bool = False,
        vnodes: int | None = None,
    ) -> None:
        weights = dict(nodes) if isinstance(nodes, Mapping) else {n: 1 for n in nodes}
        if not weights:
            raise ValueError("a ring needs at least one node")
        for name, weight in weights.items():
            if not name or "/" in name:
                raise ValueError(f"invalid node name {name!r} (non-empty, no '/')")
            if not isinstance(weight, int) or weight < 1:
                raise ValueError(f"node {name}: weight must be an integer >= 1, got {weight!r}")
        self.weights = {n: weights[n] for n in sorted(weights, key=natural_key)}
        self.ketama = ketama
        self.vnodes = vnodes
        conf = {n: {"weight": w} for n, w in self.weights.items()}
        kwargs: dict = {"vnodes": vnodes} if vnodes else {}
        if ketama:
            kwargs["hash_fn"] = "ketama"
        self._ring = HashRing(nodes=conf, **kwargs)
        self._owner: dict[str, str] = {}
        self._preference: dict[str, tuple[str, ...]] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in natural order."""
        return tuple(self.weights)

    def node_for(self, key: str) -> str:
        """The node that owns ``key``."""
        owner = self._owner.get(key)
        if owner is None:
            owner = self._ring.get_node(key)
            if len(self._owner) >= OWNER_CACHE_SIZE:
                self._owner.clear()
            self._owner[key] = owner
        return owner

    def preference(self, key: str) -> list[str]:
        """Every node, owner first, then in ring order from ``key``'s point."""
        return list(self.preference_tuple(key))

    def preference_tuple(self, key: str) -> tuple[str, ...]:
        """``preference`` as a cached tuple (for the hot paths)."""
        order = self._preference.get(key)
        if order is None:
            order = tuple(self._ring.iterate_nodes(key))
            if len(self._preference) >= OWNER_CACHE_SIZE:
                self._preference.clear()
            self._preference[key] = order
        return order

    def with_node(self, name: str, weight: int = 1) -> Ring:
        """A new ring with ``name`` added (or its weight changed)."""
        return Ring({**self.weights, name: weight}, ketama=self.ketama, vnodes=self.vnodes)

    def without_node(self, name: str) -> Ring:
        """A new ring without ``name``."""
        weights = {n: w for n, w in self.weights.items() if n != name}
        return Ring(weights, ketama=self.ketama, vnodes=self.vnodes)

    def __repr__(self) -> str:
        mode = "ketama" if self.ketama else "md5"
        return f"<Ring {mode} {self.weights}>"


class Placed(Protocol):
    """A node as placement sees it (``NodeAddress`` and bscluster's ``NodeSpec`` fit)."""

    name: str
    weight: int
    leaving: bool


def placement(nodes: Iterable[Placed], mode: str = RING_MD5, *,
              vnodes: int | None = None) -> Ring:
    """The ring puts use: the nodes that are not leaving, weighted, hashed by ``mode``.

    A leaving node owns no tube (it is still reserved from until removed).
    ValueError if ``mode`` is unknown or every node is leaving.
    """
    if mode not in RING_MODES:
        raise ValueError(f"ring must be {' or '.join(map(repr, RING_MODES))}, got {mode!r}")
    owners = {n.name: n.weight for n in nodes if not n.leaving}
    if not owners:
        raise ValueError("every node is leaving: at least one must stay to own tubes")
    return Ring(owners, ketama=mode == RING_KETAMA, vnodes=vnodes)
