"""Session fixtures for the differential suite: a pool of fresh bsnode
servers, and beanstalkd's recordings of the selected transcripts (the
reference each bsnode run is compared with), made in the background."""

from __future__ import annotations

import pytest
from servers import HAVE_BEANSTALKD

from .pool import ServerPool
from .reference import ReferenceRecorder


@pytest.fixture(scope="session")
def bsnode_pool():
    pool = ServerPool("bsnode")
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def reference(request):
    if not HAVE_BEANSTALKD:
        pytest.skip("/usr/bin/beanstalkd is not installed")
    wanted: dict[str, object] = {}
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        t = spec.params.get("transcript") if spec is not None else None
        if t is not None:
            wanted.setdefault(t.name, t)
    recorder = ReferenceRecorder(list(wanted.values()))
    yield recorder
    recorder.close()
