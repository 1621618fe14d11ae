"""Regressions found by the differential fuzzer (test_fuzz_differential.py).

Each case runs on beanstalkd and on bsnode and asserts what beanstalkd 1.12
does, byte for byte, with absolute job ids (the fuzzer's normaliser hides
those, so its findings about ids are pinned down here).  A case bsnode gets
wrong is marked xfail(strict=True) on bsnode only, with the bug it shows.
"""

from __future__ import annotations

import socket

import pytest
from servers import HAVE_BEANSTALKD, start
from test_hostile import command, poll, read_reply, stat

pytestmark = pytest.mark.integration

# Found by the fuzzer: a put whose line was accepted uses up a job id in
# beanstalkd (job.c make_job runs before the body is read); bsnode used to
# number only the jobs it stored.


def kinds(bsnode_bug: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=bsnode_bug)] if bsnode_bug else []
    return pytest.mark.parametrize("kind", [
        pytest.param("beanstalkd", marks=[pytest.mark.skipif(
            not HAVE_BEANSTALKD, reason="/usr/bin/beanstalkd is not installed")]),
        pytest.param("bsnode", marks=marks),
    ])


@kinds()
def test_put_answered_expected_crlf_uses_up_a_job_id(kind):
    with start(kind) as server, server.connect() as c:
        c.sendall(b"put 0 0 60 3\r\nabcde\r\n")  # 5 bytes where 3 + CRLF belong
        assert read_reply(c) == b"EXPECTED_CRLF\r\n"
        assert read_reply(c) == b"UNKNOWN_COMMAND\r\n"  # the CRLF left over: an empty line
        assert command(c, b"put 0 0 60 1\r\nx") == b"INSERTED 2\r\n"


@kinds()
def test_client_hanging_up_mid_body_uses_up_a_job_id(kind):
    with start(kind) as server, server.connect() as c:
        with server.connect() as quitter:
            quitter.sendall(b"put 0 0 60 5\r\nab")
            assert command(c, b"list-tube-used") == b"USING default\r\n"  # body read
        poll(lambda: stat(c, "current-connections") == 1, what="the hang-up")
        assert command(c, b"put 0 0 60 1\r\nx") == b"INSERTED 2\r\n"


@kinds()
def test_put_too_big_or_malformed_uses_no_job_id(kind):
    with start(kind, "-z", "10") as server, server.connect() as c:
        c.sendall(b"put 0 0 60 11\r\n" + b"y" * 11 + b"\r\n")
        assert read_reply(c) == b"JOB_TOO_BIG\r\n"
        assert command(c, b"put 0 0 60 x") == b"BAD_FORMAT\r\n"
        assert command(c, b"put 0 0 60 1 \r\nx") == b"BAD_FORMAT\r\n"
        assert read_reply(c) == b"UNKNOWN_COMMAND\r\n"  # the body, read as a line
        assert command(c, b"put 0 0 60 1\r\nx") == b"INSERTED 1\r\n"


@kinds()
def test_replies_before_quit_arrive_when_nothing_follows_it(kind):
    """The fuzzer skips bytes after quit: with input left unread beanstalkd's
    close() resets the connection.  Without any, every reply arrives."""
    with start(kind) as server, server.connect() as c:
        c.sendall(b"use a\r\nput 0 0 60 1\r\nx\r\nbogus\r\nquit\r\n")
        c.settimeout(5)
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        assert data == b"USING a\r\nINSERTED 1\r\nUNKNOWN_COMMAND\r\n"


def test_fresh_connection_sees_nothing_of_a_dead_ones_unfinished_put():
    """A hung-up put never becomes a job on bsnode (and the stream framing of
    the next connection starts clean)."""
    with start("bsnode") as server, server.connect() as c:
        with socket.create_connection(server.address) as d:
            d.sendall(b"put 0 0 60 100\r\nput 0 0 60 1\r\nx\r\n")
        poll(lambda: stat(c, "current-connections") == 1, what="the hang-up")
        assert stat(c, "total-jobs") == 0
        assert command(c, b"peek-ready") == b"NOT_FOUND\r\n"
