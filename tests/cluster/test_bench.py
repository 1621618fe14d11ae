"""Smoke tests of the load tools at tiny sizes: `bscluster bench`, the compiled
load generator bench/loadgen.c and bench/*.py.

They check the plumbing (connections set up, every reply checked, errors
counted, jobs cleaned up, figures printed, servers and processes gone
afterwards), never performance: the figures themselves are measured by
bench/run_benchmarks.py.  The load generator is built with cc by the harness,
as the bench scripts do; without a C compiler these tests fail (CI installs
gcc), they do not skip.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bsclient import Client
from bsclient.ring import Ring
from bscluster.bench import (
    CONSUMER,
    CYCLER,
    HIST_SCALE,
    PUTTER,
    Load,
    Result,
    bench,
    plan_conns,
)
from click.testing import CliRunner
from servers import HAVE_BEANSTALKD, free_port, start_bsnode

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"  # run as scripts, never imported


def bench_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(BENCH_DIR / name), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done

TINY = ["--seconds", "0.3", "--conns", "2", "--pipeline", "2", "--procs", "1"]


def invoke(*args: str):
    return CliRunner().invoke(bench, list(args), catch_exceptions=False)


def ready_jobs(server) -> int:
    with Client(server.address) as c:
        return c.stats()["current-jobs-ready"]


# --- pure parts ----------------------------------------------------------------
def test_connections_are_dealt_round_robin_over_tubes_and_roles():
    load = Load("produce-consume", 100, 6, 1, 2, 1.0, 1)
    specs = plan_conns(load, {"node": "127.0.0.1:1"})
    assert [s.role for s in specs] == [PUTTER] * 3 + [CONSUMER] * 3
    assert [s.tube for s in specs] == ["bench.0", "bench.1", "bench.0"] * 2
    specs = plan_conns(Load("put-reserve-delete", 100, 3, 1, 5, 1.0, 1), {"n": "h:1"})
    assert {s.role for s in specs} == {CYCLER}


def test_a_cluster_load_sends_each_tube_to_its_owner_on_the_ring():
    nodes = {"node1": "127.0.0.1:1001", "node2": "127.0.0.1:1002", "node3": "127.0.0.1:1003"}
    weights = {"node1": 1, "node2": 2, "node3": 1}
    specs = plan_conns(Load("put", 100, 12, 1, 12, 1.0, 1), nodes, weights)
    ring = Ring(weights)
    for spec in specs:
        assert spec.address == nodes[ring.node_for(spec.tube)]
    assert len({s.address for s in specs}) > 1


def test_percentiles_come_from_the_log_histogram():
    r = Result("x")
    for us, n in ((100, 90), (1000, 9), (10000, 1)):
        r.hist[int(math.log(us) * HIST_SCALE)] += n
    assert r.percentile(0.5) == pytest.approx(100, rel=0.03)
    assert r.percentile(0.95) == pytest.approx(1000, rel=0.03)
    assert r.percentile(1.0) == pytest.approx(10000, rel=0.03)


def test_help_says_a_python_client_can_be_the_bottleneck():
    out = invoke("--help").output
    assert "bottleneck" in out and "bench/loadgen.c" in out


def test_short_options_mean_what_they_mean_in_other_bscluster_commands(tmp_path):
    """-c is --config everywhere (issue 16); -d (detach in `up`) and -p (bsnode's
    port) are not taken by bench."""
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(bench, ["-c", str(missing), *TINY])
    assert result.exit_code != 0 and "nope.toml" in result.output
    for short in ("-d", "-p"):
        result = CliRunner().invoke(bench, [short, "3"])
        assert result.exit_code == 2 and f"No such option '{short}'" in result.output
    assert "-c is --config" in " ".join(invoke("--help").output.split())


# --- against servers -------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("mode", ["put", "put-reserve-delete", "produce-consume"])
def test_each_mode_runs_and_leaves_no_jobs(bsnode, mode):
    result = invoke("--port", str(bsnode.port), "--mode", mode, *TINY)
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert f"127.0.0.1:{bsnode.port}" in line and "ops/s" in line and "errors 0" in line
    assert ready_jobs(bsnode) == 0
    with Client(bsnode.address) as c:
        assert c.stats()["total-jobs"] > 0


@pytest.mark.integration
def test_json_output_and_kept_jobs(bsnode):
    result = invoke("--port", str(bsnode.port), "--mode", "put", "--keep-jobs", "--json", *TINY)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["target"]["ops_per_s"] > 0 and doc["target"]["errors"] == 0
    assert doc["target"]["p50_us"] <= doc["target"]["p99_us"]
    assert ready_jobs(bsnode) > 0  # --keep-jobs: the puts stay


@pytest.mark.integration
def test_compare_runs_both_servers_and_prints_the_ratio(bsnode):
    other = start_bsnode()
    try:
        result = invoke("--port", str(bsnode.port), "--compare", f"127.0.0.1:{other.port}",
                        "--rounds", "2", *TINY)
        assert result.exit_code == 0, result.output
        assert "ratio" in result.stdout and "medians of 2" in result.stdout
        for server in (bsnode, other):
            with Client(server.address) as c:
                assert c.stats()["total-jobs"] > 0
    finally:
        other.stop()


@pytest.mark.integration
def test_a_cluster_config_spreads_tubes_over_its_nodes(tmp_path):
    a, b = start_bsnode(), start_bsnode()
    try:
        config = tmp_path / "bscluster.toml"
        config.write_text(f'[cluster]\nnodes = 2\nhost = "127.0.0.1"\nbase_port = {a.port}\n'
                          f"[nodes.node2]\nport = {b.port}\n")
        result = invoke("-c", str(config), "--tubes", "8", "--mode", "put",
                        "--seconds", "0.3", "--conns", "8", "--procs", "2")
        assert result.exit_code == 0, result.output
        assert "cluster of 2 nodes" in result.stdout
        for server in (a, b):
            with Client(server.address) as c:
                assert c.stats()["total-jobs"] > 0
    finally:
        a.stop()
        b.stop()


@pytest.mark.integration
def test_an_unreachable_server_is_a_clear_error():
    port = free_port()
    result = CliRunner().invoke(bench, ["--port", str(port), *TINY])
    assert result.exit_code != 0
    assert f"cannot set up connections to 127.0.0.1:{port}: ConnectionRefusedError" \
        in result.output


@pytest.mark.integration
def test_with_no_target_given_it_loads_the_cluster_running_here(tmp_path):
    """`bscluster up --nodes 2 --base-port P -d` with no file, then `bscluster bench` in
    the same directory: the load goes to those nodes, not to 127.0.0.1:11300."""
    from clusters import Cluster
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    flags = c.by_hand()
    try:
        c.run("up", "-d", *flags, check=True)
        r = c.run("bench", "--mode", "put", "--tubes", "8", "--conns", "8", "--seconds", "0.3",
                  "--procs", "1", check=True)
        ports = (c.base_port, c.base_port + 1)
        assert f"cluster of 2 nodes (127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]})" in r.stdout
    finally:
        c.cleanup()


# --- bench/ helpers ------------------------------------------------------------------
@pytest.mark.integration
def test_idle_connections_hold_tubes_and_waiters(bsnode):
    argv = [sys.executable, str(BENCH_DIR / "idle_conns.py"), "--port", str(bsnode.port),
            "--conns", "30", "--tubes", "10", "--waiting", "4", "--hold", "60"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout.readline().split()[:4] == ["ready", "30", "10", "4"]
            with Client(bsnode.address) as c:
                st = c.stats()
            assert st["current-connections"] >= 30
            assert st["current-tubes"] >= 10 + 1
            assert st["current-waiting"] == 4
        finally:
            proc.stdin.close()  # the script lets go of its connections and exits
            assert proc.wait(30) == 0


@pytest.mark.integration
def test_delayed_promotion_measures_every_job(bsnode):
    done = bench_script("delayed_promotion.py", "--port", str(bsnode.port), "--pid",
                        str(bsnode.pid), "--jobs", "300", "--start", "1.0", "--spread", "0.5",
                        "--every", "5")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["promoted"] == r["jobs"] == 300
    assert r["late_max_ms"] >= r["late_max_lo_ms"] >= 0
    assert r["samples"] > 10


@pytest.mark.integration
def test_run_benchmarks_quick_prints_the_table(tmp_path, loadgen):
    out = tmp_path / "raw.json"
    argv = [sys.executable, str(BENCH_DIR / "run_benchmarks.py"), "--quick", "--only",
            "throughput,memory", "--seconds", "0.3", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| put-reserve-delete, 10 conns, pipeline 16: ops/s |" in done.stdout
    assert "| memory, 2,000 ready jobs" in done.stdout
    assert "run 1/" in done.stderr
    raw = json.loads(out.read_text())
    runs = raw["results"]["throughput"]["prd-c10-p1"]["bsnode"]
    assert runs and runs[0]["errors"] == 0
    if HAVE_BEANSTALKD:
        assert raw["results"]["memory"]["beanstalkd"]["jobs"] == 2000


@pytest.mark.integration
def test_core_cost_prints_every_figure():
    out = bench_script("core_cost.py", "--repeat", "1", "--jobs", "320", "--fill", "1280",
                       timeout=240).stdout
    header, *rows = out.strip().splitlines()
    assert header.split() == ["figure", "-"]
    assert len(rows) == 6  # core_cost.FIGURES
    for row in rows:  # "LABEL (min|median)" then the figure (a long label touches it)
        assert re.fullmatch(r".+ \((min|median)\) *[0-9]+\.[0-9]{2}", row), row
    assert "nan" not in out


# --- the compiled load generator, bench/loadgen.c ---------------------------------------
@pytest.fixture(scope="module")
def loadgen() -> str:
    """bench/loadgen.c, built by the harness as the bench scripts build it."""
    return bench_script("harness.py", timeout=300).stdout.strip().splitlines()[-1]


def run_lg(loadgen: str, port: int, mode: str, *args: str, expect: int = 0) -> dict:
    argv = [loadgen, "--port", str(port), "--mode", mode, "--grace", "5", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == expect, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_harness_rebuilds_a_binary_older_than_its_source(tmp_path, loadgen):
    out = tmp_path / "loadgen"
    out.write_text("#!/bin/sh\n")
    out.chmod(0o755)
    os.utime(out, (1, 1))
    built = bench_script("harness.py", str(out), timeout=300)
    assert built.stdout.strip() == str(out) and "building the load generator" in built.stderr
    again = bench_script("harness.py", str(out))  # now current: not built twice
    assert again.stdout.strip() == str(out) and "building" not in again.stderr
    done = subprocess.run([str(out), "--help"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and "put-reserve-delete" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["loadgen"]  # no temporary left


def test_the_load_generator_refuses_what_it_cannot_do(loadgen):
    for args, words in ((["--host", "10.1.2.3", "--jobs", "1"], "loopback"),
                        (["--host", "example.com", "--jobs", "1"], "not an IPv4"),
                        (["--mode", "prd"], "unknown --mode"),
                        (["--mode", "put"], "give --seconds, --jobs or --ops"),
                        (["--pipeline", "0", "--jobs", "1"], "--pipeline wants a number"),
                        (["--mode", "produce-consume", "--conns", "1", "--jobs", "1"],
                         "--conns 2")):
        done = subprocess.run([loadgen, "--port", "1", *args], capture_output=True,
                              text=True, timeout=10)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
    done = subprocess.run([loadgen, "--port", str(free_port()), "--jobs", "1"],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "Connection refused" in done.stderr


@pytest.mark.integration
def test_fill_and_drain_over_several_tubes(bsnode, loadgen):
    r = run_lg(loadgen, bsnode.port, "fill", "--jobs", "500", "--conns", "3", "--pipeline",
               "8", "--tubes", "2", "--server-pid", str(bsnode.pid))
    assert (r["ops"], r["jobs"], r["errors"], r["incomplete"]) == (500, 500, 0, False)
    assert r["server_rss_kb"] > 1000 and r["server_cpu_us_per_op"] >= 0
    with Client(bsnode.address) as c:
        assert c.stats()["current-jobs-ready"] == 500
        per_tube = [c.stats_tube(f"loadgen.{i}")["current-jobs-ready"] for i in (0, 1)]
    assert sum(per_tube) == 500 and min(per_tube) > 0
    r = run_lg(loadgen, bsnode.port, "drain", "--conns", "2", "--pipeline", "4",
               "--tubes", "2")
    assert (r["jobs"], r["ops"], r["errors"]) == (500, 1000, 0)
    assert ready_jobs(bsnode) == 0


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["put-reserve-delete", "produce-consume"])
def test_jobs_count_three_commands_and_leave_the_tube_empty(bsnode, loadgen, mode):
    r = run_lg(loadgen, bsnode.port, mode, "--jobs", "300", "--conns", "4", "--pipeline", "3")
    assert (r["jobs"], r["ops"], r["errors"]) == (300, 900, 0)
    assert {r["lat"][k]["n"] for k in ("put", "reserve", "delete")} == {300}
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
    assert r["ops_per_s"] == pytest.approx(r["ops"] / r["elapsed_s"], rel=0.1)  # ms rounding
    with Client(bsnode.address) as c:
        st = c.stats()
    assert st["current-jobs-ready"] == 0 and st["cmd-delete"] == 300


@pytest.mark.integration
def test_a_timed_run_stops_and_finishes_its_jobs(bsnode, loadgen):
    r = run_lg(loadgen, bsnode.port, "produce-consume", "--seconds", "0.3", "--conns", "4",
               "--pipeline", "2")
    assert r["jobs"] > 0 and r["errors"] == 0 and 0.3 <= r["elapsed_s"] < 5
    assert ready_jobs(bsnode) == 0  # consumers took every job the producers put


class FakeServer:
    """A loopback server that answers each command with ``reply(command_line)``
    (or closes the connection when it returns None)."""

    def __init__(self, reply):
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, contextlib.suppress(ConnectionError):  # loadgen may reset it
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if line.startswith(b"put "):
                        buf = buf.split(b"\r\n", 1)[1]  # the body (no CRLF inside)
                    answer = self.reply(line)
                    if answer is None:
                        return
                    conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize("reply, sample, code", [
    (lambda line: b"OUT_OF_MEMORY\r\n", "put got 'OUT_OF_MEMORY'", 1),
    (lambda line: None, "connection closed: the server closed it (1 commands", 1),
    (lambda line: b"INSERTED 7\r\n" if line.startswith(b"put") else
     b"RESERVED 7 3\r\nabc\r\n" if line == b"reserve" else b"DELETED\r\n",
     "RESERVED a 3-byte body, not --size 100", 1),
    (lambda line: b"INSERTED 7\r\n" if line.startswith(b"put") else b"INSERTED 8 9\r\n",
     "reserve got 'INSERTED 8 9'", 1),
    (lambda line: b"INSERTED 7\n", "not ended by CRLF", 1),
])
def test_every_reply_is_checked_and_errors_are_counted(loadgen, reply, sample, code):
    server = FakeServer(reply)
    try:
        r = run_lg(loadgen, server.port, "put-reserve-delete", "--jobs", "2", "--max-errors",
                   "3", "--seconds", "5", expect=code)
    finally:
        server.close()
    assert r["errors"] >= 1 and any(sample in s for s in r["error_samples"]), r
