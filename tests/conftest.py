import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from servers import HAVE_BEANSTALKD, start_beanstalkd, start_bsnode  # noqa: E402

pytest_plugins = ["skip_policy"]  # the skip summary line; CI fails on an unexpected skip

needs_beanstalkd = pytest.mark.skipif(
    not HAVE_BEANSTALKD, reason="/usr/bin/beanstalkd is not installed"
)


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
