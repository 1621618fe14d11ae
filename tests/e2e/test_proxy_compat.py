"""The published beanstalkd clients, unchanged, through `bscluster proxy` to 3 nodes.

Each scenario of tests/e2e/test_compat_clients.py (pheanstalk, beaneater,
fivebeans, beanstalkd npm, pystalk, beanstalkc) runs against a fresh
/usr/bin/beanstalkd and against a fresh proxy in front of three fresh
bsnodes; greenstalk's own test module runs through the proxy below.  The
transcripts must be the same after the normalisation of the compat test
(pids, uptimes, ...) and one more, the documented difference of
docs/PROXY.md ("Job ids"):

* a job id from the proxy is ``node id * 1000 + (I - 1)`` for ``nodeI``;
  the scenario's jobs all go to one tube, so all to its owner node, and
  that node numbers them exactly as the lone beanstalkd does.  The proxy's
  ids are mapped back to the node's own (only numbers that are ids of that
  node: a multiple of 1000 plus its slot).

Nothing else is normalised: stats, stats-tube, list-tubes, peeks and kicks
must come out as beanstalkd's.
"""

from __future__ import annotations

import json
import re

import pytest
from bsclient import Ring
from bscluster.proxy_ids import ID_RADIX
from proxyrun import ProxiedCluster
from servers import HAVE_BEANSTALKD
from test_compat_clients import CLIENTS, _against, _timed, _transcript

pytestmark = pytest.mark.integration

NODES = 3
SCENARIO_TUBE = "compat-a"  # the only tube the scenarios put to
_NUMBER = re.compile(r"(?<![0-9A-Za-z.])[0-9]+(?![0-9A-Za-z.])")


def _owner_slot() -> int:
    ring = Ring({f"node{i}": 1 for i in range(1, NODES + 1)})
    return int(ring.node_for(SCENARIO_TUBE)[4:]) - 1


def node_ids(value, slot: int):
    """``value`` with the proxy's ids of node ``slot`` turned back into that node's ids."""
    if isinstance(value, dict):
        return {k: node_ids(v, slot) for k, v in value.items()}
    if isinstance(value, list):
        return [node_ids(v, slot) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) \
            and value >= ID_RADIX and value % ID_RADIX == slot:
        return value // ID_RADIX
    if isinstance(value, str):  # ids kept as strings, or quoted in error messages
        return _NUMBER.sub(lambda m: _one(m.group(), slot), value)
    return value


def _one(text: str, slot: int) -> str:
    n = int(text)
    return str(n // ID_RADIX) if n >= ID_RADIX and n % ID_RADIX == slot else text


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_client_through_the_proxy_sees_what_beanstalkd_shows(name, tmp_path):
    argv, installed, how = CLIENTS[name]
    if not installed():
        pytest.skip(f"{name} is not installed ({how})")
    with ProxiedCluster(tmp_path, NODES) as cluster:
        ours = node_ids(_transcript(argv, cluster), _owner_slot())
    steps = dict(ours)
    assert "crash" not in steps
    assert steps["reserve"][-1] == "776f726c64"  # "world": pri 5 before pri 10
    assert steps["big"] == [True, 65535, True]
    assert "JOB_TOO_BIG" in json.dumps(steps["too big"])
    drained = [v for s, v in ours if s == "drain"]
    assert any(v[-1] == "610d0a6200ff" for v in drained)
    if not HAVE_BEANSTALKD:
        return
    from differential.pristine import start_pristine_beanstalkd

    theirs = _against(start_pristine_beanstalkd, argv)
    assert _timed(ours, theirs) == _timed(theirs, ours)


def test_readme_php_lines_through_the_proxy(tmp_path):
    """README's three PHP lines, as written but for the port, through a proxy."""
    import subprocess

    import readme_blocks

    (block,) = readme_blocks.in_section(readme_blocks.read(), "Use it from PHP", "php")
    assert "11400" in block.text
    script = tmp_path / "readme.php"
    script.write_text(
        "<?php\nrequire_once 'Pheanstalk/autoload.php';\n"
        "$mail = ['to' => 'a@example.org'];\n"
        + block.text.replace("11400", "(int)$argv[1]")
        + "echo $job->getData(), \"\\n\";\n$q->delete($job);\n")
    with ProxiedCluster(tmp_path, NODES) as cluster:
        out = subprocess.run(["php", str(script), str(cluster.port)], capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"to": "a@example.org"}
