"""Start a proxied cluster for tests: N pristine bsnodes and `bscluster proxy` in front.

The nodes bind port 0 and report their ports; the config file written for the
proxy names each node's port in a [nodes.nodeI] table.  The proxy also binds
port 0 and reports "listening on HOST:PORT" on stderr, so nothing probes a
server before the test's own client connects (transcripts compare
total-connections).  ``ProxiedCluster.stop`` stops every process it started.

The code lives in ``bscluster.procs`` (bench/bench_proxy.py uses it too).
"""

from bscluster.procs import ProxiedCluster, start_proxy, write_config  # noqa: F401
