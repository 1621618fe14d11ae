"""What runs, against what the config says: the one view the looking commands share.

How this works
--------------
Two things can disagree: the config (file, environment, flags: what
clients read and what the next `up` would start) and the running cluster
(what the supervisor started, recorded in its state file ``bscluster.json``
and ``wanted.json``).  ``cluster_view`` reads both once.  Where a node is
found comes from the running cluster when one runs, because that is where
it listens; which nodes own tubes (the ring: weights, ``leaving``,
``ring``) comes from the config, because that is what clients read.
``pending`` lists every difference in a sentence a person can act on, and
``EXIT_*`` are the exit codes `status`, `stats` and friends share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bsclient.address import connect_host
from bsclient.config import ClusterLayout, NodeAddress
from bscluster import control
from bscluster.config import PROXY_SETTINGS, ClusterConfig, NodeSpec
from bscluster.runtime import Paths, read_json, supervisor_alive

# exit codes of the looking commands (documented in their --help)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NODES_DOWN = 3  # some node does not answer (as systemctl status)
EXIT_NO_CLUSTER = 4  # no supervisor runs for the data dir, or no node answers
EXIT_CODES_HELP = (
    "\b\nExit status: 0 every node answers; 1 error; 2 usage;\n"
    f"{EXIT_NODES_DOWN} some node does not answer (status: or the proxy of `up --proxy`);\n"
    f"{EXIT_NO_CLUSTER} no cluster: the supervisor is gone (its nodes may still run), or\n"
    "none runs and no node of the config answers."
)
# and of the commands that ask the supervisor (drain, undrain, remove, restart, reload)
ASKING_EXIT_HELP = (
    "\b\nExit status: 0 done; 1 error; 2 usage;\n"
    f"{EXIT_NO_CLUSTER} no cluster: no supervisor runs for the data dir."
)

# NodeSpec fields that a running node was started with and `up` cannot change
STARTED_WITH = ("host", "port", "data_dir", "binlog", "fsync_ms", "max_job_size",
                "binlog_size", "metrics_host", "metrics_port")


@dataclass
class ClusterView:
    config: ClusterConfig
    state: dict | None  # the live supervisor's state; None when none runs
    running: ClusterConfig | None  # what it runs (wanted.json)
    orphaned: bool = False  # a state file without a live supervisor: it was killed
    pending: list[str] = field(default_factory=list)

    @property
    def supervised(self) -> bool:
        return self.state is not None

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each node listens: as started when a cluster runs, else as configured."""
        if self.state is not None:
            return {n: (e["host"], e["port"]) for n, e in self.state["nodes"].items()}
        return {n.name: (n.host, n.port) for n in self.config.nodes}

    def address(self, name: str) -> str:
        host, port = self.addresses()[name]
        return f"{host}:{port}"

    def layout(self) -> ClusterLayout:
        """The node list every command connects to: the config's ring, weights and
        spread tubes, each node at the address it listens on (``addresses``) as a
        client on this machine reaches it.  The one node resolver: bench, top, web
        and work ask it."""
        known = {n.name: n for n in (*(self.running.nodes if self.running else ()),
                                     *self.config.nodes)}  # the config's ring wins
        nodes = tuple(NodeAddress(name, f"{connect_host(host)}:{port}",
                                  known[name].weight if name in known else 1,
                                  known[name].leaving if name in known else False)
                      for name, (host, port) in self.addresses().items())
        return ClusterLayout(nodes, self.config.ring, dict(self.config.spread))


def cluster_view(config: ClusterConfig) -> ClusterView:
    """The view of ``config``'s data dir.  A config that says nothing of its own (no
    file, no flag, no environment: every setting a default) stands for the cluster
    that runs there, as it was started (``up -n 2 --base-port ...`` with no file):
    its nodes, ports and ring, not the defaults'."""
    paths = Paths(config.data_dir)
    state = control.running_state(paths)
    orphaned = state is None and not supervisor_alive(paths) and \
        bool((read_json(paths.state) or {}).get("nodes"))
    running = control.running_config(paths) if state is not None or orphaned else None
    if running is not None and says_nothing(config):
        config = running
    view = ClusterView(config, state, running if state is not None else None, orphaned)
    if state is not None:
        view.pending = differences(config, running, state)
    return view


def says_nothing(config: ClusterConfig) -> bool:
    """No file, and every setting but where the data dir is from the defaults."""
    return config.path is None and config.tls is None and all(
        source == "default" for key, source in config.sources.items() if key != "data_dir")


def differences(config: ClusterConfig, running: ClusterConfig | None, state: dict) -> list[str]:
    """Sentences for each way the config differs from the running cluster."""
    out = []
    wanted = {n.name: n for n in config.nodes}
    started = {n.name: n for n in running.nodes} if running else {}
    for name, entry in state["nodes"].items():
        spec = wanted.get(name)
        if spec is None:
            out.append(f"{name} runs but is not in the config: `bscluster remove {name}` "
                       f"moves its jobs away and stops it")
            continue
        old = started.get(name)
        if old is not None:
            changed = changed_settings(old, spec)
        elif (entry["host"], entry["port"]) != (spec.host, spec.port):
            changed = [f"address {entry['host']}:{entry['port']} -> {spec.address}"]
        else:
            changed = []
        if changed:
            out.append(f"{name}: the config changes {', '.join(changed)}; running nodes keep "
                       f"what they were started with (see `bscluster up --help`)")
    for name in wanted:
        if name not in state["nodes"]:
            out.append(f"{name} is in the config but not running: `bscluster up -d` adds it")
    if running is not None and running.node_command != config.node_command:
        out.append("node_command differs from the running cluster's; it applies to nodes "
                   "started from now on")
    if running is not None:
        out += _service_differences(config, running)
    return out


def _service_differences(config: ClusterConfig, running: ClusterConfig) -> list[str]:
    """The proxy and dashboard settings the config sets (a default is no wish: `up`
    keeps the running value for it) that differ from what the supervisor runs."""
    def wished(key: str) -> bool:
        return config.sources.get(key, "default") != "default" and \
            getattr(config, key) != getattr(running, key)
    out = []
    if wished("proxy") and not running.proxy:
        out.append(f"the config runs a proxy on {config.proxy}, the cluster none: "
                   f"`bscluster up -d` starts it")
    elif wished("proxy") and not config.proxy:
        out.append(f"the config turns the proxy on {running.proxy} off: "
                   f"`bscluster up -d` stops it")
    else:
        changed = [f"{key} {getattr(running, key)} -> {getattr(config, key)}"
                   for key in PROXY_SETTINGS if wished(key)]
        if changed and running.proxy:
            out.append(f"the proxy: the config changes {', '.join(changed)}; "
                       f"`bscluster up -d` restarts it with them")
    if wished("web"):
        out.append(f"the dashboard: the config says {config.web or 'off'}, the supervisor "
                   f"serves {running.web or 'none'}; it applies after `bscluster down` and "
                   f"`up` (or run `bscluster web`)")
    return out


def changed_settings(old: NodeSpec, new: NodeSpec) -> list[str]:
    """``["fsync_ms 50 -> 0", ...]`` for the started-with settings that differ."""
    return [f"{key} {getattr(old, key)} -> {getattr(new, key)}" for key in STARTED_WITH
            if getattr(old, key) != getattr(new, key)]
