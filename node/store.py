"""The job store of one node: jobs, tubes, sessions and their deadlines.

How this works
--------------
This is the pure core of bsnode (beanstalkd's prot.c, tube.c, conn.c
without the sockets).  Time comes from an injected ``clock()`` returning
seconds, so tests drive it with a fake clock; every deadline lives in one
``Scheduler`` and ``tick()`` runs what is due and says when to call again.

A job is in exactly one place, named by ``job.state`` (the states and the
moves between them are node/lifecycle.py's table): READY in its tube's
ready queue, DELAYED in its tube's delay heap, BURIED in its tube's buried
list, RESERVED in one session's ``reserved`` dict with a TTR timer.
``jobs`` maps every live id to its job.

Invariant that makes reservation cheap: outside of paused tubes, no tube has
both ready jobs and sessions waiting on it.  So a job becoming ready goes to
the oldest session waiting on its tube, and a reserve only looks at the
session's watched tubes: the best (priority, id) among them.

A tube lives while jobs, users or watchers hold it (``refs``); "default"
never goes.  The tube list keeps beanstalkd's order (append, swap-remove),
which list-tubes shows.

Every state change that must survive a restart is handed to ``self.wal``
(a ``wal.Wal``: ``NullWal`` unless a binlog is attached): ``put`` before the job is
acknowledged, ``update`` before bury/kick/release-with-delay take effect
(if the log refuses, the job stays as it was and the caller says so, as
beanstalkd does with its reserved log space), ``delete``.
Operations return values (a job, a count, an ``Outcome``, None), and a
waiting session is woken with a job or an ``Outcome``; the wire words are
chosen by node/commands.py alone.  beanstalkd's put-id rule (a put has
its id once its command line is read) is kept here: ``put_line_read``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bsclient.protocol import URGENT_THRESHOLD

from .caps import NO_CAPS
from .job import Job, Session
from .lifecycle import BURIED, DELAYED, INVALID, READY, RESERVED, Outcome
from .timers import Scheduler
from .tube import Tube
from .wal import NullWal, Wal

NOT_LOGGED = Outcome.NOT_LOGGED  # the binlog could not take a change: nothing changed
SAFETY_MARGIN = 1.0  # seconds before a TTR deadline that count as "soon"
DEFAULT_TUBE = "default"


class Store:
    def __init__(self, clock: Callable[[], float] = time.monotonic, wal: Wal | None = None
                 ) -> None:
        self.clock = clock
        self.wal: Wal = wal or NullWal()
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
        # how a job leaves the place its state names (RESERVED: _unreserve)
        self._leave = {READY: self._unready, DELAYED: self._undelay, BURIED: self._unbury}

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
        self.stop_waiting(s)
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

    def _unbury(self, job: Job) -> None:
        del job.tube.buried[job.id]

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
        """Reserve for ``s``.  Returns a job, an Outcome to answer now
        (TIMED_OUT / DEADLINE_SOON), or None when the session now waits."""
        if not s.worker:
            self.set_worker(s)
        now = self.clock()
        if s.reserved and self.deadline_soon(s, now) and not any(
                t.ready.count for t in s.watch):
            return Outcome.DEADLINE_SOON
        t = self._best_ready(s, now)
        if t is not None:
            job = self._pop_ready(t)
            self._reserve(s, job, now)
            return job
        if timeout == 0:
            return Outcome.DEADLINE_SOON if self.deadline_soon(s, now) else Outcome.TIMED_OUT
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

    def stop_waiting(self, s: Session) -> None:
        """``s`` waits no more (its reserve was answered, or it hung up)."""
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
            outcome = Outcome.DEADLINE_SOON
        elif s.wait_until is not None and now >= s.wait_until:
            outcome = Outcome.TIMED_OUT
        else:
            self._schedule_wait(s)
            return
        self.stop_waiting(s)
        s.wake(outcome)

    def _serve(self, t: Tube) -> None:
        """Give ready jobs of ``t`` to its waiting sessions, oldest first."""
        now = self.clock()
        while t.waiters and t.ready.count:
            s = next(iter(t.waiters))
            self.stop_waiting(s)
            job = self._pop_ready(t)
            self._reserve(s, job, now)
            s.wake(job)

    # --- commands on jobs ---------------------------------------------------
    # beanstalkd gives a put its id as soon as its command line is read, so a
    # put refused later (bad body, draining, out of memory) still uses one up.
    def put_line_read(self, s: Session, body_follows: bool) -> None:
        """A put's command line was read: it takes its id now; the put that
        brings its body (``body_follows``) gets that id."""
        self.set_producer(s)
        job_id = self.next_id
        self.next_id += 1
        s.put_id = job_id if body_follows else None

    def put_abandoned(self, s: Session) -> None:
        """The body of the put whose line was read never comes (bad trailer)."""
        s.put_id = None

    def refuse_put(self, s: Session) -> None:
        """A put answered without storing it (draining): it uses up its id."""
        self.set_producer(s)
        if s.put_id is None:
            self.next_id += 1
        s.put_id = None

    def put(self, s: Session, pri: int, delay: int, ttr: int, body: bytes):
        """Returns the new job, or None when the binlog or a cap cannot take it.
        A put whose line and body came together takes its id here, once a
        cap has admitted it."""
        self.set_producer(s)
        job_id = s.put_id
        if job_id is not None:
            s.put_id = None
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
        if job.state is RESERVED:
            if job.reserver is not s:
                return False
            self._unreserve(s, job)
        else:
            self._leave[job.state](job)
        job.state = INVALID
        del self.jobs[job_id]
        self.job_bytes -= len(job.body)
        t = job.tube
        t.deletes += 1
        self.wal.delete(job)
        self._unref(t)
        return True

    def _log_move(self, job: Job, now: float, state: str, counter: str, **fields) -> bool:
        """Move ``job`` to ``state`` (setting ``fields``, counting ``counter``)
        and log it, the job still in its old place; when the binlog refuses,
        everything is put back and the answer is False."""
        saved = {k: getattr(job, k) for k in fields}
        old_state = job.state
        count = getattr(job, counter)
        for k, v in fields.items():
            setattr(job, k, v)
        setattr(job, counter, count + 1)
        job.state = state
        if self.wal.update(job, now):
            return True
        for k, v in saved.items():
            setattr(job, k, v)
        setattr(job, counter, count)
        job.state = old_state
        return False

    def release(self, s: Session, job_id: int, pri: int, delay: int) -> Outcome:
        """DONE; NOT_FOUND when not reserved by ``s``; NOT_LOGGED when the
        binlog cannot take a release with delay (the job stays reserved, as
        in beanstalkd, which answers OUT_OF_MEMORY)."""
        job = self.jobs.get(job_id)
        if job is None or job.reserver is not s:
            return Outcome.NOT_FOUND
        now = self.clock()
        if delay:
            if not self._log_move(job, now, DELAYED, "releases", pri=pri, delay=delay,
                                  deadline=now + delay):
                return Outcome.NOT_LOGGED
        else:
            # kept even if not logged (retried in the background): the job
            # would come back ready after a restart anyway
            job.pri = pri
            job.delay = delay
            job.releases += 1
            job.state = READY
            self.wal.update(job, now)
        self._unreserve(s, job)
        self._enqueue(job, now)
        return Outcome.DONE

    def bury(self, s: Session, job_id: int, pri: int) -> Outcome:
        """DONE; NOT_FOUND when not reserved by ``s``; NOT_LOGGED when the
        binlog cannot take it (the job stays reserved)."""
        job = self.jobs.get(job_id)
        if job is None or job.reserver is not s:
            return Outcome.NOT_FOUND
        if not self._log_move(job, self.clock(), BURIED, "buries", pri=pri):
            return Outcome.NOT_LOGGED
        self._unreserve(s, job)
        job.tube.buried[job.id] = job
        return Outcome.DONE

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
        self._leave[job.state](job)
        self.set_worker(s)
        now = self.clock()
        self._reserve(s, job, now)
        self.wal.update(job, now)
        return job

    def kick(self, s: Session, bound: int) -> int:
        """Kick up to ``bound`` jobs; fewer if the binlog stops taking them."""
        t = s.use
        now = self.clock()
        n = 0
        buried = t.buried
        if buried:
            while n < bound and buried:
                job = next(iter(buried.values()))
                if not self._log_move(job, now, READY, "kicks"):
                    break
                del buried[job.id]
                self._ready(job)
                n += 1
        else:
            while n < bound:
                job = t.peek_delayed()
                if job is None or not self._log_move(job, now, READY, "kicks"):
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
        if not self._log_move(job, self.clock(), READY, "kicks"):
            return False  # beanstalkd answers NOT_FOUND too
        self._leave[state](job)
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
        if state is BURIED:
            job.state = BURIED
            t.buried[job_id] = job
        elif state is DELAYED and remaining > 0:
            self._delay(job, now + remaining)
        else:
            self._ready(job)
        return job

    # --- figures for stats ------------------------------------------------------
    def totals(self, pause: Callable[[], None] | None = None, every: int = 200) -> dict:
        """Jobs by state over every tube; ``pause()`` (if given) is called
        every ``every`` tubes, for a caller that lets others run meanwhile."""
        urgent = ready = reserved = delayed = buried = 0
        for i, t in enumerate(list(self.tube_list) if pause is not None else self.tube_list):
            urgent += t.urgent
            ready += t.ready.count
            reserved += t.reserved
            delayed += t.delayed_count
            buried += len(t.buried)
            if pause is not None and i % every == every - 1:
                pause()
        return {"urgent": urgent, "ready": ready, "reserved": reserved,
                "delayed": delayed, "buried": buried}


def _deadline_of(job: Job) -> float:
    return job.deadline
