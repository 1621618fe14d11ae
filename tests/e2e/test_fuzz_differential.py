"""Differential fuzzing: hypothesis writes command streams, beanstalkd judges.

How this works
--------------
Hypothesis draws a short list of commands -- valid ones, nearly valid ones
(one or two byte-level mutations of a valid line), and garbage lines -- and a
few cut points.  Each example runs on a fresh connection to each of two
long-lived servers, ``/usr/bin/beanstalkd`` and ``bsnode``:

1. setup, one round trip: ``use`` a tube private to the example and ``put`` a
   job there; its id is the example's id *base*, so "the k-th job of this
   example" is ``base + k`` on either server (ids are sequential);
2. the stream, rendered with that base and the example's tube names, is sent
   in chunks cut at the drawn byte offsets, everything pipelined;
3. the client half-closes and reads until the server closes: both servers
   run every complete command they have read before they see the EOF.

The replies are cut with the conformance harness's ``frame`` and rewritten by
its ``Normaliser`` (job ids become #n, ticking seconds compared within one),
then compared one by one with its ``same``.  Two things are masked on top,
because other examples share the servers: every value in a ``stats`` body
(the keys and their order are still compared), and tubes of other examples
in a ``list-tubes`` body.

Streams that would hit a known, deliberate difference (README, "Where bsnode
knowingly differs") or depend on time are not run: a command line whose
length is 223 modulo 224 (beanstalkd swallows the next line), a blocking
reserve, delays, TTRs or pauses short enough to expire during an example,
and bytes after a ``quit`` (beanstalkd then closes with input unread, the
kernel resets the connection and replies still in flight may be lost).  Bodies never contain CR, and neither do lines other than their
CRLF, so no line holds a lone CR.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from dataclasses import dataclass

import pytest
from bsclient import protocol as P
from differential.normalise import EOF, TIMEOUT, Normaliser, Reply, frame, same
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from servers import HAVE_BEANSTALKD, start_beanstalkd, start_bsnode

pytestmark = [pytest.mark.differential, pytest.mark.integration]

MAX_EXAMPLES = 500  # ~13 s here; a 20,000-example run is in docs/RELIABILITY.md
EXAMPLE_DEADLINE_MS = 4000
READ_DEADLINE = 5.0  # a server that has not closed within this is reported
CHUNK_GAP = 0.001  # between chunks, so the server sees them as separate reads
QUIRK_LINE = 223  # beanstalkd 1.12 mis-frames lines of 223 (mod 224) bytes
SHORT = 30  # seconds: delays/TTRs/pauses below this could expire mid-example
# Set while bsnode gives no job id to a put that fails after its line was
# accepted (beanstalkd does; test_hostile_protocol.py pins it): examples with
# such a put and "k-th job" references are then skipped.  Fixed: False.
KNOWN_ID_BUG = False


# --- the generated language -------------------------------------------------------
@dataclass(frozen=True)
class IdRef:
    """The k-th job this example puts (k >= 1), or the setup job (k == 0)."""
    k: int


@dataclass(frozen=True)
class TubeRef:
    """One of the example's own tube names."""
    k: int


@dataclass(frozen=True)
class Cmd:
    line: tuple  # bytes | IdRef | TubeRef parts, CRLF not included
    body: bytes | None = None  # sent after the line's CRLF, then CRLF


@dataclass(frozen=True)
class Example:
    cmds: tuple
    cuts: tuple  # fractions of the stream's length where a chunk ends


def render_parts(parts: tuple, base: int, prefix: str) -> bytes:
    out = []
    for p in parts:
        if isinstance(p, IdRef):
            out.append(b"%d" % (base + p.k))
        elif isinstance(p, TubeRef):
            out.append(f"{prefix}{p.k}".encode())
        else:
            out.append(p)
    return b"".join(out)


def render(cmds: tuple, base: int, prefix: str) -> bytes:
    out = [b"delete %d\r\nuse %s0\r\nwatch %s0\r\nignore default\r\n"
           % (base, prefix.encode(), prefix.encode())]
    for c in cmds:
        out.append(render_parts(c.line, base, prefix) + b"\r\n")
        if c.body is not None:
            out.append(c.body + b"\r\n")
    return b"".join(out)


# --- strategies ---------------------------------------------------------------------
def often(common, rare):
    """Mostly ``common``, sometimes ``rare``."""
    return st.integers(0, 7).flatmap(lambda i: rare if i == 7 else common)


ids = often(st.integers(1, 3).map(IdRef),
            st.sampled_from([b"0", b"18446744073709551615", b"18446744073709551616", b"00",
                             b"-1", b"+1", b"1x"]))
tubes = often(st.integers(0, 1).map(TubeRef),
              st.sampled_from([b"", b"-x", b"a" * 201, b"x" * 200, b"q*", b"a b",
                               b"$_()+;/.", b"\xff", b"t\x00"]))
u32 = often(st.one_of(st.sampled_from([b"0", b"1", b"1023", b"1024", b"4294967295"]),
                      st.integers(0, 2**32 - 1).map(lambda n: b"%d" % n)),
            st.sampled_from([b"4294967296", b"007", b"-1", b"+1", b"99999999999999999999"]))
delays = often(st.sampled_from([b"0", b"0", b"0", b"0", b"3600", b"4294967295"]),
               st.sampled_from([b"4294967296", b"00", b"-0"]))
ttrs = often(st.sampled_from([b"60", b"120", b"3600", b"4294967295"]),
             st.sampled_from([b"4294967296", b"060", b"-60"]))
bodies = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"."))
SPECIAL_BYTES = b" \t\n\x00-+09aZ:#\xff/."


@st.composite
def puts(draw) -> Cmd:
    body = draw(bodies)
    size = draw(often(st.just("exact"), st.sampled_from(["short", "long", "big", "huge"])))
    declared = {"exact": len(body), "short": max(len(body) - 1, 0), "long": len(body) + 1,
                "big": P.DEFAULT_MAX_JOB_SIZE + 1, "huge": 2**32 - 1}[size]
    line = (b"put ", draw(u32), b" ", draw(delays), b" ", draw(ttrs), b" %d" % declared)
    return Cmd(line, body)


def _one(word: bytes, arg) -> Cmd:
    return Cmd((word + b" ", arg))


simple = st.sampled_from([
    b"peek-ready", b"peek-delayed", b"peek-buried", b"stats", b"list-tubes",
    b"list-tube-used", b"list-tubes-watched", b"reserve-with-timeout 0",
    b"reserve-with-timeout 0", b"reserve-with-timeout 0",
]).map(lambda w: Cmd((w,)))
by_id = st.builds(_one, st.sampled_from([b"peek", b"delete", b"kick-job", b"stats-job",
                                         b"touch", b"reserve-job"]), ids)

valid = st.one_of(
    puts(), puts(), puts(), simple, simple, by_id, by_id,
    st.builds(_one, st.sampled_from([b"use", b"watch", b"ignore", b"stats-tube"]), tubes),
    st.builds(lambda i, p, d: Cmd((b"release ", i, b" ", p, b" ", d)), ids, u32, delays),
    st.builds(lambda i, p: Cmd((b"bury ", i, b" ", p)), ids, u32),
    st.builds(lambda n: Cmd((b"kick ", n)), u32),
    st.builds(lambda t, d: Cmd((b"pause-tube ", t, b" ", d)), tubes, delays),
)


@st.composite
def mutated(draw) -> Cmd:
    """A valid command with one or two byte edits in its line."""
    cmd = draw(valid)
    parts = list(cmd.line)
    for _ in range(draw(st.integers(1, 2))):
        spots = [i for i, p in enumerate(parts) if isinstance(p, bytes)]
        i = draw(st.sampled_from(spots))
        text = parts[i]
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "upper"]))
        byte = bytes([draw(st.sampled_from(SPECIAL_BYTES))])
        if op == "delete":
            text = text[:at] + text[at + 1:]
        elif op == "insert":
            text = text[:at] + byte + text[at:]
        elif op == "replace":
            text = text[:at] + byte + text[at + 1:]
        elif op == "truncate":
            text = text[:at]
            parts = parts[:i + 1]
        else:
            text = text.upper()
        parts[i] = text
    return Cmd(tuple(parts), cmd.body)


garbage = st.one_of(
    st.binary(max_size=40).map(lambda b: Cmd((b.replace(b"\r", b"_"),))),
    st.sampled_from([222, 224, 225, 300, 448, 449, 1000]).map(lambda n: Cmd((b"x" * n,))),
    st.sampled_from([b"", b" ", b"put", b"put ", b"reserve ", b"reservex", b"deletex 1",
                     b"stats-tube", b"peek-readyx", b"quitx", b"use", b"list-tubes x"])
    .map(lambda w: Cmd((w,))),
)

@st.composite
def lifecycle(draw) -> tuple:
    """A job's life: put, reserve, then what a worker does with it."""
    k = draw(st.integers(1, 3))
    body = draw(bodies)
    put = Cmd((b"put ", draw(u32), b" 0 ", draw(ttrs), b" %d" % len(body)), body)
    then = draw(st.lists(st.one_of(
        st.builds(lambda p, d: Cmd((b"release ", IdRef(k), b" ", p, b" ", d)), u32, delays),
        st.builds(lambda p: Cmd((b"bury ", IdRef(k), b" ", p)), u32),
        st.sampled_from([b"delete ", b"touch ", b"kick-job ", b"stats-job ", b"peek ",
                         b"reserve-job "]).map(lambda w: Cmd((w, IdRef(k)))),
        st.sampled_from([b"kick 1", b"kick 10", b"peek-buried", b"peek-ready",
                         b"reserve-with-timeout 0", b"stats-tube "]).map(
            lambda w: Cmd((w, TubeRef(0))) if w.endswith(b" ") else Cmd((w,))),
    ), min_size=1, max_size=4))
    return (put, Cmd((b"reserve-with-timeout 0",)), *then)


def _flat(groups) -> tuple:
    return tuple(c for g in groups for c in (g if isinstance(g, tuple) else (g,)))


examples = st.builds(
    Example,
    st.builds(lambda cmds, quit: _flat(cmds) + ((Cmd((quit,)),) if quit else ()),
              st.lists(st.one_of(valid, valid, valid, mutated(), garbage, lifecycle()),
                       min_size=1, max_size=10),
              st.sampled_from([None, None, None, b"quit", b"quit ", b"quitx"])),
    st.lists(st.floats(0, 1), max_size=6).map(lambda c: tuple(sorted(c))),
)


# --- which streams to run -----------------------------------------------------------
def lines_as_read(stream: bytes, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE):
    """The command lines a server reads from ``stream`` (beanstalkd's framing):
    (line, the body that follows it when the line is a well-formed put, the
    offset just past the line and its body)."""
    pos = 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return
        line = stream[pos:end]
        pos = end + 2
        body = None
        if len(line) <= P.MAX_LINE - 2:
            ev = P.parse_command(line)
            if ev[0] is P.CMD_PUT:
                _, _, _, _, size, tail = ev
                if size <= max_job_size and not tail:
                    body = stream[pos:pos + size + 2]
                if size > max_job_size or not tail:  # a body, read or thrown away
                    pos += size + 2
        yield line, body, pos


def runnable(stream: bytes, refers_to_jobs: bool = False) -> str | None:
    """Why this stream cannot be compared, or None when it can."""
    for line, body, after in lines_as_read(stream):
        if (KNOWN_ID_BUG and refers_to_jobs and body is not None
                and len(body) == P.parse_command(line)[4] + 2 and body[-2:] != b"\r\n"):
            return "known bug: a put answered EXPECTED_CRLF uses up no job id"
        if len(line) % 224 == QUIRK_LINE:
            return "a 223-byte line"
        if len(line) > P.MAX_LINE - 2:
            continue
        ev = P.parse_command(line)
        op = ev[0]
        if op is P.CMD_QUIT and after < len(stream):
            # beanstalkd closes with our later bytes unread: the kernel resets
            # the connection and may drop replies it has not sent yet
            return "bytes after quit"
        if op is P.CMD_RESERVE:
            return "a blocking reserve"
        if op is P.CMD_RESERVE_WITH_TIMEOUT and ev[1] != 0:
            return "a reserve that waits"
        if op is P.CMD_PUT and (0 < ev[2] < SHORT or ev[3] < SHORT):
            return "a short delay or ttr"
        if op is P.CMD_RELEASE and 0 < ev[3] < SHORT:
            return "a short release delay"
        if op is P.CMD_PAUSE_TUBE and 0 < ev[2] < SHORT:
            return "a short pause"
    return None


# --- playing one example -------------------------------------------------------------
_STATS_VALUE = re.compile(rb"(?m)^([a-z-]+): .*$")
_TUBE_ITEM = re.compile(rb"(?m)^- (.*)\n")


def mask(r: Reply, prefix: bytes) -> Reply:
    """Hide what other examples change: stats values, their tubes in list-tubes."""
    if r.kind != "reply" or r.body is None or not r.head.startswith(b"OK "):
        return r
    body = r.body
    if b"\ncurrent-connections: " in body:
        body = _STATS_VALUE.sub(rb"\1: <v>", body)
    elif body.startswith(b"---\n- "):
        body = _TUBE_ITEM.sub(
            lambda m: m.group(0) if m.group(1) == b"default" or m.group(1).startswith(prefix)
            else b"", body)
    return Reply("reply", b"OK %d" % len(body), body)


class Player:
    """One long-lived server; plays examples on fresh connections."""

    def __init__(self, server) -> None:
        self.server = server

    def setup(self, prefix: str) -> tuple[socket.socket, int]:
        sock = socket.create_connection(self.server.address, timeout=READ_DEADLINE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"use %ss\r\nput 0 0 60 0\r\n\r\n" % prefix.encode())
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, f"{self.server.kind} closed during setup: {data!r}"
            data += chunk
        m = re.fullmatch(rb"USING \S+\r\nINSERTED (\d+)\r\n", data)
        assert m, f"{self.server.kind} setup: {data!r}"
        return sock, int(m.group(1))

    def play(self, sock: socket.socket, stream: bytes, cuts: tuple, prefix: str) -> list:
        offsets = sorted({int(f * len(stream)) for f in cuts} - {0, len(stream)})
        start = 0
        try:
            for end in [*offsets, len(stream)]:
                sock.sendall(stream[start:end])
                start = end
                time.sleep(CHUNK_GAP)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server hung up (quit); what it said is still readable
        data, closed = read_to_eof(sock)
        sock.close()
        replies = []
        while data:
            reply, used = frame(data)
            if reply is None:
                reply, used = Reply("malformed", data), len(data)
            replies.append(reply)
            data = data[used:]
        replies.append(EOF if closed else TIMEOUT)
        norm = Normaliser()
        return [mask(norm.reply(r), prefix.encode()) for r in replies]


def read_to_eof(sock: socket.socket) -> tuple[bytes, bool]:
    deadline = time.monotonic() + READ_DEADLINE
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


@pytest.fixture(scope="module")
def players():
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    with start_beanstalkd() as ref, start_bsnode() as cand:
        yield Player(ref), Player(cand)


_numbers = itertools.count(1)


def check(players, ex: Example) -> None:
    ref, cand = players
    prefix = f"q{next(_numbers)}."
    sock_r, base_r = ref.setup(prefix)
    sock_c, base_c = cand.setup(prefix)
    stream_r = render(ex.cmds, base_r, prefix)
    stream_c = render(ex.cmds, base_c, prefix)
    refs = any(isinstance(p, IdRef) for c in ex.cmds for p in c.line)
    why = runnable(stream_r, refs) or runnable(stream_c, refs)
    if why:
        sock_r.close()
        sock_c.close()
        assume(False)
    got_r = ref.play(sock_r, stream_r, ex.cuts, prefix)
    got_c = cand.play(sock_c, stream_c, ex.cuts, prefix)
    if len(got_r) == len(got_c) and all(map(same, got_r, got_c)):
        return
    lines = [f"stream sent to beanstalkd: {stream_r!r}", f"cut at fractions {ex.cuts}"]
    for i, (a, b) in enumerate(itertools.zip_longest(got_r, got_c)):
        mark = "  " if a is not None and b is not None and same(a, b) else "!!"
        lines.append(f"{mark} reply {i}: beanstalkd {a.text if a else None}"
                     f" | bsnode {b.text if b else None}")
    raise AssertionError("bsnode differs from beanstalkd:\n" + "\n".join(lines))


# --- the fuzz test and its regressions ------------------------------------------------
@settings(max_examples=MAX_EXAMPLES, deadline=EXAMPLE_DEADLINE_MS,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture],
          print_blob=True)
@given(ex=examples)
@example(ex=Example((Cmd((b"put 0 0 60 3",), b"abcd"), Cmd((b"peek-ready",))), ()))
@example(ex=Example((Cmd((b"x" * 224,)), Cmd((b"list-tube-used",))), (0.5,)))
def test_fuzzed_streams_get_beanstalkds_replies(players, ex):
    check(players, ex)


def test_the_filter_rejects_what_it_must():
    assert runnable(b"x" * 223 + b"\r\n") == "a 223-byte line"
    assert runnable(b"x" * 447 + b"\r\n") == "a 223-byte line"
    assert runnable(b"reserve\r\n") == "a blocking reserve"
    assert runnable(b"reserve-with-timeout 1\r\n") == "a reserve that waits"
    assert runnable(b"put 0 5 60 1\r\nx\r\n") == "a short delay or ttr"
    assert runnable(b"put 0 0 60 1\r\nx\r\nreserve-with-timeout 0\r\n") is None
    # a body is not a line: a 223-byte body is fine
    assert runnable(b"put 0 0 60 223\r\n" + b"y" * 223 + b"\r\n") is None
    assert runnable(b"x" * 224 + b"\r\n") is None
    assert runnable(b"quitx\r\nstats\r\nquitx\r\n") == "bytes after quit"
    assert runnable(b"stats\r\nquitx\r\n") is None


def test_the_comparison_sees_a_difference():
    """Against a beanstalkd with a smaller job size limit the check must fail:
    a fuzz test that cannot fail proves nothing."""
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    ex = Example((Cmd((b"put 0 0 60 3",), b"abc"), Cmd((b"peek-ready",))), ())
    with start_beanstalkd() as ref, start_beanstalkd("-z", "2") as other:
        with pytest.raises(AssertionError, match=r"JOB_TOO_BIG"):
            check((Player(ref), Player(other)), ex)
