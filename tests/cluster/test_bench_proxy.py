"""bench/bench_proxy.py runs, as docs/BENCHMARKS.md's commands run it: a short
grid with TLS to the nodes (Python clients; a plain sidecar proxy), a second
proxy with its busy poll off and the bare forwarder, reporting every figure
the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_tls_run_reports_rates_ratios_and_cpu():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_proxy.py"), "--tls", "--forwarder",
         "--unpolled", "--busy-poll", "100", "--clients", "1", "--pipeline", "4", "--seconds", "0.5", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tls"] is True and report["client"] == "python"
    assert report["busy_poll"] == 100
    [run] = report["runs"]
    assert (run["clients"], run["pipeline"]) == (1, 4)
    for name in ("direct", "proxy", "unpolled", "forwarder"):
        assert run[f"{name}_cycles_per_s"][0] > 100, run  # each kind of client got through
    assert run["ratio"] > 0 and run["unpolled_ratio"] > 0 and run["forwarder_ratio"] > 0
    assert run["proxy_cpu_us_per_command"] > 0
