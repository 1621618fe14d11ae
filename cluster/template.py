"""The commented config file that ``bscluster init`` writes."""

from __future__ import annotations

from bscluster.config import CLUSTER_DEFAULTS, DEFAULT_PROXY_LISTEN, NODE_COMMAND_HELP

_TEMPLATE = """\
# bscluster configuration. bscluster and ClusterClient.from_config() read
# this same file, so every client routes each tube to the same node.
# Precedence: command-line flag, then environment (BSCLUSTER_<KEY>, e.g.
# BSCLUSTER_BASE_PORT=11400), then this file, then the built-in default.

[cluster]
# How many nodes; they are named node1..node{nodes}. Names, not addresses,
# place tubes on the ring, so a node can move without moving its tubes.
nodes = {nodes}

# Address every node listens on (bsnode -l). 127.0.0.1 keeps the cluster
# private to this machine; use 0.0.0.0 or a LAN address only behind a firewall:
# the beanstalkd protocol has no authentication.
host = "{host}"

# nodeI listens on base_port + I - 1 (bsnode -p).
base_port = {base_port}

# State (pids, ports, logs) and one binlog directory per node (data_dir/nodeI).
# A relative path is relative to the directory of this file.
data_dir = "{data_dir}"

# Write-ahead log (bsnode -b): jobs survive a node crash or restart.
binlog = {binlog}

# fsync the binlog at most once every fsync_ms milliseconds (bsnode -f);
# 0 = fsync every write, -1 = never fsync (bsnode -F).
fsync_ms = {fsync_ms}

# Largest job body in bytes (bsnode -z); beanstalkd's limit is 1073741824.
max_job_size = {max_job_size}

# Size of each binlog file in bytes (bsnode -s).
binlog_size = {binlog_size}

# The program that runs one node; by default {node_command_help}
# (python -m bsnode), whatever PATH holds. It must take beanstalkd's flags,
# so "beanstalkd" works too.
# node_command = "/usr/bin/beanstalkd"

# A node that crashes crash_limit times within crash_window seconds is given
# up on: FATAL, with its last exits in `bscluster status`, until
# `bscluster restart NODE`. crash_limit = 0 restarts it for ever (with
# delays growing to 30 s).
# crash_limit = {crash_limit}
# crash_window = {crash_window}

# Serve the web dashboard and the cluster's Prometheus /metrics from the
# supervisor, as `bscluster up --web` does; "" = off. Keep it on 127.0.0.1:
# whoever reaches it sees job bodies.
# web = "127.0.0.1:11380"

# Run `bscluster proxy` with the nodes, as `bscluster up --proxy` does: one
# address where any beanstalkd client (PHP, Ruby, Node, ...) uses the whole
# cluster (docs/PROXY.md); "" = off.
# proxy = "{proxy_listen}"

# Give every node its own Prometheus endpoint (bsnode --metrics): nodeI
# serves http://metrics_host:(metrics_base_port + I - 1)/metrics; 0 = off.
# Only bsnode has this flag, so leave it 0 with node_command = "beanstalkd".
# metrics_base_port = 9311
# metrics_host = "{metrics_host}"

# The hash that places tubes on nodes, for every client of this file and for
# `bscluster route`: "md5" (uhashring's ring, ClusterClient's default) or
# "ketama" (libketama's continuum, which ketama clients in other languages
# compute from the same node names and weights).
# ring = "{ring}"

# Opt-in caps per node (bsnode --max-jobs / --max-job-bytes): a put beyond
# either answers OUT_OF_MEMORY; 0 = no cap. max_job_bytes counts job bodies.
# Only bsnode has these flags (and TLS), so leave them 0 with beanstalkd.
# max_jobs = 0
# max_job_bytes = 0

# TLS: a [tls] table (see `bscluster init --tls` and docs/SECURITY.md).

# proxy_tls = true: `bscluster proxy` serves TLS with [tls] node_cert/node_key
# (and requires client certificates with client_auth), as the nodes do; off, it
# speaks plain TCP, as beanstalkd clients do: keep it on 127.0.0.1 (docs/PROXY.md).
# proxy_tls = false

# While its clients keep it busy, the proxy polls this many microseconds after
# each read before it sleeps: waking costs more than the hop (docs/PROXY.md,
# "Busy poll"), so a few busy clients get about twice the rate, for some CPU.
# Never where the proxy may use one CPU or less (one CPU, a CPU quota); 0: off.
# proxy_busy_poll = 50

# Per-node overrides. Any of host, port, weight (share of tubes in the
# client's ring, default 1), data_dir (this node's own binlog directory),
# metrics_port, binlog, fsync_ms, max_job_size, binlog_size.
# `bscluster remove nodeN` writes two more: leaving = true (it owns no tubes
# but is still served) while its jobs move away, then removed = true (gone;
# its name is not reused). Removing the last node lowers `nodes` instead.
#
# [nodes.node2]
# host = "10.0.0.12"
# port = 11300
# weight = 2
"""


def render_config(**overrides) -> str:
    """The config file text, with the defaults or the given values filled in."""
    values = {**CLUSTER_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    values["binlog"] = "true" if values["binlog"] else "false"
    values["node_command_help"] = NODE_COMMAND_HELP
    values["proxy_listen"] = DEFAULT_PROXY_LISTEN
    return _TEMPLATE.format(**values)
