"""Transcript runs made ahead of need, in worker threads.

How this works
--------------
Each run needs a fresh server, and starting bsnode costs a few tenths of a
second, mostly spent waiting on its imports.  So instead of playing a
transcript when its test asks, ``BackgroundRuns`` submits every selected
transcript up front, in test order, to a small thread pool; each worker
starts its own server, plays the transcript, stops the server.  A test then
only waits for its run's result.  beanstalkd's recordings (the reference)
and bsnode's runs (the candidate) are two such pools working side by side,
so the suite takes about as long as its slowest part, not the sum of all.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from .dsl import Transcript
from .pristine import STARTERS
from .runner import Run, run


def play_fresh(kind: str, t: Transcript) -> Run:
    """Play t on a new server of this kind, then stop the server."""
    server = STARTERS[kind](*t.flags)
    try:
        return run(t, server.host, server.port, server.pid)
    finally:
        server.stop()


class BackgroundRuns:
    def __init__(self, kind: str, transcripts: list[Transcript], workers: int) -> None:
        self.kind = kind
        self._exec = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"runs-{kind}")
        self._futures: dict[str, Future] = {
            t.name: self._exec.submit(play_fresh, kind, t) for t in transcripts
        }

    def get(self, t: Transcript) -> Run:
        future = self._futures.get(t.name)
        if future is None:  # not foreseen: play it now
            future = self._futures[t.name] = self._exec.submit(play_fresh, self.kind, t)
        return future.result()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._exec.shutdown(wait=True)
