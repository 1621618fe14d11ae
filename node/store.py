"""The job store of one node: jobs, tubes, sessions and their deadlines.

How this works
--------------
This is the pure core of bsnode (beanstalkd's prot.c, tube.c, conn.c
without the sockets).  Time comes from an injected ``clock()`` returning
seconds, so tests drive it with a fake clock; every deadline lives in one
``Scheduler`` and ``tick()`` runs what is due and says when to call again.

A job is in exactly one place, named by ``job.state``:
READY in its tube's ready queue, DELAYED in its tube's delay heap, BURIED in
its tube's buried list, RESERVED in one session's ``reserved`` dict with a
TTR timer.  ``jobs`` maps every live id to its job.

Invariant that makes reservation cheap: outside of paused tubes, no tube has
both ready jobs and sessions waiting on it.  So a job becoming ready goes to
the oldest session waiting on its tube, and a reserve only looks at the
session's watched tubes: the best (priority, id) among them.

A tube lives while jobs, users or watchers hold it (``refs``); "default"
never goes.  The tube list keeps beanstalkd's order (append, swap-remove),
which list-tubes shows.

Every state change that must survive a restart is handed to ``self.wal``
(a ``NullWal`` unless a binlog is attached): ``put`` before the job is
acknowledged, ``update`` before bury/kick/release-with-delay take effect
(if the log refuses, the job stays as it was and the caller says so, as
beanstalkd does with its reserved log space), ``delete``.
Operations return values (a job, a count, None); the wire words are
chosen by node/commands.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bsclient.protocol import DEADLINE_SOON, TIMED_OUT, URGENT_THRESHOLD

from .caps import NO_CAPS
from .job import Job, NullWal, Session
from .timers import Scheduler
from .tube import BURIED, DELAYED, INVALID, READY, RESERVED, Tube

NOT_LOGGED = "not-logged"  # the binlog could not take a change: nothing changed
SAFETY_MARGIN = 1.0  # seconds before a TTR deadline that count as "soon"
DEFAULT_TUBE = "default"


class Store:
    def __init__(self, clock: Callable[[], float] = time.monotonic, wal=None) -> None:
        self.clock = clock
        self.wal = wal or NullWal()
        self.sched = Scheduler()
        self.jobs: dict[int, Job] = {}
        self.tubes: dict[str, Tube] = {}
        self.tube_list: list[Tube] = []
        self.next_id = 1
        self._created = float("-inf")
        self.draining = False
        self.job_timeouts = 0
        self.total_jobs = 0
        self.job_bytes = 0  # sum of the bodies held (caps.py judges it)
        self.caps = NO_CAPS
        self.cur_conns = self.total_conns = self.producers = self.workers = self.waiting = 0
        self.default_tube = self._tube(DEFAULT_TUBE)
        self.default_tube.refs += 1  # held forever

    # --- tubes ------------------------------------------------------------
    def _tube(self, name: str) -> Tube:
        t = self.tubes.get(name)
        if t is None:
            t = self.tubes[name] = Tube(name)
            self.tube_list.append(t)
        return t

    def _unref(self, t: Tube) -> None:
        t.refs -= 1
        if t.refs <= 0:
            del self.tubes[t.name]
            lst = self.tube_list
            i = lst.index(t)
            last = lst.pop()
            if last is not t:
                lst[i] = last
            self.sched.cancel(t.pause_entry)
            self.sched.cancel(t.delay_entry)

    def find_tube(self, name: str) -> Tube | None:
        return self.tubes.get(name)

    # --- sessions -----------------------------------------------------------
    def connect(self, wake: Callable[[bytes], None] | None = None) -> Session:
        s = Session(wake)
        t = self.default_tube
        s.use = t
        t.using += 1
        t.refs += 1
        s.watch.append(t)
        t.watching += 1
        t.refs += 1
        self.cur_conns += 1
        self.total_conns += 1
        return s

    def disconnect(self, s: Session) -> None:
        if s.producer:
            self.producers -= 1
        if s.worker:
            self.workers -= 1
        self.cur_conns -= 1
        self._stop_waiting(s)
        if s.reserved:
            for job in list(s.reserved.values()):
                self._unreserve(s, job)
                self._ready(job)  # back to ready at once, whatever its delay
        for t in s.watch:
            t.watching -= 1
            self._unref(t)
        s.watch = []
        s.use.using -= 1
        self._unref(s.use)
        s.use = None
        s.wake = None

    def set_producer(self, s: Session) -> None:
        if not s.producer:
            s.producer = True
            self.producers += 1

    def set_worker(self, s: Session) -> None:
        if not s.worker:
            s.worker = True
            self.workers += 1

    def use(self, s: Session, name: str) -> Tube:
        t = self._tube(name)
        t.using += 1
        t.refs += 1
        old = s.use
        s.use = t
        old.using -= 1
        self._unref(old)
        return t

    def watch(self, s: Session, name: str) -> int:
        t = self._tube(name)
        if t not in s.watch:
            s.watch.append(t)
            t.watching += 1
            t.refs += 1
        return len(s.watch)

    def ignore(self, s: Session, name: str) -> int | None:
        """Returns the watch count, or None when it would leave nothing watched."""
        watch = s.watch
        for i, t in enumerate(watch):
            if t.name == name:
                if len(watch) < 2:
                    return None
                last = watch.pop()
                if last is not t:
                    watch[i] = last
                t.watching -= 1
                self._unref(t)
                break
        return len(watch)

    # --- job placement ------------------------------------------------------
    def _ready(self, job: Job) -> None:
        """Make a job ready and hand it to a waiting session if there is one."""
        job.state = READY
        t = job.tube
        t.ready.push(job)
        if job.pri < URGENT_THRESHOLD:
            t.urgent += 1
        if t.waiters and not t.is_paused(self.clock()):
            self._serve(t)

    def _unready(self, job: Job) -> None:
        t = job.tube
        t.ready.discard(job)
        if job.pri < URGENT_THRESHOLD:
            t.urgent -= 1

    def _pop_ready(self, t: Tube) -> Job:
        job = t.ready.pop()
        if job.pri < URGENT_THRESHOLD:
            t.urgent -= 1
        return job

    def _delay(self, job: Job, until: float) -> None:
        job.state = DELAYED
        job.deadline = until
        t = job.tube
        t.push_delayed(job)
        entry = t.delay_entry
        if entry is None or until < entry[0]:
            self.sched.cancel(entry)
            t.delay_entry = self.sched.add(until, self._promote_due, t)

    def _undelay(self, job: Job) -> None:
        job.tube.undelay()

    def _promote_due(self, t: Tube, now: float) -> None:
        t.delay_entry = None
        while True:
            job = t.peek_delayed()
            if job is None:
                return
            if job.deadline > now:
                t.delay_entry = self.sched.add(job.deadline, self._promote_due, t)
                return
            t.pop_delayed()
            self._ready(job)

    def _enqueue(self, job: Job, now: float) -> None:
        if job.delay:
            self._delay(job, now + job.delay)
        else:
            self._ready(job)

    # --- reservation --------------------------------------------------------
    def _reserve(self, s: Session, job: Job, now: float) -> None:
        job.state = RESERVED
        job.reserver = s
        job.reserves += 1
        job.deadline = now + job.ttr
        job.timer = self.sched.add(job.deadline, self._ttr_expired, job)
        job.tube.reserved += 1
        s.reserved[job.id] = job
        sn = s.soonest
        if sn is None or job.deadline < sn.deadline:
            s.soonest = job

    def _unreserve(self, s: Session, job: Job) -> None:
        del s.reserved[job.id]
        job.reserver = None
        self.sched.cancel(job.timer)
        job.timer = None
        job.tube.reserved -= 1
        if s.soonest is job:
            s.soonest = None

    def _ttr_expired(self, job: Job, now: float) -> None:
        job.timer = None
        s = job.reserver
        self._unreserve(s, job)
        job.timeouts += 1
        self.job_timeouts += 1
        self._ready(job)

    def soonest_deadline(self, s: Session) -> float | None:
        if not s.reserved:
            return None
        if s.soonest is None:
            s.soonest = min(s.reserved.values(), key=_deadline_of)
        return s.soonest.deadline

    def deadline_soon(self, s: Session, now: float) -> bool:
        d = self.soonest_deadline(s)
        return d is not None and now >= d - SAFETY_MARGIN

    def _best_ready(self, s: Session, now: float) -> Tube | None:
        watch = s.watch
        if len(watch) == 1:  # the common case: no need to compare heads
            t = watch[0]
            return t if t.ready.count and not t.paused_until > now else None
        best = None
        best_job = None
        for t in s.watch:
            if t.ready.count and not t.is_paused(now):
                j = t.ready.peek()
                if best_job is None or j.pri < best_job.pri or (
                        j.pri == best_job.pri and j.id < best_job.id):
                    best, best_job = t, j
        return best

    def reserve(self, s: Session, timeout: int | None):
        """Reserve for ``s``.  Returns a job, a reply word to send now
        (TIMED_OUT / DEADLINE_SOON), or None when the session now waits."""
        if not s.worker:
            self.set_worker(s)
        now = self.clock()
        if s.reserved and self.deadline_soon(s, now) and not any(
                t.ready.count for t in s.watch):
            return DEADLINE_SOON
        t = self._best_ready(s, now)
        if t is not None:
            job = self._pop_ready(t)
            self._reserve(s, job, now)
            return job
        if timeout == 0:
            return DEADLINE_SOON if self.deadline_soon(s, now) else TIMED_OUT
        self._start_waiting(s, now, timeout)
        return None

    def _start_waiting(self, s: Session, now: float, timeout: int | None) -> None:
        s.waiting = True
        self.waiting += 1
        for t in s.watch:
            t.waiters[s] = None
        s.wait_until = now + timeout if timeout is not None and timeout >= 0 else None
        self._schedule_wait(s)

    def _schedule_wait(self, s: Session) -> None:
        when = s.wait_until
        d = self.soonest_deadline(s)
        if d is not None and (when is None or d - SAFETY_MARGIN < when):
            when = d - SAFETY_MARGIN
        s.wait_entry = self.sched.add(when, self._wait_due, s) if when is not None else None

    def _stop_waiting(self, s: Session) -> None:
        if not s.waiting:
            return
        s.waiting = False
        self.waiting -= 1
        for t in s.watch:
            t.waiters.pop(s, None)
        self.sched.cancel(s.wait_entry)
        s.wait_entry = None

    def _wait_due(self, s: Session, now: float) -> None:
        s.wait_entry = None
        if not s.waiting:
            return
        if self.deadline_soon(s, now):
            reply = DEADLINE_SOON
        elif s.wait_until is not None and now >= s.wait_until:
            reply = TIMED_OUT
        else:
            self._schedule_wait(s)
            return
        self._stop_waiting(s)
        s.wake(reply)

    def _serve(self, t: Tube) -> None:
        """Give ready jobs of ``t`` to its waiting sessions, oldest first."""
        now = self.clock()
        while t.waiters and t.ready.count:
            s = next(iter(t.waiters))
            self._stop_waiting(s)
            job = self._pop_ready(t)
            self._reserve(s, job, now)
            s.wake(job)

    # --- commands on jobs ---------------------------------------------------
    def take_id(self) -> int:
        """Use up the next job id.  beanstalkd gives a put its id as soon as
        the command line is read, so a put refused later still uses one."""
        job_id = self.next_id
        self.next_id += 1
        return job_id

    def put(self, s: Session, pri: int, delay: int, ttr: int, body: bytes,
            job_id: int | None = None):
        """Returns the new job, or None when the binlog or a cap cannot take it."""
        self.set_producer(s)
        if not self.caps.admits(self, len(body)):
            return None
        now = self.clock()
        t = s.use
        if job_id is None:
            job_id = self.next_id
            self.next_id += 1
        created = self._created  # jobs put within 1 ms share one float (24 bytes each)
        if now - created > 0.001:
            created = self._created = now
        job = Job(job_id, t, pri, delay, ttr, body, created)
        if delay:
            job.state = DELAYED
            job.deadline = now + delay
        if not self.wal.put(job, now):
            return None
        self.jobs[job.id] = job
        self.job_bytes += len(body)
        t.refs += 1
        t.total_jobs += 1
        self.total_jobs += 1
        if delay:
            self._delay(job, job.deadline)
        else:
            self._ready(job)
        return job

    def delete(self, s: Session, job_id: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        state = job.state
        if state is RESERVED:
            if job.reserver is not s:
                return False
            self._unreserve(s, job)
        elif state is READY:
            self._unready(job)
        elif state is BURIED:
            del job.tube.buried[job.id]
        else:
            self._undelay(job)
        job.state = INVALID
        del self.jobs[job_id]
        self.job_bytes -= len(job.body)
        t = job.tube
        t.deletes += 1
        self.wal.delete(job)
        self._unref(t)
        return True

    def release(self, s: Session, job_id: int, pri: int, delay: int):
        """True when released, None when not reserved by ``s``, NOT_LOGGED
        when the binlog cannot take a release with delay (the job stays
        reserved, as in beanstalkd, which answers OUT_OF_MEMORY)."""
        job = self.jobs.get(job_id)
        if job is None or job.reserver is not s:
            return None
        now = self.clock()
        before = job.pri, job.delay, job.deadline
        job.pri = pri
        job.delay = delay
        job.releases += 1
        if delay:
            job.state = DELAYED
            job.deadline = now + delay
        else:
            job.state = READY
        # A release without delay is kept even if not logged (retried in the
        # background): its job would come back ready after a restart anyway.
        if not self.wal.update(job, now) and delay:
            job.pri, job.delay, job.deadline = before
            job.releases -= 1
            job.state = RESERVED
            return NOT_LOGGED
        self._unreserve(s, job)
        self._enqueue(job, now)
        return True

    def bury(self, s: Session, job_id: int, pri: int):
        """True when buried, False when not reserved by ``s``, NOT_LOGGED when
        the binlog cannot take it (the job stays reserved)."""
        job = self.jobs.get(job_id)
        if job is None or job.reserver is not s:
            return False
        old_pri = job.pri
        job.pri = pri
        job.state = BURIED
        job.buries += 1
        if not self.wal.update(job, self.clock()):
            job.pri = old_pri
            job.buries -= 1
            job.state = RESERVED
            return NOT_LOGGED
        self._unreserve(s, job)
        job.tube.buried[job.id] = job
        return True

    def touch(self, s: Session, job_id: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.reserver is not s:
            return False
        self.sched.cancel(job.timer)
        job.deadline = self.clock() + job.ttr
        job.timer = self.sched.add(job.deadline, self._ttr_expired, job)
        s.soonest = None
        return True

    def reserve_job(self, s: Session, job_id: int) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.state is RESERVED:
            return None
        if job.state is READY:
            self._unready(job)
        elif job.state is BURIED:
            del job.tube.buried[job.id]
        else:
            self._undelay(job)
        self.set_worker(s)
        now = self.clock()
        self._reserve(s, job, now)
        self.wal.update(job, now)
        return job

    def _log_kick(self, job: Job, now: float) -> bool:
        """Log a buried or delayed job as kicked, still in its old place;
        False, with the job unchanged, if the binlog cannot take it."""
        old_state = job.state
        job.kicks += 1
        job.state = READY
        if self.wal.update(job, now):
            return True
        job.kicks -= 1
        job.state = old_state
        return False

    def kick(self, s: Session, bound: int) -> int:
        """Kick up to ``bound`` jobs; fewer if the binlog stops taking them."""
        t = s.use
        now = self.clock()
        n = 0
        buried = t.buried
        if buried:
            while n < bound and buried:
                job = next(iter(buried.values()))
                if not self._log_kick(job, now):
                    break
                del buried[job.id]
                self._ready(job)
                n += 1
        else:
            while n < bound:
                job = t.peek_delayed()
                if job is None or not self._log_kick(job, now):
                    break
                self._undelay(job)
                self._ready(job)
                n += 1
        return n

    def kick_job(self, job_id: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        state = job.state
        if state is not BURIED and state is not DELAYED:
            return False
        if not self._log_kick(job, self.clock()):
            return False  # beanstalkd answers NOT_FOUND too
        if state is BURIED:
            del job.tube.buried[job.id]
        else:
            self._undelay(job)
        self._ready(job)
        return True

    def peek(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)

    def peek_ready(self, s: Session) -> Job | None:
        return s.use.ready.peek()

    def peek_delayed(self, s: Session) -> Job | None:
        return s.use.peek_delayed()

    def peek_buried(self, s: Session) -> Job | None:
        buried = s.use.buried
        return next(iter(buried.values())) if buried else None

    def pause(self, name: str, delay: int) -> bool:
        t = self.tubes.get(name)
        if t is None:
            return False
        now = self.clock()
        t.paused_until = now + (delay if delay else 1e-9)
        t.pause_secs = delay
        t.pause_count += 1
        self.sched.cancel(t.pause_entry)
        t.pause_entry = self.sched.add(t.paused_until, self._unpause, t)
        return True

    def _unpause(self, t: Tube, now: float) -> None:
        t.pause_entry = None
        t.pause_secs = 0
        t.paused_until = 0.0
        if t.waiters:
            self._serve(t)

    # --- time -----------------------------------------------------------------
    def tick(self) -> float | None:
        """Run what is due; return seconds until the next deadline, or None."""
        now = self.clock()
        self.sched.run_due(now)
        nxt = self.sched.next_deadline()
        self.sched.armed = float("inf") if nxt is None else nxt
        return None if nxt is None else max(0.0, nxt - now)

    # --- restore from a binlog ------------------------------------------------
    def restore(self, job_id: int, tube: str, pri: int, delay: int, ttr: int, body: bytes,
                state: str, remaining: float = 0.0, counters: tuple = (0, 0, 0, 0, 0),
                age: float = 0.0) -> Job:
        """Put a job back as a replayed binlog describes it (no logging).

        ``state`` is READY, DELAYED (``remaining`` seconds left) or BURIED;
        a job that was reserved comes back ready.
        """
        now = self.clock()
        t = self._tube(tube)
        job = Job(job_id, t, pri, delay, ttr, body, now - age)
        job.reserves = counters[0]
        if any(counters[1:]):  # most jobs never timed out, were released, buried or kicked
            job.timeouts, job.releases, job.buries, job.kicks = counters[1:]
        self.jobs[job_id] = job
        self.job_bytes += len(body)
        t.refs += 1
        if job_id >= self.next_id:
            self.next_id = job_id + 1
        if state == BURIED:
            job.state = BURIED
            t.buried[job_id] = job
        elif state == DELAYED and remaining > 0:
            self._delay(job, now + remaining)
        else:
            self._ready(job)
        return job

    # --- figures for stats ------------------------------------------------------
    def totals(self) -> dict:
        urgent = ready = reserved = delayed = buried = 0
        for t in self.tube_list:
            urgent += t.urgent
            ready += t.ready.count
            reserved += t.reserved
            delayed += t.delayed_count
            buried += len(t.buried)
        return {"urgent": urgent, "ready": ready, "reserved": reserved,
                "delayed": delayed, "buried": buried}


def _deadline_of(job: Job) -> float:
    return job.deadline
