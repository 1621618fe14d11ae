"""When the binlog refuses a write, the store changes nothing and says so.

beanstalkd reserves log space before a bury, kick or release with delay and
refuses the command when it cannot: release answers OUT_OF_MEMORY, bury
INTERNAL_ERROR, kick kicks fewer jobs and kick-job answers NOT_FOUND.  bsnode
gives the same words, and (unlike beanstalkd, whose failed bury leaves the job
in no list at all) the job stays where it was: reserved by its client, or
buried/delayed.  A plain release (no delay) goes ahead: its job would come
back ready after a restart whatever was logged.
"""

from __future__ import annotations

import pytest
from bsnode.store import NOT_LOGGED, Store
from test_store import Node, parse_yaml


class RefusingWal:
    """A binlog that takes puts and deletes but refuses updates while ``full``."""

    enabled = True

    def __init__(self) -> None:
        self.full = False
        self.updates: list[tuple[int, str]] = []

    def put(self, job, now) -> bool:
        return True

    def update(self, job, now) -> bool:
        if self.full:
            return False
        self.updates.append((job.id, job.state))
        return True

    def delete(self, job) -> bool:
        return True

    def file_of(self, job) -> int:
        return 1

    def stats(self) -> dict:
        return {}


@pytest.fixture
def node() -> Node:
    n = Node()
    n.wal = RefusingWal()
    n.store.wal = n.wal
    return n


def job_stats(c, job_id: int) -> dict[str, str]:
    return parse_yaml(c.cmd("stats-job", job_id))


def test_release_with_delay_refused_keeps_the_job_reserved(node):
    c = node.client()
    jid = c.put(pri=5)
    assert c.reserve_id() == jid
    node.wal.full = True
    assert c.cmd("release", jid, 9, 30) == b"OUT_OF_MEMORY\r\n"
    st = job_stats(c, jid)
    assert (st["state"], st["pri"], st["delay"], st["releases"]) == ("reserved", "5", "0", "0")
    node.wal.full = False
    assert c.cmd("release", jid, 9, 30) == b"RELEASED\r\n"
    st = job_stats(c, jid)
    assert (st["state"], st["pri"], st["delay"], st["releases"]) == ("delayed", "9", "30", "1")
    assert node.wal.updates == [(jid, "delayed")]


def test_release_without_delay_goes_ahead_when_the_log_refuses(node):
    c = node.client()
    jid = c.put()
    c.reserve_id()
    node.wal.full = True
    assert c.cmd("release", jid, 7, 0) == b"RELEASED\r\n"
    assert job_stats(c, jid)["state"] == "ready"
    assert c.reserve_id() == jid


def test_bury_refused_keeps_the_job_reserved(node):
    c = node.client()
    jid = c.put(pri=5)
    c.reserve_id()
    node.wal.full = True
    assert c.cmd("bury", jid, 1) == b"INTERNAL_ERROR\r\n"
    st = job_stats(c, jid)
    assert (st["state"], st["pri"], st["buries"]) == ("reserved", "5", "0")
    assert node.stats()["current-jobs-buried"] == "0"
    node.wal.full = False
    assert c.cmd("bury", jid, 1) == b"BURIED\r\n"
    assert job_stats(c, jid)["buries"] == "1"


def test_kick_stops_at_the_first_refusal_and_leaves_the_rest_buried(node):
    c = node.client()
    ids = [c.put() for _ in range(3)]
    for jid in ids:
        assert c.reserve_id() == jid
        assert c.cmd("bury", jid, 1) == b"BURIED\r\n"
    node.wal.full = True
    assert c.cmd("kick", 10) == b"KICKED 0\r\n"
    assert node.stats()["current-jobs-buried"] == "3"
    assert c.cmd("kick-job", ids[1]) == b"NOT_FOUND\r\n"
    assert job_stats(c, ids[1])["kicks"] == "0"
    node.wal.full = False
    assert c.cmd("kick", 2) == b"KICKED 2\r\n"
    assert [job_stats(c, j)["state"] for j in ids] == ["ready", "ready", "buried"]


def test_kick_of_delayed_jobs_refused_leaves_them_delayed(node):
    c = node.client()
    ids = [c.put(delay=100) for _ in range(2)]
    node.wal.full = True
    assert c.cmd("kick", 5) == b"KICKED 0\r\n"
    assert c.cmd("kick-job", ids[0]) == b"NOT_FOUND\r\n"
    assert node.stats()["current-jobs-delayed"] == "2"
    node.wal.full = False
    assert c.cmd("kick-job", ids[1]) == b"KICKED\r\n"
    assert c.cmd("kick", 5) == b"KICKED 1\r\n"
    assert node.stats()["current-jobs-delayed"] == "0"
    assert node.stats()["current-jobs-ready"] == "2"
    node.advance(200)  # their old deadlines pass: nothing is promoted twice
    assert node.stats()["current-jobs-ready"] == "2"


def test_not_logged_is_a_value_of_the_store():
    store = Store()
    assert store.wal.update(None, 0) is True  # no binlog: nothing is refused
    assert NOT_LOGGED not in (True, False, None)
