"""tests/skip_policy.py: the skip summary line, and CI failing on an unexpected skip.

Each case runs pytest in a subprocess on a few throw-away test files in
tmp_path, with the plugin loaded, with and without CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]  # the shared helpers, skip_policy.py

FILES = {
    "plain": "def test_ok():\n    pass\n",
    "skip": "import pytest\n\ndef test_a():\n    pytest.skip('no frobnicator here')\n\n"
            "def test_b():\n    pytest.skip('no frobnicator here')\n",
    "xfail": "import pytest\n\n@pytest.mark.xfail(reason='a known bug')\n"
             "def test_a():\n    assert False\n",
    "module": "import pytest\n\npytest.skip('whole module off', allow_module_level=True)\n",
    # put on the allow-list by ALLOW below
    "expected": "import pytest\n\ndef test_needs_a_gadget():\n"
                "    pytest.skip('no gadget at /x')\n",
}
ALLOW = """
import skip_policy

skip_policy.EXPECTED = (skip_policy.Expected(
    "tests/test_expected.py::test_needs_*", "no gadget", "gadgets are rare"),)
"""


def run(tmp_path: Path, which: list[str], ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "tests").mkdir(exist_ok=True)
    (tmp_path / "tests" / "conftest.py").write_text(ALLOW)
    for name in which:
        (tmp_path / "tests" / f"test_{name}.py").write_text(FILES[name])
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "skip_policy", "tests"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def summary_line(out: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("skips: ")]
    return line


def test_no_skips_says_zero(tmp_path):
    r = run(tmp_path, ["plain"], ci=True)
    assert r.returncode == 0, r.stdout
    assert summary_line(r.stdout) == "skips: 0"


def test_outside_ci_skips_are_listed_but_do_not_fail(tmp_path):
    r = run(tmp_path, ["plain", "skip", "xfail"], ci=False)
    assert r.returncode == 0, r.stdout
    assert summary_line(r.stdout) == "skips: 3 (no frobnicator here: 2, xfail: a known bug: 1)"


@pytest.mark.parametrize("which", [["skip"], ["xfail"], ["module"]])
def test_under_ci_an_unexpected_skip_fails_the_run(tmp_path, which):
    r = run(tmp_path, ["plain", *which], ci=True)
    assert r.returncode == 1, r.stdout
    assert "unexpected skip(s) fail this run" in r.stdout
    assert f"tests/test_{which[0]}.py" in r.stdout.split("unexpected skip(s)")[1]


def test_under_ci_an_expected_skip_passes(tmp_path):
    r = run(tmp_path, ["plain", "expected"], ci=True)
    assert r.returncode == 0, r.stdout
    assert summary_line(r.stdout) == "skips: 1 (no gadget at /x: 1)"
    r = run(tmp_path, ["plain", "expected", "skip"], ci=True)
    assert r.returncode == 1, r.stdout
    listed = r.stdout.split("unexpected skip(s)")[1]
    assert "tests/test_skip.py::test_a" in listed and "test_expected.py" not in listed


def test_nothing_is_expected_to_skip_in_ci():
    import skip_policy

    assert skip_policy.EXPECTED == ()


def test_a_failing_run_keeps_its_status(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fails.py").write_text("def test_no():\n    assert False\n")
    r = run(tmp_path, ["skip"], ci=True)
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout
