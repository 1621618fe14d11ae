"""bsnode's Prometheus endpoint (``--metrics``): names, rendering, and values vs `stats`.

The live tests scrape a real bsnode and parse the page with prometheus_client's
text parser, then compare every sample with what `stats` / `stats-tube` say
over the protocol at the same moment.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from bsclient import Client
from bsnode import metrics as M
from bsnode.commands import Commands
from bsnode.store import Store
from prometheus_client import parser
from servers import start_bsnode

_METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")
# fields that move between the `stats` call and the scrape
_MOVING = {"uptime", "rusage-utime", "rusage-stime"}


# --- pure parts -------------------------------------------------------------------------
@pytest.mark.parametrize("field,name,kind", [
    ("current-jobs-ready", "current_jobs_ready", "gauge"),
    ("cmd-put", "cmd_put_total", "counter"),
    ("cmd-pause-tube", "cmd_pause_tube_total", "counter"),
    ("total-jobs", "jobs_total", "counter"),
    ("total-connections", "connections_total", "counter"),
    ("job-timeouts", "job_timeouts_total", "counter"),
    ("uptime", "uptime_seconds", "gauge"),
    ("rusage-utime", "rusage_utime_seconds_total", "counter"),
    ("max-job-size", "max_job_size_bytes", "gauge"),
    ("binlog-records-written", "binlog_records_written_total", "counter"),
    ("current-waiting", "current_waiting", "gauge"),
    ("pause-time-left", "pause_time_left_seconds", "gauge"),
])
def test_names_follow_prometheus_conventions(field, name, kind):
    spec = M.describe(field)
    assert (spec.name, spec.type) == (name, kind)
    assert f"field {field}" in spec.help
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", spec.name)


def test_every_stats_field_has_a_metric():
    commands = Commands(Store())
    names = set()
    for key, _ in commands.stats_fields():
        if key in M.INFO_FIELDS:
            continue
        spec = M.describe(key)
        assert spec.name not in names, key
        names.add(spec.name)
        assert (spec.type == "counter") == spec.name.endswith("_total"), key


def test_render_escapes_labels_and_help():
    c = M.Collector("x")
    c.family("a", "gauge", 'say "hi"\\ here\nnow').add({"tube": 'we"ird\\na\nme'}, 2.5)
    c.family("b_total", "counter", "b").add({}, 3)
    text = c.render()
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert fams["x_a"].samples[0].labels == {"tube": 'we"ird\\na\nme'}
    assert fams["x_a"].samples[0].value == 2.5
    assert fams["x_a"].documentation == 'say "hi"\\ here\nnow'
    assert fams["x_b"].type == "counter" and fams["x_b"].samples[0].value == 3
    assert "x_b_total 3\n" in text


def test_number():
    assert M.number(3) == 3.0
    assert M.number("0.250000") == 0.25
    assert M.number('"1.12"') == 1.12
    assert M.number("true") == 1.0 and M.number("false") == 0.0
    assert M.number("abc") is None


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _families(commands, store, binlog_dir=None) -> dict[str, dict]:
    text = M.node_families(commands, store, binlog_dir).render()
    out: dict[str, dict] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_oldest_ready_age_uses_the_store_clock():
    clock = FakeClock()
    store = Store(clock=clock)
    commands = Commands(store)
    s = store.connect()
    store.use(s, "emails")
    store.put(s, 10, 0, 60, b"first")        # oldest, but reserved below
    clock.now += 5
    store.put(s, 2000, 0, 60, b"second")     # oldest ready once the first is taken
    clock.now += 3
    store.put(s, 1, 0, 60, b"urgent")        # the head of the queue, but young
    store.use(s, "other")
    store.put(s, 1, 30, 60, b"delayed")      # delayed only: no ready job
    watcher = store.connect()
    store.watch(watcher, "emails")
    store.ignore(watcher, "default")
    assert store.reserve(watcher, 0).body == b"urgent"
    assert store.reserve(watcher, 0).body == b"first"
    clock.now += 4
    ages = _families(commands, store)["bsnode_tube_oldest_ready_age_seconds"]
    assert ages[(("tube", "emails"),)] == 7.0   # "second": put at +5, now +12
    assert ages[(("tube", "other"),)] == 0.0
    assert ages[(("tube", "default"),)] == 0.0


def test_binlog_bytes(tmp_path):
    assert M.binlog_bytes(None) == 0
    assert M.binlog_bytes(str(tmp_path / "missing")) == 0
    (tmp_path / "binlog.1").write_bytes(b"x" * 100)
    (tmp_path / "binlog.2").write_bytes(b"y" * 23)
    (tmp_path / "lock").write_bytes(b"z" * 1000)
    assert M.binlog_bytes(str(tmp_path)) == 123


# --- a live node ------------------------------------------------------------------------
def _metrics_url(server) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(server.lines):
            m = _METRICS_LINE.search(line)
            if m:
                return f"http://{m.group(1)}/metrics"
        time.sleep(0.02)
    raise AssertionError("bsnode did not report its metrics address: "
                         + " | ".join(server.lines))


def _scrape(url: str) -> tuple[str, dict[str, dict]]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples: dict[str, dict] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return text, samples


@pytest.fixture
def metrics_node():
    with start_bsnode("--metrics", "127.0.0.1:0") as server:
        yield server, _metrics_url(server)


def _load(addr) -> tuple[Client, Client]:
    """Jobs in every state over three tubes; returns the two busy connections."""
    producer = Client(addr)
    producer.use("emails")
    for i in range(5):
        producer.put(b"mail %d" % i, priority=100 + i)
    producer.put(b"later", delay=300)
    producer.use("images")
    producer.put(b"img", priority=0)  # urgent
    producer.put(b"img2")
    worker = Client(addr, watch=["images"])
    worker.ignore("default")
    job = worker.reserve(timeout=0)
    worker.bury(job)
    worker.reserve(timeout=0)  # stays reserved
    producer.pause_tube("emails", 120)
    return producer, worker


def test_metrics_match_stats(metrics_node):
    server, url = metrics_node
    producer, worker = _load(server.address)
    with producer, worker, Client(server.address) as probe:
        tubes = {name: probe.stats_tube(name) for name in probe.list_tubes()}
        stats = probe.stats()
        text, samples = _scrape(url)
    assert set(tubes) == {"default", "emails", "images"}
    checked = 0
    for key, value in stats.items():
        if key in M.INFO_FIELDS or key in _MOVING:
            continue
        spec = M.describe(key)
        got = samples[f"bsnode_{spec.name}"][()]
        assert got == M.number(value), (key, got, value)
        checked += 1
    assert checked >= 40
    info = samples["bsnode_info"]
    (labels,) = info
    labels = dict(labels)
    for key in M.INFO_FIELDS:
        assert labels[key] == str(stats[key]), key
    for key in _MOVING:
        got = samples[f"bsnode_{M.describe(key).name}"][()]
        assert float(stats[key]) <= got <= float(stats[key]) + 5
    for name, st in tubes.items():
        for key, value in st.items():
            if key == "name":
                continue
            got = samples[f"bsnode_tube_{M.describe(key, 'stats-tube').name}"][(("tube", name),)]
            if key == "pause-time-left":
                assert value - 1 <= got <= value
            else:
                assert got == value, (name, key, got, value)
    assert stats["current-jobs-buried"] == 1 and stats["current-jobs-delayed"] == 1
    assert tubes["emails"]["pause"] == 120
    assert "# HELP bsnode_cmd_put_total put commands received (beanstalkd stats field cmd-put)" \
        in text


def test_scrape_changes_no_counter(metrics_node):
    server, url = metrics_node
    with Client(server.address) as c:
        before = c.stats()
        for _ in range(3):
            _scrape(url)
        after = c.stats()
    assert after["cmd-stats"] == before["cmd-stats"] + 1
    assert after["total-connections"] == before["total-connections"]


def test_live_oldest_ready_age(metrics_node):
    server, url = metrics_node
    with Client(server.address) as c:
        c.use("aging")
        put_at = time.monotonic()
        c.put(b"x")
        _, samples = _scrape(url)
        age = samples["bsnode_tube_oldest_ready_age_seconds"][(("tube", "aging"),)]
        assert 0 <= age <= time.monotonic() - put_at + 0.01
        c.watch("aging")
        c.delete(c.reserve(timeout=0))
        _, samples = _scrape(url)
    assert samples["bsnode_tube_oldest_ready_age_seconds"].get((("tube", "aging"),), 0) == 0


def test_endpoint_paths(metrics_node):
    _, url = metrics_node
    root = url.rsplit("/", 1)[0]
    with urllib.request.urlopen(root + "/", timeout=5) as r:
        assert b"/metrics" in r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(root + "/nope", timeout=5)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x"), timeout=5)
    assert e.value.code == 405


def test_binlog_size_live(tmp_path):
    with start_bsnode("-b", str(tmp_path), "--metrics", "127.0.0.1:0") as server:
        url = _metrics_url(server)
        with Client(server.address) as c:
            for _ in range(20):
                c.put(b"x" * 1000)
        _, samples = _scrape(url)
        size = samples["bsnode_binlog_size_bytes"][()]
    assert size == M.binlog_bytes(str(tmp_path)) and size > 20000


def test_without_the_flag_nothing_extra_listens():
    with start_bsnode() as server:
        assert not any("metrics" in line for line in server.lines)


def test_bad_metrics_address_is_a_usage_error():
    with pytest.raises(RuntimeError):
        start_bsnode("--metrics", "nonsense")


@pytest.mark.parametrize("argv,want", [
    (["--metrics", "127.0.0.1:9311"], ("127.0.0.1", 9311)),
    (["-p0", "--metrics=[::1]:9311", "-V"], ("::1", 9311)),
    (["-l", "127.0.0.1"], None),
])
def test_metrics_flag_parses(argv, want):
    from bsnode.cli import parse_args

    assert parse_args(argv).metrics == want


@pytest.mark.parametrize("argv,want", [
    (["--metrics-max-tubes", "50"], 50),
    (["--metrics-max-tubes=0"], 0),
    (["--metrics", "127.0.0.1:1"], None),  # None: metrics.DEFAULT_MAX_TUBES
])
def test_metrics_max_tubes_flag_parses(argv, want):
    from bsnode.cli import parse_args

    assert parse_args(argv).metrics_max_tubes == want


@pytest.mark.parametrize("argv", [["--metrics"], ["--metrics", "9311"], ["--metric", "h:1"],
                                  ["--metrics-max-tubes"], ["--metrics-max-tubes", "-1"],
                                  ["--metrics-max-tubes=lots"]])
def test_metrics_flag_errors(argv):
    from bsnode.cli import UsageError, parse_args

    with pytest.raises(UsageError):
        parse_args(argv)


# --- many tubes (issue 19, case 4) -------------------------------------------------------
MANY_TUBES = 50_000
SCRAPE_STALL = 0.5  # worst round trip of another client while a scrape renders (was 2.5 s)


def _watch_many(server, n: int):
    """A connection watching ``n`` empty tubes (they live while it watches them)."""
    import socket

    s = socket.create_connection(server.address, timeout=60)
    s.sendall(b"".join(b"watch t%05d\r\n" % i for i in range(n)))
    want, got = n, b""
    while got.count(b"\r\n") < want:
        chunk = s.recv(1 << 16)
        assert chunk, "connection closed"
        got += chunk
    return s


def test_a_scrape_of_50000_tubes_does_not_stall_the_node():
    """Before, a scrape rendered every tube's series inside the event loop:
    2.5 s at 50,000 empty tubes, every other client waiting.  Now the node
    exports the busiest --metrics-max-tubes tubes (the rest are counted in
    bsnode_metrics_tubes_omitted) and yields to other clients while it
    renders."""
    from test_hostile import Probe, in_background

    with start_bsnode("--metrics", "127.0.0.1:0") as server:
        url = _metrics_url(server)
        hold = _watch_many(server, MANY_TUBES)
        with Client(server.address) as c:
            c.use("busy")
            c.put(b"x")
        probe = Probe(server)
        try:
            for _ in range(5):
                probe.round()
            probe.latencies.clear()
            pages: list = []
            thread, errors = in_background(lambda: pages.append(_scrape(url)))
            probe.run_while(thread.is_alive, min_rounds=20)
            thread.join(60)
            assert not errors, errors
            text, samples = pages[0]
        finally:
            probe.close()
            hold.close()
    print(f"{MANY_TUBES} tubes: scrape of {len(text)} bytes; other clients' worst round "
          f"trip {probe.worst * 1000:.1f} ms over {probe.rounds} rounds")
    assert probe.worst < SCRAPE_STALL
    tubes = samples["bsnode_tube_current_jobs_ready"]
    assert len(tubes) == M.DEFAULT_MAX_TUBES
    assert (("tube", "busy"),) in tubes  # the busiest tube is among them
    assert samples["bsnode_tubes"][()] == MANY_TUBES + 3  # default, busy, probe
    assert samples["bsnode_metrics_tubes_omitted"][()] == MANY_TUBES + 3 - M.DEFAULT_MAX_TUBES


def test_a_page_of_many_tubes_pauses_all_along():
    """The walk over every tube and the rendering hand the loop back every
    few hundred items: no stretch of the work grows with the tube count."""
    store = Store()
    commands = Commands(store, 65535, 0)
    for i in range(10_000):
        store._tube(f"t{i:05d}")
    work, stretches = [0], []

    def pause():
        stretches.append(work[0])
        work[0] = 0

    real_tube = M.tube_fields

    def counted(t, now):
        work[0] += 1
        return real_tube(t, now)

    M.tube_fields, saved = counted, M.tube_fields
    try:
        fams = M.node_families(commands, store, None, 1000, pause)
        fams.render(pause)
    finally:
        M.tube_fields = saved
    assert len(stretches) >= 2 * 10_000 // M.PAUSE_EVERY + 1000 // M.PAUSE_EVERY_TUBE
    assert max(stretches + [work[0]]) <= M.PAUSE_EVERY_TUBE  # tubes collected per stretch
    assert len(fams.families["bsnode_tube_current_jobs_ready"].samples) == 1000


def test_busiest_tubes():
    store = Store()
    for name in ("a", "b", "c", "d"):
        store._tube(name)
    tubes = list(store.tube_list)  # default, a, b, c, d: all empty
    assert M.busiest(tubes, 10) == tubes
    assert M.busiest(tubes, 0) == []
    assert M.busiest(tubes, 2) == tubes[:2]  # ties: the older tubes
    d = tubes[4]
    d.buried[99] = object()  # a job counted in d (buried)
    assert M.busiest(tubes, 2) == [tubes[0], d]  # in the store's order


def test_max_tubes_flag_caps_the_tube_series(tmp_path):
    with start_bsnode("--metrics", "127.0.0.1:0", "--metrics-max-tubes", "2") as server:
        url = _metrics_url(server)
        with Client(server.address) as c:
            for name in ("a", "b", "c"):
                c.use(name)
                c.put(b"x")
            c.use("b")
            c.put(b"y")
            _, samples = _scrape(url)
    assert set(samples["bsnode_tube_current_jobs_ready"]) == {(("tube", "b"),),
                                                              (("tube", "a"),)}
    assert samples["bsnode_metrics_tubes_omitted"][()] == 2  # default and c
