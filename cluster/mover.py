"""Move one tube's jobs from one node to another, losing none.

How this works
--------------
Nodes never talk to each other, so a job moves as a client would move it,
over two pipelined protocol connections (``Pipe``): one to the node that
holds the job (the source), one to the node that should (the target).
For each batch of jobs:

1. **take** them on the source so no consumer can get them mid-move:
   ready jobs with a pipeline of ``reserve-with-timeout 0`` (the tube is the
   only one watched), the rest (and ready jobs the fast path cannot reach:
   a paused tube, DEADLINE_SOON) by chaining ``stats-job X``,
   ``reserve-job X``, ``peek-<state>`` so each round trip takes one job and
   finds the next.  ``stats-job`` before ``reserve-job`` gives the job's
   priority, TTR, state and remaining delay as they were (beanstalkd 1.12's
   ``reserve-job`` takes delayed and buried jobs too);
2. **put** every taken job on the target, ready with its priority and TTR,
   delayed with ``delay`` = its time left; a buried job is put delayed by
   ``STAGING_DELAY`` (so no consumer can take it), reserved by id and buried
   with its priority;
3. **delete** on the source only what the target acknowledged.  A job the
   target refused goes back where it was (``release`` with its delay,
   ``bury``), and the tube's move stops with the reason.

So a crash at any point duplicates at most a batch, and never loses a job.
A crash between steps 1 and 3 returns the batch to *ready* on the source
(beanstalkd's rule for a closed connection): delayed or buried jobs of that
batch may run early.  Reserved jobs are never touched; they stay until
their worker deletes or releases them.  A moved job gets a new id on its new
node.  Sections of protocol.txt used: "Producer Commands", "Worker
Commands" (reserve-job), "Other Commands" (peek, stats-job).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bsclient import tls
from bsclient.flat_yaml import STATS_JOB_STR_KEYS, parse_yaml_dict
from bsclient.protocol import (
    CMD_BURY,
    CMD_DELETE,
    CMD_IGNORE,
    CMD_PEEK_BURIED,
    CMD_PEEK_DELAYED,
    CMD_PEEK_READY,
    CMD_PUT,
    CMD_RELEASE,
    CMD_RESERVE_JOB,
    CMD_RESERVE_WITH_TIMEOUT,
    CMD_STATS_JOB,
    CMD_USE,
    CMD_WATCH,
    ReplyReader,
    encode_command,
)

BATCH = 200  # jobs taken, put and deleted per round
STAGING_DELAY = 7 * 86400  # a buried job's delay on the target until it is buried
PIPE_TIMEOUT = 10.0
READY, DELAYED, BURIED = "ready", "delayed", "buried"
MOVED_STATES = (READY, DELAYED, BURIED)
PEEK = {READY: CMD_PEEK_READY, DELAYED: CMD_PEEK_DELAYED, BURIED: CMD_PEEK_BURIED}
_RECV = 262144


class MoveError(Exception):
    """A node refused or dropped a step; the message says which and why."""


class Pipe:
    """One pipelined protocol connection: send N commands, read N replies."""

    def __init__(self, name: str, host: str, port: int, timeout: float = PIPE_TIMEOUT,
                 ssl_context=None):
        self.name = name
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            if ssl_context is not None:  # [tls]: the nodes speak TLS
                self.sock = tls.wrap(self.sock, ssl_context, host)
        except OSError as e:
            raise MoveError(f"cannot connect to {name} ({host}:{port}): "
                            f"{tls.explain(e)}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = ReplyReader()

    def call(self, commands: list[bytes]) -> list[tuple[list[bytes], bytes | None]]:
        if not commands:
            return []
        replies: list = []
        try:
            self.sock.sendall(b"".join(commands))
            while len(replies) < len(commands):
                chunk = self.sock.recv(_RECV)
                if not chunk:
                    raise MoveError(f"{self.name} closed the connection")
                replies += self.reader.feed(chunk)
        except OSError as e:
            raise MoveError(f"connection to {self.name} lost: {e}") from None
        return replies

    def one(self, command: bytes, ok: bytes) -> tuple[list[bytes], bytes | None]:
        reply = self.call([command])[0]
        if reply[0][0] != ok:
            raise MoveError(f"{self.name}: {_text(command)} answered {_words(reply)}")
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Taken:
    """A job reserved on the source for moving, with what it was before."""

    id: int
    body: bytes
    pri: int
    ttr: int
    state: str  # READY, DELAYED or BURIED
    delay: int = 0  # seconds left, for DELAYED


@dataclass
class TubeResult:
    moved: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MOVED_STATES, 0))
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.moved.values())


class Limiter:
    """At most ``rate`` jobs a second (None: no limit); the clock is injected."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start = clock()
        self.granted = 0

    def batch(self, want: int) -> int:
        """How many jobs the next batch may hold; waits until at least one may go."""
        if not self.rate:
            return want
        n = max(1, min(want, int(self.rate / 10) or 1))
        due = self.start + (self.granted + n) / self.rate
        wait = due - self.clock() - 0.1  # a tenth of a second of burst
        if wait > 0:
            self.sleep(wait)
        self.granted += n
        return n


def move_tube(src: Pipe, dst: Pipe, tube: str, limiter: Limiter, budget: int,
              on_moved: Callable[[int], None] = lambda n: None) -> TubeResult:
    """Move the ready, delayed and buried jobs of ``tube`` from src to dst.

    ``budget`` bounds the jobs moved, so producers still putting into the
    source cannot keep this going for ever (the next run moves the rest)."""
    result = TubeResult()

    def more() -> int:
        return limiter.batch(min(BATCH, budget - result.total))

    try:
        _select_tube(src, dst, tube)
        while result.total < budget and _round(src, dst, _take_ready_fast(src, more()),
                                                result, on_moved):
            pass
        for state in MOVED_STATES:
            while result.total < budget and _round(src, dst, _take_chained(src, state, more()),
                                                    result, on_moved):
                pass
    except MoveError as e:
        result.error = str(e)
    return result


def _select_tube(src: Pipe, dst: Pipe, tube: str) -> None:
    src.one(encode_command(CMD_USE, tube), b"USING")
    src.one(encode_command(CMD_WATCH, tube), b"WATCHING")
    if tube != "default":
        src.one(encode_command(CMD_IGNORE, "default"), b"WATCHING")
    dst.one(encode_command(CMD_USE, tube), b"USING")


def _take_ready_fast(src: Pipe, n: int) -> list[Taken]:
    """Reserve up to n ready jobs at once, then read their priority and TTR."""
    replies = src.call([encode_command(CMD_RESERVE_WITH_TIMEOUT, 0)] * n)
    jobs = [(int(w[1]), body) for w, body in replies if w[0] == b"RESERVED"]
    stats = src.call([encode_command(CMD_STATS_JOB, i) for i, _ in jobs])
    taken = []
    for (job_id, body), (words, data) in zip(jobs, stats, strict=True):
        if words[0] != b"OK":  # it timed out and someone else took it meanwhile
            continue
        st = parse_yaml_dict(data, STATS_JOB_STR_KEYS)
        taken.append(Taken(job_id, body, st["pri"], st["ttr"], READY))
    return taken


def _take_chained(src: Pipe, state: str, n: int) -> list[Taken]:
    """Take up to n jobs found by peek-<state>, one round trip each."""
    taken: list[Taken] = []
    tried: set[int] = set()
    peek = src.call([encode_command(PEEK[state])])[0]
    while peek[0][0] == b"FOUND" and len(taken) < n:
        job_id = int(peek[0][1])
        if job_id in tried:  # cannot be taken and stays first: leave it (and the rest)
            break
        tried.add(job_id)
        stat, got, peek = src.call([encode_command(CMD_STATS_JOB, job_id),
                                    encode_command(CMD_RESERVE_JOB, job_id),
                                    encode_command(PEEK[state])])
        if stat[0][0] != b"OK" or got[0][0] != b"RESERVED":
            if got[0][0] == b"RESERVED":  # cannot happen: stats first; give it back
                src.call([encode_command(CMD_RELEASE, job_id, 0, 0)])
            continue  # a consumer took it between peek and reserve-job
        st = parse_yaml_dict(stat[1], STATS_JOB_STR_KEYS)
        was = st["state"] if st["state"] in MOVED_STATES else state
        delay = st["time-left"] if was == DELAYED else 0
        taken.append(Taken(job_id, got[1], st["pri"], st["ttr"], was, delay))
    return taken


def _round(src: Pipe, dst: Pipe, taken: list[Taken], result: TubeResult,
           on_moved: Callable[[int], None]) -> bool:
    """Put the taken jobs on dst, delete the acknowledged ones on src; False when
    nothing was taken."""
    if not taken:
        return False
    puts = dst.call([encode_command(
        CMD_PUT, j.pri, STAGING_DELAY if j.state == BURIED else j.delay, j.ttr, len(j.body),
        body=j.body) for j in taken])
    stored, refused = [], []
    for job, (words, _) in zip(taken, puts, strict=True):
        if words[0] == b"INSERTED":
            stored.append((job, int(words[1])))
        else:
            refused.append((job, _words((words, None))))
    try:
        _bury_on_target(dst, [(j, new) for j, new in stored if j.state == BURIED])
    except MoveError:
        _give_back(src, taken)  # the copies on dst make duplicates, not losses
        raise
    src.call([encode_command(CMD_DELETE, j.id) for j, _ in stored])
    for job, _ in stored:
        result.moved[job.state] += 1
    on_moved(len(stored))
    if refused:
        _give_back(src, [j for j, _ in refused])
        raise MoveError(f"{dst.name} refused {len(refused)} job(s): {refused[0][1]}")
    return True


def _bury_on_target(dst: Pipe, jobs: list[tuple[Taken, int]]) -> None:
    commands = []
    for job, new_id in jobs:
        commands += [encode_command(CMD_RESERVE_JOB, new_id),
                     encode_command(CMD_BURY, new_id, job.pri)]
    replies = dst.call(commands)
    bad = [_words(r) for r in replies[1::2] if r[0][0] != b"BURIED"]
    if bad:  # the copy exists (delayed by STAGING_DELAY); the source keeps its own
        raise MoveError(f"{dst.name} did not bury a moved job: {bad[0]}")


def _give_back(src: Pipe, jobs: list[Taken]) -> None:
    """Return refused jobs to the state they were taken from."""
    src.call([encode_command(CMD_BURY, j.id, j.pri) if j.state == BURIED
              else encode_command(CMD_RELEASE, j.id, j.pri, j.delay) for j in jobs])


def _words(reply) -> str:
    return b" ".join(reply[0]).decode(errors="replace")


def _text(command: bytes) -> str:
    return command.split(b"\r\n", 1)[0].decode(errors="replace")
