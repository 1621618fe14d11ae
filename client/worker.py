"""Worker: run a handler over the jobs of some tubes, the loop most users write by hand.

How this works
--------------
A ``Worker`` runs ``concurrency`` slots, as threads or as gevent greenlets.
Each slot owns one client made by the worker's ``source`` (a new
``ClusterClient`` or ``Client`` per slot: nothing is shared) and loops:

1. reserve with a short timeout (``reserve_timeout``, 1 s), so a stop is
   noticed within about a second;
2. call ``handler(job)``;
3. settle the job as ``bsclient.retry`` decides: returned -> delete;
   raised -> release with a backoff delay and the job's own priority, or
   bury (``Bury``, or the last of ``max_attempts``).  Every failure is one
   log line naming the job handle, tube, attempt and exception.

Keep-alive.  Beside each slot runs a keeper task.  While the handler runs,
the keeper looks at the job ``FIRST_LOOK`` seconds after it was reserved
(a handler done sooner costs no extra command), reads ``ttr`` and
``time-left`` with ``stats-job``, and ``touch``es the job whenever less
than half its TTR is left: a handler may run for hours without the job
going back to ready.  If a touch finds the job no longer ours (NOT_FOUND,
or the connection dropped, which makes the node hand the job back), one
warning says the job may run twice; the result is still settled if it can
be.  The slot's lock keeps the keeper's touches and the slot's settling
from using the client at the same time.

Jobs reserved ahead.  A ``ClusterClient`` reserve waits on several nodes
at once and may keep a second job (or a reserve still in flight that takes
one) for the slot's next reserve.  At its first look, the keeper hands
those back to their nodes (``ClusterClient.buffer_returner``, the slot's
own ``return_buffered``), so while a handler runs long no other job sits
reserved by this slot with its TTR running: another worker gets it.  A
short handler (done within ``FIRST_LOOK``) keeps the buffered job, and the
next reserve costs no round trip.  A stopping slot closes its client, which
returns them too.

Stopping.  ``stop()`` is graceful: slots finish the job in hand and reserve
nothing new; a job a reserve returns after the stop is handed back
untouched by closing the slot's connections (the node returns it to ready
with its priority and no counter bumped).  ``stop(now=True)`` hands back
every job a handler still holds the same way and abandons those handlers
(gevent: killed; threads: left to finish, their result ignored).  ``run()``
maps the first SIGTERM/SIGINT to ``stop()`` and the second to
``stop(now=True)``; signal handlers only record the signal, the loop in
``run()`` acts on it.

Connection loss never ends a slot: a failed reserve is logged and retried
after a backoff (``RECONNECT_MIN`` doubling to ``RECONNECT_MAX`` seconds,
cut short by a stop); the clients reconnect by themselves.

gevent mode needs the ``socket`` module monkey-patched before the worker
starts (``bscluster work --mode gevent`` does it); the library never patches.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from . import retry
from .client import DEFAULT_TUBE, Job
from .cluster import ClusterClient
from .config import read_layout, read_tls_context
from .consume import check_tube
from .errors import ConnectionLostError, DeadlineSoonError, NotFoundError, TimedOutError
from .retry import Policy
from .worker_runtime import RUNTIMES, Runtime, make_runtime

DEFAULT_CONCURRENCY = 1
DEFAULT_RESERVE_TIMEOUT = 1  # seconds a slot waits for a job before checking for a stop
FIRST_LOOK = 0.5  # seconds after a reservation the keeper first looks at the job's TTR
RECONNECT_MIN = 0.1  # seconds a slot waits after a failed reserve, doubling ...
RECONNECT_MAX = 5.0  # ... up to this
SIGNAL_POLL = 0.1  # seconds between run()'s looks at recorded signals
LOCK_WAIT = 1.0  # seconds stop(now=True) waits for a slot busy with a touch
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MODES = tuple(RUNTIMES)
PAST = {retry.RELEASE: "released", retry.BURY: "buried", retry.DELETE: "deleted"}  # counts

log = logging.getLogger("bsclient.worker")


class QueueClient(Protocol):
    """What a worker needs of a client: ``Client`` and ``ClusterClient`` both fit."""

    def watch(self, tube: str) -> int: ...
    def ignore(self, tube: str) -> int: ...
    def reserve(self, timeout: float | None = None) -> Job: ...
    def touch(self, job: Job) -> None: ...
    def delete(self, job: Job) -> None: ...
    def release(self, job: Job, priority: int = ..., delay: int = ...) -> None: ...
    def bury(self, job: Job, priority: int = ...) -> None: ...
    def stats_job(self, job: Job) -> dict: ...
    def close(self) -> None: ...


@runtime_checkable
class TakesSslContext(Protocol):
    """A client whose next connections can use another TLS context (Client, ClusterClient)."""

    def use_ssl_context(self, ssl_context) -> None: ...


@runtime_checkable
class ReservesAhead(Protocol):
    """A client that may hold jobs reserved ahead of its caller (``ClusterClient``)."""

    def buffer_returner(self) -> Callable[[], int]: ...


Source = Callable[[], QueueClient] | str | os.PathLike | Mapping
Handler = Callable[[Job], object]


def client_factory(source: Source) -> Callable[[], QueueClient]:
    """A function making one new client per call, from a worker's ``source``.

    ``source`` is a callable returning a new client, a bscluster TOML config
    path (read once, now) or a ``{"node1": "host:port", ...}`` mapping.
    """
    if isinstance(source, (str, os.PathLike)):
        layout = read_layout(source)  # nodes, ring and spread tubes, as the file says
        ctx = read_tls_context(source)  # [tls] and BSCLUSTER_TLS_*
        return lambda: ClusterClient.from_layout(layout, ssl_context=ctx)
    if isinstance(source, Mapping):
        return lambda: ClusterClient(source)
    if callable(source):
        return source
    raise TypeError("source must be a client factory, a config file path or a node mapping, "
                    f"not {type(source).__name__}")


class Lease:
    """When the keeper next looks at a held job; fed times, so tests need no clock."""

    def __init__(self, reserved_at: float) -> None:
        self.ttr: float | None = None  # unknown until the first look
        self.check_at = reserved_at + FIRST_LOOK

    def learned(self, now: float, ttr: int, time_left: int) -> None:
        """``stats-job`` said ``ttr`` and ``time-left`` (whole seconds, rounded down) at ``now``."""
        self.ttr = max(ttr, 1)  # the server runs a ttr of 0 as 1
        self.check_at = now + time_left - self.ttr / 2

    def touched(self, at: float) -> None:
        """A touch sent at ``at`` succeeded: the job has its whole TTR again."""
        self.check_at = at + self.ttr / 2

    def due(self, now: float) -> bool:
        return now >= self.check_at


@dataclass
class Held:
    """The job a slot's handler is working on."""

    job: Job
    lease: Lease
    lost: bool = False  # a keep-alive found the reservation gone


class Slot:
    """One reserve-handle-settle loop with its own client and keeper."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.name = f"slot {index}"
        rt = worker.runtime
        self.lock = rt.lock()
        self.wake = rt.event()  # the keeper's: a job came or went, or the slot ended
        self.client: QueueClient | None = None
        self.give_back: Callable[[], int] | None = None  # the client's return_buffered
        self.held: Held | None = None
        self.ended = False
        self.abandoned = False  # stop(now=True) handed the job back: settle nothing
        self.counts: Counter = Counter()
        self.reconnect_delay = RECONNECT_MIN

    # --- the loop ------------------------------------------------------------------
    def run(self) -> None:
        stopping = self.worker.stopping
        try:
            while not stopping.is_set():
                job = self._reserve()
                if job is None:
                    continue
                if stopping.is_set():
                    log.info("%s: stopping; job %s handed back untouched", self.name, job.handle)
                    break  # the finally closes the connection: the node returns the job
                self._work(job)
        finally:
            self.ended = True
            self._close()
            self.wake.set()

    def _connected(self) -> QueueClient:
        if self.client is None:
            client = self.worker.new_client()
            try:
                for tube in self.worker.tubes:
                    client.watch(tube)
                if DEFAULT_TUBE not in self.worker.tubes:
                    client.ignore(DEFAULT_TUBE)
            except BaseException:
                client.close()
                raise
            self.client = client
            # bound in this thread: the keeper calls it for this slot's session
            self.give_back = client.buffer_returner() if isinstance(client, ReservesAhead) \
                else None
        return self.client

    def _reserve(self) -> Job | None:
        try:
            job = self._connected().reserve(self.worker.reserve_timeout)
        except (TimedOutError, DeadlineSoonError):
            self.reconnect_delay = RECONNECT_MIN
            return None
        except ConnectionLostError as e:
            self._pause(f"cannot reserve: {e}")
            return None
        except Exception as e:  # a bug or a surprise: log it, never end the slot
            self._pause(f"reserve failed: {type(e).__name__}: {e}")
            return None
        self.reconnect_delay = RECONNECT_MIN
        return job

    def _pause(self, why: str) -> None:
        delay = self.reconnect_delay
        log.warning("%s: %s; trying again in %.1f s", self.name, why, delay)
        self.reconnect_delay = min(delay * 2, RECONNECT_MAX)
        self.worker.stopping.wait(delay)

    def _work(self, job: Job) -> None:
        held = Held(job, Lease(self.worker.clock()))
        self.held = held
        self.wake.set()
        error: Exception | None = None
        try:
            self.worker.handler(job)
        except Exception as e:
            error = e
        with self.lock:
            self.held = None
            if not self.abandoned:
                self._settle(held, error)
        self.wake.set()

    # --- settling ----------------------------------------------------------------------
    def _settle(self, held: Held, error: Exception | None) -> None:
        job = held.job
        try:
            if error is None:
                self.client.delete(job)
                self.counts["done"] += 1
            else:
                self._fail(job, error)
        except NotFoundError:
            self.counts["lost"] += 1
            log.warning("job %s was no longer reserved by this worker (its TTR ran out or the "
                        "connection dropped while the handler ran); it may run again",
                        job.handle)
        except ConnectionLostError as e:
            self.counts["lost"] += 1
            log.warning("job %s: connection lost while settling it (%s); the node puts it "
                        "back to ready, so it may run again", job.handle, e)
        except Exception as e:  # e.g. INTERNAL_ERROR from a node whose disk is full
            self.counts["lost"] += 1
            log.error("job %s could not be settled (%s: %s); it stays reserved until its "
                      "TTR runs out, then runs again", job.handle, type(e).__name__, e)

    def _fail(self, job: Job, error: Exception) -> None:
        stats = self.client.stats_job(job)
        attempt = retry.attempt_of(stats)
        policy = self.worker.policy
        action = retry.settle(error, attempt, policy)
        if action.kind == retry.RELEASE:
            self.client.release(job, stats["pri"], action.delay)
            outcome = f"released, runs again in {action.delay} s"
        elif action.kind == retry.BURY:
            self.client.bury(job, stats["pri"])
            outcome = f"buried ({action.why})"
        else:
            self.client.delete(job)
            outcome = f"deleted ({action.why})"
        self.counts["failed"] += 1
        self.counts[PAST[action.kind]] += 1
        of = "" if policy.max_attempts is None else f" of {policy.max_attempts}"
        log.warning("job %s in tube %s failed on attempt %d%s: %s: %s; %s",
                    job.handle, stats.get("tube", "?"), attempt, of, type(error).__name__,
                    error, outcome, exc_info=error if self.worker.tracebacks else None)

    # --- keep-alive --------------------------------------------------------------------
    def keep(self) -> None:
        """The keeper task: touch the held job while its handler runs."""
        clock = self.worker.clock
        while True:
            self.wake.clear()
            if self.ended:
                return
            held = self.held
            if held is None or held.lost:
                self.wake.wait()
                continue
            wait = held.lease.check_at - clock()
            if wait > 0:
                self.wake.wait(wait)
                continue
            with self.lock:
                if self.held is held and not self.abandoned:
                    self._keep_alive(held)

    def _keep_alive(self, held: Held) -> None:
        clock = self.worker.clock
        lease = held.lease
        try:
            if lease.ttr is None:
                self._return_buffered()
                now = clock()
                stats = self.client.stats_job(held.job)
                lease.learned(now, stats["ttr"], stats["time-left"])
                if not lease.due(clock()):
                    return
            at = clock()
            self.client.touch(held.job)
            lease.touched(at)
            self.counts["touched"] += 1
        except (NotFoundError, ConnectionLostError) as e:
            held.lost = True
            log.warning("job %s is no longer reserved by this worker while its handler runs "
                        "(%s); it may run twice", held.job.handle, e)
        except Exception as e:
            held.lost = True
            log.warning("job %s: keep-alive failed (%s: %s); it may run twice",
                        held.job.handle, type(e).__name__, e)

    def _return_buffered(self) -> None:
        """The handler runs long: no other job waits reserved by this slot meanwhile."""
        if self.give_back is None:
            return
        try:
            returned = self.give_back()
        except Exception as e:  # the next reserve reconnects; the node has them back
            log.debug("%s: returning buffered jobs failed: %s", self.name, e)
            return
        if returned:
            self.counts["returned"] += returned
            log.debug("%s: %d job(s) reserved ahead handed back while a handler runs",
                      self.name, returned)

    # --- ending ------------------------------------------------------------------------
    def abandon(self) -> None:
        """stop(now=True): hand the held job back by closing the connections."""
        if not self.lock.acquire(timeout=LOCK_WAIT):
            return  # a touch hangs: the slot's own close (or the process's exit) frees it
        try:
            self.abandoned = True
            if self.held is not None:
                log.warning("%s: stopping now; job %s handed back untouched, its handler "
                            "abandoned", self.name, self.held.job.handle)
                self._close()
        finally:
            self.lock.release()
        self.wake.set()

    def _close(self) -> None:
        client = self.client
        if client is not None:
            try:
                client.close()
            except Exception as e:  # closing must not fail a stop
                log.debug("%s: close failed: %s", self.name, e)


class Worker:
    """Run ``handler(job)`` over the jobs of ``tubes`` in ``concurrency`` slots.

    ``source``: a function returning a NEW client per call (one per slot),
    a bscluster config path, or a node mapping (see ``client_factory``).
    ``mode``: "thread" or "gevent".  ``max_attempts``, ``backoff`` (a
    ``Backoff`` or any ``attempt -> seconds`` function) and ``on_exhausted``
    ("bury" or "delete") make the retry policy (``bsclient.retry``).
    ``tracebacks`` adds each failure's traceback to its log line.
    """

    def __init__(
        self,
        source: Source,
        handler: Handler,
        tubes: str | Iterable[str] = (DEFAULT_TUBE,),
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        mode: str = "thread",
        max_attempts: int | None = retry.DEFAULT_MAX_ATTEMPTS,
        backoff: retry.BackoffFn | None = None,
        on_exhausted: str = retry.BURY,
        reserve_timeout: int = DEFAULT_RESERVE_TIMEOUT,
        tracebacks: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if reserve_timeout < 1:  # 0 would poll the nodes in a busy loop
            raise ValueError("reserve_timeout must be >= 1 second")
        tubes = [tubes] if isinstance(tubes, str) else list(dict.fromkeys(tubes))
        self.tubes = [check_tube(tube) for tube in tubes]
        if not self.tubes:
            raise ValueError("a worker needs at least one tube")
        self.handler = handler
        self.policy = Policy(max_attempts, backoff or retry.Backoff(), on_exhausted)
        self.concurrency = concurrency
        self.reserve_timeout = reserve_timeout
        self.tracebacks = tracebacks
        self.clock = clock
        self.runtime: Runtime = make_runtime(mode)
        self.mode = mode
        self._factory = client_factory(source)
        # SIGHUP under run(): the [tls] files of a config path source, read again
        self.tls_loader: Callable[[], object] | None = (
            partial(read_tls_context, source) if isinstance(source, (str, os.PathLike))
            else None)
        self._ssl: tuple | None = None  # (context,) once use_ssl_context replaced it
        self._made: list[QueueClient] = []  # every client made, to refuse a shared one
        self.stopping = self.runtime.event()
        self.forced = False
        self.slots: list[Slot] = []
        self._tasks: list = []
        self._signals: list[int] = []

    def new_client(self) -> QueueClient:
        client = self._factory()
        if any(client is made for made in self._made):
            raise ValueError("the worker's client factory returned a client it had returned "
                             "before: each slot needs its own (return a new one per call)")
        self._made.append(client)
        if self._ssl is not None and isinstance(client, TakesSslContext):
            client.use_ssl_context(self._ssl[0])
        return client

    def use_ssl_context(self, ssl_context) -> None:
        """Every slot's client, and each made from now on, opens its next connections with
        ``ssl_context`` (certificates rotated while the worker runs); open connections,
        and the jobs reserved on them, stay as they are."""
        self._ssl = (ssl_context,)
        for slot in self.slots:
            client = slot.client
            if isinstance(client, TakesSslContext):
                client.use_ssl_context(ssl_context)

    @property
    def counts(self) -> Counter:
        """Jobs done, failed, released, buried, deleted, lost, touches, over all slots."""
        total: Counter = Counter()
        for slot in self.slots:
            total.update(slot.counts)
        return total

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the slots and return; ``stop``/``join`` end them."""
        if self.slots:
            raise RuntimeError("this worker was started already")
        rt = self.runtime
        for i in range(1, self.concurrency + 1):
            slot = Slot(self, i)
            self.slots.append(slot)
            self._tasks.append(rt.spawn(slot.run, f"bsworker-{i}"))
            rt.spawn(slot.keep, f"bsworker-{i}-keeper")

    def stop(self, now: bool = False) -> None:
        """Take no new jobs; with ``now``, also hand back the jobs being handled."""
        self.stopping.set()
        if now and not self.forced:
            self.forced = True
            for slot in self.slots:
                slot.abandon()
            self.runtime.kill(self._tasks)

    def running(self) -> int:
        """How many slots have not ended yet."""
        return sum(not slot.ended for slot in self.slots)

    def busy(self) -> int:
        """How many handlers are running now."""
        return sum(slot.held is not None for slot in self.slots)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the slots to end (after a stop); True if they all did."""
        return self.runtime.join(self._tasks, timeout)

    def run(self, *, signals: bool = True, grace: float | None = None) -> bool:
        """Start, serve until stopped, return True if every handler finished.

        With ``signals`` (main thread only), SIGTERM/SIGINT stop gracefully and a
        second one stops now; with a ``tls_loader`` (set for a config path source:
        it reads [tls] again), SIGHUP hands its context to ``use_ssl_context``.
        ``grace`` seconds after a graceful stop began, the stop becomes
        ``stop(now=True)``.
        """
        handled = (*STOP_SIGNALS, signal.SIGHUP) if self.tls_loader else STOP_SIGNALS
        undo = [self.runtime.on_signal(sig, self._signals.append)
                for sig in (handled if signals else ())]
        try:
            self.start()
            self._serve(grace)
        finally:
            for restore in undo:
                restore()
        return not self.forced

    def _serve(self, grace: float | None) -> None:
        stop_began = None
        while not self.join(SIGNAL_POLL):
            while self._signals:
                self._on_signal(self._signals.pop(0))
            if self.stopping.is_set() and stop_began is None:
                stop_began = self.clock()
            if (grace is not None and stop_began is not None and not self.forced
                    and self.clock() - stop_began >= grace):
                log.warning("stopping now: handlers still running after %s s of grace", grace)
                self.stop(now=True)
            if self.forced:
                break  # thread handlers may still run; their jobs are back in the queue

    def reload_tls(self) -> bool:
        """Read the TLS files again (``tls_loader``) and use them; False, logged, and
        nothing changed if they cannot be loaded."""
        try:
            context = self.tls_loader()
        except (ValueError, OSError) as e:  # (TlsConfigError is a ValueError)
            log.error("SIGHUP: TLS files not reloaded, keeping the old ones: %s", e)
            return False
        self.use_ssl_context(context)
        log.info("SIGHUP: TLS files read again; new connections use them")
        return True

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_tls()
            return
        name = signal.Signals(signum).name
        busy = self.busy()
        if not self.stopping.is_set():
            self.stop()  # before the line: whoever reads it may count on the stop
            log.info("%s: stopping gracefully: no new jobs, waiting for %d running "
                     "handler(s) (%s again: stop now)", name, busy, name)
        elif not self.forced:
            self.stop(now=True)
            log.warning("%s again: stopped now, %d job(s) handed back", name, busy)
