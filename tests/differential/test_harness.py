"""Unit tests of the differential harness itself: the transcript language,
reply framing, normalisation, and the runner against a scripted fake server
(so a harness that could not see a difference would fail here)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from .dsl import Close, Expect, IdRef, Send, Silent, TranscriptError, decode_text, parse_file
from .normalise import Normaliser, Reply, frame, has_lines, same
from .runner import Outcome, Run, compare, run
from .suite import transcripts

pytestmark = pytest.mark.differential


# --- the language -----------------------------------------------------------
def test_decode_text_escapes_and_ids():
    assert decode_text(r"a\r\n\0\xff\\\#") == (b"a\r\n\0\xff\\#",)
    assert decode_text(r"\{ab*3}!") == (b"ababab!",)
    assert decode_text("delete #12 now") == (b"delete ", IdRef(12), b" now")
    with pytest.raises(TranscriptError):
        decode_text(r"\q")


def test_parse_file(tmp_path: Path):
    f = tmp_path / "x.bst"
    f.write_text(
        "# file comment\n=== one\n# what it does\nserver: -z 4\n"
        "c1> put 0 0 1 1\\r\\nx\nc1< INSERTED #1\nc2>> raw\nc1 silent 0.5\n"
        "c1< OK {cmd-put: 1, name: \\{n*3}}\nc1 close\n"
    )
    [t] = parse_file(f)
    assert (t.name, t.flags, t.description) == ("one", ("-z", "4"), "what it does")
    assert t.steps[0] == Send("c1", (b"put 0 0 1 1\r\nx", b"\r\n"))
    assert t.steps[1] == Expect("c1", text=(b"INSERTED ", IdRef(1), b"\r\n"))
    assert t.steps[2] == Send("c2", (b"raw",))
    assert t.steps[3] == Silent("c1", 0.5)
    assert t.steps[4] == Expect("c1", subset=(("cmd-put", "1"), ("name", "nnn")))
    assert t.steps[5] == Close("c1")


@pytest.mark.parametrize("bad", ["=== Bad Name\nc1> x\n", "c1> x\n", "=== a\n", "=== a\nc1 dance\n"])
def test_parse_file_rejects(tmp_path: Path, bad: str):
    f = tmp_path / "bad.bst"
    f.write_text(bad)
    with pytest.raises(TranscriptError):
        parse_file(f)


def test_suite_loads_with_unique_names():
    names = [t.name for t in transcripts()]
    assert len(names) == len(set(names)) >= 120


# --- framing and normalising ------------------------------------------------
def test_frame_checks_counts_and_trailers():
    assert frame(b"INSERTED 5\r\nrest") == (Reply("reply", b"INSERTED 5"), 12)
    assert frame(b"FOUND 1 3\r\nabc\r\n") == (Reply("reply", b"FOUND 1 3", b"abc"), 16)
    assert frame(b"FOUND 1 3\r\nab") == (None, 0)  # incomplete
    r, _ = frame(b"OK 2\r\nabc\r\n")  # count one short: the trailer is wrong
    assert r.kind == "malformed"
    r, _ = frame(b"RESERVED x 3\r\n")
    assert r.kind == "malformed"


def test_normaliser_maps_ids_in_order_everywhere():
    n = Normaliser()
    assert n.reply(Reply("reply", b"INSERTED 40")).head == b"INSERTED #1"
    assert n.reply(Reply("reply", b"INSERTED 7")).head == b"INSERTED #2"
    assert n.reply(Reply("reply", b"RESERVED 40 1", b"x")).head == b"RESERVED #1 1"
    body = b"---\nid: 7\ntube: default\nstate: ready\n"
    got = n.reply(Reply("reply", b"OK %d" % len(body), body))
    assert got.body == b"---\nid: #2\ntube: default\nstate: ready\n"
    assert got.head == b"OK %d" % len(got.body)
    assert n.real == {1: 40, 2: 7}


def test_normaliser_server_fields_only_in_their_shape():
    n = Normaliser()
    body = (b"---\ncmd-put: 3\npid: 123\nversion: \"1.12\"\nrusage-utime: 0.001000\n"
            b"uptime: 9\nid: 0a1b\nhostname: h\nos: #1 SMP\nplatform: x86_64\n")
    got = n.reply(Reply("reply", b"OK %d" % len(body), body)).body
    assert b"cmd-put: 3\npid: <pid>\nversion: <version>\nrusage-utime: <rusage-utime>" in got
    assert b"os: <os>\nplatform: <platform>" in got
    odd = b"---\npid: 12x\nrusage-utime: 1.5\n"
    assert n.reply(Reply("reply", b"OK %d" % len(odd), odd)).body == odd


def test_same_tolerates_only_ticking_fields_by_one_second():
    def ok(body: bytes) -> Reply:
        return Reply("reply", b"OK %d" % len(body), body)

    assert same(ok(b"---\nage: 9\nttr: 60\n"), ok(b"---\nage: 10\nttr: 60\n"))
    assert same(ok(b"---\ntime-left: 0\n"), ok(b"---\ntime-left: 1\n"))
    assert not same(ok(b"---\nage: 8\n"), ok(b"---\nage: 10\n"))
    assert not same(ok(b"---\nttr: 59\n"), ok(b"---\nttr: 60\n"))
    assert not same(Reply("reply", b"OK 99", b"---\nage: 1\n"), ok(b"---\nage: 1\n"))
    assert not same(Reply("timeout"), Reply("reply", b"TIMED_OUT"))


def test_has_lines():
    r = Reply("reply", b"OK 20", b"---\ncmd-put: 1\nage: 3\n")
    assert has_lines(r, (("cmd-put", "1"), ("age", "2")))
    assert not has_lines(r, (("cmd-put", "2"),))
    assert not has_lines(r, (("missing", "1"),))


# --- the runner against a scripted server -----------------------------------
class FakeServer:
    """Answers each received line from a script: {line: reply bytes}."""

    def __init__(self, script: dict[bytes, bytes]) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if line == b"bye":
                        return
                    conn.sendall(self.script.get(line, b""))

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _play(tmp_path: Path, text: str, script: dict[bytes, bytes]):
    f = tmp_path / "t.bst"
    f.write_text("=== t\n" + text)
    [t] = parse_file(f)
    server = FakeServer(script)
    try:
        return run(t, "127.0.0.1", server.port, 0, reply_timeout=0.5)
    finally:
        server.close()


def test_runner_passes_a_matching_server(tmp_path: Path):
    r = _play(tmp_path, "c1> put\nc1< INSERTED #1\nc1> peek #1\nc1< FOUND #1 2\\r\\nhi\nc1> quiet\n"
              "c1 silent 0.05\nc1> bye\nc1 eof\n",
              {b"put": b"INSERTED 77\r\n", b"peek 77": b"FOUND 77 2\r\nhi\r\n"})
    assert r.problems == []
    assert [o.reply.kind for o in r.outcomes] == ["reply", "reply", "none", "eof"]


def test_runner_sees_every_kind_of_difference(tmp_path: Path):
    r = _play(tmp_path, "c1> a\nc1< A\nc1> b\nc1< B\nc1> c\nc1 silent 0.05\nc1> d\nc1< D\n",
              {b"a": b"X\r\n", b"b": b"OK 5\r\nab\r\n", b"c": b"NOISE\r\n",
               b"d": b"D\r\nEXTRA\r\n"})
    assert len(r.problems) == 4, r.problems
    kinds = [o.reply.kind for o in r.outcomes]
    assert kinds == ["reply", "malformed", "unexpected", "reply", "unexpected"]


def test_compare_reports_differences(tmp_path: Path):
    script = {b"s": b"OK 11\r\n---\nage: 1\n\r\n"}
    a = _play(tmp_path, "c1> s\nc1< *\n", script)
    b = _play(tmp_path, "c1> s\nc1< *\n", {b"s": b"OK 11\r\n---\nage: 2\n\r\n"})
    c = _play(tmp_path, "c1> s\nc1< *\n", {b"s": b"OK 11\r\n---\nttr: 2\n\r\n"})
    assert compare(a, b) == []
    [diff] = compare(a, c)
    assert "'-age: 1'" in diff and "'+ttr: 2'" in diff


def test_compare_widens_tolerance_by_lateness(tmp_path: Path):
    f = tmp_path / "t.bst"
    f.write_text("=== t\nc1> s\nc1< *\n")
    [t] = parse_file(f)

    def one(age: int, at: float) -> Run:
        body = b"---\nage: %d\n" % age
        return Run(t, [Outcome(0, "c1", Reply("reply", b"OK %d" % len(body), body), at=at)])

    assert compare(one(1, 1.0), one(3, 1.2)) != []  # same moment: 2 s apart is wrong
    assert compare(one(1, 1.0), one(3, 2.5)) == []  # 1.5 s later: allowed
