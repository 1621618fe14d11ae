import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# The tests live in folders by package (node/, client/, cluster/, e2e/), with
# the shared helpers (servers.py, spawns.py, ...) here at the top.  Both are
# importable by bare name from any test, whichever file pytest collects first:
# helpers as `from servers import ...`, and the few tests that reuse another's
# pieces as `from test_hostile import ...` (basenames are unique across tests/).
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TEST_GROUPS = ("node", "client", "cluster", "e2e")
for _where in (*(os.path.join(TESTS_DIR, g) for g in reversed(TEST_GROUPS)), TESTS_DIR):
    if _where not in sys.path:
        sys.path.insert(0, _where)

import filesystems  # noqa: E402
from servers import HAVE_BEANSTALKD, start_beanstalkd, start_bsnode  # noqa: E402
from spawns import SpawnFinder, forbid_processes, item_starts_processes  # noqa: E402

# Tests press Ctrl-C (SIGINT) at programs they start, as a terminal would.  A
# run started in the background (`&`, nohup) inherits SIGINT ignored, and so
# would every program it starts; handled here, it is the default again for them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["skip_policy"]  # the skip summary line; CI fails on an unexpected skip

needs_beanstalkd = pytest.mark.skipif(
    not HAVE_BEANSTALKD, reason="/usr/bin/beanstalkd is not installed"
)


def pytest_collection_modifyitems(config, items):
    """A test that starts a process (itself or through a fixture) is integration."""
    finder = SpawnFinder()
    for item in items:
        if item.get_closest_marker("integration") is None and \
                item_starts_processes(finder, item):
            item.add_marker(pytest.mark.integration)


def _unit_run(config) -> bool:
    """Is this a run that selected the tests without processes (-m "not integration")?"""
    expr = (config.option.markexpr or "").replace(" ", "")
    return "notintegration" in expr


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """In a unit run, a test that still starts a process (in its fixtures too) fails,
    naming itself."""
    if _unit_run(item.config) and item.get_closest_marker("integration") is None:
        with forbid_processes(item.nodeid):
            return (yield)
    return (yield)


@pytest.fixture
def bsnode():
    with start_bsnode() as server:
        yield server


@pytest.fixture
def beanstalkd():
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    with start_beanstalkd() as server:
        yield server


@pytest.fixture(params=["beanstalkd", "bsnode"])
def server(request):
    """The same test against the reference server and against bsnode."""
    if request.param == "beanstalkd":
        if not HAVE_BEANSTALKD:
            pytest.skip("/usr/bin/beanstalkd is not installed")
        with start_beanstalkd() as s:
            yield s
    else:
        with start_bsnode() as s:
            yield s


# --- a binlog data dir on each filesystem (tests/filesystems.py) -------------------
@pytest.fixture(scope="session")
def _filesystem_dirs():
    with filesystems.filesystem_dirs() as found:
        yield found


@pytest.fixture(params=filesystems.param_kinds())
def binlog_tmp(request, _filesystem_dirs) -> Path:
    """A fresh directory on each kind of filesystem (ext4, tmpfs, overlay, ...);
    a module whose tests should run on each overrides ``tmp_path`` with it."""
    kind = request.param
    where, why = _filesystem_dirs.get(kind, (None, f"this machine has no {kind}"))
    if where is None:
        if filesystems.wanted_kinds():
            pytest.fail(f"{filesystems.ENV} asks for {kind}, but {why}")
        pytest.skip(f"no {kind} to run on: {why}")
    path = Path(tempfile.mkdtemp(prefix="binlog-", dir=where))
    yield path
    shutil.rmtree(path, ignore_errors=True)
