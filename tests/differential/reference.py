"""beanstalkd's replies to every transcript, recorded ahead of need.

How this works
--------------
The reference recordings do not depend on bsnode, so a background thread
plays the session's transcripts on fresh beanstalkd servers, in the order the
tests will ask for them, while the main thread tests bsnode.  ``get(name)``
waits for one recording.  The whole suite then takes about as long as its
slower half instead of the sum of both.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from .dsl import Transcript
from .pool import ServerPool
from .runner import Run, run


class ReferenceRecorder:
    def __init__(self, transcripts: list[Transcript]) -> None:
        self._pool = ServerPool("beanstalkd")
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference")
        self._futures: dict[str, Future] = {
            t.name: self._exec.submit(self._play, t) for t in transcripts
        }

    def _play(self, t: Transcript) -> Run:
        server = self._pool.take(t.flags)
        try:
            return run(t, server.host, server.port, server.pid)
        finally:
            self._pool.give_back(server)

    def get(self, t: Transcript) -> Run:
        future = self._futures.get(t.name)
        if future is None:  # not foreseen: record it now
            future = self._futures[t.name] = self._exec.submit(self._play, t)
        return future.result()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._exec.shutdown(wait=True)
        self._pool.close()
