"""Keep Python's cyclic garbage collector off the node's long-lived objects.

How this works
--------------
Every job, session and tube is a GC-tracked object, and a full collection
walks all of them: with a million jobs stored that is a pause of most of a
second in which nothing is served and no delayed job is promoted.  The
node frees its objects by reference counting alone: the store breaks the
links it makes (session <-> connection, job <-> reserver) when a job or a
connection goes, and ``tests/node/test_gc_cycles.py`` runs every kind of
connection life (errors, hang-ups mid-body and mid-reserve, timeouts,
bury/kick, pause) and checks that it leaves no reference cycle behind.

So after every collection of the middle generation, whatever survived it
is moved to the permanent generation with ``gc.freeze()``: later
collections only ever walk young objects.  A frozen object is still freed
the moment its last reference goes; only a reference cycle among frozen
objects would be kept, which is what the test above guards against.
"""

from __future__ import annotations

import gc


def _after_collection(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()


def freeze_survivors() -> None:
    """Freeze what exists now and, from now on, what survives gen-1 collections."""
    gc.freeze()
    if _after_collection not in gc.callbacks:
        gc.callbacks.append(_after_collection)
