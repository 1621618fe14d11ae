"""Command dispatch: protocol events in, reply bytes out.

How this works
--------------
``Commands.execute(session, event)`` counts the command as beanstalkd does
(after its arguments parsed), runs the matching ``_cmd_*`` handler against
the store and returns the reply bytes, ``None`` when the session now blocks
in a reserve (the store wakes it later with a job or an Outcome, which
``wake_reply`` turns into bytes), or ``CLOSE`` for quit.  This is the one
module that chooses reply words: the store answers with values (a job, a
count, a node/lifecycle.py ``Outcome``).  Reply texts and the YAML of stats/list replies follow
beanstalkd 1.12's prot.c byte for byte (doc/protocol.txt, "Other Commands").
"""

from __future__ import annotations

import os
import resource
import secrets
from collections.abc import Callable

from bsclient import flat_yaml
from bsclient import protocol as P

from .defaults import DEFAULT_BINLOG_SIZE
from .lifecycle import DELAYED, RESERVED, Outcome
from .store import Job, Session, Store

VERSION = "0.1.0"
PROTOCOL_VERSION = "1.12"  # what `stats` reports as version
CLOSE = object()

_STATS_COUNTED = (
    P.CMD_PUT, P.CMD_PEEK, P.CMD_PEEK_READY, P.CMD_PEEK_DELAYED, P.CMD_PEEK_BURIED,
    P.CMD_RESERVE, P.CMD_RESERVE_WITH_TIMEOUT, P.CMD_DELETE, P.CMD_RELEASE, P.CMD_USE,
    P.CMD_WATCH, P.CMD_IGNORE, P.CMD_BURY, P.CMD_KICK, P.CMD_TOUCH, P.CMD_STATS,
    P.CMD_STATS_JOB, P.CMD_STATS_TUBE, P.CMD_LIST_TUBES, P.CMD_LIST_TUBE_USED,
    P.CMD_LIST_TUBES_WATCHED, P.CMD_PAUSE_TUBE,
)


def job_reply(word: bytes, job: Job) -> bytes:
    body = job.body
    return b"%s %d %d\r\n%s\r\n" % (word, job.id, len(body), body)


def reserved_reply(job: Job) -> bytes:
    body = job.body
    return b"RESERVED %d %d\r\n%s\r\n" % (job.id, len(body), body)


_WAIT_REPLIES = {Outcome.TIMED_OUT: P.TIMED_OUT, Outcome.DEADLINE_SOON: P.DEADLINE_SOON}


def wake_reply(value: Job | Outcome) -> bytes:
    """The answer to a reserve: a job it got, or why it got none (TIMED_OUT,
    DEADLINE_SOON); what the store wakes a waiting session with."""
    if value.__class__ is Job:
        return reserved_reply(value)
    return _WAIT_REPLIES[value]


# release and bury (OUT_OF_MEMORY / INTERNAL_ERROR: beanstalkd's words when it
# cannot log the change)
_RELEASE_REPLIES = {Outcome.DONE: P.RELEASED, Outcome.NOT_FOUND: P.NOT_FOUND,
                    Outcome.NOT_LOGGED: P.OUT_OF_MEMORY}
_BURY_REPLIES = {Outcome.DONE: P.BURIED, Outcome.NOT_FOUND: P.NOT_FOUND,
                 Outcome.NOT_LOGGED: P.INTERNAL_ERROR}


class Commands:
    def __init__(self, store: Store, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE,
                 binlog_max_size: int = DEFAULT_BINLOG_SIZE) -> None:
        self.store = store
        self.max_job_size = max_job_size
        self.binlog_max_size = binlog_max_size
        self.counts = dict.fromkeys(
            _STATS_COUNTED + (P.CMD_RESERVE_JOB, P.CMD_KICK_JOB, P.CMD_QUIT, P.PUT_BODY), 0)
        self.instance_id = secrets.token_hex(8)
        self.uname = os.uname()
        self.started = store.clock()
        d = self._dispatch = {}
        for op in self.counts:
            if op != P.PUT_BODY:
                d[op] = getattr(self, "_cmd_" + op.replace("-", "_"))
        d[P.PUT_BODY] = self._cmd_put  # counted when its line was read

    def execute(self, s: Session, ev: tuple):
        op = ev[0]
        if op is P.ERROR:
            return self._error(s, ev)
        self.counts[op] += 1
        return self._dispatch[op](s, ev)

    def _error(self, s: Session, ev: tuple) -> bytes:
        _, reply, counted = ev
        if counted == P.CommandReader.PUT_PRODUCER:
            # a put line was read: it is counted and has its id, whether its
            # body is still to come (reply b"") or came with a bad trailer
            self.counts[P.CMD_PUT] += 1
            self.store.put_line_read(s, body_follows=not reply)
        elif counted is not None:
            self.counts[counted] += 1
        if reply is P.EXPECTED_CRLF:
            self.store.put_abandoned(s)
        return reply

    # --- jobs -------------------------------------------------------------
    def _cmd_put(self, s: Session, ev: tuple) -> bytes:
        store = self.store
        if store.draining:
            store.refuse_put(s)
            return P.DRAINING
        job = store.put(s, ev[1], ev[2], ev[3], ev[4])
        if job is None:
            return P.OUT_OF_MEMORY
        return b"INSERTED %d\r\n" % job.id

    def _cmd_reserve(self, s: Session, ev: tuple):
        return self._reserved(self.store.reserve(s, None))

    def _cmd_reserve_with_timeout(self, s: Session, ev: tuple):
        t = ev[1]
        return self._reserved(self.store.reserve(s, t if t >= 0 else None))

    @staticmethod
    def _reserved(r):
        return None if r is None else wake_reply(r)

    def _cmd_reserve_job(self, s: Session, ev: tuple) -> bytes:
        job = self.store.reserve_job(s, ev[1])
        return P.NOT_FOUND if job is None else reserved_reply(job)

    def _cmd_delete(self, s: Session, ev: tuple) -> bytes:
        return P.DELETED if self.store.delete(s, ev[1]) else P.NOT_FOUND

    def _cmd_release(self, s: Session, ev: tuple) -> bytes:
        return _RELEASE_REPLIES[self.store.release(s, ev[1], ev[2], ev[3])]

    def _cmd_bury(self, s: Session, ev: tuple) -> bytes:
        return _BURY_REPLIES[self.store.bury(s, ev[1], ev[2])]

    def _cmd_touch(self, s: Session, ev: tuple) -> bytes:
        return P.TOUCHED if self.store.touch(s, ev[1]) else P.NOT_FOUND

    def _cmd_kick(self, s: Session, ev: tuple) -> bytes:
        return b"KICKED %d\r\n" % self.store.kick(s, ev[1])

    def _cmd_kick_job(self, s: Session, ev: tuple) -> bytes:
        return P.KICKED if self.store.kick_job(ev[1]) else P.NOT_FOUND

    def _found(self, job: Job | None) -> bytes:
        return P.NOT_FOUND if job is None else job_reply(b"FOUND", job)

    def _cmd_peek(self, s: Session, ev: tuple) -> bytes:
        return self._found(self.store.peek(ev[1]))

    def _cmd_peek_ready(self, s: Session, ev: tuple) -> bytes:
        return self._found(self.store.peek_ready(s))

    def _cmd_peek_delayed(self, s: Session, ev: tuple) -> bytes:
        return self._found(self.store.peek_delayed(s))

    def _cmd_peek_buried(self, s: Session, ev: tuple) -> bytes:
        return self._found(self.store.peek_buried(s))

    # --- tubes ------------------------------------------------------------
    def _cmd_use(self, s: Session, ev: tuple) -> bytes:
        return b"USING %s\r\n" % self.store.use(s, ev[1]).name.encode()

    def _cmd_watch(self, s: Session, ev: tuple) -> bytes:
        return b"WATCHING %d\r\n" % self.store.watch(s, ev[1])

    def _cmd_ignore(self, s: Session, ev: tuple) -> bytes:
        n = self.store.ignore(s, ev[1])
        return P.NOT_IGNORED if n is None else b"WATCHING %d\r\n" % n

    def _cmd_list_tubes(self, s: Session, ev: tuple) -> bytes:
        return flat_yaml.yaml_list_reply(t.name for t in self.store.tube_list)

    def _cmd_list_tube_used(self, s: Session, ev: tuple) -> bytes:
        return b"USING %s\r\n" % s.use.name.encode()

    def _cmd_list_tubes_watched(self, s: Session, ev: tuple) -> bytes:
        return flat_yaml.yaml_list_reply(t.name for t in s.watch)

    def _cmd_pause_tube(self, s: Session, ev: tuple) -> bytes:
        return P.PAUSED if self.store.pause(ev[1], ev[2]) else P.NOT_FOUND

    def _cmd_quit(self, s: Session, ev: tuple):
        return CLOSE

    # --- stats ------------------------------------------------------------
    def _cmd_stats_job(self, s: Session, ev: tuple) -> bytes:
        job = self.store.jobs.get(ev[1])
        if job is None:
            return P.NOT_FOUND
        now = self.store.clock()
        state = job.state
        left = int(job.deadline - now) if state is RESERVED or state is DELAYED else 0
        return flat_yaml.yaml_dict_reply((
            ("id", job.id), ("tube", job.tube.name), ("state", state), ("pri", job.pri),
            ("age", int(now - job.created)), ("delay", job.delay), ("ttr", job.ttr),
            ("time-left", left), ("file", self.store.wal.file_of(job)),
            ("reserves", job.reserves), ("timeouts", job.timeouts),
            ("releases", job.releases), ("buries", job.buries), ("kicks", job.kicks),
        ))

    def _cmd_stats_tube(self, s: Session, ev: tuple) -> bytes:
        t = self.store.find_tube(ev[1])
        if t is None:
            return P.NOT_FOUND
        fields = t.stats_fields(self.store.clock())
        return flat_yaml.yaml_dict_reply(fields)

    def stats_fields(self, pause: Callable[[], None] | None = None) -> list[tuple[str, object]]:
        """Every field of `stats`, in beanstalkd's order (``pause``: Store.totals)."""
        store = self.store
        tot = store.totals(pause)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        wal = store.wal.stats()
        u = self.uname
        fields = [
            ("current-jobs-urgent", tot["urgent"]),
            ("current-jobs-ready", tot["ready"]),
            ("current-jobs-reserved", tot["reserved"]),
            ("current-jobs-delayed", tot["delayed"]),
            ("current-jobs-buried", tot["buried"]),
        ]
        fields += [("cmd-" + op, self.counts[op]) for op in _STATS_COUNTED]
        fields += [
            ("job-timeouts", store.job_timeouts),
            ("total-jobs", store.total_jobs),
            ("max-job-size", self.max_job_size),
            ("current-tubes", len(store.tube_list)),
            ("current-connections", store.cur_conns),
            ("current-producers", store.producers),
            ("current-workers", store.workers),
            ("current-waiting", store.waiting),
            ("total-connections", store.total_conns),
            ("pid", os.getpid()),
            ("version", f'"{PROTOCOL_VERSION}"'),
            ("rusage-utime", _secs(ru.ru_utime)),
            ("rusage-stime", _secs(ru.ru_stime)),
            ("uptime", int(store.clock() - self.started)),
            ("binlog-oldest-index", wal.get("oldest_index", 0)),
            ("binlog-current-index", wal.get("current_index", 0)),
            ("binlog-records-migrated", wal.get("records_migrated", 0)),
            ("binlog-records-written", wal.get("records_written", 0)),
            ("binlog-max-size", wal.get("max_size", self.binlog_max_size)),
            ("draining", "true" if store.draining else "false"),
            ("id", self.instance_id),
            ("hostname", u.nodename),
            ("os", u.version),
            ("platform", u.machine),
        ]
        fields += store.caps.stats_fields(store)  # nothing unless a cap is set (caps.py)
        return fields

    def _cmd_stats(self, s: Session, ev: tuple) -> bytes:
        return flat_yaml.yaml_dict_reply(self.stats_fields())


def _secs(t: float) -> str:
    whole = int(t)
    return f"{whole}.{int(round((t - whole) * 1e6)) % 1000000:06d}"
