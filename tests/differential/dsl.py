"""Transcript files: a small line-based language for protocol conversations.

How this works
--------------
A transcript file (``transcripts/*.bst``) holds several transcripts.  Each
starts with ``=== <name>``; the lines up to the next ``===`` are its steps.
Lines starting with ``#`` are comments (the first comment block after the
header is kept as the transcript's description).  Steps::

    server: -z 10           extra server flags (first step only)
    c1> put 0 0 60 5\\r\\nhello
                            send the text with a CRLF appended
    c1>> put 0 0 60 5\\r\\n  send the text exactly (no CRLF appended)
    c1>. stats              send the text + CRLF one byte per send
    c1< INSERTED #1         read one reply and compare it (CRLF implied)
    c1< OK {cmd-put: 1, current-jobs-ready: 1}
                            an OK reply whose YAML body has these lines
    c1< *                   any one reply (still compared between servers)
    c1 silent [SECS]        nothing arrives within SECS (default 0.2)
    c1 eof                  the server closes the connection, nothing before
    c1 close                half-close, wait for the server's EOF, close
    c1 hup                  half-close only (the server sees EOF on read)
    sleep SECS              a timed wait, for second-granular timers
    signal USR1             signal the server and wait until it is taken

Text escapes: ``\\r \\n \\t \\0 \\\\ \\xHH``, ``\\{abc*N}`` (abc repeated N times),
``\\#`` (a literal '#').  ``#N`` is a job-id placeholder: in a send it becomes
the real id that the N-th distinct job id seen in this run stands for; in an
expected reply it matches that id (see normalise.py).  Connections are opened
lazily, in the order the transcript first names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SILENCE = 0.2
_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\", "#": b"#"}
_TOKEN = re.compile(rb"\\x([0-9a-fA-F]{2})|\\\{([^*}]*)\*(\d+)\}|\\(.)|#(\d+)", re.S)
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_CONN_STEP = re.compile(r"(c\d+)(>>|>\.|>|<| )\s?(.*)\Z")
_SUBSET = re.compile(r"OK \{(.*)\}\Z")


class TranscriptError(ValueError):
    """A transcript file that does not follow the language above."""


@dataclass(frozen=True)
class IdRef:
    """``#N`` inside text: the N-th distinct job id of this run."""

    n: int


Text = tuple  # tuple[bytes | IdRef, ...]


@dataclass(frozen=True)
class Send:
    conn: str
    text: Text
    bytewise: bool = False


@dataclass(frozen=True)
class Expect:
    """Read one reply.  ``text`` is None for ``*``; ``subset`` for ``OK {...}``."""

    conn: str
    text: Text | None = None
    subset: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Silent:
    conn: str
    seconds: float = DEFAULT_SILENCE


@dataclass(frozen=True)
class Eof:
    conn: str


@dataclass(frozen=True)
class Close:
    conn: str


@dataclass(frozen=True)
class Hup:
    conn: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Signal:
    name: str


@dataclass
class Transcript:
    name: str
    path: Path
    line: int
    description: str = ""
    flags: tuple[str, ...] = ()
    steps: list = field(default_factory=list)
    sources: list = field(default_factory=list)  # (line number, text) per step

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def decode_text(raw: str) -> Text:
    """Turn escaped transcript text into a tuple of bytes and IdRef parts."""
    data = raw.encode("latin-1")
    parts: list = []
    buf = bytearray()
    pos = 0
    for m in _TOKEN.finditer(data):
        buf += data[pos:m.start()]
        pos = m.end()
        hexbyte, rep_text, rep_count, esc, idref = m.groups()
        if hexbyte is not None:
            buf.append(int(hexbyte, 16))
        elif rep_text is not None:
            buf += rep_text * int(rep_count)
        elif esc is not None:
            if esc.decode("latin-1") not in _ESCAPES:
                raise TranscriptError(f"unknown escape \\{esc.decode('latin-1')} in {raw!r}")
            buf += _ESCAPES[esc.decode("latin-1")]
        else:
            if buf:
                parts.append(bytes(buf))
                buf = bytearray()
            parts.append(IdRef(int(idref)))
    buf += data[pos:]
    if buf:
        parts.append(bytes(buf))
    return tuple(parts)


def _parse_subset(body: str, where: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in body.split(","):
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise TranscriptError(f"{where}: bad OK {{...}} item {item!r}")
        text = decode_text(value.strip())
        pairs.append((key.strip(), b"".join(
            b"#%d" % p.n if isinstance(p, IdRef) else p for p in text).decode("latin-1")))
    return tuple(pairs)


def _parse_conn_step(conn: str, op: str, rest: str, where: str):
    if op == ">":
        return Send(conn, decode_text(rest) + (b"\r\n",))
    if op == ">>":
        return Send(conn, decode_text(rest))
    if op == ">.":
        return Send(conn, decode_text(rest) + (b"\r\n",), bytewise=True)
    if op == "<":
        if rest == "*":
            return Expect(conn)
        m = _SUBSET.match(rest)
        if m:
            return Expect(conn, subset=_parse_subset(m.group(1), where))
        return Expect(conn, text=decode_text(rest) + (b"\r\n",))
    word, _, arg = rest.partition(" ")
    if word == "silent":
        return Silent(conn, float(arg) if arg else DEFAULT_SILENCE)
    if word in ("eof", "close", "hup") and not arg:
        return {"eof": Eof, "close": Close, "hup": Hup}[word](conn)
    raise TranscriptError(f"{where}: unknown step {conn} {rest!r}")


def parse_step(line: str, where: str):
    if line.startswith("sleep "):
        return Sleep(float(line[6:]))
    if line.startswith("signal "):
        return Signal(line[7:].strip())
    m = _CONN_STEP.match(line)
    if m is None:
        raise TranscriptError(f"{where}: cannot read step {line!r}")
    return _parse_conn_step(m.group(1), m.group(2), m.group(3), where)


def parse_file(path: Path) -> list[Transcript]:
    out: list[Transcript] = []
    current: Transcript | None = None
    for lineno, raw in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        line = raw.rstrip("\n")
        where = f"{path.name}:{lineno}"
        if line.startswith("==="):
            name = line[3:].strip()
            if not _NAME.match(name):
                raise TranscriptError(f"{where}: bad transcript name {name!r}")
            current = Transcript(name, path, lineno)
            out.append(current)
        elif not line.strip():
            continue
        elif line.startswith("#"):
            if current is not None and not current.steps:
                current.description += line.lstrip("# ") + " "
        elif current is None:
            raise TranscriptError(f"{where}: step before the first '==='")
        elif line.startswith("server:"):
            if current.steps:
                raise TranscriptError(f"{where}: 'server:' must come first")
            current.flags = tuple(line[7:].split())
        else:
            current.steps.append(parse_step(line, where))
            current.sources.append((lineno, line))
    for t in out:
        t.description = t.description.strip()
        if not t.steps:
            raise TranscriptError(f"{t.where}: transcript {t.name} has no steps")
    return out


def load_all(folder: Path) -> list[Transcript]:
    """Every transcript of every ``*.bst`` file in folder, names unique."""
    seen: dict[str, Transcript] = {}
    out: list[Transcript] = []
    for path in sorted(folder.glob("*.bst")):
        for t in parse_file(path):
            if t.name in seen:
                raise TranscriptError(f"{t.where}: name {t.name} also at {seen[t.name].where}")
            seen[t.name] = t
            out.append(t)
    return out
