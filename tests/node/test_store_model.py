"""A hypothesis state machine: the store against a tiny model of the queue.

The model is deliberately naive — a dict of jobs, each with a tube, a
priority, a state and a deadline, and a few client sessions — so that its
answers are obviously right.  Rules drive the real store through bytes and
``Commands.execute`` (test_store's harness, fake clock) and compare each reply
with the model's; invariants then check that every job sits in exactly one
place, that all counters agree, and that nothing is lost; and that every
state change the store made is one node/lifecycle.py's table allows for
what the step did (``EVENTS``).

Reserves use ``reserve-with-timeout 0`` so nothing blocks; blocked reserves
are covered in test_timers.py and test_store.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsclient import protocol as P
from bsnode import lifecycle
from bsnode.lifecycle import BURIED, DELAYED, INVALID, NEW, READY, RESERVED
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_store import Node, reply_id

TUBES = ("default", "a", "b")
PRIS = (0, 1, 5, 1023, 1024, P.U32_MAX)
N_CLIENTS = 3


# what each rule may do to a job, named as in lifecycle.TRANSITIONS (rules
# not named here must change no job's state)
EVENTS = {
    "put_some": ("put",), "reserve": ("reserve",), "reserve_job": ("reserve-job",),
    "release": ("release",), "bury": ("bury",), "delete": ("delete",), "touch": ("touch",),
    "kick": ("kick",), "kick_job": ("kick",), "reconnect": ("disconnect",),
    "advance": ("ttr-expired", "delay-due"),
}


@dataclass
class MJob:
    id: int
    tube: str
    pri: int
    ttr: int
    state: str
    deadline: float = 0.0
    reserver: int | None = None
    bury_seq: int = 0


@dataclass
class MClient:
    use: str = "default"
    watch: tuple = ("default",)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.node = Node()
        self.clients = [self.node.client() for _ in range(N_CLIENTS)]
        self.mclients = [MClient() for _ in range(N_CLIENTS)]
        # start with some sessions watching several tubes, in different orders
        for ci, tubes in ((1, ("b", "a")), (2, ("a", "b"))):
            for t in tubes:
                self.clients[ci].cmd("watch", t)
            self.mclients[ci].watch += tubes
        self.clients[2].cmd("ignore", "default")
        self.mclients[2].watch = ("a", "b")
        self.jobs: dict[int, MJob] = {}
        self.issued: list[int] = []
        self.paused_until: dict[str, float] = {}
        self.bury_seq = 0
        self.step = ""  # the rule just run (EVENTS)
        self.seen: dict[int, str] = {}  # job id -> its state in the store after the last step

    # --- model helpers ----------------------------------------------------------
    @property
    def now(self) -> float:
        return self.node.clock.now

    def paused(self, tube: str) -> bool:
        return self.paused_until.get(tube, 0.0) > self.now

    def alive_tubes(self) -> set[str]:
        alive = {"default"}
        for m in self.mclients:
            alive.add(m.use)
            alive.update(m.watch)
        alive.update(j.tube for j in self.jobs.values())
        return alive

    def forget_dead_tubes(self) -> None:
        alive = self.alive_tubes()
        for t in list(self.paused_until):
            if t not in alive:
                del self.paused_until[t]

    def held(self, ci: int) -> list[MJob]:
        return [j for j in self.jobs.values() if j.state == RESERVED and j.reserver == ci]

    def pick(self, index: int) -> int:
        """A job id ever issued (maybe deleted), or an id never issued."""
        if not self.issued or index >= len(self.issued):
            return 10**9 + index
        return self.issued[index]

    def make_ready(self, j: MJob) -> None:
        j.state = READY
        j.reserver = None

    # --- rules --------------------------------------------------------------------
    @rule(ci=st.integers(0, N_CLIENTS - 1), jobs=st.lists(st.tuples(
        st.sampled_from(TUBES), st.sampled_from(PRIS), st.sampled_from((0, 0, 1, 3)),
        st.sampled_from((0, 1, 2, 5))), min_size=1, max_size=4))
    def put_some(self, ci, jobs):
        self.step = "put_some"
        for tube, pri, delay, ttr in jobs:
            self.use(ci, tube)
            self.put(ci, pri, delay, ttr)

    def put(self, ci: int, pri: int, delay: int, ttr: int) -> None:
        body = b"j%d" % len(self.issued)
        reply = self.clients[ci].cmd("put", pri, delay, ttr, len(body), body=body)
        job_id = (self.issued[-1] + 1) if self.issued else 1
        assert reply == b"INSERTED %d\r\n" % job_id
        self.issued.append(job_id)
        j = MJob(job_id, self.mclients[ci].use, pri, max(ttr, 1), READY)
        if delay:
            j.state, j.deadline = DELAYED, self.now + delay
        self.jobs[job_id] = j

    @rule(ci=st.integers(0, N_CLIENTS - 1), tube=st.sampled_from(TUBES))
    def use(self, ci, tube):
        assert self.clients[ci].cmd("use", tube) == b"USING %s\r\n" % tube.encode()
        self.mclients[ci].use = tube
        self.forget_dead_tubes()

    @rule(ci=st.integers(0, N_CLIENTS - 1), tube=st.sampled_from(TUBES))
    def watch(self, ci, tube):
        m = self.mclients[ci]
        if tube not in m.watch:
            m.watch = m.watch + (tube,)
        assert self.clients[ci].cmd("watch", tube) == b"WATCHING %d\r\n" % len(m.watch)

    @rule(ci=st.integers(0, N_CLIENTS - 1), tube=st.sampled_from(TUBES))
    def ignore(self, ci, tube):
        m = self.mclients[ci]
        reply = self.clients[ci].cmd("ignore", tube)
        if m.watch == (tube,):
            assert reply == P.NOT_IGNORED
            return
        m.watch = tuple(t for t in m.watch if t != tube)
        assert reply == b"WATCHING %d\r\n" % len(m.watch)
        self.forget_dead_tubes()

    @rule(ci=st.integers(0, N_CLIENTS - 1))
    def reserve(self, ci):
        self.step = "reserve"
        m = self.mclients[ci]
        held = self.held(ci)
        soon = bool(held) and self.now >= min(j.deadline for j in held) - 1.0
        any_ready = any(j.state == READY and j.tube in m.watch for j in self.jobs.values())
        reply = self.clients[ci].cmd("reserve-with-timeout", 0)
        if soon and not any_ready:
            assert reply == P.DEADLINE_SOON
            return
        cands = [j for j in self.jobs.values()
                 if j.state == READY and j.tube in m.watch and not self.paused(j.tube)]
        if not cands:
            assert reply == (P.DEADLINE_SOON if soon else P.TIMED_OUT)
            return
        best = min(cands, key=lambda j: (j.pri, j.id))
        assert reply_id(reply) == best.id, (reply, best)
        best.state, best.reserver, best.deadline = RESERVED, ci, self.now + best.ttr

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40))
    def reserve_job(self, ci, index):
        self.step = "reserve_job"
        job_id = self.pick(index)
        reply = self.clients[ci].cmd("reserve-job", job_id)
        j = self.jobs.get(job_id)
        if j is None or j.state == RESERVED:
            assert reply == P.NOT_FOUND
            return
        assert reply_id(reply) == job_id
        j.state, j.reserver, j.deadline = RESERVED, ci, self.now + j.ttr

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40),
          pri=st.sampled_from(PRIS), delay=st.sampled_from((0, 0, 2)))
    def release(self, ci, index, pri, delay):
        self.step = "release"
        held = sorted(self.held(ci), key=lambda j: j.id)
        job_id = held[index % len(held)].id if held else self.pick(index)
        reply = self.clients[ci].cmd("release", job_id, pri, delay)
        j = self.jobs.get(job_id)
        if j is None or j.state != RESERVED or j.reserver != ci:
            assert reply == P.NOT_FOUND
            return
        assert reply == P.RELEASED
        j.pri, j.reserver = pri, None
        if delay:
            j.state, j.deadline = DELAYED, self.now + delay
        else:
            j.state = READY

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40),
          pri=st.sampled_from(PRIS))
    def bury(self, ci, index, pri):
        self.step = "bury"
        held = sorted(self.held(ci), key=lambda j: j.id)
        job_id = held[index % len(held)].id if held else self.pick(index)
        reply = self.clients[ci].cmd("bury", job_id, pri)
        j = self.jobs.get(job_id)
        if j is None or j.state != RESERVED or j.reserver != ci:
            assert reply == P.NOT_FOUND
            return
        assert reply == P.BURIED
        self.bury_seq += 1
        j.pri, j.state, j.reserver, j.bury_seq = pri, BURIED, None, self.bury_seq

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40))
    def delete(self, ci, index):
        self.step = "delete"
        job_id = self.pick(index)
        reply = self.clients[ci].cmd("delete", job_id)
        j = self.jobs.get(job_id)
        if j is None or (j.state == RESERVED and j.reserver != ci):
            assert reply == P.NOT_FOUND
            return
        assert reply == P.DELETED
        del self.jobs[job_id]
        self.forget_dead_tubes()

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40))
    def touch(self, ci, index):
        self.step = "touch"
        held = sorted(self.held(ci), key=lambda j: j.id)
        job_id = held[index % len(held)].id if held and index % 3 else self.pick(index)
        reply = self.clients[ci].cmd("touch", job_id)
        j = self.jobs.get(job_id)
        if j is None or j.state != RESERVED or j.reserver != ci:
            assert reply == P.NOT_FOUND
            return
        assert reply == P.TOUCHED
        j.deadline = self.now + j.ttr

    @rule(ci=st.integers(0, N_CLIENTS - 1), bound=st.sampled_from((0, 1, 2, 100)))
    def kick(self, ci, bound):
        self.step = "kick"
        tube = self.mclients[ci].use
        buried = sorted((j for j in self.jobs.values() if j.tube == tube and j.state == BURIED),
                        key=lambda j: j.bury_seq)
        if buried:
            chosen = buried[:bound]
        else:
            delayed = sorted((j for j in self.jobs.values()
                              if j.tube == tube and j.state == DELAYED),
                             key=lambda j: (j.deadline, j.id))
            chosen = delayed[:bound]
        assert self.clients[ci].cmd("kick", bound) == b"KICKED %d\r\n" % len(chosen)
        for j in chosen:
            self.make_ready(j)

    @rule(ci=st.integers(0, N_CLIENTS - 1), index=st.integers(0, 40))
    def kick_job(self, ci, index):
        self.step = "kick_job"
        job_id = self.pick(index)
        reply = self.clients[ci].cmd("kick-job", job_id)
        j = self.jobs.get(job_id)
        if j is None or j.state not in (BURIED, DELAYED):
            assert reply == P.NOT_FOUND
            return
        assert reply == P.KICKED
        self.make_ready(j)

    def check_peeks(self, ci: int) -> None:
        c, tube = self.clients[ci], self.mclients[ci].use
        in_tube = [j for j in self.jobs.values() if j.tube == tube]
        ready = [j for j in in_tube if j.state == READY]
        delayed = [j for j in in_tube if j.state == DELAYED]
        buried = [j for j in in_tube if j.state == BURIED]
        expect = [
            min(ready, key=lambda j: (j.pri, j.id)).id if ready else None,
            min(delayed, key=lambda j: (j.deadline, j.id)).id if delayed else None,
            min(buried, key=lambda j: j.bury_seq).id if buried else None,
        ]
        got = [reply_id(c.cmd(w)) for w in ("peek-ready", "peek-delayed", "peek-buried")]
        assert got == expect

    @rule(tube=st.sampled_from(TUBES), delay=st.sampled_from((1, 3)))
    def pause(self, tube, delay):
        reply = self.clients[0].cmd("pause-tube", tube, delay)
        if tube not in self.alive_tubes():
            assert reply == P.NOT_FOUND
            return
        assert reply == P.PAUSED
        self.paused_until[tube] = self.now + delay

    @rule(ci=st.integers(0, N_CLIENTS - 1))
    def reconnect(self, ci):
        self.step = "reconnect"
        self.clients[ci].close()
        for j in self.held(ci):
            self.make_ready(j)
        self.clients[ci] = self.node.client()
        self.mclients[ci] = MClient()
        self.forget_dead_tubes()

    @rule(dt=st.sampled_from((0.25, 0.5, 1.0, 2.5)))
    def advance(self, dt):
        self.step = "advance"
        self.node.advance(dt)
        now = self.now
        for j in self.jobs.values():
            if j.state in (DELAYED, RESERVED) and j.deadline <= now:
                self.make_ready(j)
        self.forget_dead_tubes()

    # --- invariants ---------------------------------------------------------------
    @invariant()
    def state_changes_follow_the_lifecycle_table(self):
        events = EVENTS.get(self.step, ())
        now = {job_id: job.state for job_id, job in self.node.store.jobs.items()}
        for job_id in self.seen.keys() | now.keys():
            before, after = self.seen.get(job_id, NEW), now.get(job_id, INVALID)
            assert lifecycle.allowed(events, before, after), (self.step, job_id, before, after)
        self.seen, self.step = now, ""

    @invariant()
    def same_jobs_in_the_same_states(self):
        store = self.node.store
        assert set(store.jobs) == set(self.jobs)
        for job_id, j in self.jobs.items():
            sj = store.jobs[job_id]
            assert (sj.state, sj.tube.name, sj.pri) == (j.state, j.tube, j.pri), job_id
            if j.state == RESERVED:
                assert sj.reserver is self.clients[j.reserver].session

    @invariant()
    def every_job_in_exactly_one_place(self):
        store = self.node.store
        places: dict[int, str] = {}

        def put_in(job_id, where):
            assert job_id not in places, (job_id, places[job_id], where)
            places[job_id] = where

        for t in store.tube_list:
            for j in t.ready.jobs():
                put_in(j.id, "ready:" + t.name)
            for j in t.delayed_jobs():
                put_in(j.id, "delayed:" + t.name)
            for job_id in t.buried:
                put_in(job_id, "buried:" + t.name)
        for c in self.clients:
            for job_id in c.session.reserved:
                put_in(job_id, "reserved")
        assert set(places) == set(self.jobs)  # nothing lost, nothing extra
        for job_id, where in places.items():
            j = self.jobs[job_id]
            assert where == (j.state if j.state == RESERVED else f"{j.state}:{j.tube}")

    @invariant()
    def peeks_match(self):
        for ci in range(N_CLIENTS):
            self.check_peeks(ci)

    @invariant()
    def counts_match(self):
        store = self.node.store
        assert {t.name for t in store.tube_list} == self.alive_tubes()
        assert set(store.tubes) == self.alive_tubes()
        for t in store.tube_list:
            mine = [j for j in self.jobs.values() if j.tube == t.name]
            assert t.ready.count == sum(j.state == READY for j in mine)
            assert t.delayed_count == sum(j.state == DELAYED for j in mine)
            assert len(t.buried) == sum(j.state == BURIED for j in mine)
            assert t.reserved == sum(j.state == RESERVED for j in mine)
            assert t.urgent == sum(j.state == READY and j.pri < 1024 for j in mine)
            assert t.using == sum(m.use == t.name for m in self.mclients)
            assert t.watching == sum(t.name in m.watch for m in self.mclients)
        totals = store.totals()
        for state in (READY, DELAYED, BURIED, RESERVED):
            assert totals[state] == sum(j.state == state for j in self.jobs.values())
        assert store.waiting == 0


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
