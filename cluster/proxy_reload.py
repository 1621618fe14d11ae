"""A running proxy follows changes to the cluster's node set (SIGHUP), without a restart.

How this works
--------------
The proxy reads its configuration with ``reader`` (the config file, or the
supervisor's wanted.json under `bscluster up --proxy`) at start and again on
every SIGHUP.  ``Reloader.reload`` then:

1. reads the configuration again; one that cannot be read or fails to
   validate (every node leaving, a node name the proxy's ids cannot carry)
   is refused with one log line, and the old routing stays;
2. compares it with the one in force (``Change.between``): nodes added,
   removed (``removed = true``, or ``nodes`` lowered), now leaving or no
   longer leaving, moved to another address, re-weighted; the ring mode;
   the ``[tubes.NAME] spread`` tubes;
3. hands the new ``ClusterLayout`` to the shared ClusterClient in one call
   (``ClusterClient.apply_layout``): placement stays bsclient's one rule
   (``ring.placement``), leaving nodes stay members that reserve still
   visits, removed ones are forgotten, a moved node's connections close and
   reopen at its new address; connections to every other node, and the
   jobs reserved on them, are kept;
4. updates the proxy's id numbering (``numbers``: node name -> the I of
   ``nodeI`` in proxy ids, ``proxy_ids``) in place to the new members, so
   ids of a new node's jobs decode and a removed node's answer NOT_FOUND;
5. reads the [tls] files again (paths changed or not: a certificate rotated
   in place is new content under the same name) into a new client context
   that every node connection opened from then on uses
   (``ClusterClient.use_ssl_context``); open connections keep theirs.
   Files that cannot be loaded refuse the whole reload, as in 1;
6. logs one line saying what changed ("reload: +node4, node2 leaving").

Settings the proxy reads only at start (proxy_tls and the [tls] files its
own listener serves under it, the job size limit, proxy_busy_poll) are named
in that line as applying after a restart.

Under gevent nothing here yields: a reload happens between two commands of
every client, never in the middle of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bsclient.config import ClusterLayout
from bscluster import proxy_ids
from bscluster.config import ClusterConfig, ConfigError, load_config
from bscluster.proxy_tls import config_values

log = logging.getLogger("bscluster.proxy")


def reader(config_file: str | None, wanted: str | None) -> Callable[[], ClusterConfig]:
    """How the proxy reads its configuration, at start and on each SIGHUP: the
    supervisor's wanted.json if given, else the config file (as ``load_config``
    finds it).  The callable raises ConfigError naming the problem."""

    def read() -> ClusterConfig:
        if wanted:
            try:
                return ClusterConfig.from_dict(json.loads(Path(wanted).read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"cannot read {wanted}: {e}") from None
        try:
            return load_config(config_file)
        except OSError as e:
            raise ConfigError(f"cannot read {config_file}: {e.strerror or e}") from None

    return read


def numbering(layout: ClusterLayout) -> dict[str, int]:
    """Node name -> its number in proxy ids (ValueError for a name ids cannot carry)."""
    return {node.name: proxy_ids.node_number(node.name) for node in layout.nodes}


def _job_size(config: ClusterConfig) -> int:
    return min(n.max_job_size for n in config.nodes)


@dataclass(frozen=True)
class Change:
    """What a new configuration changes for the proxy; empty if nothing."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    leaving: tuple[str, ...] = ()  # leaving now, not before
    staying: tuple[str, ...] = ()  # leaving before, not now
    moved: tuple[tuple[str, str], ...] = ()  # (name, new address)
    weights: tuple[tuple[str, int, int], ...] = ()  # (name, old, new)
    ring: tuple[str, str] | None = None  # (old mode, new mode)
    spread: tuple[tuple[str, int, int], ...] = ()  # (tube, old k, new k); 1 = not spread
    at_restart: tuple[str, ...] = ()  # settings read only at start that changed

    @classmethod
    def between(cls, old: ClusterConfig, new: ClusterConfig) -> Change:
        return cls.of_layouts(old.layout(), new.layout(), restart_only(old, new))

    @classmethod
    def of_layouts(cls, old: ClusterLayout, new: ClusterLayout,
                   at_restart: tuple[str, ...] = ()) -> Change:
        before = {n.name: n for n in old.nodes}
        after = {n.name: n for n in new.nodes}
        kept = [name for name in after if name in before]
        tubes = sorted(set(old.spread) | set(new.spread))
        return cls(
            added=tuple(name for name in after if name not in before),
            removed=tuple(name for name in before if name not in after),
            leaving=tuple(n for n in kept if after[n].leaving and not before[n].leaving),
            staying=tuple(n for n in kept if before[n].leaving and not after[n].leaving),
            moved=tuple((n, after[n].address) for n in kept
                        if after[n].address != before[n].address),
            weights=tuple((n, before[n].weight, after[n].weight) for n in kept
                          if after[n].weight != before[n].weight),
            ring=(old.ring, new.ring) if old.ring != new.ring else None,
            spread=tuple((t, old.spread.get(t, 1), new.spread.get(t, 1)) for t in tubes
                         if old.spread.get(t, 1) != new.spread.get(t, 1)),
            at_restart=at_restart,
        )

    @property
    def routing(self) -> bool:
        """The ClusterClient's nodes, ring or spread tubes change."""
        return bool(self.added or self.removed or self.leaving or self.staying or self.moved
                    or self.weights or self.ring or self.spread)

    def __bool__(self) -> bool:
        return self.routing or bool(self.at_restart)

    def __str__(self) -> str:
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        parts += [f"{n} leaving" for n in self.leaving]
        parts += [f"{n} no longer leaving" for n in self.staying]
        parts += [f"{n} moved to {address}" for n, address in self.moved]
        parts += [f"{n} weight {a}->{b}" for n, a, b in self.weights]
        if self.ring:
            parts.append(f"ring {self.ring[0]}->{self.ring[1]}")
        parts += [f"tube {t} spread {a}->{b}" for t, a, b in self.spread]
        if self.at_restart:
            parts.append(f"{' and '.join(self.at_restart)} changed: applies when the proxy "
                         f"restarts")
        return ", ".join(parts) or "no change"


def _served(config: ClusterConfig) -> dict[str, str]:
    """The TLS files the proxy's own listener takes from the config (proxy_tls)."""
    return config_values(config.tls) if config.proxy_tls and config.tls else {}


def restart_only(old: ClusterConfig, new: ClusterConfig) -> tuple[str, ...]:
    """The settings the proxy reads only at start that differ (named for the log)."""
    changed = []
    if old.proxy_tls != new.proxy_tls:
        changed.append("proxy_tls")
    elif _served(old) != _served(new):
        changed.append("the [tls] files the proxy serves (proxy_tls)")
    if _job_size(old) != _job_size(new):
        changed.append(f"max_job_size ({_job_size(old)}->{_job_size(new)})")
    if old.proxy_busy_poll != new.proxy_busy_poll:
        changed.append(f"proxy_busy_poll ({old.proxy_busy_poll}->{new.proxy_busy_poll})")
    return tuple(changed)


class Reloader:
    """Applies a re-read configuration to a running proxy's ClusterClient and ids.

    ``cc`` is the proxy's shared ClusterClient, ``numbers`` its id numbering
    (changed in place: other parts of the proxy hold the same dict),
    ``config`` the configuration in force, ``read`` how to read it again.
    """

    def __init__(self, cc, numbers: dict[str, int], config: ClusterConfig,
                 read: Callable[[], ClusterConfig]) -> None:
        self.cc = cc
        self.numbers = numbers
        self.config = config
        self.read = read

    def reload(self) -> Change | None:
        """Read the configuration again and apply it; the change, or None if refused."""
        try:
            new = self.read()
            change = Change.between(self.config, new)
            layout = new.layout()
            numbers = numbering(layout)
            context = new.ssl_context()  # the [tls] files read again (None: plain TCP)
            if change.routing:
                self.cc.apply_layout(layout)  # validates first; changes nothing if it raises
        except ValueError as e:  # ConfigError is one
            log.error("reload refused, routing and TLS unchanged: %s", e)
            return None
        self._renumber(numbers)
        self.cc.use_ssl_context(context)
        self.config = new
        log.info("reload: %s%s", change, "; TLS to the nodes: [tls] files read again for "
                 "new connections" if context is not None else "")
        return change

    def _renumber(self, numbers: dict[str, int]) -> None:
        self.numbers.update(numbers)
        for name in [n for n in self.numbers if n not in numbers]:
            del self.numbers[name]
