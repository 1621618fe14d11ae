"""Where the cluster's nodes are: from a dict, the bscluster TOML file, or the environment.

How this works
--------------
Each source is read once into a frozen ``ClusterLayout``: a tuple of
``NodeAddress`` (stable name, address, ring weight, leaving), the ring mode
and the spread tubes; nothing else in bsclient reads files or the
environment.  ``ClusterLayout.placement()`` is the put ring (``ring.placement``:
leaving nodes own no tube); bscluster's own config builds the same layout
(``ClusterConfig.layout()``), so both decide placement with one rule.  Only what a client needs is read; other keys bscluster keeps
in the same file (data_dir, fsync_ms, ...) are ignored here, and validated
by bscluster itself.

The file (shared with ``bscluster``)::

    [cluster]
    nodes = 4             # nodes are node1..node4 (required)
    host = "127.0.0.1"    # default 127.0.0.1
    base_port = 11300     # nodeI listens on base_port + I - 1 (default 11300)
    ring = "md5"          # or "ketama": the tube -> node hash (default md5)

    [nodes.node2]         # optional overrides, each key optional
    host = "10.0.0.2"
    port = 11400
    weight = 2            # default 1
    leaving = true        # owns no tubes (puts skip it); still reserved from
    removed = true        # gone: not a member at all (its name is not reused)

    [tubes.emails]        # optional: a hot tube
    spread = 2            # its jobs go to its first 2 ring nodes (default 1)

The environment (``nodes_from_env``), read the way bscluster reads it where
the two overlap:

* ``BSCLUSTER_NODES="node1=127.0.0.1:11300,node2=10.0.0.2:11300@2"`` (a
  node list; ``@W`` is an optional weight) is the whole answer: nothing
  else is read.  This form is bsclient's own; bscluster refuses it.
* ``BSCLUSTER_NODES=N`` (a node count, bscluster's meaning), or no
  ``BSCLUSTER_NODES`` but a ``BSCLUSTER_CONFIG`` file: the nodes are
  node1..nodeN, each setting (``nodes``, ``host``, ``base_port``, ``ring``) taken
  from ``BSCLUSTER_NODES``/``_HOST``/``_BASE_PORT``/``_RING`` if set, else
  from the ``BSCLUSTER_CONFIG`` file's [cluster] table, else the default;
  the file's [nodes.*] tables then apply.  So a client and ``bscluster up``
  given the same environment agree on every address.  Unlike bscluster,
  bsclient never reads ./bscluster.toml unless told to.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .address import DEFAULT_HOST, MAX_PORT, format_address, parse_address
from .protocol import DEFAULT_PORT, TUBE_NAME_RULE, is_tube_name
from .ring import RING_MD5, RING_MODES, Ring, placement
from .tls import TlsSettings, settings_from

ENV_NODES = "BSCLUSTER_NODES"
ENV_CONFIG = "BSCLUSTER_CONFIG"
ENV_HOST = "BSCLUSTER_HOST"
ENV_BASE_PORT = "BSCLUSTER_BASE_PORT"
ENV_RING = "BSCLUSTER_RING"
NODE_NAME = re.compile(r"node([1-9][0-9]*)\Z")
TUBE_KEYS = ("spread",)  # the keys a [tubes.NAME] table may have


class ConfigError(ValueError):
    """The node list is missing or malformed; the message says where."""


@dataclass(frozen=True)
class NodeAddress:
    """One node as a client sees it: its stable name, where it listens, its weight,
    and whether it is leaving (reserved from, never put to)."""

    name: str
    address: str  # "host:port" or "unix:/path"
    weight: int = 1
    leaving: bool = False


@dataclass(frozen=True)
class ClusterLayout:
    """What a client needs of a cluster's config: its nodes, ring mode and hot tubes."""

    nodes: tuple[NodeAddress, ...]
    ring: str = RING_MD5  # one of ring.RING_MODES
    spread: Mapping[str, int] = field(default_factory=dict)  # tube -> nodes sharing it

    def placement(self) -> Ring:
        """The ring puts use (``ring.placement``); ConfigError if every node is leaving."""
        try:
            return placement(self.nodes, self.ring)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _weight(name: str, value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: weight of {name} must be an integer >= 1, got {value!r}")
    return value


def _flag(name: str, key: str, value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} of {name} must be true or false, got {value!r}")
    return value


def _port(name: str, value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PORT:
        raise ConfigError(f"{where}: port of {name} must be 1..{MAX_PORT}, got {value!r}")
    return value


def nodes_from_mapping(nodes: Mapping, where: str = "nodes") -> tuple[NodeAddress, ...]:
    """``{"node1": "127.0.0.1:11300", "node2": {"address": "...", "weight": 2}, ...}``.

    A value is an address string, a ``(host, port)`` tuple, or a dict with
    ``address`` (or ``host``/``port``) and optional ``weight`` and ``leaving``.
    """
    if not nodes:
        raise ConfigError(f"{where}: no nodes")
    out = []
    for name, value in nodes.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{where}: invalid node name {name!r} (non-empty, no '/')")
        weight, leaving = 1, False
        if isinstance(value, Mapping):
            weight = _weight(name, value.get("weight", 1), where)
            leaving = _flag(name, "leaving", value.get("leaving", False), where)
            if "address" in value:
                value = value["address"]
            else:
                value = (value.get("host", DEFAULT_HOST),
                         _port(name, value.get("port", DEFAULT_PORT), where))
        try:
            address = format_address(parse_address(value))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: bad address for {name}: {value!r}: {e}") from e
        out.append(NodeAddress(name, address, weight, leaving))
    return tuple(out)


def check_spread(spread: Mapping, where: str) -> dict[str, int]:
    """``{tube: k}`` with every k a whole number >= 1 (ConfigError otherwise)."""
    out = {}
    for tube, k in spread.items():
        if not is_tube_name(tube):
            raise ConfigError(f"{where}: {tube!r} is not a valid tube name ({TUBE_NAME_RULE})")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"{where}: spread of tube {tube!r} must be a whole number "
                              f">= 1 (how many ring nodes share it), got {k!r}")
        out[tube] = k
    return out


def tube_settings(data: Mapping, where: str) -> dict[str, int]:
    """The ``[tubes.NAME]`` tables of a parsed config: ``{tube: spread}``."""
    tubes = data.get("tubes", {})
    if not isinstance(tubes, Mapping):
        raise ConfigError(f"{where}: tubes must be tables like [tubes.emails]")
    spread = {}
    for tube, table in tubes.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: tubes.{tube} must be a table ([tubes.{tube}])")
        for key in table:
            if key not in TUBE_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r} in [tubes.{tube}] "
                                  f"(known: {', '.join(TUBE_KEYS)})")
        if "spread" in table:
            spread[tube] = table["spread"]
    return check_spread(spread, where)


def read_tube_settings(path: str | os.PathLike) -> dict[str, int]:
    """The spread tubes of a bscluster TOML config file: ``{tube: k}``."""
    return tube_settings(read_toml(path), str(path))


def _int_setting(table: Mapping, key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: [cluster] {key} must be an integer, got {value!r}")
    return value


def read_toml(path: str | os.PathLike, required: bool = True) -> dict:
    """The parsed TOML document of a bscluster config file (bsclient and bscluster both
    read it here), or {} when ``required`` is False and the file does not exist."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist; create one with "
                              f"`bscluster init {path}`") from None
        return {}
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def read_layout(path: str | os.PathLike) -> ClusterLayout:
    """Nodes, ring mode and spread tubes of a bscluster TOML config file."""
    data = read_toml(path)
    cluster = data.get("cluster")
    if not isinstance(cluster, Mapping) or "nodes" not in cluster:
        raise ConfigError(f"{path}: needs a [cluster] table with nodes = N")
    return _layout(data, str(path), {})


def read_config_file(path: str | os.PathLike) -> tuple[NodeAddress, ...]:
    """The nodes of a bscluster TOML config file (removed ones left out)."""
    return read_layout(path).nodes


def _layout(data: Mapping, where: str, env: Mapping[str, int | str]) -> ClusterLayout:
    nodes = _nodes_from_settings(data, where, env)
    ring = env.get("ring", data.get("cluster", {}).get("ring", RING_MD5))
    if ring not in RING_MODES:
        raise ConfigError(f"{where}: [cluster] ring must be "
                          f"{' or '.join(map(repr, RING_MODES))}, got {ring!r}")
    return ClusterLayout(nodes, ring, tube_settings(data, where))


def _nodes_from_settings(data: Mapping, where: str, env: Mapping[str, int | str]
                         ) -> tuple[NodeAddress, ...]:
    """node1..nodeN from [cluster] nodes/host/base_port (``env`` values win) and [nodes.*]."""
    cluster = data.get("cluster", {})
    if not isinstance(cluster, Mapping):
        raise ConfigError(f"{where}: [cluster] must be a table")
    cluster = {**cluster, **env}
    if "nodes" not in cluster:
        raise ConfigError(f"{where}: needs a [cluster] table with nodes = N")
    count = _int_setting(cluster, "nodes", 0, where)
    if count < 1:
        raise ConfigError(f"{where}: [cluster] nodes must be >= 1, got {count}")
    host = cluster.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}: [cluster] host must be a non-empty string")
    base_port = _int_setting(cluster, "base_port", DEFAULT_PORT, where)
    overrides = data.get("nodes", {})
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: nodes must be tables like [nodes.node2]")
    for name in overrides:
        m = NODE_NAME.match(name)
        if m is None or int(m.group(1)) > count:
            raise ConfigError(
                f"{where}: [nodes.{name}] does not name one of node1..node{count}"
            )
    nodes = {}
    for i in range(1, count + 1):
        name = f"node{i}"
        over = overrides.get(name, {})
        if not isinstance(over, Mapping):
            raise ConfigError(f"{where}: [nodes.{name}] must be a table")
        if _flag(name, "removed", over.get("removed", False), where):
            continue
        node_host = over.get("host", host)
        if not isinstance(node_host, str) or not node_host:
            raise ConfigError(f"{where}: host of {name} must be a non-empty string")
        port = _port(name, over.get("port", base_port + i - 1), where)
        nodes[name] = {"host": node_host, "port": port,
                       "weight": _weight(name, over.get("weight", 1), where),
                       "leaving": over.get("leaving", False)}
    if not nodes:
        raise ConfigError(f"{where}: every node is marked removed = true")
    return nodes_from_mapping(nodes, where)


def _env_settings(env: Mapping[str, str], count: str | None) -> dict[str, int | str]:
    """BSCLUSTER_NODES (a count), BSCLUSTER_HOST, BSCLUSTER_BASE_PORT, BSCLUSTER_RING,
    where set."""
    out: dict[str, int | str] = {}
    if count is not None:
        out["nodes"] = int(count)
    if env.get(ENV_HOST):
        out["host"] = env[ENV_HOST].strip()
    if env.get(ENV_RING):
        out["ring"] = env[ENV_RING].strip()
    if env.get(ENV_BASE_PORT):
        try:
            out["base_port"] = int(env[ENV_BASE_PORT].strip())
        except ValueError:
            raise ConfigError(f"{ENV_BASE_PORT}={env[ENV_BASE_PORT]!r}: expected a "
                              f"whole number") from None
    return out


def _parse_env_list(text: str) -> tuple[NodeAddress, ...]:
    nodes: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, rest = item.partition("=")
        if not sep:
            raise ConfigError(f"{ENV_NODES}: {item!r} is not name=host:port")
        address, at, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
        try:
            nodes[name.strip()] = {"address": address.strip(),
                                   "weight": int(weight) if at else 1}
        except ValueError as e:
            raise ConfigError(f"{ENV_NODES}: bad weight in {item!r}") from e
    return nodes_from_mapping(nodes, ENV_NODES)


def read_tls_settings(path: str | os.PathLike | None = None,
                      env: Mapping[str, str] | None = None) -> TlsSettings | None:
    """The [tls] table of ``path`` (else of the BSCLUSTER_CONFIG file) with the
    BSCLUSTER_TLS_* variables on top; None: plain TCP (see bsclient.tls)."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG)
    data = read_toml(path) if path else {}
    base = Path(path).resolve().parent if path else None
    return settings_from(data.get("tls"), env, base, f"{path} [tls]")


def read_tls_context(path: str | os.PathLike | None = None,
                     env: Mapping[str, str] | None = None):
    """The client ``ssl.SSLContext`` of ``read_tls_settings(path, env)``; None: plain TCP.
    Raises TlsConfigError (a ValueError) when the files cannot be loaded."""
    settings = read_tls_settings(path, env)
    return None if settings is None else settings.client_context()


def nodes_from_env(env: Mapping[str, str] | None = None) -> tuple[NodeAddress, ...]:
    """The nodes the environment names; see the module comment for the two forms."""
    return layout_from_env(env).nodes


def layout_from_env(env: Mapping[str, str] | None = None) -> ClusterLayout:
    """The layout the environment names (a node list: md5 ring, no spread tubes)."""
    env = os.environ if env is None else env
    text = (env.get(ENV_NODES) or "").strip()
    path = env.get(ENV_CONFIG)
    if text and not text.isdigit():
        return ClusterLayout(_parse_env_list(text))  # the node list: the whole answer
    if not text and not path:
        raise ConfigError(
            f"set {ENV_NODES} (node1=host:port,... or a node count) or {ENV_CONFIG} (a config file)"
        )
    # bscluster's reading: each setting from the environment, else the file, else the default
    where = f"{ENV_NODES}={text}" if text else ENV_CONFIG
    if path:
        where += f" (file {path})"
    data = read_toml(Path(path)) if path else {}
    return _layout(data, where, _env_settings(env, text or None))
