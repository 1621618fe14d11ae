"""Session fixtures for the differential suite: server pools and the cache
of beanstalkd's recordings (the reference each bsnode run is compared with)."""

from __future__ import annotations

import pytest

from .pool import ServerPool


@pytest.fixture(scope="session")
def pools():
    made: dict[str, ServerPool] = {}

    def get(kind: str) -> ServerPool:
        if kind not in made:
            made[kind] = ServerPool(kind)
        return made[kind]

    yield get
    for pool in made.values():
        pool.close()


@pytest.fixture(scope="session")
def reference_runs() -> dict:
    return {}
