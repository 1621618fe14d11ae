"""greenstalk's lifecycle tests (tests/node/test_greenstalk.py), unchanged, through the proxy.

The same test functions run with ``server`` being a proxy in front of three
bsnodes instead of one server.
"""

from __future__ import annotations

import greenstalk
import pytest
from proxyrun import ProxiedCluster
from test_greenstalk import *  # noqa: F403 - the tests themselves

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        yield cluster


def test_stats(client):  # noqa: F811 - test_greenstalk's, with the id put returned
    """As test_greenstalk.test_stats, but stats-job asks for the id the put
    returned: the proxy's ids are not 1, 2, 3 (docs/PROXY.md, "Job ids")."""
    job_id = client.put("x", priority=1)
    st = client.stats()
    assert (st["current-jobs-urgent"], st["current-jobs-ready"]) == (1, 1)
    assert (st["cmd-put"], st["total-jobs"], st["current-producers"]) == (1, 1, 1)
    assert st["current-connections"] >= 1
    assert st["draining"] == "false" and st["version"] == "1.12"
    tube = client.stats_tube("default")
    assert (tube["name"], tube["total-jobs"], tube["current-using"]) == ("default", 1, 1)
    job = client.stats_job(job_id)
    assert (job["id"], job["tube"], job["state"]) == (job_id, "default", "ready")
    with pytest.raises(greenstalk.NotFoundError):
        client.stats_tube("nope")
    with pytest.raises(greenstalk.NotFoundError):
        client.stats_job(job_id + 3000)  # the same node, a job it never had
