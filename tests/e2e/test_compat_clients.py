"""Real beanstalkd clients in four languages, unchanged, against bsnode.

Each script in tests/compat/ drives one published client library through the
same scenario (use, put with a body holding CR LF and NUL, watch/ignore,
reserve, stats-job, release, bury, kick, kick-job, touch, delete, peek of a
missing job, pause-tube, list-tubes, a 65,535-byte job, a job one byte too
big, a reserve while holding a job with TTR 1 s (DEADLINE_SOON), stats; the
node clients also block a second connection in reserve until a job is put) and
prints one JSON line per step.  The script runs against
/usr/bin/beanstalkd and against bsnode, each fresh and with no connection made
before the client's (tests/differential/pristine.py); after dropping what
differs between any two runs (pids, uptimes, CPU times, the server id), the
two transcripts must be the same.  Without beanstalkd, bsnode's transcript
is still checked for the facts every client must see.

The clients: fivebeans and beanstalkd (npm), Pheanstalk 4 (Debian's
php-pda-pheanstalk), beaneater (Debian's ruby-beaneater), pystalk and
beanstalkc (PyPI).  .ci/run installs them; a client that is not installed is
skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from differential.pristine import start_pristine_beanstalkd, start_pristine_bsnode
from servers import HAVE_BEANSTALKD

pytestmark = pytest.mark.integration

COMPAT = Path(__file__).resolve().parents[1] / "compat"
NODE_MODULES = COMPAT / "node" / "node_modules"
RUN_DEADLINE = 60.0  # seconds for one scenario; each takes well under one

# Values that differ between any two runs of the same server.
VOLATILE = {
    "pid", "uptime", "rusage-utime", "rusage-stime", "hostname", "os",
    "age", "time-left", "time_left",
}


def _python_has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None  # the scripts run on this interpreter


def _ruby_has(lib: str) -> bool:
    return bool(shutil.which("ruby")) and subprocess.run(
        ["ruby", "-e", f"require '{lib}'"], capture_output=True).returncode == 0


def _pheanstalk4() -> bool:
    if not shutil.which("php"):
        return False
    probe = ("require_once 'Pheanstalk/autoload.php';"
             "exit(method_exists('Pheanstalk\\\\Pheanstalk', 'useTube')"
             " && !class_exists('Pheanstalk\\\\Values\\\\TubeName') ? 0 : 1);")
    return subprocess.run(["php", "-r", probe], capture_output=True).returncode == 0


def _node_has(package: str) -> bool:
    return bool(shutil.which("node")) and (NODE_MODULES / package / "package.json").exists()


# name: (argv before the port, is it installed?, how to install it)
CLIENTS = {
    "fivebeans (node)": (["node", str(COMPAT / "node" / "fivebeans.js")],
                         lambda: _node_has("fivebeans"),
                         "npm install --prefix tests/compat/node"),
    "beanstalkd (node)": (["node", str(COMPAT / "node" / "beanstalkd_npm.js")],
                          lambda: _node_has("beanstalkd"),
                          "npm install --prefix tests/compat/node"),
    "pheanstalk 4 (php)": (["php", str(COMPAT / "php" / "pheanstalk.php")],
                           _pheanstalk4, "apt-get install php-cli php-pda-pheanstalk"),
    "beaneater (ruby)": (["ruby", str(COMPAT / "ruby" / "beaneater.rb")],
                         lambda: _ruby_has("beaneater"), "apt-get install ruby ruby-beaneater"),
    "pystalk (python)": ([sys.executable, str(COMPAT / "python" / "pystalk_scenario.py")],
                         lambda: _python_has("pystalk"), "pip install pystalk"),
    "beanstalkc (python)": ([sys.executable, str(COMPAT / "python" / "beanstalkc_scenario.py")],
                            lambda: _python_has("beanstalkc") and _python_has("yaml"),
                            "pip install beanstalkc3 pyyaml"),
}


def _steady(value):
    """``value`` without the fields that differ between runs."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in VOLATILE:
                continue
            if k == "id" and "version" in value:
                # the server's random id (stats), not a job's (stats-job has no version):
                # 16 hex digits, which a client's YAML reader turns into a number when
                # none is a letter (one id in two thousand)
                continue
            out[k] = _steady(v)
        return out
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def _transcript(argv: list[str], server) -> list:
    # node finds tests/compat/node/node_modules from the script's own directory
    done = subprocess.run(argv + [str(server.port)], capture_output=True, text=True,
                          timeout=RUN_DEADLINE, cwd=COMPAT)
    assert done.returncode == 0, (
        f"client failed against {server.kind} (rc {done.returncode}):\n"
        f"{done.stderr[-2000:]}\nstdout:\n{done.stdout[-2000:]}")
    return [_steady(json.loads(line)) for line in done.stdout.splitlines()]


def _against(start, argv) -> list:
    with start() as server:
        return _transcript(argv, server)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_client_sees_the_same_as_on_beanstalkd(name):
    argv, installed, how = CLIENTS[name]
    if not installed():
        pytest.skip(f"{name} is not installed ({how})")
    ours = _against(start_pristine_bsnode, argv)
    steps = dict(ours)  # step name -> what the client saw (the last, if repeated)

    # What every client must see, with or without the reference server.
    assert "crash" not in steps
    assert steps["reserve"][-1] == "776f726c64"  # "world": pri 5 before pri 10
    assert steps["big"] == [True, 65535, True]  # the same 65,535 bytes came back
    assert "JOB_TOO_BIG" in json.dumps(steps["too big"])
    if steps["in time"]:  # else the client stalled past the TTR (see _timed)
        assert "DEADLINE" in json.dumps(steps["deadline soon"]).upper()
    drained = [v for s, v in ours if s == "drain"]
    assert any(v[-1] == "610d0a6200ff" for v in drained), \
        "the body with CR LF, NUL and 0xFF did not come back whole"

    if not HAVE_BEANSTALKD:  # the checks above ran; the comparison cannot
        pytest.skip("/usr/bin/beanstalkd is not installed: not compared with beanstalkd")
    theirs = _against(start_pristine_beanstalkd, argv)
    assert _timed(ours, theirs) == _timed(theirs, ours)


def _timed(transcript: list, other: list) -> list:
    """The DEADLINE_SOON step holds only if the client's reserve and its next
    reserve reached the server within the job's 1 s TTR; each script says
    whether they did ("in time").  When either run stalled that long, the
    step is left out of both."""
    if dict(transcript)["in time"] and dict(other)["in time"]:
        return transcript
    return [entry for entry in transcript if entry[0] not in ("deadline soon", "in time")]


def test_steady_drops_the_servers_random_id_however_a_client_parsed_it():
    # a random id of digits only (6712898433830126) reaches the transcript as a number
    for server_id in ("0a1b2c3d4e5f6789", 6712898433830126):
        assert _steady({"version": "1.12", "id": server_id, "total-jobs": 5}) == \
            {"version": "1.12", "total-jobs": 5}
    assert _steady({"id": 6712898433830126, "tube": "t", "pri": 5}) == \
        {"id": 6712898433830126, "tube": "t", "pri": 5}  # a job's id is compared
