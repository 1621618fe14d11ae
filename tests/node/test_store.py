"""The job store and command dispatch, driven by a fake clock: no sockets, no sleeps.

Commands go in as bytes through the real codec (``CommandReader``) and
``Commands.execute``, so these tests read like a telnet session while staying
pure.  A blocked reserve returns None; its answer arrives later through the
session's ``wake`` callback, which ``Client.woken`` records.

Timed behaviour (delays, TTR, DEADLINE_SOON, pause) is in test_timers.py; the
``FakeClock``/``Node``/``Client`` harness here is shared with it and with
test_store_model.py.
"""

from __future__ import annotations

import re

import pytest
from bsclient import protocol as P
from bsclient.protocol import CommandReader, encode_command
from bsnode.commands import CLOSE, Commands, wake_reply
from bsnode.store import Store


# --- harness ---------------------------------------------------------------------
class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Node:
    """A store plus its command dispatch, on a fake clock."""

    def __init__(self, max_job_size: int = P.DEFAULT_MAX_JOB_SIZE) -> None:
        self.clock = FakeClock()
        self.store = Store(clock=self.clock)
        self.commands = Commands(self.store, max_job_size)

    def client(self) -> Client:
        return Client(self)

    def advance(self, seconds: float) -> float | None:
        """Move time on and run what became due (the server's clock loop)."""
        self.clock.now += seconds
        return self.store.tick()

    def stats(self) -> dict[str, str]:
        return parse_yaml(self.client().cmd("stats"))


class Client:
    """One connection's session; ``cmd`` returns the reply bytes, or None
    when the command blocks (its answer goes to ``woken``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reader = CommandReader(node.commands.max_job_size)
        self.woken: list[bytes] = []
        self.session = node.store.connect(self._wake)

    def _wake(self, value) -> None:
        self.woken.append(wake_reply(value))  # the words the shell would send

    def send(self, data: bytes) -> list:
        return [self.node.commands.execute(self.session, ev) for ev in self.reader.feed(data)]

    def cmd(self, *parts, body: bytes | None = None):
        replies = self.send(encode_command(*parts, body=body))
        assert len(replies) == 1, replies
        return replies[0]

    def put(self, body: bytes = b"x", pri: int = 100, delay: int = 0, ttr: int = 60) -> int:
        reply = self.cmd("put", pri, delay, ttr, len(body), body=body)
        m = re.fullmatch(rb"INSERTED (\d+)\r\n", reply)
        assert m, reply
        return int(m.group(1))

    def reserve_id(self, timeout: int | None = 0) -> int | None:
        """Reserve (with a timeout by default) and return the job id, or None."""
        r = self.cmd("reserve") if timeout is None else self.cmd("reserve-with-timeout", timeout)
        return reply_id(r)

    def close(self) -> None:
        self.node.store.disconnect(self.session)


def reply_id(reply) -> int | None:
    m = re.match(rb"(?:RESERVED|FOUND) (\d+) \d+\r\n", reply or b"")
    return int(m.group(1)) if m else None


def parse_yaml(reply: bytes) -> dict[str, str]:
    m = re.fullmatch(rb"OK (\d+)\r\n(.*)\r\n", reply, re.S)
    assert m, reply
    body = m.group(2)
    assert int(m.group(1)) == len(body)
    assert body.startswith(b"---\n")
    return dict(line.split(": ", 1) for line in body.decode()[4:].splitlines())


def parse_list(reply: bytes) -> list[str]:
    m = re.fullmatch(rb"OK (\d+)\r\n(.*)\r\n", reply, re.S)
    assert m, reply
    lines = m.group(2).decode()[4:].splitlines()
    assert all(line.startswith("- ") for line in lines)
    return [line[2:] for line in lines]


@pytest.fixture
def node() -> Node:
    return Node()


# --- priorities and FIFO ---------------------------------------------------------
def test_reserve_by_priority_then_fifo(node):
    c = node.client()
    ids = [c.put(pri=p) for p in (5, 1, 3, 1, 5, 0)]
    got = [c.reserve_id() for _ in ids]
    assert got == [ids[5], ids[1], ids[3], ids[2], ids[0], ids[4]]
    assert c.cmd("reserve-with-timeout", 0) == P.TIMED_OUT


def test_u32_priorities_sort_as_unsigned(node):
    c = node.client()
    top = c.put(pri=P.U32_MAX)
    low = c.put(pri=0)
    mid = c.put(pri=2**31)
    assert [c.reserve_id() for _ in range(3)] == [low, mid, top]


def test_many_jobs_one_priority_stay_fifo(node):
    c = node.client()
    ids = [c.put(pri=7) for _ in range(300)]
    assert [c.reserve_id() for _ in ids] == ids


def test_released_job_goes_back_in_id_order(node):
    c = node.client()
    a, b, d = c.put(pri=10), c.put(pri=10), c.put(pri=10)
    assert c.reserve_id() == a
    e = c.put(pri=10)
    assert c.cmd("release", a, 10, 0) == P.RELEASED
    # a is older than every other ready job, so it comes out first again
    assert [c.reserve_id() for _ in range(4)] == [a, b, d, e]


def test_release_changes_priority(node):
    c = node.client()
    a, b = c.put(pri=10), c.put(pri=10)
    assert c.reserve_id() == a
    assert c.cmd("release", a, 20, 0) == P.RELEASED
    assert c.reserve_id() == b
    assert c.reserve_id() == a
    assert parse_yaml(c.cmd("stats-job", a))["pri"] == "20"


def test_release_out_of_id_order_among_many(node):
    c = node.client()
    ids = [c.put(pri=1) for _ in range(6)]
    held = [c.reserve_id() for _ in range(6)]
    for j in (held[4], held[1], held[5], held[0]):
        assert c.cmd("release", j, 1, 0) == P.RELEASED
    assert [c.reserve_id() for _ in range(4)] == [ids[0], ids[1], ids[4], ids[5]]


def test_reserve_across_watched_tubes_by_priority_then_id(node):
    p = node.client()
    p.cmd("use", "a")
    a1 = p.put(pri=5)
    p.cmd("use", "b")
    b1 = p.put(pri=1)
    b2 = p.put(pri=5)
    p.cmd("use", "c")
    p.put(pri=0)  # not watched
    w = node.client()
    assert w.cmd("watch", "a") == b"WATCHING 2\r\n"
    assert w.cmd("watch", "b") == b"WATCHING 3\r\n"
    assert w.cmd("ignore", "default") == b"WATCHING 2\r\n"
    assert [w.reserve_id() for _ in range(3)] == [b1, a1, b2]
    assert w.cmd("reserve-with-timeout", 0) == P.TIMED_OUT


def test_ignore_unwatched_and_last_tube(node):
    c = node.client()
    assert c.cmd("ignore", "nope") == b"WATCHING 1\r\n"
    assert c.cmd("ignore", "default") == P.NOT_IGNORED
    assert c.cmd("watch", "default") == b"WATCHING 1\r\n"  # already watched
    assert parse_list(c.cmd("list-tubes-watched")) == ["default"]


# --- bury, kick, kick-job, touch, delete ---------------------------------------------
def test_bury_peek_buried_kick(node):
    c = node.client()
    a, b = c.put(pri=3), c.put(pri=4)
    assert c.reserve_id() == a
    assert c.reserve_id() == b
    assert c.cmd("bury", b, 9) == P.BURIED
    assert c.cmd("bury", a, 8) == P.BURIED
    assert reply_id(c.cmd("peek-buried")) == b  # oldest burial first
    st = parse_yaml(c.cmd("stats-job", b))
    assert (st["state"], st["pri"], st["buries"]) == ("buried", "9", "1")
    assert c.cmd("kick", 1) == b"KICKED 1\r\n"
    assert parse_yaml(c.cmd("stats-job", b))["state"] == "ready"
    assert parse_yaml(c.cmd("stats-job", b))["kicks"] == "1"
    assert c.cmd("kick", 10) == b"KICKED 1\r\n"
    assert c.cmd("kick", 10) == b"KICKED 0\r\n"
    assert c.cmd("peek-buried") == P.NOT_FOUND
    assert [c.reserve_id(), c.reserve_id()] == [a, b]  # new priorities 8 and 9


def test_kick_prefers_buried_over_delayed(node):
    c = node.client()
    d = c.put(delay=100)
    b = c.put()
    assert c.reserve_id() == b
    c.cmd("bury", b, 1)
    assert c.cmd("kick", 5) == b"KICKED 1\r\n"  # only the buried one
    assert parse_yaml(c.cmd("stats-job", d))["state"] == "delayed"
    assert c.cmd("kick", 5) == b"KICKED 1\r\n"  # now the delayed one
    assert parse_yaml(c.cmd("stats-job", d))["state"] == "ready"


def test_kick_delayed_in_deadline_order(node):
    c = node.client()
    late = c.put(delay=300)
    soon = c.put(delay=10)
    mid = c.put(delay=100)
    assert c.cmd("kick", 1) == b"KICKED 1\r\n"
    assert reply_id(c.cmd("peek-ready")) == soon
    assert c.cmd("kick", 1) == b"KICKED 1\r\n"
    assert parse_yaml(c.cmd("stats-job", mid))["state"] == "ready"
    assert parse_yaml(c.cmd("stats-job", late))["state"] == "delayed"


def test_kick_acts_on_the_used_tube_only(node):
    c = node.client()
    c.cmd("use", "other")
    j = c.put()
    c.cmd("watch", "other")
    assert c.reserve_id() == j
    c.cmd("bury", j, 1)
    c.cmd("use", "default")
    assert c.cmd("kick", 10) == b"KICKED 0\r\n"
    assert c.cmd("peek-buried") == P.NOT_FOUND
    c.cmd("use", "other")
    assert reply_id(c.cmd("peek-buried")) == j
    assert c.cmd("kick", 10) == b"KICKED 1\r\n"


def test_kick_job(node):
    c = node.client()
    d = c.put(delay=50)
    r = c.put()
    assert c.cmd("kick-job", r) == P.NOT_FOUND  # ready
    assert c.reserve_id() == r
    assert c.cmd("kick-job", r) == P.NOT_FOUND  # reserved
    c.cmd("bury", r, 1)
    assert c.cmd("kick-job", r) == P.KICKED
    assert c.cmd("kick-job", d) == P.KICKED
    assert c.cmd("kick-job", 999) == P.NOT_FOUND
    st = node.stats()
    assert st["current-jobs-ready"] == "2"
    assert st["current-jobs-delayed"] == "0"
    assert st["current-jobs-buried"] == "0"


def test_touch_only_by_the_reserver(node):
    a, b = node.client(), node.client()
    j = a.put()
    assert a.cmd("touch", j) == P.NOT_FOUND  # not reserved
    assert a.reserve_id() == j
    assert b.cmd("touch", j) == P.NOT_FOUND
    assert a.cmd("touch", j) == P.TOUCHED


def test_delete_in_every_state(node):
    c = node.client()
    ready = c.put()
    delayed = c.put(delay=10)
    held = c.put(pri=0)
    assert c.reserve_id() == held
    buried = c.put(pri=0)
    assert c.reserve_id() == buried
    c.cmd("bury", buried, 0)
    for j in (ready, delayed, held, buried):
        assert c.cmd("delete", j) == P.DELETED
        assert c.cmd("delete", j) == P.NOT_FOUND
        assert c.cmd("peek", j) == P.NOT_FOUND
    st = node.stats()
    assert [st[f"current-jobs-{k}"] for k in ("ready", "reserved", "delayed", "buried")] == [
        "0"] * 4
    assert st["cmd-delete"] == "8"
    assert parse_yaml(c.cmd("stats-tube", "default"))["cmd-delete"] == "4"


def test_delete_release_bury_of_another_connections_job(node):
    a, b = node.client(), node.client()
    j = a.put()
    assert a.reserve_id() == j
    assert b.cmd("delete", j) == P.NOT_FOUND
    assert b.cmd("release", j, 1, 0) == P.NOT_FOUND
    assert b.cmd("bury", j, 1) == P.NOT_FOUND
    assert parse_yaml(b.cmd("stats-job", j))["state"] == "reserved"
    assert a.cmd("delete", j) == P.DELETED


def test_release_and_bury_need_a_reservation(node):
    c = node.client()
    j = c.put()
    assert c.cmd("release", j, 1, 0) == P.NOT_FOUND
    assert c.cmd("bury", j, 1) == P.NOT_FOUND


def test_reserve_job_from_each_state(node):
    a, b = node.client(), node.client()
    ready = a.put()
    delayed = a.put(delay=30)
    held = a.put(pri=0)
    assert a.reserve_id() == held
    buried = a.put(pri=0)
    assert a.reserve_id() == buried
    a.cmd("bury", buried, 0)
    for j in (ready, delayed, buried):
        assert reply_id(b.cmd("reserve-job", j)) == j
        assert parse_yaml(b.cmd("stats-job", j))["state"] == "reserved"
    assert b.cmd("reserve-job", held) == P.NOT_FOUND  # reserved by a
    assert b.cmd("reserve-job", ready) == P.NOT_FOUND  # reserved by b itself
    assert b.cmd("reserve-job", 12345) == P.NOT_FOUND
    st = node.stats()
    assert st["current-jobs-reserved"] == "4"
    assert st["current-jobs-ready"] == st["current-jobs-delayed"] == "0"
    assert st["current-jobs-buried"] == "0"
    assert "cmd-reserve-job" not in st  # beanstalkd 1.12 has no such field
    assert st["current-workers"] == "2"
    assert b.cmd("release", delayed, 1, 0) == P.RELEASED
    assert a.reserve_id() == delayed


def test_peek_commands_look_at_the_used_tube(node):
    c = node.client()
    c.cmd("use", "t")
    r1 = c.put(pri=5)
    r0 = c.put(pri=1)
    d_late = c.put(delay=20)
    d_soon = c.put(delay=5)
    c.cmd("use", "default")
    assert c.cmd("peek-ready") == P.NOT_FOUND
    assert c.cmd("peek-delayed") == P.NOT_FOUND
    c.cmd("use", "t")
    assert c.cmd("peek-ready") == b"FOUND %d 1\r\nx\r\n" % r0
    assert reply_id(c.cmd("peek-delayed")) == d_soon
    assert reply_id(c.cmd("peek", r1)) == r1
    assert reply_id(c.cmd("peek", d_late)) == d_late


def test_peek_sees_a_reserved_job(node):
    a, b = node.client(), node.client()
    j = a.put(b"body")
    a.reserve_id()
    assert b.cmd("peek", j) == b"FOUND %d 4\r\nbody\r\n" % j


# --- tubes -----------------------------------------------------------------------------
def tubes(node) -> list[str]:
    return parse_list(node.client().cmd("list-tubes"))


def test_unused_empty_tubes_disappear(node):
    c = node.client()
    assert c.cmd("use", "u") == b"USING u\r\n"
    assert c.cmd("watch", "w") == b"WATCHING 2\r\n"
    assert tubes(node) == ["default", "u", "w"]
    c.cmd("use", "default")
    assert tubes(node) == ["default", "w"]
    c.cmd("ignore", "w")
    assert tubes(node) == ["default"]
    assert c.cmd("stats-tube", "w") == P.NOT_FOUND


def test_a_job_keeps_its_tube_alive(node):
    c = node.client()
    c.cmd("use", "jobs")
    j = c.put(delay=5)
    c.cmd("use", "default")
    assert "jobs" in tubes(node)
    assert c.cmd("delete", j) == P.DELETED
    assert "jobs" not in tubes(node)


def test_default_tube_never_goes(node):
    c = node.client()
    c.cmd("use", "x")
    c.cmd("watch", "x")
    c.cmd("ignore", "default")
    assert tubes(node) == ["default", "x"]
    c.close()
    assert tubes(node) == ["default"]


def test_tube_list_order_after_swap_remove(node):
    c = node.client()
    for t in "abc":
        c.cmd("watch", t)
    assert c.cmd("ignore", "a") == b"WATCHING 3\r\n"
    assert tubes(node) == ["default", "c", "b"]
    assert parse_list(c.cmd("list-tubes-watched")) == ["default", "c", "b"]
    c.cmd("use", "d")
    c.cmd("use", "e")
    assert tubes(node) == ["default", "c", "b", "e"]


def test_tube_disappears_when_the_last_connection_closes(node):
    a, b = node.client(), node.client()
    a.cmd("watch", "shared")
    b.cmd("use", "shared")
    st = parse_yaml(a.cmd("stats-tube", "shared"))
    assert (st["current-using"], st["current-watching"]) == ("1", "1")
    a.close()
    assert "shared" in tubes(node)
    b.close()
    assert "shared" not in tubes(node)


def test_use_and_list_tube_used(node):
    c = node.client()
    assert c.cmd("list-tube-used") == b"USING default\r\n"
    c.cmd("use", "a+b")
    assert c.cmd("list-tube-used") == b"USING a+b\r\n"


# --- connections --------------------------------------------------------------------------
def test_disconnect_releases_reserved_jobs(node):
    a, b = node.client(), node.client()
    j1, j2 = a.put(pri=2), a.put(pri=1)
    assert b.reserve_id() == j2
    assert b.reserve_id() == j1
    assert node.stats()["current-jobs-reserved"] == "2"
    b.close()
    st = node.stats()
    assert (st["current-jobs-reserved"], st["current-jobs-ready"]) == ("0", "2")
    job = parse_yaml(a.cmd("stats-job", j1))
    assert (job["state"], job["reserves"], job["releases"], job["timeouts"]) == (
        "ready", "1", "0", "0")
    assert a.reserve_id() == j2


def test_disconnect_hands_released_jobs_to_a_waiter(node):
    a, w = node.client(), node.client()
    j = a.put()
    assert a.reserve_id() == j
    assert w.cmd("reserve") is None
    a.close()
    assert [reply_id(r) for r in w.woken] == [j]
    assert node.stats()["current-waiting"] == "0"


def test_waiting_sessions_are_served_oldest_first(node):
    p = node.client()
    waiters = [node.client() for _ in range(5)]
    for w in waiters:
        assert w.cmd("reserve") is None
    assert node.stats()["current-waiting"] == "5"
    assert parse_yaml(p.cmd("stats-tube", "default"))["current-waiting"] == "5"
    ids = [p.put(b"job%d" % i) for i in range(5)]
    assert [w.woken for w in waiters] == [
        [b"RESERVED %d 4\r\njob%d\r\n" % (j, i)] for i, j in enumerate(ids)]
    assert node.stats()["current-waiting"] == "0"


def test_waiter_on_several_tubes_served_once(node):
    p, w = node.client(), node.client()
    w.cmd("watch", "a")
    w.cmd("watch", "b")
    assert w.cmd("reserve") is None
    p.cmd("use", "b")
    j = p.put()
    p.cmd("use", "a")
    k = p.put()
    assert [reply_id(r) for r in w.woken] == [j]
    assert reply_id(p.cmd("peek-ready")) == k  # not taken by the served waiter
    assert node.stats()["current-waiting"] == "0"


def test_hung_up_waiter_is_skipped(node):
    p, gone, live = node.client(), node.client(), node.client()
    assert gone.cmd("reserve") is None
    assert live.cmd("reserve") is None
    gone.close()
    assert node.stats()["current-waiting"] == "1"
    j = p.put()
    assert gone.woken == []
    assert [reply_id(r) for r in live.woken] == [j]


def test_quit_closes(node):
    c = node.client()
    assert c.send(b"quit\r\n") == [CLOSE]


# --- stats through Commands.execute --------------------------------------------------------
def test_stats_counters(node):
    a, b = node.client(), node.client()
    st = node.stats()
    assert st["current-connections"] == "3"  # a, b and the one asking
    assert st["total-connections"] == "3"
    j1 = a.put(pri=1)  # urgent
    a.put(pri=2000)
    a.put(delay=9)
    assert b.reserve_id() == j1
    b.cmd("watch", "x")
    b.cmd("peek", j1)
    b.send(b"bogus\r\n")  # not counted anywhere
    st = node.stats()
    assert st["cmd-put"] == "3"
    assert st["cmd-reserve-with-timeout"] == "1"
    assert st["cmd-reserve"] == "0"
    assert st["cmd-watch"] == "1"
    assert st["cmd-peek"] == "1"
    assert st["cmd-stats"] == "2"
    assert st["total-jobs"] == "3"
    assert st["current-jobs-urgent"] == "0"  # the urgent one is reserved
    assert st["current-jobs-ready"] == "1"
    assert st["current-jobs-reserved"] == "1"
    assert st["current-jobs-delayed"] == "1"
    assert st["current-producers"] == "1"
    assert st["current-workers"] == "1"
    assert st["current-tubes"] == "2"
    assert st["current-connections"] == "4"
    a.close()
    st = node.stats()
    assert st["current-producers"] == "0"
    assert st["current-connections"] == "4"  # b and two stats askers still open


def test_stats_urgent_counts_ready_jobs_under_1024(node):
    c = node.client()
    c.put(pri=1023)
    c.put(pri=1024)
    c.put(pri=0)
    st = node.stats()
    assert st["current-jobs-urgent"] == "2"
    assert parse_yaml(c.cmd("stats-tube", "default"))["current-jobs-urgent"] == "2"
    c.reserve_id()
    assert node.stats()["current-jobs-urgent"] == "1"


def test_stats_field_order_and_values(node):
    st = node.stats()
    keys = list(st)
    assert keys[:5] == ["current-jobs-urgent", "current-jobs-ready", "current-jobs-reserved",
                        "current-jobs-delayed", "current-jobs-buried"]
    assert keys[-4:] == ["id", "hostname", "os", "platform"]
    assert st["max-job-size"] == str(P.DEFAULT_MAX_JOB_SIZE)
    assert st["draining"] == "false"
    assert st["version"].startswith('"') and st["version"].endswith('"')
    assert re.fullmatch(r"\d+\.\d{6}", st["rusage-utime"])
    assert st["uptime"] == "0"
    node.advance(75.5)
    assert node.stats()["uptime"] == "75"
    assert len(keys) == 51


def test_stats_tube_fields(node):
    c = node.client()
    c.cmd("use", "t")
    c.cmd("watch", "t")
    j = c.put(pri=1)
    c.put(delay=5)
    c.cmd("delete", j)
    c.cmd("pause-tube", "t", 30)
    st = parse_yaml(c.cmd("stats-tube", "t"))
    assert st == {
        "name": "t", "current-jobs-urgent": "0", "current-jobs-ready": "0",
        "current-jobs-reserved": "0", "current-jobs-delayed": "1", "current-jobs-buried": "0",
        "total-jobs": "2", "current-using": "1", "current-watching": "1",
        "current-waiting": "0", "cmd-delete": "1", "cmd-pause-tube": "1", "pause": "30",
        "pause-time-left": "30",
    }


def test_stats_job_fields(node):
    c = node.client()
    c.cmd("use", "jt")
    j = c.put(b"abc", pri=7, delay=3, ttr=20)
    st = parse_yaml(c.cmd("stats-job", j))
    assert st == {
        "id": str(j), "tube": "jt", "state": "delayed", "pri": "7", "age": "0",
        "delay": "3", "ttr": "20", "time-left": "3", "file": "0", "reserves": "0",
        "timeouts": "0", "releases": "0", "buries": "0", "kicks": "0",
    }
    assert c.cmd("stats-job", j + 1) == P.NOT_FOUND


def test_put_errors_count_as_beanstalkd_counts_them():
    node = Node(max_job_size=4)
    c = node.client()
    replies = c.send(b"put 0 0 0 1 x\r\n"  # trailing garbage: counted
                     b"put 0 0 0 9\r\n123456789\r\n"  # too big: counted
                     b"put 0 0 0 1\r\nxyz"  # EXPECTED_CRLF: counted, producer
                     b"put 0 0 0\r\n"  # bad format: not counted
                     b"pause-tube -x 1\r\n"  # counted
                     b"pause-tube x\r\n")  # not counted
    assert replies == [P.BAD_FORMAT, P.JOB_TOO_BIG, P.EXPECTED_CRLF, P.BAD_FORMAT,
                       P.BAD_FORMAT, P.BAD_FORMAT]
    st = node.stats()
    assert st["cmd-put"] == "3"
    assert st["cmd-pause-tube"] == "1"
    assert st["current-producers"] == "1"
    assert st["total-jobs"] == "0"


def test_put_counted_when_its_line_arrives(node):
    c = node.client()
    assert c.send(b"put 0 0 1 5\r\nhe") == [b""]  # no reply yet
    st = node.stats()
    assert (st["cmd-put"], st["current-producers"], st["total-jobs"]) == ("1", "1", "0")
    assert c.send(b"llo\r\n") == [b"INSERTED 1\r\n"]
    st = node.stats()
    assert (st["cmd-put"], st["total-jobs"]) == ("1", "1")
    assert c.send(b"put 0 0 1 1\r\n") == [b""]
    assert c.send(b"xyz\r\n") == [P.EXPECTED_CRLF, P.UNKNOWN_COMMAND]
    assert node.stats()["cmd-put"] == "2"


def test_draining_refuses_puts(node):
    c = node.client()
    node.store.draining = True
    assert c.cmd("put", 0, 0, 1, 1, body=b"x") == P.DRAINING
    st = node.stats()
    assert st["draining"] == "true"
    assert st["cmd-put"] == "1"
    assert st["current-producers"] == "1"
    assert st["total-jobs"] == "0"


def test_job_ids_only_grow(node):
    c = node.client()
    a = c.put()
    c.cmd("delete", a)
    b = c.put()
    assert b == a + 1
