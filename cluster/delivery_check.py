"""The soak's delivery checker: self-checking job bodies and a judge of what happened.

How this works
--------------
``make_body`` writes a unique key and a CRC into every body, ``parse_body``
reads them back.  A run records every outcome in a ``History`` (what was
attempted, acknowledged, of unknown fate, delivered, deleted); ``check`` is a
pure function of that history, in the style of Jepsen's queue checker, and
says what was lost, duplicated, resurrected, corrupt or phantom
(bench/soak.py describes each).  It lives in the installed package so that
bench/soak.py and its tests (tests/e2e/test_faults_soak.py) share it without
importing each other.
"""

from __future__ import annotations

import random
import threading
import zlib
from dataclasses import dataclass, field


# --- bodies -------------------------------------------------------------------------
def make_body(producer: int, seq: int, rng: random.Random, size_max: int) -> bytes:
    """``p<producer>-<seq> <crc> <padding>``: unique and self-checking."""
    pad = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, size_max)))
    key = f"p{producer}-{seq}".encode()
    return key + b" %08x " % zlib.crc32(key + pad) + pad


def parse_body(body: bytes) -> tuple[str | None, bool]:
    """(key, intact) of a body made by make_body."""
    try:
        key, crc, pad = body.split(b" ", 2)
        return key.decode(), int(crc, 16) == zlib.crc32(key + pad)
    except ValueError:
        return None, False


# --- the history and its checker ------------------------------------------------------
@dataclass
class Delivery:
    key: str | None
    at: float
    intact: bool
    deleted: bool | None = None  # None until the delete's outcome is known


@dataclass
class History:
    attempted: set = field(default_factory=set)  # keys a producer tried to put
    acked: dict = field(default_factory=dict)  # INSERTED came back: key -> "node/id"
    unknown: set = field(default_factory=set)  # sent, then the connection broke
    refused: set = field(default_factory=set)  # never stored (not sent, or an error reply)
    deliveries: list = field(default_factory=list)
    kills: int = 0
    restarts: int = 0
    kill_log: list = field(default_factory=list)  # (seconds into the run, node)
    errors: list = field(default_factory=list)  # the run could not be completed
    stranded: dict = field(default_factory=dict)  # node -> job counts left at the end

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


@dataclass
class Report:
    put_attempted: int
    put_acknowledged: int
    put_unknown: int
    put_refused: int
    reserved: int  # deliveries, counting duplicates
    delivered_jobs: int  # distinct jobs delivered
    deleted: int  # deletes acknowledged
    delete_unacknowledged: int
    lost: int
    duplicated: int  # jobs delivered more than once
    duplicated_allowed: int  # ... each time after a delete that was not acknowledged
    resurrected: int  # delivered again after an acknowledged delete
    corrupt: int
    phantom: int
    unknown_stored: int  # unknown-fate puts that turned out stored
    kills: int
    restarts: int
    errors: list
    lost_keys: list  # "key@node/id", the first ones
    resurrected_keys: list
    stranded: dict

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.corrupt or self.phantom
                    or self.duplicated != self.duplicated_allowed)


def check(h: History) -> Report:
    """Judge a history: what was lost, duplicated, resurrected."""
    by_key: dict[str, list[Delivery]] = {}
    corrupt = phantom = 0
    for d in sorted(h.deliveries, key=lambda d: d.at):
        if not d.intact:
            corrupt += 1
        if d.key is None or d.key not in h.attempted:
            phantom += 1
            continue
        by_key.setdefault(d.key, []).append(d)
    lost = sorted(h.acked.keys() - by_key.keys())
    duplicated = allowed = 0
    resurrected = []
    for key, ds in by_key.items():
        if len(ds) < 2:
            continue
        duplicated += 1
        if any(d.deleted for d in ds[:-1]):
            resurrected.append(key)
        else:
            allowed += 1
    return Report(
        put_attempted=len(h.attempted), put_acknowledged=len(h.acked),
        put_unknown=len(h.unknown), put_refused=len(h.refused),
        reserved=len(h.deliveries), delivered_jobs=len(by_key),
        deleted=sum(1 for d in h.deliveries if d.deleted),
        delete_unacknowledged=sum(1 for d in h.deliveries if not d.deleted),
        lost=len(lost), duplicated=duplicated, duplicated_allowed=allowed,
        resurrected=len(resurrected), corrupt=corrupt, phantom=phantom,
        unknown_stored=len(h.unknown & by_key.keys()),
        kills=h.kills, restarts=h.restarts, errors=list(h.errors),
        lost_keys=[f"{k}@{h.acked[k]}" for k in lost[:20]],
        resurrected_keys=sorted(resurrected)[:20], stranded=dict(h.stranded),
    )
