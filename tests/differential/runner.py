"""Play a transcript against one server over raw sockets and record replies.

How this works
--------------
``run(transcript, host, port, pid)`` performs the steps in order.  Every step
that observes the server (a reply, a silence, an EOF) yields one
``Outcome`` holding the normalised reply, so two runs of one transcript give
two lists of the same length that line up step by step.  After the last
step each connection gets one more outcome: anything left unread (or an
unasserted close) shows there instead of being lost.

``Run.problems`` lists where the server disagreed with the transcript's own
expectations; ``compare(a, b)`` lists where two runs disagree.  Neither
raises: a run always goes to the end (unless replies keep timing out), so one
difference does not hide the next.
"""

from __future__ import annotations

import difflib
import math
import os
import select
import signal as signals
import socket
import time
from dataclasses import dataclass, field

from .dsl import (
    Close,
    Eof,
    Expect,
    Hup,
    IdRef,
    Send,
    Signal,
    Silent,
    Sleep,
    Transcript,
    TranscriptError,
)
from .normalise import (
    EOF,
    SKIPPED,
    TICK_TOLERANCE,
    TIMEOUT,
    Normaliser,
    Reply,
    frame,
    has_lines,
    same,
)

REPLY_TIMEOUT = 3.0  # longest wait for one reply; transcripts wait at most ~2 s
MAX_TIMEOUTS = 3  # after this many missing replies the rest of a run is skipped
LEFTOVER_WINDOW = 0.02  # one wait for stray bytes on all connections at the end
BYTEWISE_GAP = 0.001
NONE = Reply("none")


@dataclass
class Outcome:
    index: int  # step index; len(steps) + k for connection k's leftovers
    conn: str
    reply: Reply  # normalised
    raw: bytes = b""  # bytes as received
    at: float = 0.0  # seconds since the run started


@dataclass
class Run:
    transcript: Transcript
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def where(self, index: int) -> str:
        t = self.transcript
        if index < len(t.sources):
            lineno, text = t.sources[index]
            return f"{t.path.name}:{lineno} [{t.name}] `{text}`"
        return f"{t.where} [{t.name}] end of transcript"


class _Conn:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=REPLY_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def fill(self, deadline: float) -> bool:
        """Read more bytes; False when the deadline passed or the peer closed."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_reply(self, timeout: float) -> tuple[Reply, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            reply, used = frame(self.buf)
            if reply is not None:
                raw, self.buf = self.buf[:used], self.buf[used:]
                return reply, raw
            if not self.fill(deadline):
                if self.buf:
                    raw, self.buf = self.buf, b""
                    return Reply("malformed", raw), raw
                return (EOF if self.eof else TIMEOUT), b""

    def read_until_eof(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while self.fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self) -> None:
        self.sock.close()


def _expected_reply(text: tuple) -> Reply:
    data = b"".join(b"#%d" % p.n if isinstance(p, IdRef) else p for p in text)
    head, _, rest = data.partition(b"\r\n")
    if head.split(b" ")[0] in (b"RESERVED", b"FOUND", b"OK"):
        if not rest.endswith(b"\r\n"):
            raise TranscriptError(f"expected body must end with CRLF: {data!r}")
        body = rest[:-2]
        if head == b"OK *":
            head = b"OK %d" % len(body)
        return Reply("reply", head, body)
    if rest:
        raise TranscriptError(f"one expected reply per step: {data!r}")
    return Reply("reply", head)


def _signal_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f)
                if k in ("SigPnd", "ShdPnd", "SigCgt")}


def _poll_signal(pid: int, bit: int, done, timeout: float = 2.0) -> None:
    """Poll /proc (Linux) until done(masks, bit), or the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if done(_signal_masks(pid), bit):
                return
        except OSError:
            return
        time.sleep(0.001)


def _caught(m: dict, bit: int) -> bool:
    return bool(m.get("SigCgt", bit) & bit)


def _not_pending(m: dict, bit: int) -> bool:
    return not (m.get("SigPnd", 0) | m.get("ShdPnd", 0)) & bit


class _Player:
    def __init__(self, t: Transcript, host: str, port: int, pid: int,
                 reply_timeout: float) -> None:
        self.run = Run(t)
        self.reply_timeout = reply_timeout
        self.host, self.port, self.pid = host, port, pid
        self.conns: dict[str, _Conn] = {}
        self.norm = Normaliser()
        self.timeouts = 0
        self.started = time.monotonic()

    def conn(self, name: str) -> _Conn:
        c = self.conns.get(name)
        if c is None:
            c = self.conns[name] = _Conn(name, self.host, self.port)
        return c

    def record(self, index: int, conn: str, reply: Reply, raw: bytes = b"") -> Reply:
        if self.timeouts >= MAX_TIMEOUTS:
            reply = SKIPPED
        elif reply is TIMEOUT:
            self.timeouts += 1
        reply = self.norm.reply(reply)
        self.run.outcomes.append(
            Outcome(index, conn, reply, raw, time.monotonic() - self.started))
        return reply

    def problem(self, index: int, want: str, got: Reply) -> None:
        self.run.problems.append(
            f"{self.run.where(index)}: expected {_short(want)}, got {_short(got.text)}")

    def render(self, index: int, text: tuple) -> bytes:
        out = []
        for p in text:
            if isinstance(p, IdRef):
                real = self.norm.real.get(p.n)
                if real is None:
                    self.run.problems.append(f"{self.run.where(index)}: #{p.n} not seen yet")
                    out.append(b"#%d" % p.n)
                else:
                    out.append(b"%d" % real)
            else:
                out.append(p)
        return b"".join(out)

    # one method per step kind -------------------------------------------
    def do_send(self, i: int, s: Send) -> None:
        c = self.conn(s.conn)
        data = self.render(i, s.text)
        try:
            if s.bytewise:
                for k in range(len(data)):
                    c.sock.sendall(data[k:k + 1])
                    time.sleep(BYTEWISE_GAP)
            else:
                c.sock.sendall(data)
        except OSError:
            pass  # the next read shows the connection's fate

    def do_expect(self, i: int, e: Expect) -> None:
        c = self.conn(e.conn)
        if self.timeouts >= MAX_TIMEOUTS:
            self.record(i, e.conn, SKIPPED)
            return
        reply, raw = c.read_reply(self.reply_timeout)
        got = self.record(i, e.conn, reply, raw)
        if e.subset is not None:
            if not has_lines(got, e.subset):
                want = "OK with " + ", ".join(f"{k}: {v}" for k, v in e.subset)
                self.problem(i, want, got)
        elif e.text is not None:
            want = _expected_reply(e.text)
            if not same(want, got):
                self.problem(i, want.text, got)
        elif got.kind != "reply":
            self.problem(i, "a reply", got)

    def do_silent(self, i: int, s: Silent) -> None:
        if self.timeouts >= MAX_TIMEOUTS:
            self.record(i, s.conn, SKIPPED)
            return
        c = self.conn(s.conn)
        deadline = time.monotonic() + s.seconds
        while c.fill(deadline):
            pass
        data, c.buf = c.buf, b""
        got = Reply("unexpected", data) if data else (EOF if c.eof else NONE)
        self.record(i, s.conn, got, data)
        if got is not NONE:
            self.problem(i, "silence", got)

    def do_eof(self, i: int, s: Eof | Close) -> None:
        if self.timeouts >= MAX_TIMEOUTS:
            self.record(i, s.conn, SKIPPED)
            return
        c = self.conn(s.conn)
        if isinstance(s, Close):
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        data = c.read_until_eof(self.reply_timeout)
        got = Reply("unexpected", data) if data else (EOF if c.eof else TIMEOUT)
        self.record(i, s.conn, got, data)
        if got is not EOF:
            self.problem(i, "the server to close the connection", got)
        c.close()  # a connection is done once its end is asserted
        del self.conns[s.conn]

    def do_hup(self, i: int, s: Hup) -> None:
        try:
            self.conn(s.conn).sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def do_sleep(self, i: int, s: Sleep) -> None:
        time.sleep(s.seconds)

    def do_signal(self, i: int, s: Signal) -> None:
        # beanstalkd listens before it installs its handlers: wait until the
        # process catches the signal, send it, wait until it was taken.
        signum = getattr(signals, "SIG" + s.name)
        bit = 1 << (signum - 1)
        _poll_signal(self.pid, bit, _caught)
        os.kill(self.pid, signum)
        _poll_signal(self.pid, bit, _not_pending)

    def leftovers(self) -> None:
        base = len(self.run.transcript.steps)
        live = [c.sock for c in self.conns.values() if not c.eof]
        readable = select.select(live, [], [], LEFTOVER_WINDOW)[0] if live else []
        for k, name in enumerate(sorted(self.conns, key=lambda n: int(n[1:]))):
            c = self.conns[name]
            data = c.read_until_eof(LEFTOVER_WINDOW) if c.sock in readable else c.buf
            got = Reply("unexpected", data) if data else (EOF if c.eof else NONE)
            self.run.outcomes.append(Outcome(base + k, name, got, data))
            if got is not NONE:
                self.problem(base + k, f"nothing more on {name}", got)

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()


_DISPATCH = {
    Send: _Player.do_send,
    Expect: _Player.do_expect,
    Silent: _Player.do_silent,
    Eof: _Player.do_eof,
    Close: _Player.do_eof,
    Hup: _Player.do_hup,
    Sleep: _Player.do_sleep,
    Signal: _Player.do_signal,
}


def run(t: Transcript, host: str, port: int, pid: int,
        reply_timeout: float = REPLY_TIMEOUT) -> Run:
    """Play transcript t against the server at host:port (process pid)."""
    p = _Player(t, host, port, pid, reply_timeout)
    try:
        for i, step in enumerate(t.steps):
            _DISPATCH[type(step)](p, i, step)
        p.leftovers()
    finally:
        p.close()
    return p.run


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def describe(reference: Reply, candidate: Reply) -> str:
    """The difference between two replies, short enough to read."""
    if reference.body is not None and candidate.body is not None:
        ra = reference.body.decode("latin-1").split("\n")
        ca = candidate.body.decode("latin-1").split("\n")
        lines = [f"    beanstalkd: {reference.head!r}   candidate: {candidate.head!r}"]
        for line in difflib.unified_diff(ra, ca, "beanstalkd", "candidate", n=0, lineterm=""):
            if not line.startswith(("---", "+++", "@@")):
                lines.append(f"      {line!r}")
        return "\n".join(lines)
    return (f"    beanstalkd: {_short(reference.text)}\n"
            f"    candidate:  {_short(candidate.text)}")


def compare(reference: Run, candidate: Run) -> list[str]:
    """Where candidate's replies differ from reference's, step by step."""
    diffs = []
    for a, b in zip(reference.outcomes, candidate.outcomes, strict=False):
        # whole seconds of two clocks d apart differ by at most 1 + floor(d):
        # allow for one run reaching this step later (a loaded machine)
        tolerance = TICK_TOLERANCE + math.floor(abs(a.at - b.at))
        if not same(a.reply, b.reply, tolerance):
            diffs.append(f"{reference.where(a.index)} on {a.conn}:\n{describe(a.reply, b.reply)}")
    if len(reference.outcomes) != len(candidate.outcomes):
        diffs.append(f"{len(reference.outcomes)} outcomes vs {len(candidate.outcomes)}")
    return diffs
