"""The beanstalkd protocol: its words, its limits, and a codec for each side.

How this works
--------------
This module knows bytes and nothing else: no sockets, no clock, no job store.
It implements doc/protocol.txt of beanstalkd 1.12 ("Job Lifecycle" aside):

* ``CommandReader`` is the server side.  Feed it the bytes a client sent and
  it returns events, one per command, in order.  A ``put`` event carries its
  body.  The framing rules are beanstalkd's (prot.c): a command line is at
  most 224 bytes including its CRLF, a ``put`` body is read as ``bytes + 2``
  bytes whose last two must be CRLF, a body over the size limit is read and
  thrown away before JOB_TOO_BIG is answered, so the stream stays in sync.
* ``parse_command`` turns one command line into ``(op, args...)``, applying
  beanstalkd's argument rules (u32/u64 ranges, spaces, tube-name charset).
  Errors are returned as values, never raised.
* ``ReplyReader`` is the client side: it frames reply lines and their bodies.

Events are plain tuples so the server's hot loop stays cheap:
``(op, arg, ...)`` where ``op`` is one of the ``CMD_*`` words, or
``(ERROR, reply_bytes, counted_op)`` for a command answered by the codec
itself (``counted_op`` names the command whose counter beanstalkd bumps
anyway, or is None).
"""

from __future__ import annotations

import re

# --- limits --------------------------------------------------------------
MAX_LINE = 224  # a command line, CRLF included (beanstalkd LINE_BUF_SIZE)
MAX_TUBE_NAME = 200
NAME_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"
)
URGENT_THRESHOLD = 1024  # jobs with pri < this are "urgent" in stats
DEFAULT_MAX_JOB_SIZE = 65535
MAX_JOB_SIZE_LIMIT = 1073741824
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
DEFAULT_PORT = 11300
DEFAULT_PRIORITY = 1024
DEFAULT_DELAY = 0
DEFAULT_TTR = 60
CRLF = b"\r\n"

# --- command words -------------------------------------------------------
CMD_PUT = "put"
CMD_USE = "use"
CMD_RESERVE = "reserve"
CMD_RESERVE_WITH_TIMEOUT = "reserve-with-timeout"
CMD_RESERVE_JOB = "reserve-job"
CMD_DELETE = "delete"
CMD_RELEASE = "release"
CMD_BURY = "bury"
CMD_TOUCH = "touch"
CMD_WATCH = "watch"
CMD_IGNORE = "ignore"
CMD_PEEK = "peek"
CMD_PEEK_READY = "peek-ready"
CMD_PEEK_DELAYED = "peek-delayed"
CMD_PEEK_BURIED = "peek-buried"
CMD_KICK = "kick"
CMD_KICK_JOB = "kick-job"
CMD_STATS = "stats"
CMD_STATS_JOB = "stats-job"
CMD_STATS_TUBE = "stats-tube"
CMD_LIST_TUBES = "list-tubes"
CMD_LIST_TUBE_USED = "list-tube-used"
CMD_LIST_TUBES_WATCHED = "list-tubes-watched"
CMD_PAUSE_TUBE = "pause-tube"
CMD_QUIT = "quit"
ERROR = "error"  # pseudo-op: the codec answered the command itself
PUT_BODY = "put-body"  # pseudo-op: a put whose line was counted in an earlier read

# the fields of a stats-tube reply, in beanstalkd's order (the node writes them,
# the proxy fills them for a tube no node has made yet)
STATS_TUBE_FIELDS = (
    "name", "current-jobs-urgent", "current-jobs-ready", "current-jobs-reserved",
    "current-jobs-delayed", "current-jobs-buried", "total-jobs", "current-using",
    "current-watching", "current-waiting", "cmd-delete", "cmd-pause-tube", "pause",
    "pause-time-left",
)

# --- reply words ---------------------------------------------------------
OUT_OF_MEMORY = b"OUT_OF_MEMORY\r\n"
INTERNAL_ERROR = b"INTERNAL_ERROR\r\n"
DRAINING = b"DRAINING\r\n"
BAD_FORMAT = b"BAD_FORMAT\r\n"
UNKNOWN_COMMAND = b"UNKNOWN_COMMAND\r\n"
EXPECTED_CRLF = b"EXPECTED_CRLF\r\n"
JOB_TOO_BIG = b"JOB_TOO_BIG\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DEADLINE_SOON = b"DEADLINE_SOON\r\n"
TIMED_OUT = b"TIMED_OUT\r\n"
DELETED = b"DELETED\r\n"
RELEASED = b"RELEASED\r\n"
BURIED = b"BURIED\r\n"
KICKED = b"KICKED\r\n"
TOUCHED = b"TOUCHED\r\n"
NOT_IGNORED = b"NOT_IGNORED\r\n"
PAUSED = b"PAUSED\r\n"

# Reply words a client can see, and whether a body follows the line.
REPLY_WORDS_WITH_BODY = frozenset({b"RESERVED", b"FOUND", b"OK"})
ERROR_WORDS = (
    "OUT_OF_MEMORY", "INTERNAL_ERROR", "DRAINING", "BAD_FORMAT", "UNKNOWN_COMMAND",
    "EXPECTED_CRLF", "JOB_TOO_BIG", "NOT_FOUND", "DEADLINE_SOON", "TIMED_OUT",
    "NOT_IGNORED", "BURIED",
)

# Commands that take no argument, and those written "word <args>".  The
# lookup below mirrors beanstalkd's which_cmd(): the line is matched by
# prefix, in this order, so "reservex" is a malformed "reserve" while
# "deletex 1" is an unknown command.
_PREFIXES = (
    (b"put ", CMD_PUT),
    (b"peek ", CMD_PEEK),
    (b"peek-ready", CMD_PEEK_READY),
    (b"peek-delayed", CMD_PEEK_DELAYED),
    (b"peek-buried", CMD_PEEK_BURIED),
    (b"reserve-with-timeout ", CMD_RESERVE_WITH_TIMEOUT),
    (b"reserve-job ", CMD_RESERVE_JOB),
    (b"reserve", CMD_RESERVE),
    (b"delete ", CMD_DELETE),
    (b"release ", CMD_RELEASE),
    (b"bury ", CMD_BURY),
    (b"kick ", CMD_KICK),
    (b"kick-job ", CMD_KICK_JOB),
    (b"touch ", CMD_TOUCH),
    (b"stats-job ", CMD_STATS_JOB),
    (b"stats-tube ", CMD_STATS_TUBE),
    (b"stats", CMD_STATS),
    (b"use ", CMD_USE),
    (b"watch ", CMD_WATCH),
    (b"ignore ", CMD_IGNORE),
    (b"list-tubes-watched", CMD_LIST_TUBES_WATCHED),
    (b"list-tube-used", CMD_LIST_TUBE_USED),
    (b"list-tubes", CMD_LIST_TUBES),
    (b"quit", CMD_QUIT),
    (b"pause-tube", CMD_PAUSE_TUBE),
)


def _which_cmd(line: bytes):
    for prefix, op in _PREFIXES:
        if line.startswith(prefix):
            return op, prefix
    return None, None


# --- argument parsing (beanstalkd's read_u32/read_u64 rules) --------------
# read_uNN skips spaces, then needs a digit; numbers follow each other
# separated by spaces.  Overflow is BAD_FORMAT.
_NUMS = {n: re.compile(rb" *(\d+)" + rb" +(\d+)" * (n - 1)) for n in (1, 2, 3, 4)}
_TUBE_AND_NUM = re.compile(rb" *([A-Za-z0-9\-+/;.$_()]+) +(\d+)\Z")
# strtol/strtoul: leading isspace, optional sign, digits (none -> 0 read)
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(\d*)")


def _nums(rest: bytes, n: int, whole: bool):
    """Parse n unsigned numbers; with whole=True nothing may follow."""
    m = _NUMS[n].match(rest)
    if m is None or (whole and m.end() != len(rest)):
        return None
    return [int(g) for g in m.groups()], rest[m.end():]


def _u64(rest: bytes):
    r = _nums(rest, 1, True)
    if r is None or r[0][0] > U64_MAX:
        return None
    return r[0][0]


def valid_tube_name(name: bytes) -> bool:
    """beanstalkd's is_valid_tube(): 1..200 name chars, not starting with '-'.

    The one tube-name rule: every other check (the clients, the config's
    [tubes.NAME], the CLI, the dashboard) asks this or ``is_tube_name``.
    """
    return (
        0 < len(name) <= MAX_TUBE_NAME
        and name[0] != 45  # '-'
        and NAME_CHARS.issuperset(name)
    )


TUBE_NAME_RULE = (f"1-{MAX_TUBE_NAME} of A-Z a-z 0-9 - + / ; . $ _ ( ), not starting with -")


def is_tube_name(name: object) -> bool:
    """``valid_tube_name`` for a str (what the clients and tools hold)."""
    return isinstance(name, str) and name.isascii() and valid_tube_name(name.encode("ascii"))


def _strtol(rest: bytes):
    """C strtol/strtoul on 64 bits: (value, ok). ok is False on overflow."""
    m = _STRTOL.match(rest)
    sign, digits = m.groups()
    if not digits:
        return 0, True, False  # nothing parsed
    v = int(digits)
    return (-v if sign == b"-" else v), v <= U64_MAX, True


def _p_put(rest):
    r = _nums(rest, 4, False)
    if r is None:
        return (ERROR, BAD_FORMAT, None)
    (pri, delay, ttr, size), tail = r
    if pri > U32_MAX or delay > U32_MAX or ttr > U32_MAX or size > U32_MAX:
        return (ERROR, BAD_FORMAT, None)
    return (CMD_PUT, pri, delay, ttr, size, tail)


def _p_id(op):
    def parse(rest):
        if rest.isdigit() and len(rest) < 20:  # fast path: < 20 digits fit in u64
            return (op, int(rest))
        job_id = _u64(rest)
        if job_id is None:
            return (ERROR, BAD_FORMAT, None)
        return (op, job_id)
    return parse


def _p_release(rest):
    r = _nums(rest, 3, True)
    if r is None:
        return (ERROR, BAD_FORMAT, None)
    job_id, pri, delay = r[0]
    if job_id > U64_MAX or pri > U32_MAX or delay > U32_MAX:
        return (ERROR, BAD_FORMAT, None)
    return (CMD_RELEASE, job_id, pri, delay)


def _p_bury(rest):
    r = _nums(rest, 2, True)
    if r is None:
        return (ERROR, BAD_FORMAT, None)
    job_id, pri = r[0]
    if job_id > U64_MAX or pri > U32_MAX:
        return (ERROR, BAD_FORMAT, None)
    return (CMD_BURY, job_id, pri)


def _p_reserve_timeout(rest):
    if rest.isdigit() and len(rest) < 10:  # fast path: fits C's int as it is
        return (CMD_RESERVE_WITH_TIMEOUT, int(rest))
    # beanstalkd 1.12 reads this with strtol: no digits means 0, a negative
    # value waits forever, trailing bytes are ignored, overflow is an error.
    value, ok, _ = _strtol(rest)
    if not ok or value > 0x7FFFFFFFFFFFFFFF or value < -0x8000000000000000:
        return (ERROR, BAD_FORMAT, None)
    value &= 0xFFFFFFFF  # C's (int) cast of a long
    if value >= 0x80000000:
        value -= 0x100000000
    return (CMD_RESERVE_WITH_TIMEOUT, value)


def _p_kick(rest):
    # strtoul into a 32-bit count; trailing bytes are ignored.
    value, ok, parsed = _strtol(rest)
    if not parsed or not ok:
        return (ERROR, BAD_FORMAT, None)
    return (CMD_KICK, (value & U64_MAX) & U32_MAX)


def _p_tube(op):
    def parse(rest):
        if not valid_tube_name(rest):
            return (ERROR, BAD_FORMAT, None)
        return (op, rest.decode("ascii"))
    return parse


def _p_pause(rest):
    m = _TUBE_AND_NUM.match(rest)
    if m is None or int(m.group(2)) > U32_MAX:
        return (ERROR, BAD_FORMAT, None)
    name, delay = m.group(1), int(m.group(2))
    if not valid_tube_name(name):
        return (ERROR, BAD_FORMAT, CMD_PAUSE_TUBE)
    return (CMD_PAUSE_TUBE, name.decode("ascii"), delay)


_ARG_PARSERS = {
    CMD_PUT: _p_put,
    CMD_PEEK: _p_id(CMD_PEEK),
    CMD_RESERVE_JOB: _p_id(CMD_RESERVE_JOB),
    CMD_DELETE: _p_id(CMD_DELETE),
    CMD_KICK_JOB: _p_id(CMD_KICK_JOB),
    CMD_TOUCH: _p_id(CMD_TOUCH),
    CMD_STATS_JOB: _p_id(CMD_STATS_JOB),
    CMD_RELEASE: _p_release,
    CMD_BURY: _p_bury,
    CMD_RESERVE_WITH_TIMEOUT: _p_reserve_timeout,
    CMD_KICK: _p_kick,
    CMD_USE: _p_tube(CMD_USE),
    CMD_WATCH: _p_tube(CMD_WATCH),
    CMD_IGNORE: _p_tube(CMD_IGNORE),
    CMD_STATS_TUBE: _p_tube(CMD_STATS_TUBE),
    CMD_PAUSE_TUBE: _p_pause,
}
_NO_ARGS = frozenset({
    CMD_RESERVE, CMD_PEEK_READY, CMD_PEEK_DELAYED, CMD_PEEK_BURIED, CMD_STATS,
    CMD_LIST_TUBES, CMD_LIST_TUBE_USED, CMD_LIST_TUBES_WATCHED,
})
# Fast path: the first word of a well-formed line names the command.
_WITH_ARGS_WORDS = {p[:-1]: op for p, op in _PREFIXES if p.endswith(b" ")}
_WITH_ARGS_WORDS[b"pause-tube"] = CMD_PAUSE_TUBE
_BARE_WORDS = {op.encode(): (op,) for op in _NO_ARGS}
_BARE_WORDS[b"quit"] = (CMD_QUIT,)


# A client sends the same put line ("put 1024 0 60 100") and the same
# "reserve-with-timeout 0" again and again: their parses are cached (bounded),
# which also makes jobs share their pri/ttr ints.  (Not lines naming a job id:
# each is new.)
_SAME_LINES: dict = {}
_SAME_LINES_MAX = 4096
_SAME_OPS = frozenset({CMD_PUT, CMD_RESERVE_WITH_TIMEOUT})


def parse_command(line: bytes) -> tuple:
    """Parse one command line (without its CRLF) into an event tuple."""
    ev = _SAME_LINES.get(line)
    if ev is not None:
        return ev
    sp = line.find(b" ")
    if sp < 0:
        ev = _BARE_WORDS.get(line)
        if ev is not None:
            return ev
    else:
        op = _WITH_ARGS_WORDS.get(line[:sp])
        # (0, not b"\0": bytes.__contains__ raises and clears a TypeError for a bytes one)
        if op is not None and 0 not in line:
            ev = _ARG_PARSERS[op](line[sp + 1:] if op != CMD_PAUSE_TUBE else line[sp:])
            if ev[0] in _SAME_OPS:
                if len(_SAME_LINES) >= _SAME_LINES_MAX:
                    _SAME_LINES.clear()
                _SAME_LINES[line] = ev
            return ev
    return _parse_slow(line)


def _parse_slow(line: bytes) -> tuple:
    if b"\0" in line:
        return (ERROR, BAD_FORMAT, None)
    op, prefix = _which_cmd(line)
    if op is None:
        return (ERROR, UNKNOWN_COMMAND, None)
    if op == CMD_QUIT:
        return (CMD_QUIT,)
    if op in _NO_ARGS:
        # a prefix match with anything after it is a malformed command
        return (op,) if line == prefix else (ERROR, BAD_FORMAT, None)
    return _ARG_PARSERS[op](line[len(prefix):])


# --- server-side stream framing -------------------------------------------
_LINE, _BODY, _DISCARD, _SKIPLINE = range(4)


class CommandReader:
    """Turns a client's byte stream into command events.

    ``feed(data)`` returns the list of events completed by ``data``.  Put
    events are ``(CMD_PUT, pri, delay, ttr, body)`` with ``ttr`` already
    raised to beanstalkd's minimum of 1.  Put failures that beanstalkd
    counts as a put come back as ``(ERROR, reply, CMD_PUT)``; a body with a
    bad trailer is ``(ERROR, EXPECTED_CRLF, "put-producer")`` since the
    connection became a producer before its body was checked.

    beanstalkd counts a put (and marks a producer) as soon as its command
    line is read.  When the body is still to come at the end of a read, the
    reader says so at once with ``(ERROR, b"", counted)`` (no reply), and the
    finished job later arrives as ``(PUT_BODY, ...)`` or an uncounted error.
    """

    __slots__ = ("max_job_size", "_buf", "_state", "_need", "_chunks", "_put")

    PUT_PRODUCER = "put-producer"

    def __init__(self, max_job_size: int = DEFAULT_MAX_JOB_SIZE) -> None:
        self.max_job_size = max_job_size
        self._buf = b""
        self._state = _LINE
        self._need = 0  # bytes still wanted in _BODY/_DISCARD
        self._chunks: list[bytes] = []
        self._put = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole event."""
        return len(self._buf) + sum(map(len, self._chunks))

    def feed(self, data: bytes) -> list:
        events: list = []
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _LINE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos >= MAX_LINE:
                        # overlong line: drop it, answer at its end
                        self._state = _SKIPLINE
                        pos = n - 1 if buf[-1] == 13 else n
                        break
                    break
                if end - pos > MAX_LINE - 2:
                    events.append((ERROR, BAD_FORMAT, None))
                    pos = end + 2
                    continue
                ev = parse_command(buf[pos:end])
                pos = end + 2
                if ev[0] is CMD_PUT:
                    pos = self._start_put(ev, buf, pos, events)
                else:
                    events.append(ev)
            elif state == _BODY:
                take = min(self._need, n - pos)
                self._chunks.append(buf[pos:pos + take])
                self._need -= take
                pos += take
                if self._need == 0:
                    self._finish_put(events)
            elif state == _DISCARD:
                take = min(self._need, n - pos)
                self._need -= take
                pos += take
                if self._need == 0:
                    self._state = _LINE
                    events.append((ERROR, JOB_TOO_BIG, None))
            else:  # _SKIPLINE
                end = buf.find(b"\r\n", pos)
                if end < 0:  # keep a trailing CR: its LF may come next
                    pos = n - 1 if buf[-1] == 13 else n
                    break
                pos = end + 2
                self._state = _LINE
                events.append((ERROR, BAD_FORMAT, None))
        if pos < n:
            self._buf = buf[pos:]
        return events

    def _start_put(self, ev, buf, pos, events) -> int:
        _, pri, delay, ttr, size, tail = ev
        if size > self.max_job_size:
            need = size + 2
            if len(buf) - pos >= need:
                events.append((ERROR, JOB_TOO_BIG, CMD_PUT))
                return pos + need
            events.append((ERROR, b"", CMD_PUT))
            self._need = need
            self._state = _DISCARD
            return pos
        if tail:
            events.append((ERROR, BAD_FORMAT, CMD_PUT))
            return pos
        need = size + 2
        if len(buf) - pos >= need:  # the common case: body already here
            end = pos + size
            if buf[end] == 13 and buf[end + 1] == 10:
                events.append((CMD_PUT, pri, delay, ttr if ttr else 1, buf[pos:end]))
            else:
                events.append((ERROR, EXPECTED_CRLF, self.PUT_PRODUCER))
            return pos + need
        events.append((ERROR, b"", self.PUT_PRODUCER))
        self._put = (pri, delay, ttr if ttr else 1)
        self._need = need
        self._chunks = []
        self._state = _BODY
        return pos

    def _finish_put(self, events) -> None:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._state = _LINE
        if body[-2:] != b"\r\n":
            events.append((ERROR, EXPECTED_CRLF, None))
            return
        pri, delay, ttr = self._put
        events.append((PUT_BODY, pri, delay, ttr, body[:-2]))


# --- client side ----------------------------------------------------------
class ReplyReader:
    """Frames server replies: ``feed(data)`` returns ``[(line_words, body)]``.

    ``line_words`` is the reply line split on spaces (bytes); ``body`` is the
    data block for RESERVED/FOUND/OK replies, otherwise None.  A large body
    is gathered in chunks and joined once, so feeding it costs O(size).
    """

    __slots__ = ("_buf", "_pending", "_chunks", "_have")

    def __init__(self) -> None:
        self._buf = b""
        self._pending = None  # (words, size) waiting for a body
        self._chunks: list[bytes] = []
        self._have = 0

    def feed(self, data: bytes) -> list:
        out = []
        if self._pending is not None:
            words, size = self._pending
            need = size + 2 - self._have
            if len(data) < need:
                self._chunks.append(data)
                self._have += len(data)
                return out
            self._chunks.append(data[:need])
            body = b"".join(self._chunks)[:size]
            self._chunks, self._have, self._pending = [], 0, None
            out.append((words, body))
            data = data[need:]
        buf = self._buf + data if self._buf else data
        pos = 0
        n = len(buf)
        while pos < n:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            words = buf[pos:end].split(b" ")
            pos = end + 2
            if words[0] not in REPLY_WORDS_WITH_BODY:
                out.append((words, None))
                continue
            size = int(words[-1])
            if n - pos >= size + 2:
                out.append((words, buf[pos:pos + size]))
                pos += size + 2
                continue
            self._pending = (words, size)
            self._chunks = [buf[pos:]]
            self._have = n - pos
            pos = n
        self._buf = buf[pos:] if pos < n else b""
        return out


def encode_command(*parts, body: bytes | None = None) -> bytes:
    """Build a command line (and body) from words and numbers."""
    line = b" ".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    if body is None:
        return line + CRLF
    return b"".join((line, CRLF, body, CRLF))
