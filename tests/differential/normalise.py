"""Framing and normalising server replies so two servers can be compared.

How this works
--------------
``frame(buf)`` cuts one reply off the front of a byte buffer.  It trusts
nothing: a RESERVED/FOUND/OK line must carry well-formed numbers and its
body must be followed by CRLF, or the reply is marked malformed (a wrong
``OK <bytes>`` count shows up that way).  bsclient's ReplyReader is not used
here because it believes what the server says.

``Normaliser`` rewrites what must differ between two servers, and nothing
else:

* job ids: the n-th distinct id seen in a run becomes ``#n``, in reply lines
  (INSERTED, BURIED <id>, RESERVED, FOUND) and in a stats-job body's ``id:``;
* per-process stats values: pid, version, rusage-*, uptime, id, hostname,
  os, platform become ``<field>`` -- but only when they have the shape
  beanstalkd gives them, so a malformed value still shows as a difference;
* ``OK <bytes>`` is recounted over the normalised body (the raw count was
  already checked against the raw body by ``frame``).

Time fields that tick (age, time-left, pause-time-left) are kept; ``same``
compares them with a tolerance of one second (more when the caller knows the
two runs reached that point at different times).  A Reply's ``text`` is what
error messages show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bsclient.protocol import CRLF, REPLY_WORDS_WITH_BODY

TICKING_FIELDS = ("age", "time-left", "pause-time-left")
TICK_TOLERANCE = 1
_SERVER_FIELDS = {
    b"pid": rb"\d+",
    b"version": rb'"[^"\n]*"',
    b"rusage-utime": rb"\d+\.\d{6}",
    b"rusage-stime": rb"\d+\.\d{6}",
    b"uptime": rb"\d+",
    b"id": rb"[0-9a-f]+",
    b"hostname": rb"[^\n]*",
    b"os": rb"[^\n]*",
    b"platform": rb"[^\n]*",
}
_SERVER_RE = {k: re.compile(rb"(?m)^(" + re.escape(k) + rb"): (" + v + rb")$")
              for k, v in _SERVER_FIELDS.items()}
_JOB_ID_LINE = re.compile(rb"\A---\nid: (\d+)\n")
_TICK_LINE = re.compile(r"(" + "|".join(TICKING_FIELDS) + r"): (-?\d+)\Z")
_NUM = re.compile(rb"\d+\Z")
MAX_REPLY_LINE = 4096  # a reply line longer than this is garbage


@dataclass(frozen=True)
class Reply:
    """One reply, or a stand-in for none: kind is 'reply', 'malformed',
    'timeout', 'eof', 'unexpected' or 'skipped'."""

    kind: str
    head: bytes = b""
    body: bytes | None = None

    @property
    def text(self) -> str:
        if self.kind != "reply":
            extra = f" {self.head + (self.body or b'')!r}" if self.head or self.body else ""
            return f"<{self.kind}{extra}>"
        out = self.head + CRLF
        if self.body is not None:
            out += self.body + CRLF
        return repr(out)


TIMEOUT = Reply("timeout")
EOF = Reply("eof")
SKIPPED = Reply("skipped")


def frame(buf: bytes) -> tuple[Reply | None, int]:
    """Cut one reply from the front of buf: (reply, bytes used) or (None, 0)."""
    end = buf.find(CRLF)
    if end < 0:
        if len(buf) > MAX_REPLY_LINE:
            return Reply("malformed", buf), len(buf)
        return None, 0
    head = buf[:end]
    words = head.split(b" ")
    if words[0] not in REPLY_WORDS_WITH_BODY:
        return Reply("reply", head), end + 2
    want = 3 if words[0] != b"OK" else 2
    if len(words) != want or not all(_NUM.match(w) for w in words[1:]):
        return Reply("malformed", head), end + 2
    size = int(words[-1])
    start = end + 2
    if len(buf) < start + size + 2:
        return None, 0
    body = buf[start:start + size]
    if buf[start + size:start + size + 2] != CRLF:
        return Reply("malformed", head + CRLF + body), start + size
    return Reply("reply", head, body), start + size + 2


class Normaliser:
    """Rewrites one run's replies; keeps the id map of that run."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # real id -> n
        self.real: dict[int, int] = {}  # n -> real id

    def placeholder(self, real: int) -> bytes:
        n = self.ids.get(real)
        if n is None:
            n = self.ids[real] = len(self.ids) + 1
            self.real[n] = real
        return b"#%d" % n

    def reply(self, r: Reply) -> Reply:
        if r.kind != "reply":
            return r
        words = r.head.split(b" ")
        word = words[0]
        if word in (b"INSERTED", b"BURIED") and len(words) == 2 and _NUM.match(words[1]):
            return Reply("reply", word + b" " + self.placeholder(int(words[1])))
        if word in (b"RESERVED", b"FOUND"):
            head = b" ".join((word, self.placeholder(int(words[1])), words[2]))
            return Reply("reply", head, r.body)
        if word == b"OK":
            body = self.body(r.body)
            return Reply("reply", b"OK %d" % len(body), body)
        return r

    def body(self, body: bytes) -> bytes:
        m = _JOB_ID_LINE.match(body)
        if m and b"\nstate: " in body:  # stats-job
            return b"---\nid: " + self.placeholder(int(m.group(1))) + b"\n" + body[m.end():]
        if b"\npid: " in body:  # server stats
            for key, rx in _SERVER_RE.items():
                body = rx.sub(b"\\1: <" + key + b">", body, count=1)
        return body


def _lines_same(a: bytes, b: bytes, tolerance: int = TICK_TOLERANCE) -> bool:
    if a == b:
        return True
    la, lb = a.split(b"\n"), b.split(b"\n")
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if x == y:
            continue
        mx = _TICK_LINE.match(x.decode("latin-1"))
        my = _TICK_LINE.match(y.decode("latin-1"))
        if not (mx and my and mx.group(1) == my.group(1)):
            return False
        if abs(int(mx.group(2)) - int(my.group(2))) > tolerance:
            return False
    return True


def _tick_digits(body: bytes) -> int:
    return sum(len(m.group(2)) for line in body.split(b"\n")
               if (m := _TICK_LINE.match(line.decode("latin-1"))))


def same(a: Reply, b: Reply, tolerance: int = TICK_TOLERANCE) -> bool:
    """Equal after normalisation, ticking fields within ``tolerance`` seconds."""
    if a.kind != b.kind or a.kind != "reply":
        return a == b
    if (a.body is None) != (b.body is None):
        return False
    if a.body is None:
        return a.head == b.head
    if a.head.startswith(b"OK ") and b.head.startswith(b"OK "):
        # the count may differ only by the digits of ticking values
        ca = int(a.head[3:]) - _tick_digits(a.body)
        cb = int(b.head[3:]) - _tick_digits(b.body)
        return ca == cb and _lines_same(a.body, b.body, tolerance)
    return a.head == b.head and _lines_same(a.body, b.body, tolerance)


def has_lines(r: Reply, pairs: tuple[tuple[str, str], ...]) -> bool:
    """An OK reply whose body holds each ``key: value`` line (ticking ones
    within the tolerance)."""
    if r.kind != "reply" or r.body is None or not r.head.startswith(b"OK "):
        return False
    lines = r.body.split(b"\n")
    for key, value in pairs:
        want = f"{key}: {value}".encode("latin-1")
        if not any(_lines_same(line, want) for line in lines if line.startswith(key.encode() + b":")):
            return False
    return True
