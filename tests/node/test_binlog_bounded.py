"""The binlog's disk use stays bounded, whatever the workload.

The issue's bound: about 2 x the live data plus two segments.  The store and
binlog run in-process on a fake clock (no server: a million cycles take
seconds, not minutes); the files in the directory are measured, not the
binlog's own count (which must match them: stats report it truthfully).
"""

from __future__ import annotations

import pytest
from binlog_harness import advance, disk_bytes, open_store, snapshot
from bsnode.binlog import SLOT


@pytest.fixture
def tmp_path(binlog_tmp):
    """Every test here, with its binlog on each filesystem (binlog_tmp in conftest.py)."""
    return binlog_tmp


SEGMENT = 1 << 20
RECORD_OVERHEAD = 64  # a FULL record's fields and frame, generously


def live_data(store) -> int:
    """An estimate of the live data made from the store alone."""
    return sum(len(j.body) + len(j.tube.name) + RECORD_OVERHEAD + SLOT
               for j in store.jobs.values())


def check_bounded(path, store, wal) -> int:
    on_disk = disk_bytes(path)
    assert wal.usage()["disk"] == on_disk
    assert on_disk <= 2 * live_data(store) + 2 * SEGMENT + SEGMENT // 8, wal.usage()
    return on_disk


def test_a_million_put_delete_cycles_with_a_few_live_jobs_and_one_buried_forever(tmp_path):
    store, wal, clock = open_store(tmp_path, segment_size=SEGMENT)
    s = store.connect()
    buried = store.put(s, 1, 0, 60, b"buried for the whole run")
    store.reserve_job(s, buried.id)
    store.bury(s, buried.id, 1)
    for i in range(5):
        store.put(s, 1, 0, 60, b"live %d" % i)
    body = b"x" * 100
    put, delete = store.put, store.delete
    worst = 0
    for i in range(1_000_000):
        delete(s, put(s, 1024, 0, 60, body).id)
        if i % 20_000 == 0:
            worst = max(worst, check_bounded(tmp_path, store, wal))
    worst = max(worst, check_bounded(tmp_path, store, wal))
    st = wal.stats()
    assert st["records_written"] > 2_000_000
    assert st["oldest_index"] > 100  # segments went, the buried job moved along
    assert worst > SEGMENT  # the log did roll over: the bound was exercised
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=SEGMENT)
    assert snapshot(store2) == before
    assert store2.next_id == store.next_id
    wal2.close()


def test_jobs_released_with_a_delay_over_and_over_keep_the_log_bounded(tmp_path):
    store, wal, clock = open_store(tmp_path, segment_size=SEGMENT)
    s = store.connect()
    ids = [store.put(s, 1, 0, 60, b"again %d" % i + b"." * 200).id for i in range(5)]
    worst = 0
    for i in range(40_000):
        for jid in ids:
            store.reserve_job(s, jid)
            store.release(s, jid, i % 7, 1)
        if i % 100 == 0:
            advance(store, clock, 0.5)
        if i % 2_000 == 0:
            worst = max(worst, check_bounded(tmp_path, store, wal))
    assert wal.stats()["oldest_index"] > 3 and worst > SEGMENT
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=SEGMENT)
    after = snapshot(store2)
    assert after == before
    assert {j.releases for j in store2.jobs.values()} == {40_000}
    wal2.close()


def test_many_live_jobs_with_churn_stay_within_twice_the_live_data(tmp_path):
    store, wal, clock = open_store(tmp_path, segment_size=SEGMENT)
    s = store.connect()
    keep = [store.put(s, 1, 0, 60, b"k" * 300).id for _ in range(20_000)]  # ~7 MB live
    for r in range(3):
        for i, jid in enumerate(keep):  # every live job changes: old records become garbage
            store.reserve_job(s, jid)
            store.bury(s, jid, r)
            if i % 2:
                store.delete(s, store.put(s, 1, 0, 60, b"t" * 300).id)
        for jid in keep:
            store.kick_job(jid)
        check_bounded(tmp_path, store, wal)
        advance(store, clock, 1)
    before = snapshot(store)
    wal.close()
    store2, wal2, _ = open_store(tmp_path, segment_size=SEGMENT)
    assert snapshot(store2) == before
    wal2.close()
