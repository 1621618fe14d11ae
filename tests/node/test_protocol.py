"""The protocol codec driven with bytes, h11 style: no sockets, no server.

Every stream is fed three ways (whole, one byte at a time, in random-sized
chunks) and must give the same events.  The expected events follow
beanstalkd 1.12's prot.c, each rule checked against /usr/bin/beanstalkd
(the differential suite compares the wire replies end to end).
"""

from __future__ import annotations

import random

import pytest
from bsclient import protocol as P
from bsclient.protocol import (
    BAD_FORMAT,
    ERROR,
    EXPECTED_CRLF,
    JOB_TOO_BIG,
    MAX_LINE,
    MAX_TUBE_NAME,
    U32_MAX,
    U64_MAX,
    UNKNOWN_COMMAND,
    CommandReader,
    ReplyReader,
    encode_command,
    parse_command,
    valid_tube_name,
)
from hypothesis import given, settings
from hypothesis import strategies as st

BAD = (ERROR, BAD_FORMAT, None)
PUT_PRODUCER = CommandReader.PUT_PRODUCER
UNKNOWN = (ERROR, UNKNOWN_COMMAND, None)


# --- feeding helpers ----------------------------------------------------------
def feed_whole(data: bytes, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE) -> list:
    return CommandReader(max_job_size).feed(data)


def feed_bytewise(data: bytes, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE) -> list:
    r = CommandReader(max_job_size)
    events: list = []
    for i in range(len(data)):
        events += r.feed(data[i:i + 1])
    return events


def feed_chunks(data: bytes, seed: int, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE) -> list:
    rng = random.Random(seed)
    r = CommandReader(max_job_size)
    events: list = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 40)
        events += r.feed(data[pos:pos + n])
        pos += n
    return events


_EARLY = {
    # a put whose body is still to come is counted at once (ERROR, b"", who),
    # then completed by one more event; together they mean what the single
    # event of a put read whole means
    (PUT_PRODUCER, P.PUT_BODY): lambda ev: (P.CMD_PUT,) + ev[1:],
    (PUT_PRODUCER, ERROR): lambda ev: (ERROR, ev[1], PUT_PRODUCER),
    (P.CMD_PUT, ERROR): lambda ev: (ERROR, ev[1], P.CMD_PUT),
}


def normalise(events: list) -> list:
    """Fold each early-counted put into the event it would be if read whole."""
    out: list = []
    i = 0
    while i < len(events):
        ev = events[i]
        if ev[0] == ERROR and ev[1] == b"":
            assert i + 1 < len(events), "an early put event with nothing after it"
            nxt = events[i + 1]
            assert nxt[0] == P.PUT_BODY or nxt[2] is None, nxt
            out.append(_EARLY[(ev[2], nxt[0])](nxt))
            i += 2
        else:
            assert ev[0] != P.PUT_BODY, "a put body with no early event before it"
            out.append(ev)
            i += 1
    return out


def all_ways(data: bytes, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE) -> list:
    """Feed ``data`` every way; assert they mean the same; return the events."""
    whole = feed_whole(data, max_job_size)
    assert normalise(whole) == whole  # read whole, nothing is split
    assert normalise(feed_bytewise(data, max_job_size)) == whole
    for seed in range(3):
        assert normalise(feed_chunks(data, seed, max_job_size)) == whole
    return whole


# --- every command, parsed whole, byte by byte and pipelined -----------------
COMMANDS = [
    (b"put 10 20 30 5\r\nhello\r\n", (P.CMD_PUT, 10, 20, 30, b"hello")),
    (b"put 0 0 0 0\r\n\r\n", (P.CMD_PUT, 0, 0, 1, b"")),  # ttr raised to 1
    (b"put 1 0 60 4\r\na\r\nb\r\n", (P.CMD_PUT, 1, 0, 60, b"a\r\nb")),
    (b"put 1 0 60 3\r\na\0b\r\n", (P.CMD_PUT, 1, 0, 60, b"a\0b")),
    (b"use foo\r\n", (P.CMD_USE, "foo")),
    (b"reserve\r\n", (P.CMD_RESERVE,)),
    (b"reserve-with-timeout 5\r\n", (P.CMD_RESERVE_WITH_TIMEOUT, 5)),
    (b"reserve-job 42\r\n", (P.CMD_RESERVE_JOB, 42)),
    (b"delete 7\r\n", (P.CMD_DELETE, 7)),
    (b"release 7 100 3\r\n", (P.CMD_RELEASE, 7, 100, 3)),
    (b"bury 7 9\r\n", (P.CMD_BURY, 7, 9)),
    (b"touch 7\r\n", (P.CMD_TOUCH, 7)),
    (b"watch a-b_c\r\n", (P.CMD_WATCH, "a-b_c")),
    (b"ignore default\r\n", (P.CMD_IGNORE, "default")),
    (b"peek 3\r\n", (P.CMD_PEEK, 3)),
    (b"peek-ready\r\n", (P.CMD_PEEK_READY,)),
    (b"peek-delayed\r\n", (P.CMD_PEEK_DELAYED,)),
    (b"peek-buried\r\n", (P.CMD_PEEK_BURIED,)),
    (b"kick 10\r\n", (P.CMD_KICK, 10)),
    (b"kick-job 3\r\n", (P.CMD_KICK_JOB, 3)),
    (b"stats\r\n", (P.CMD_STATS,)),
    (b"stats-job 3\r\n", (P.CMD_STATS_JOB, 3)),
    (b"stats-tube foo\r\n", (P.CMD_STATS_TUBE, "foo")),
    (b"list-tubes\r\n", (P.CMD_LIST_TUBES,)),
    (b"list-tube-used\r\n", (P.CMD_LIST_TUBE_USED,)),
    (b"list-tubes-watched\r\n", (P.CMD_LIST_TUBES_WATCHED,)),
    (b"pause-tube foo 30\r\n", (P.CMD_PAUSE_TUBE, "foo", 30)),
    (b"quit\r\n", (P.CMD_QUIT,)),
]


@pytest.mark.parametrize("data,event", COMMANDS, ids=[c[0][:20].decode(errors="replace")
                                                      for c in COMMANDS])
def test_each_command_whole_and_bytewise(data, event):
    assert all_ways(data) == [event]


def test_every_command_word_is_covered():
    covered = {ev[0] for _, ev in COMMANDS}
    words = {v for k, v in vars(P).items() if k.startswith("CMD_")}
    assert words == covered


def test_all_commands_pipelined_in_one_chunk():
    data = b"".join(d for d, _ in COMMANDS)
    assert all_ways(data) == [ev for _, ev in COMMANDS]


def test_pipelined_puts_then_commands():
    data = b"".join(encode_command("put", 1, 0, 5, len(b), body=b) for b in
                    (b"one", b"", b"three\r\n", b"x" * 1000)) + b"stats\r\n"
    assert all_ways(data) == [
        (P.CMD_PUT, 1, 0, 5, b"one"),
        (P.CMD_PUT, 1, 0, 5, b""),
        (P.CMD_PUT, 1, 0, 5, b"three\r\n"),
        (P.CMD_PUT, 1, 0, 5, b"x" * 1000),
        (P.CMD_STATS,),
    ]


def test_put_body_split_across_feeds():
    r = CommandReader()
    # the put is counted as soon as its line is read, as beanstalkd does
    assert r.feed(b"put 1 2 3 11\r\nhel") == [(ERROR, b"", PUT_PRODUCER)]
    assert r.buffered == 3
    assert r.feed(b"lo wor") == []
    assert r.feed(b"ld\r") == []
    assert r.feed(b"\nstats\r\n") == [(P.PUT_BODY, 1, 2, 3, b"hello world"), (P.CMD_STATS,)]
    assert r.buffered == 0


def test_put_line_split_from_its_body():
    r = CommandReader()
    assert r.feed(b"put 1 2 3 2") == []
    assert r.feed(b"\r") == []
    assert r.feed(b"\n") == [(ERROR, b"", PUT_PRODUCER)]
    assert r.feed(b"ok\r\n") == [(P.PUT_BODY, 1, 2, 3, b"ok")]


def test_split_put_with_a_bad_trailer():
    r = CommandReader()
    assert r.feed(b"put 0 0 0 1\r\n") == [(ERROR, b"", PUT_PRODUCER)]
    assert r.feed(b"xyz") == [(ERROR, EXPECTED_CRLF, None)]  # counted already
    assert r.feed(b"\r\n") == [UNKNOWN]  # "z" was not part of the body


def test_put_then_hang_up_mid_body_was_still_counted():
    r = CommandReader()
    assert r.feed(b"stats\r\nput 0 0 0 100\r\nabc") == [
        (P.CMD_STATS,), (ERROR, b"", PUT_PRODUCER)]
    assert r.buffered == 3


def test_partial_line_waits_for_crlf():
    r = CommandReader()
    assert r.feed(b"stats") == []
    assert r.feed(b"\r") == []
    assert r.feed(b"\n") == [(P.CMD_STATS,)]


def test_large_body_one_event():
    body = bytes(range(256)) * 200
    data = encode_command("put", 0, 0, 1, len(body), body=body)
    assert feed_whole(data, 1 << 20) == [(P.CMD_PUT, 0, 0, 1, body)]
    assert feed_chunks(data, 7, 1 << 20) == [(ERROR, b"", PUT_PRODUCER),
                                             (P.PUT_BODY, 0, 0, 1, body)]


# --- JOB_TOO_BIG and EXPECTED_CRLF -------------------------------------------
def test_job_too_big_discards_exactly_bytes_plus_two():
    # the discarded bytes hold CRLFs and things that look like commands
    junk = b"stats\r\nquit\r\n"
    assert len(junk) == 13
    data = b"put 0 0 0 11\r\n" + junk + b"list-tubes\r\n"
    assert all_ways(data, max_job_size=10) == [
        (ERROR, JOB_TOO_BIG, P.CMD_PUT),
        (P.CMD_LIST_TUBES,),
    ]


def test_job_too_big_reply_only_after_the_body_is_gone():
    r = CommandReader(max_job_size=4)
    # counted at once, answered once the body has been thrown away
    assert r.feed(b"put 0 0 0 5\r\nabcde") == [(ERROR, b"", P.CMD_PUT)]
    assert r.buffered == 0  # discarded bytes are not kept
    assert r.feed(b"\r") == []
    assert r.feed(b"\nstats\r\n") == [(ERROR, JOB_TOO_BIG, None), (P.CMD_STATS,)]


def test_job_too_big_checked_before_trailing_garbage():
    # beanstalkd tests the size before the trailing bytes of the put line
    data = b"put 0 0 0 9 junk\r\n" + b"x" * 11 + b"stats\r\n"
    assert all_ways(data, max_job_size=8) == [(ERROR, JOB_TOO_BIG, P.CMD_PUT), (P.CMD_STATS,)]


def test_job_at_the_size_limit_is_accepted():
    data = b"put 0 0 0 8\r\n12345678\r\n"
    assert all_ways(data, max_job_size=8) == [(P.CMD_PUT, 0, 0, 1, b"12345678")]


def test_max_job_size_zero_allows_only_empty_bodies():
    assert all_ways(b"put 0 0 0 0\r\n\r\nput 0 0 0 1\r\nx\r\n", max_job_size=0) == [
        (P.CMD_PUT, 0, 0, 1, b""), (ERROR, JOB_TOO_BIG, P.CMD_PUT)]


def test_expected_crlf_then_parses_right_after_the_body():
    # body "abc" is followed by "de", not CRLF: the next command starts after
    # size+2 bytes, so what follows the bad trailer is read as a line
    data = b"put 0 0 0 3\r\nabcdestats\r\n"
    assert all_ways(data) == [(ERROR, EXPECTED_CRLF, CommandReader.PUT_PRODUCER),
                              (P.CMD_STATS,)]


def test_expected_crlf_leftover_crlf_is_an_empty_line():
    data = b"put 0 0 10 2\r\nhixx\r\nlist-tubes\r\n"
    assert all_ways(data) == [
        (ERROR, EXPECTED_CRLF, CommandReader.PUT_PRODUCER), UNKNOWN, (P.CMD_LIST_TUBES,)]


def test_body_with_only_cr_or_lf_trailer():
    assert all_ways(b"put 0 0 0 1\r\nx\n\r")[0] == (
        ERROR, EXPECTED_CRLF, CommandReader.PUT_PRODUCER)
    assert all_ways(b"put 0 0 0 1\r\nx\r\r")[0] == (
        ERROR, EXPECTED_CRLF, CommandReader.PUT_PRODUCER)


def test_put_errors_and_what_they_count():
    assert all_ways(b"put 0 0 0 1 x\r\n") == [(ERROR, BAD_FORMAT, P.CMD_PUT)]
    assert all_ways(b"put 0 0 0\r\n") == [BAD]
    assert all_ways(b"put \r\n") == [BAD]
    assert all_ways(b"put 1 0 0 -1\r\n") == [BAD]
    assert all_ways(b"put\r\n") == [UNKNOWN]


def test_put_trailing_garbage_does_not_read_a_body():
    # BAD_FORMAT at the line: the would-be body is parsed as commands
    assert all_ways(b"put 0 0 0 5 x\r\nstats\r\n") == [
        (ERROR, BAD_FORMAT, P.CMD_PUT), (P.CMD_STATS,)]


# --- line length ---------------------------------------------------------------
def test_longest_line_is_224_bytes_with_crlf():
    name = b"a" * MAX_TUBE_NAME
    line = b"use " + name + b"\r\n"
    assert len(line) <= MAX_LINE
    assert all_ways(line) == [(P.CMD_USE, name.decode())]
    exact = b"x" * (MAX_LINE - 2) + b"\r\n"
    assert all_ways(exact) == [UNKNOWN]


@pytest.mark.parametrize("length", [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 500, 5000])
def test_overlong_line_is_bad_format_and_resyncs(length):
    # length counts the bytes before the CRLF
    data = b"x" * length + b"\r\n" + b"list-tube-used\r\n"
    assert all_ways(data) == [BAD, (P.CMD_LIST_TUBE_USED,)]


def test_overlong_line_answered_only_at_its_end():
    r = CommandReader()
    assert r.feed(b"y" * 1000) == []
    assert r.buffered < MAX_LINE  # nothing piles up
    assert r.feed(b"z" * 1000) == []
    assert r.buffered < MAX_LINE
    assert r.feed(b"\r") == []
    assert r.feed(b"\nstats\r\n") == [BAD, (P.CMD_STATS,)]


def test_overlong_put_line_does_not_read_a_body():
    data = b"put 0 0 0 " + b"0" * 220 + b"5\r\nstats\r\n"
    assert all_ways(data) == [BAD, (P.CMD_STATS,)]


def test_cr_alone_inside_overlong_line():
    data = b"a\r" * 200 + b"\r\nstats\r\n"
    assert all_ways(data) == [BAD, (P.CMD_STATS,)]


# --- NUL bytes -----------------------------------------------------------------
@pytest.mark.parametrize("line", [
    b"stats\0", b"\0stats", b"use fo\0o", b"delete 1\0", b"put 0 0 0 1\0", b"\0",
    b"reserve\0", b"quit\0",
])
def test_nul_in_a_command_line_is_bad_format(line):
    assert all_ways(line + b"\r\nlist-tubes\r\n") == [BAD, (P.CMD_LIST_TUBES,)]


# --- number bounds --------------------------------------------------------------
def test_u32_bounds_in_put():
    ok = b"put %d %d %d 0\r\n\r\n" % (U32_MAX, U32_MAX, U32_MAX)
    assert all_ways(ok) == [(P.CMD_PUT, U32_MAX, U32_MAX, U32_MAX, b"")]
    for i in range(4):
        nums = [b"0"] * 4
        nums[i] = b"%d" % (U32_MAX + 1)
        assert all_ways(b"put " + b" ".join(nums) + b"\r\n") == [BAD], i


def test_put_size_u32_max_is_job_too_big_not_bad_format():
    r = CommandReader(10)
    # now discarding the body
    assert r.feed(b"put 0 0 0 %d\r\n" % U32_MAX) == [(ERROR, b"", P.CMD_PUT)]
    assert r.feed(b"stats\r\n" * 100) == []  # swallowed as body bytes
    assert r.buffered == 0
    assert CommandReader(10).feed(b"put 0 0 0 %d\r\n" % (U32_MAX + 1)) == [BAD]


@pytest.mark.parametrize("word,op", [
    (b"delete", P.CMD_DELETE), (b"peek", P.CMD_PEEK), (b"touch", P.CMD_TOUCH),
    (b"kick-job", P.CMD_KICK_JOB), (b"stats-job", P.CMD_STATS_JOB),
    (b"reserve-job", P.CMD_RESERVE_JOB),
])
def test_u64_job_ids(word, op):
    assert parse_command(word + b" %d" % U64_MAX) == (op, U64_MAX)
    assert parse_command(word + b" %d" % (U64_MAX + 1)) == BAD
    assert parse_command(word + b" 0") == (op, 0)
    assert parse_command(word + b" 000000000000000000000000000007") == (op, 7)
    assert parse_command(word + b"  7") == (op, 7)  # leading spaces skipped
    for bad in (b" 7 ", b" -7", b" +7", b" 7x", b" x", b" ", b" 0x10", b" 7\t"):
        assert parse_command(word + bad) == BAD, bad


def test_release_and_bury_bounds():
    assert parse_command(b"release %d %d %d" % (U64_MAX, U32_MAX, U32_MAX)) == (
        P.CMD_RELEASE, U64_MAX, U32_MAX, U32_MAX)
    assert parse_command(b"release 1 %d 0" % (U32_MAX + 1)) == BAD
    assert parse_command(b"release 1 0 %d" % (U32_MAX + 1)) == BAD
    assert parse_command(b"release 1 1") == BAD
    assert parse_command(b"release 1 1 1 ") == BAD
    assert parse_command(b"bury %d %d" % (U64_MAX, U32_MAX)) == (P.CMD_BURY, U64_MAX, U32_MAX)
    assert parse_command(b"bury 1 %d" % (U32_MAX + 1)) == BAD
    assert parse_command(b"bury 1") == BAD
    assert parse_command(b"bury 1 1 1") == BAD


@pytest.mark.parametrize("arg,value", [
    (b"0", 0), (b"5", 5), (b"-1", -1), (b"+5", 5), (b"  5", 5), (b"\t5", 5),
    (b"5abc", 5), (b"abc", 0), (b"", 0), (b"4294967296", 0), (b"4294967297", 1),
    (b"2147483648", -2147483648),
])
def test_reserve_with_timeout_reads_like_strtol(arg, value):
    assert parse_command(b"reserve-with-timeout " + arg) == (P.CMD_RESERVE_WITH_TIMEOUT, value)


@given(st.integers(0, 2**63 - 1), st.integers(0, 3))
def test_reserve_with_timeout_digits_read_as_c_would_also_when_cached(value, zeros):
    """The fast path (plain digits) and the line cache give what strtol and C's int cast
    give: the low 32 bits, signed."""
    line = b"reserve-with-timeout " + b"0" * zeros + b"%d" % value
    low = value & 0xFFFFFFFF
    want = (P.CMD_RESERVE_WITH_TIMEOUT, low - (1 << 32) if low >= 1 << 31 else low)
    assert parse_command(line) == want
    assert parse_command(line) == want  # (from the cache)


def test_reserve_with_timeout_overflow_is_bad_format():
    assert parse_command(b"reserve-with-timeout 99999999999999999999") == BAD
    assert parse_command(b"reserve-with-timeout") == BAD  # a malformed "reserve"


@pytest.mark.parametrize("arg,value", [
    (b"0", 0), (b"7", 7), (b"5x", 5), (b"  5", 5), (b"-1", U32_MAX), (b"4294967296", 0),
    (b"5 6", 5),
])
def test_kick_reads_like_strtoul(arg, value):
    assert parse_command(b"kick " + arg) == (P.CMD_KICK, value)


@pytest.mark.parametrize("arg", [b"", b"x", b"99999999999999999999", b" "])
def test_kick_bad_counts(arg):
    assert parse_command(b"kick " + arg) == BAD


# --- tube names -------------------------------------------------------------------
def test_tube_name_charset_and_length():
    assert valid_tube_name(b"ABCxyz019-+/;.$_()")
    assert valid_tube_name(b"a" * MAX_TUBE_NAME)
    assert not valid_tube_name(b"a" * (MAX_TUBE_NAME + 1))
    assert not valid_tube_name(b"")
    assert not valid_tube_name(b"-leading-dash")
    assert valid_tube_name(b"trailing-")
    for ch in b" \t@#!*&%^~`'\"<>,?=[]{}|\\:\x7f\x80":
        assert not valid_tube_name(b"a" + bytes([ch]) + b"b"), chr(ch)


@pytest.mark.parametrize("word,op", [
    (b"use", P.CMD_USE), (b"watch", P.CMD_WATCH), (b"ignore", P.CMD_IGNORE),
    (b"stats-tube", P.CMD_STATS_TUBE),
])
def test_tube_commands_validate_names(word, op):
    assert parse_command(word + b" foo") == (op, "foo")
    assert parse_command(word + b" " + b"n" * 200) == (op, "n" * 200)
    for bad in (b"n" * 201, b"-x", b"foo ", b" foo", b"a b", b"", b"f\xc3\xa9"):
        assert parse_command(word + b" " + bad) == BAD, bad
    assert parse_command(word) == UNKNOWN if word != b"stats-tube" else BAD


def test_pause_tube_parsing():
    assert parse_command(b"pause-tube foo 0") == (P.CMD_PAUSE_TUBE, "foo", 0)
    assert parse_command(b"pause-tube  foo  7") == (P.CMD_PAUSE_TUBE, "foo", 7)
    assert parse_command(b"pause-tube foo %d" % U32_MAX) == (P.CMD_PAUSE_TUBE, "foo", U32_MAX)
    assert parse_command(b"pause-tube foo %d" % (U32_MAX + 1)) == BAD
    # beanstalkd matches "pause-tube" with no space: the name starts at once
    assert parse_command(b"pause-tubefoo 1") == (P.CMD_PAUSE_TUBE, "foo", 1)
    for bad in (b"pause-tube foo", b"pause-tube foo x", b"pause-tube foo 1 ",
                b"pause-tube foo10", b"pause-tube f@o 1", b"pause-tube", b"pause-tubex"):
        assert parse_command(bad) == BAD, bad
    # a name that parses but is not valid is counted as a pause-tube
    assert parse_command(b"pause-tube -x 1") == (ERROR, BAD_FORMAT, P.CMD_PAUSE_TUBE)
    assert parse_command(b"pause-tube " + b"x" * 201 + b" 1") == (
        ERROR, BAD_FORMAT, P.CMD_PAUSE_TUBE)


# --- beanstalkd's prefix matching --------------------------------------------------
@pytest.mark.parametrize("line,event", [
    (b"reservex", BAD),
    (b"reserve ", BAD),
    (b"reserve-job", BAD),
    (b"reserve-job ", BAD),
    (b"stats-job", BAD),
    (b"stats-tube", BAD),
    (b"statsx", BAD),
    (b"peek-readyx", BAD),
    (b"peek-ready ", BAD),
    (b"peek-delayedx", BAD),
    (b"peek-buriedx", BAD),
    (b"list-tubesx", BAD),
    (b"list-tubes-watchedx", BAD),
    (b"list-tube-usedx", BAD),
    (b"deletex 1", UNKNOWN),
    (b"delete", UNKNOWN),
    (b"peek", UNKNOWN),
    (b"kick", UNKNOWN),
    (b"kick-job", UNKNOWN),
    (b"use", UNKNOWN),
    (b"touch", UNKNOWN),
    (b"PUT 0 0 0 0", UNKNOWN),
    (b"Stats", UNKNOWN),
    (b" stats", UNKNOWN),
    (b"", UNKNOWN),
    (b"quitx", (P.CMD_QUIT,)),
    (b"quit now", (P.CMD_QUIT,)),
    (b"kick-job 1", (P.CMD_KICK_JOB, 1)),
    (b"reserve-with-timeoutx", BAD),
])
def test_prefix_quirks(line, event):
    assert parse_command(line) == event
    assert all_ways(line + b"\r\n") == [event]


# --- a property: any split of a valid stream gives the same events -------------------
_cmd_line = st.sampled_from([d for d, _ in COMMANDS if not d.startswith(b"put")])
_put = st.binary(max_size=40).map(lambda b: encode_command("put", 5, 0, 9, len(b), body=b))
_garbage = st.sampled_from([b"x" * 300 + b"\r\n", b"bogus\r\n", b"put 0 0 0 3\r\nabcde",
                            b"put 0 0 0 20\r\n" + b"z" * 22, b"\r\n", b"stats\0\r\n"])


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.one_of(_cmd_line, _put, _garbage), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_any_split_gives_the_same_events(parts, cuts):
    data = b"".join(parts)
    whole = feed_whole(data, max_job_size=16)
    r = CommandReader(16)
    events: list = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        c = min(c, len(data))
        events += r.feed(data[prev:c])
        prev = max(prev, c)
    assert normalise(events) == whole
    # each part gives exactly one event (garbage included), in order
    assert len(whole) == len(parts)


# --- client side: ReplyReader ----------------------------------------------------------
REPLIES = [
    (b"INSERTED 12\r\n", ([b"INSERTED", b"12"], None)),
    (b"RESERVED 3 5\r\nhello\r\n", ([b"RESERVED", b"3", b"5"], b"hello")),
    (b"RESERVED 4 0\r\n\r\n", ([b"RESERVED", b"4", b"0"], b"")),
    (b"FOUND 5 4\r\na\r\nb\r\n", ([b"FOUND", b"5", b"4"], b"a\r\nb")),
    (b"OK 14\r\n---\n- default\n\r\n", ([b"OK", b"14"], b"---\n- default\n")),
    (b"NOT_FOUND\r\n", ([b"NOT_FOUND"], None)),
    (b"KICKED 3\r\n", ([b"KICKED", b"3"], None)),
    (b"USING foo\r\n", ([b"USING", b"foo"], None)),
    (b"TIMED_OUT\r\n", ([b"TIMED_OUT"], None)),
]


def test_reply_reader_whole_bytewise_and_pipelined():
    stream = b"".join(d for d, _ in REPLIES)
    expected = [r for _, r in REPLIES]
    assert ReplyReader().feed(stream) == expected
    rr = ReplyReader()
    got: list = []
    for i in range(len(stream)):
        got += rr.feed(stream[i:i + 1])
    assert got == expected
    for seed in range(5):
        rng = random.Random(seed)
        rr = ReplyReader()
        got = []
        pos = 0
        while pos < len(stream):
            n = rng.randint(1, 17)
            got += rr.feed(stream[pos:pos + n])
            pos += n
        assert got == expected


def test_reply_reader_waits_for_the_whole_body():
    rr = ReplyReader()
    assert rr.feed(b"RESERVED 1 10\r\n0123") == []
    assert rr.feed(b"456789") == []
    assert rr.feed(b"\r") == []
    assert rr.feed(b"\nDELETED\r\n") == [([b"RESERVED", b"1", b"10"], b"0123456789"),
                                         ([b"DELETED"], None)]


def test_reply_reader_frames_what_a_server_sends():
    # the codec side and the reply side agree on a round trip of bodies
    body = bytes(range(256))
    line = encode_command("put", 1, 2, 3, len(body), body=body)
    (ev,) = feed_whole(line)
    assert ev == (P.CMD_PUT, 1, 2, 3, body)
    reply = b"RESERVED 9 %d\r\n%s\r\n" % (len(body), body)
    assert ReplyReader().feed(reply) == [([b"RESERVED", b"9", b"256"], body)]


def test_encode_command():
    assert encode_command("delete", 5) == b"delete 5\r\n"
    assert encode_command(b"use", b"foo") == b"use foo\r\n"
    assert encode_command("put", 1, 0, 60, 3, body=b"abc") == b"put 1 0 60 3\r\nabc\r\n"
    assert encode_command("stats") == b"stats\r\n"
