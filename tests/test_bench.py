"""Smoke tests of the load tools at tiny sizes: `bscluster bench` and bench/*.py.

They check the plumbing (connections set up, every reply checked, jobs
cleaned up, figures printed, servers and processes gone afterwards), never
performance: the figures themselves are measured by bench/run_benchmarks.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_DIR))

import delayed_promotion  # noqa: E402
import harness  # noqa: E402
import idle_conns  # noqa: E402

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
    assert "bottleneck" in out and "loadgen" in out


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
        result = invoke("--config", str(config), "--tubes", "8", "--mode", "put",
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
    result = CliRunner().invoke(bench, ["--port", str(free_port()), *TINY])
    assert result.exit_code != 0
    assert "cannot set up connections" in result.output


# --- bench/ helpers ------------------------------------------------------------------
@pytest.mark.integration
def test_idle_connections_hold_tubes_and_waiters(bsnode):
    socks = idle_conns.open_idle("127.0.0.1", bsnode.port, 30, 10, 4)
    try:
        with Client(bsnode.address) as c:
            st = c.stats()
        assert st["current-connections"] >= 30
        assert st["current-tubes"] >= 10 + 1
        assert st["current-waiting"] == 4
    finally:
        for s in socks:
            s.close()


@pytest.mark.integration
def test_delayed_promotion_measures_every_job(bsnode):
    r = delayed_promotion.measure("127.0.0.1", bsnode.port, bsnode.pid, jobs=300, start=1.0,
                                  spread=0.5, every_ms=5.0)
    assert r["promoted"] == r["jobs"] == 300
    assert r["late_max_ms"] >= r["late_max_lo_ms"] >= 0
    assert r["samples"] > 10


def _loadgen_or_skip() -> str:
    try:
        return harness.find_loadgen(build=False)
    except harness.BenchError as e:
        pytest.skip(str(e))


@pytest.mark.integration
def test_run_benchmarks_quick_prints_the_table(tmp_path):
    _loadgen_or_skip()
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
def test_core_cost_prints_every_figure(capsys):
    import core_cost

    core_cost.main(["--repeat", "1", "--jobs", "320", "--fill", "1280"])
    out = capsys.readouterr().out
    for _, label, how in core_cost.FIGURES:
        assert f"{label} ({how})" in out
    assert "nan" not in out
