"""The cluster's configuration: one TOML file, read by bscluster and clients.

How this works
--------------
``load_config(path, flags, env)`` reads the file once and returns a frozen
``ClusterConfig`` holding one ``NodeSpec`` per node.  Every setting is taken
from the first place that has it: a command-line flag, then the environment
(``BSCLUSTER_<KEY>``), then the file, then the default below.  Nothing else
in bscluster reads the file or the environment.

The file's shape (clients read the same file, so it stays this shape)::

    [cluster]
    nodes = 4              # nodes are named node1..node4
    host = "127.0.0.1"     # -l for every node
    base_port = 11300      # nodeI listens on base_port + I - 1
    data_dir = "./bscluster-data"   # relative to the file's directory
    binlog = true          # -b DATA_DIR/nodeI
    fsync_ms = 50          # -f MS; -1 means never fsync (-F)
    max_job_size = 65535   # -z
    binlog_size = 10485760 # -s
    crash_limit = 5        # the 5th crash within crash_window seconds: FATAL
    crash_window = 60      #   (crash_limit = 0: restart for ever)
    web = "127.0.0.1:11380"        # `up` serves the dashboard here ("" = off)
    proxy = "127.0.0.1:11400"      # `up` runs `bscluster proxy` here ("" = off)
    proxy_tls = false      # the proxy serves TLS with [tls] node_cert (docs/PROXY.md, "TLS")
    proxy_busy_poll = 50   # us the proxy polls after traffic before sleeping (0 = off)
    web_max_tubes = 1000           # tubes the dashboard lists and keeps history for
    metrics_base_port = 9311       # nodeI gets --metrics metrics_host:9311+I-1 (0 = off)
    metrics_host = "127.0.0.1"
    ring = "md5"           # the tube -> node hash: "md5" (uhashring) or "ketama"
    max_jobs = 0           # --max-jobs: a put beyond answers OUT_OF_MEMORY (0 = no cap)
    max_job_bytes = 0      # --max-job-bytes: cap on the sum of job bodies (0 = no cap)

    [tls]                  # optional: TLS between clients and nodes (bsclient/tls.py)
    ca = "tls/ca.pem"      #   keys: ca, cert, key, verify, node_cert, node_key, client_auth

    [nodes.node2]          # optional per-node overrides
    host = "10.0.0.2"
    port = 11300
    weight = 2             # share of tubes in the client's ring
    data_dir = "/srv/bs2"  # this node's own binlog directory
    metrics_port = 9400    # this node's --metrics port
    leaving = true         # being removed: no tubes on the ring, still served
    removed = true         # gone (`bscluster remove`); its name is never reused

Unknown keys are errors that name the key and suggest the nearest valid
one; every value is checked here so a bad one is reported with where it
came from, before any process starts.
"""

from __future__ import annotations

import difflib
import os
import shlex
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bsnode
from bsclient import Ring, address
from bsclient.config import NODE_NAME, ClusterLayout, NodeAddress, read_toml, tube_settings
from bsclient.config import ConfigError as ClientConfigError
from bsclient.protocol import DEFAULT_MAX_JOB_SIZE, DEFAULT_PORT, MAX_JOB_SIZE_LIMIT
from bsclient.ring import RING_MD5, RING_MODES
from bsclient.tls import TlsConfigError, TlsSettings, settings_from
from bscluster.states import CRASH_LIMIT, CRASH_WINDOW, MAX_CRASH_LIMIT, CrashPolicy
from bsnode import defaults as node_defaults

# --- defaults and names (the one place they live) -------------------------
DEFAULT_CONFIG_PATH = "bscluster.toml"
DEFAULT_HOST = address.DEFAULT_HOST
DEFAULT_DATA_DIR = "bscluster-data"
DEFAULT_NODES = 4  # the cluster the README starts
# the node's own defaults (bsnode -f, -s): one owner, node/defaults.py
DEFAULT_FSYNC_MS = node_defaults.DEFAULT_FSYNC_MS
DEFAULT_BINLOG_SIZE = node_defaults.DEFAULT_BINLOG_SIZE
# this installation's bsnode (python -m bsnode), found without PATH
DEFAULT_NODE_COMMAND = tuple(bsnode.command_line())
NODE_COMMAND_HELP = "this installation's bsnode, run by bscluster's own Python"
DEFAULT_WEIGHT = 1
DEFAULT_WEB_LISTEN = "127.0.0.1:11380"  # the dashboard: `bscluster web`, `up --web`
DEFAULT_PROXY_LISTEN = "127.0.0.1:11400"  # `bscluster proxy`, `up --proxy`
DEFAULT_PROXY_BUSY_POLL = 50  # microseconds (proxy_poll.py; docs/PROXY.md, "Busy poll")
PROXY_SETTINGS = ("proxy", "proxy_tls", "proxy_busy_poll")  # the proxy is started with these
MAX_PROXY_BUSY_POLL = 10000
DEFAULT_WEB_MAX_TUBES = 1000  # tubes the dashboard lists and keeps a history for
MAX_WEB_MAX_TUBES = 1_000_000
WEB_OFF = ("", "off")  # values of `web` that mean: no dashboard
METRICS_OFF = 0  # metrics_base_port that means: nodes get no --metrics
NODE_METRICS_FLAG = "--metrics"  # bsnode's extension flag (beanstalkd has none)
MAX_CRASH_WINDOW = 86400
ENV_PREFIX = "BSCLUSTER_"
ENV_CONFIG = "BSCLUSTER_CONFIG"
NEVER_FSYNC = -1
MAX_NODES = 1000

CLUSTER_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "nodes": DEFAULT_NODES,
    "host": DEFAULT_HOST,
    "base_port": DEFAULT_PORT,
    "data_dir": DEFAULT_DATA_DIR,
    "binlog": True,
    "fsync_ms": DEFAULT_FSYNC_MS,
    "max_job_size": DEFAULT_MAX_JOB_SIZE,
    "binlog_size": DEFAULT_BINLOG_SIZE,
    "node_command": DEFAULT_NODE_COMMAND,
    "crash_limit": CRASH_LIMIT,
    "crash_window": CRASH_WINDOW,
    "web": "",
    "proxy": "",
    "proxy_tls": False,  # the proxy's listener serves [tls] node_cert/node_key (proxy_tls.py)
    "proxy_busy_poll": DEFAULT_PROXY_BUSY_POLL,
    "web_max_tubes": DEFAULT_WEB_MAX_TUBES,
    "metrics_base_port": METRICS_OFF,
    "metrics_host": DEFAULT_HOST,
    "ring": RING_MD5,
    "max_jobs": 0,  # bsnode --max-jobs (node/caps.py); 0: no cap
    "max_job_bytes": 0,  # bsnode --max-job-bytes
})
# keys a [nodes.nodeI] table may hold: the node's own address and weight,
# plus any node option (these default to the [cluster] value)
NODE_OPTION_KEYS = ("binlog", "fsync_ms", "max_job_size", "binlog_size", "data_dir",
                    "max_jobs", "max_job_bytes")
# leaving: still run and reserved from, but owns no tubes (`bscluster remove`);
# removed: not part of the cluster any more (its number is not reused)
NODE_KEYS = ("host", "port", "weight", "metrics_port", "leaving", "removed") + NODE_OPTION_KEYS
TOP_LEVEL_KEYS = ("cluster", "nodes", "tubes", "tls")  # [tubes.NAME] is the clients' (spread)


class ConfigError(ClientConfigError):
    """A setting is missing, misspelt or out of range; the message says which.

    A bsclient.config.ConfigError too: the clients' reader and this one read the
    same file, and a caller catching the clients' error catches both."""


@dataclass(frozen=True)
class NodeSpec:
    """Everything needed to start, find and route to one node."""

    name: str
    host: str
    port: int
    weight: int
    data_dir: Path  # this node's binlog directory
    binlog: bool
    fsync_ms: int
    max_job_size: int
    binlog_size: int
    metrics_host: str = DEFAULT_HOST
    metrics_port: int | None = None  # bsnode --metrics; None: off
    max_jobs: int = 0
    max_job_bytes: int = 0
    tls_args: tuple[str, ...] = ()  # bsnode's TLS flags, from [tls] (TlsSettings.node_args)
    # owns no tubes on the ring; still served until removed.  Not a setting of
    # the process: changing it needs no restart
    leaving: bool = field(default=False, compare=False)

    @property
    def index(self) -> int:
        return int(self.name[4:])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_address(self) -> str | None:
        if self.metrics_port is None:
            return None
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"{host}:{self.metrics_port}"

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this node (bsnode --metrics), if it serves metrics."""
        if self.metrics_port is None:
            return None
        host = address.connect_host(self.metrics_host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.metrics_port}/metrics"

    def argv(self, command: tuple[str, ...]) -> list[str]:
        """The node command line; the flags are beanstalkd's."""
        args = [*command, "-l", self.host, "-p", str(self.port), "-z", str(self.max_job_size)]
        if self.binlog:
            args += ["-b", str(self.data_dir), "-s", str(self.binlog_size)]
            args += ["-F"] if self.fsync_ms == NEVER_FSYNC else ["-f", str(self.fsync_ms)]
        if self.metrics_address is not None:
            args += [NODE_METRICS_FLAG, self.metrics_address]
        args += [*self.tls_args, *caps_args(self.max_jobs, self.max_job_bytes)]
        return args

    def to_dict(self) -> dict:
        return {
            "name": self.name, "host": self.host, "port": self.port, "weight": self.weight,
            "data_dir": str(self.data_dir), "binlog": self.binlog, "fsync_ms": self.fsync_ms,
            "max_job_size": self.max_job_size, "binlog_size": self.binlog_size,
            "metrics_host": self.metrics_host, "metrics_port": self.metrics_port,
            "max_jobs": self.max_jobs, "max_job_bytes": self.max_job_bytes,
            "tls_args": list(self.tls_args),
            "leaving": self.leaving,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> NodeSpec:
        return cls(**{**d, "data_dir": Path(d["data_dir"]),
                      "tls_args": tuple(d.get("tls_args", ()))})


@dataclass(frozen=True)
class ClusterConfig:
    """The resolved configuration; ``sources`` says where each setting came from."""

    nodes: tuple[NodeSpec, ...]
    host: str
    base_port: int
    data_dir: Path
    binlog: bool
    fsync_ms: int
    max_job_size: int
    binlog_size: int
    node_command: tuple[str, ...]
    crash_limit: int = CRASH_LIMIT
    crash_window: int = CRASH_WINDOW
    web: str = ""  # ADDR:PORT where `up` serves the dashboard; "" = off
    proxy: str = ""  # ADDR:PORT where `up` runs `bscluster proxy`; "" = off
    proxy_tls: bool = False  # the proxy serves TLS as the nodes do ([tls] node_cert, client_auth)
    proxy_busy_poll: int = DEFAULT_PROXY_BUSY_POLL  # us of polling after traffic (proxy_poll)
    web_max_tubes: int = DEFAULT_WEB_MAX_TUBES
    metrics_base_port: int = METRICS_OFF
    metrics_host: str = DEFAULT_HOST
    ring: str = RING_MD5  # which hash places tubes on nodes (RING_MODES)
    # hot tubes ([tubes.NAME] spread = k): tube -> how many ring nodes share it
    spread: Mapping[str, int] = field(default_factory=dict, hash=False)
    path: Path | None = None  # the config file read, if any
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    tls: TlsSettings | None = None  # the [tls] table (+ BSCLUSTER_TLS_*); None: plain TCP
    max_jobs: int = 0
    max_job_bytes: int = 0

    def ssl_context(self) -> ssl.SSLContext | None:
        """What bscluster's own connections to the nodes use (None: plain TCP)."""
        if self.tls is None:
            return None
        try:
            return self.tls.client_context()
        except TlsConfigError as e:
            raise ConfigError(str(e)) from None

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        names = [n.name for n in self.nodes]
        raise ConfigError(f"no node named {name!r}; this cluster has {', '.join(names)}"
                          + _suggest(name, names))

    @property
    def crash_policy(self) -> CrashPolicy:
        return CrashPolicy(self.crash_limit, self.crash_window)

    @property
    def addresses(self) -> dict[str, str]:
        """``{"node1": "host:port", ...}``: what ``ClusterClient`` takes."""
        return {n.name: n.address for n in self.nodes}

    @property
    def proxy_settings(self) -> tuple:
        """What the proxy of `up --proxy` is started with (a change restarts it)."""
        return tuple(getattr(self, key) for key in PROXY_SETTINGS)

    def layout(self) -> ClusterLayout:
        """This config as a client reads it (``ClusterClient.from_layout``)."""
        return ClusterLayout(
            tuple(NodeAddress(n.name, n.address, n.weight, n.leaving) for n in self.nodes),
            self.ring, dict(self.spread))

    def placement(self) -> Ring:
        """The ring every client of this config uses for puts, from bsclient's one
        rule (``bsclient.ring.placement``: leaving nodes own no tube)."""
        try:
            return self.layout().placement()
        except ClientConfigError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict:
        return {
            "nodes": [n.to_dict() for n in self.nodes], "host": self.host,
            "base_port": self.base_port, "data_dir": str(self.data_dir), "binlog": self.binlog,
            "fsync_ms": self.fsync_ms, "max_job_size": self.max_job_size,
            "binlog_size": self.binlog_size, "node_command": list(self.node_command),
            "crash_limit": self.crash_limit, "crash_window": self.crash_window,
            "web": self.web, "web_max_tubes": self.web_max_tubes, "proxy": self.proxy,
            "proxy_tls": self.proxy_tls, "proxy_busy_poll": self.proxy_busy_poll,
            "metrics_base_port": self.metrics_base_port,
            "metrics_host": self.metrics_host, "ring": self.ring, "spread": dict(self.spread),
            "path": str(self.path) if self.path else None,
            "tls": self.tls.to_dict() if self.tls else None,
            "max_jobs": self.max_jobs, "max_job_bytes": self.max_job_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ClusterConfig:
        return cls(
            nodes=tuple(NodeSpec.from_dict(n) for n in d["nodes"]), host=d["host"],
            base_port=d["base_port"], data_dir=Path(d["data_dir"]), binlog=d["binlog"],
            fsync_ms=d["fsync_ms"], max_job_size=d["max_job_size"],
            binlog_size=d["binlog_size"], node_command=tuple(d["node_command"]),
            # settings newer than a wanted.json written by an older bscluster
            crash_limit=d.get("crash_limit", CRASH_LIMIT),
            crash_window=d.get("crash_window", CRASH_WINDOW),
            web=d.get("web", ""), web_max_tubes=d.get("web_max_tubes", DEFAULT_WEB_MAX_TUBES),
            proxy=d.get("proxy", ""), proxy_tls=d.get("proxy_tls", False),
            proxy_busy_poll=d.get("proxy_busy_poll", DEFAULT_PROXY_BUSY_POLL),
            metrics_base_port=d.get("metrics_base_port", METRICS_OFF),
            metrics_host=d.get("metrics_host", DEFAULT_HOST), ring=d.get("ring", RING_MD5),
            spread=d.get("spread", {}), path=Path(d["path"]) if d.get("path") else None,
            tls=TlsSettings(**d["tls"]) if d.get("tls") else None,
            max_jobs=d.get("max_jobs", 0), max_job_bytes=d.get("max_job_bytes", 0),
        )


# --- loading ---------------------------------------------------------------
def config_path(flag: str | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """Which file to read, and whether the user named it (then it must exist)."""
    if flag:
        return Path(flag), True
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]), True
    return Path(DEFAULT_CONFIG_PATH), False


def read_file(path: Path, required: bool) -> dict:
    """The parsed TOML document, or {} when an unnamed default file is absent."""
    try:
        doc = read_toml(path, required)
    except ClientConfigError as e:
        raise ConfigError(str(e)) from None
    if not doc:
        return {}
    _check_shape(doc, path)
    return doc


def load_config(path: str | os.PathLike | None = None, flags: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Resolve the configuration: flag, then environment, then file, then default.

    ``flags`` maps cluster keys to command-line values (None means "not given").
    ``env`` defaults to ``os.environ``.  ``path`` None means ``BSCLUSTER_CONFIG``
    or ./bscluster.toml if it exists.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in flags:
        if key not in CLUSTER_DEFAULTS:
            raise ConfigError(f"unknown setting {key!r}" + _suggest(key, CLUSTER_DEFAULTS))
    file_path, required = config_path(str(path) if path else None, env)
    doc = read_file(file_path, required)
    file_cluster = doc.get("cluster", {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in CLUSTER_DEFAULTS.items():
        env_name = ENV_PREFIX + key.upper()
        if key in flags:
            values[key], sources[key] = flags[key], "flag --" + key.replace("_", "-")
        elif env.get(env_name, "") != "":
            values[key] = _from_env(key, env[env_name], env_name)
            sources[key] = "env " + env_name
        elif key in file_cluster:
            values[key], sources[key] = file_cluster[key], f"file {file_path}"
        else:
            values[key], sources[key] = default, "default"
        _check_value(key, values[key], sources[key])
    # paths from the file (and the default, when there is a file) are relative
    # to the file's directory; paths given as a flag or in the environment, to
    # the current directory
    file_dir = file_path.resolve().parent if doc else Path.cwd()
    from_user = sources["data_dir"].startswith(("flag", "env"))
    values["data_dir"] = _abs(values["data_dir"], Path.cwd() if from_user else file_dir)
    try:
        tls = settings_from(doc.get("tls"), env, file_dir, f"{file_path} [tls]")
    except TlsConfigError as e:
        raise ConfigError(str(e)) from None
    return _build(values, doc.get("nodes", {}), sources, file_dir,
                  file_path.resolve() if doc else None, tube_settings(doc, str(file_path)), tls)


def _build(values: dict, node_tables: Mapping, sources: dict, base: Path,
           path: Path | None, spread: Mapping[str, int],
           tls: TlsSettings | None = None) -> ClusterConfig:
    count = values["nodes"]
    for name in node_tables:
        if NODE_NAME.match(name) and int(name[4:]) > count:
            raise ConfigError(f"[nodes.{name}] is configured but the cluster has {count} nodes "
                              f"(nodes = {count}, from {sources['nodes']}); raise nodes or "
                              f"remove the table")
    data_dir = values["data_dir"]
    command = values["node_command"]
    command = tuple(shlex.split(command)) if isinstance(command, str) else tuple(command)
    if not command:
        raise ConfigError("node_command is empty; it names the program that runs a node "
                          f"(default: {NODE_COMMAND_HELP})")
    if "/" in command[0] and not os.path.isabs(command[0]):
        # a relative program path means the same wherever the supervisor runs
        origin = base if sources["node_command"].startswith("file") else Path.cwd()
        command = (str(_abs(command[0], origin)), *command[1:])
    specs = []
    for i in range(1, count + 1):
        name = f"node{i}"
        over = node_tables.get(name, {})
        where = f"[nodes.{name}] in {path}"
        for key, value in over.items():
            _check_value(key, value, where)
        if over.get("removed", False):
            continue
        port = over.get("port", values["base_port"] + i - 1)
        if port > 65535:
            raise ConfigError(f"{name} would listen on port {port}: base_port "
                              f"{values['base_port']} + {count} nodes runs past 65535; "
                              f"lower base_port")
        metrics_port = over.get("metrics_port")
        if metrics_port is None and values["metrics_base_port"] != METRICS_OFF:
            metrics_port = values["metrics_base_port"] + i - 1
            if metrics_port > 65535:
                raise ConfigError(f"{name} would serve metrics on port {metrics_port}: "
                                  f"metrics_base_port {values['metrics_base_port']} + {count} "
                                  f"nodes runs past 65535; lower metrics_base_port")
        specs.append(NodeSpec(
            name=name, host=over.get("host", values["host"]), port=port,
            weight=over.get("weight", DEFAULT_WEIGHT),
            metrics_host=values["metrics_host"], metrics_port=metrics_port,
            tls_args=tuple(tls.node_args()) if tls else (),
            leaving=over.get("leaving", False),
            data_dir=_abs(over["data_dir"], base) if "data_dir" in over else data_dir / name,
            **{k: over.get(k, values[k]) for k in NODE_OPTION_KEYS if k != "data_dir"},
        ))
    if not specs:
        raise ConfigError(f"every node of {path} is marked removed = true; a cluster needs "
                          f"at least one node")
    web = "" if values["web"].strip().lower() in WEB_OFF else values["web"].strip()
    proxy = "" if values["proxy"].strip().lower() in WEB_OFF else values["proxy"].strip()
    _check_unique(specs, web, proxy)
    if values["proxy_tls"] and not (tls and tls.node_cert):
        raise ConfigError(f"proxy_tls = true (from {sources['proxy_tls']}) needs a [tls] table "
                          f"with node_cert and node_key: the proxy serves the nodes' "
                          f"certificate (docs/PROXY.md, \"TLS\")")
    return ClusterConfig(
        nodes=tuple(specs), data_dir=data_dir, node_command=command, path=path,
        sources=MappingProxyType(sources), web=web, proxy=proxy, spread=spread,
        tls=tls,
        **{k: values[k] for k in ("host", "base_port", "binlog", "fsync_ms", "max_job_size",
                                  "binlog_size", "crash_limit", "crash_window",
                                  "web_max_tubes", "metrics_base_port", "metrics_host",
                                  "ring", "max_jobs", "max_job_bytes", "proxy_tls",
                                  "proxy_busy_poll")},
    )


def _abs(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _check_unique(specs: list[NodeSpec], web: str, proxy: str = "") -> None:
    """No two listeners (nodes, their metrics endpoints, the dashboard) on one port."""
    seen: dict[tuple[str, int], str] = {}
    listeners = [(spec.name, spec.host, spec.port) for spec in specs]
    listeners += [(f"{spec.name}'s metrics", spec.metrics_host, spec.metrics_port)
                  for spec in specs if spec.metrics_port is not None]
    if web:
        listeners.append(("the dashboard (web)", *parse_listen(web)))
    if proxy:
        listeners.append(("the proxy (proxy)", *parse_listen(proxy)))
    for who, host, port in listeners:
        if port == 0:
            continue  # a free port, picked when it binds
        key = (address.connect_host(host), port)
        if key in seen:
            raise ConfigError(f"{seen[key]} and {who} would both listen on "
                              f"{host}:{port}; give one a different port")
        seen[key] = who
    dirs: dict[Path, str] = {}
    for spec in specs:
        if spec.binlog and spec.data_dir in dirs:
            raise ConfigError(f"{dirs[spec.data_dir]} and {spec.name} share the binlog "
                              f"directory {spec.data_dir}; each node needs its own")
        dirs[spec.data_dir] = spec.name


# --- checking ----------------------------------------------------------------
def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_shape(doc: Mapping, path: Path) -> None:
    for key, value in doc.items():
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{path}: unknown table [{key}]" + _suggest(key, TOP_LEVEL_KEYS)
                              + "; valid tables are [cluster], [nodes.nodeN], [tubes.NAME] and [tls]")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table ([{key}]), not a value")
    try:
        tube_settings(doc, str(path))  # the clients read [tubes.*]; checked here too
    except ClientConfigError as e:
        raise ConfigError(str(e)) from None
    for key in doc.get("cluster", {}):
        if key not in CLUSTER_DEFAULTS:
            hint = " (port, weight and host for one node go in [nodes.nodeN])" \
                if key in ("port", "weight") else _suggest(key, CLUSTER_DEFAULTS)
            raise ConfigError(f"{path}: unknown key {key!r} in [cluster]{hint}")
    for name, table in doc.get("nodes", {}).items():
        if not NODE_NAME.match(name):
            raise ConfigError(f"{path}: [nodes.{name}]: nodes are named node1, node2, ..."
                              + _suggest(name, [f"node{i}" for i in range(1, 10)]))
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: nodes.{name} must be a table ([nodes.{name}])")
        for key in table:
            if key not in NODE_KEYS:
                hint = " (nodes, base_port and node_command are [cluster] settings)" \
                    if key in CLUSTER_DEFAULTS else _suggest(key, NODE_KEYS)
                raise ConfigError(f"{path}: unknown key {key!r} in [nodes.{name}]{hint}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_env(key: str, raw: str, env_name: str) -> Any:
    kind = type(CLUSTER_DEFAULTS[key])
    if kind is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ConfigError(f"{env_name}={raw!r}: expected true or false (or 1/0, yes/no, on/off)")
    if kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            hint = (" (the name=host:port list form of BSCLUSTER_NODES is for clients; "
                    "bscluster needs a node count)") if "=" in raw else ""
            raise ConfigError(f"{env_name}={raw!r}: expected a whole number{hint}") from None
    return raw


# (key) -> (type name, check, what a good value looks like)
def _port_ok(v: int) -> bool:
    return 1 <= v <= 65535


def parse_listen(text: str) -> tuple[str, int]:
    """bsclient.address.parse_listen, with the dashboard's default as the example."""
    return address.parse_listen(text, DEFAULT_WEB_LISTEN)


def _listen_ok(v: str) -> bool:
    if v.strip().lower() in WEB_OFF:
        return True
    try:
        parse_listen(v)
    except ValueError:
        return False
    return True


_RULES = {
    "nodes": (int, lambda v: 1 <= v <= MAX_NODES, f"between 1 and {MAX_NODES}"),
    "host": (str, lambda v: v.strip() != "" and not v.startswith("unix:"),
             "an IP address or host name to listen on (e.g. 127.0.0.1)"),
    "base_port": (int, _port_ok, "a TCP port between 1 and 65535"),
    "port": (int, _port_ok, "a TCP port between 1 and 65535"),
    "weight": (int, lambda v: v >= 1, "a whole number >= 1"),
    "data_dir": (str, lambda v: v.strip() != "", "a directory path"),
    "binlog": (bool, lambda v: True, "true or false"),
    "fsync_ms": (int, lambda v: v >= NEVER_FSYNC,
                 "a number of milliseconds >= 0, or -1 to never fsync"),
    "max_job_size": (int, lambda v: 1 <= v <= MAX_JOB_SIZE_LIMIT,
                     f"between 1 and {MAX_JOB_SIZE_LIMIT} bytes"),
    "binlog_size": (int, lambda v: v >= 1, "a number of bytes >= 1"),
    "node_command": ((str, list, tuple), lambda v: True, "a command line such as \"bsnode\""),
    "crash_limit": (int, lambda v: 0 <= v <= MAX_CRASH_LIMIT,
                    f"a number of crashes from 1 to {MAX_CRASH_LIMIT}, or 0 to restart for ever"),
    "crash_window": (int, lambda v: 1 <= v <= MAX_CRASH_WINDOW,
                     f"a number of seconds from 1 to {MAX_CRASH_WINDOW}"),
    "web": (str, _listen_ok,
            f"ADDR:PORT for the dashboard (e.g. {DEFAULT_WEB_LISTEN}), or \"\" for none"),
    "proxy": (str, _listen_ok,
              "ADDR:PORT for `bscluster proxy` (e.g. 127.0.0.1:11400), or \"\" for none"),
    "proxy_tls": (bool, lambda v: True, "true or false"),
    "proxy_busy_poll": (int, lambda v: 0 <= v <= MAX_PROXY_BUSY_POLL,
                        f"microseconds from 0 (off) to {MAX_PROXY_BUSY_POLL}"),
    "web_max_tubes": (int, lambda v: 1 <= v <= MAX_WEB_MAX_TUBES,
                      f"a number of tubes from 1 to {MAX_WEB_MAX_TUBES}"),
    "metrics_base_port": (int, lambda v: v == METRICS_OFF or _port_ok(v),
                          "a TCP port between 1 and 65535, or 0 for no node metrics"),
    "metrics_host": (str, lambda v: v.strip() != "" and not v.startswith("unix:"),
                     "an IP address to serve node metrics on (e.g. 127.0.0.1)"),
    "metrics_port": (int, _port_ok, "a TCP port between 1 and 65535"),
    "ring": (str, lambda v: v in RING_MODES,
             " or ".join(f'"{m}"' for m in RING_MODES) + " (the hash that places tubes)"),
    "leaving": (bool, lambda v: True, "true or false"),
    "removed": (bool, lambda v: True, "true or false"),
    "max_jobs": (int, lambda v: v >= 0, "a number of jobs >= 1, or 0 for no cap"),
    "max_job_bytes": (int, lambda v: v >= 0, "a number of bytes >= 1, or 0 for no cap"),
}


def caps_args(max_jobs: int, max_job_bytes: int) -> list[str]:
    """bsnode's cap flags (node/caps.py); none when no cap is set."""
    return ((["--max-jobs", str(max_jobs)] if max_jobs else [])
            + (["--max-job-bytes", str(max_job_bytes)] if max_job_bytes else []))


def _check_value(key: str, value: Any, where: str) -> None:
    kind, ok, want = _RULES[key]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    type_ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not type_ok or not ok(value):
        quoted = kind is int and isinstance(value, str)  # (TOML: nodes = "4")
        hint = " (a whole number, without quotes)" if quoted else ""
        raise ConfigError(f"{key} = {value!r} (from {where}) is not valid: expected {want}{hint}")
