"""The dashboard inside the supervisor, for `bscluster up --web`.

How this works
--------------
``WebHost`` is the same dashboard `bscluster web` serves (web.py: a
``Monitor`` polling the nodes, a poller thread, a ``BoundedServer``) run on
daemon threads of the supervisor process, so it lives and dies with
the supervisor: `down`, Ctrl-C or a crash of the supervisor leave nothing
behind, and there is no extra process to adopt or supervise.  The threads
never touch the supervisor's state: /metrics reads the snapshot the loop
last published (a dict replaced whole, never changed in place), and the
loop tells the host about new nodes with ``set_nodes``.  The port is bound
in ``start``, before any node starts, so a taken port is an error at once.
The server's share of the supervisor is bounded (webserver.py: at most
``MAX_CONNECTIONS`` descriptors and ``WORKERS`` threads), so clients of the
dashboard cannot starve the loop that keeps the nodes running; trouble it
survives is said through ``log`` (the supervisor's log).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from bsclient.address import connect_host
from bsclient.config import NodeAddress
from bscluster.config import DEFAULT_WEB_MAX_TUBES, NodeSpec, parse_listen
from bscluster.monitor import Monitor
from bscluster.web import Dashboard, handler_open_to_others, make_server, reload_tls

SHUTDOWN_POLL = 0.5  # how often serve_forever looks for a shutdown request


class WebError(RuntimeError):
    """The dashboard cannot be served; the message says what to change."""


def node_addresses(specs: Iterable[NodeSpec]) -> tuple[NodeAddress, ...]:
    return tuple(NodeAddress(s.name, f"{connect_host(s.host)}:{s.port}", s.weight)
                 for s in specs)


class WebHost:
    def __init__(self, listen: str, specs: Iterable[NodeSpec], token: str | None,
                 supervisor_state: Callable[[], dict | None],
                 log: Callable[[str], None] | None = None,
                 max_tubes: int = DEFAULT_WEB_MAX_TUBES, ssl_context=None,
                 https=None) -> None:
        self.listen = listen
        self.log = log
        self.monitor = Monitor(node_addresses(specs), max_tubes=max_tubes,
                               ssl_context=ssl_context)
        self.https = https  # serve HTTPS with this server context (tls_init.dashboard_context)
        self.dashboard = Dashboard(self.monitor, token, supervisor_state)
        self.server = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind and serve; returns the dashboard's URL.  Raises WebError."""
        host, port = parse_listen(self.listen)
        try:
            self.server = make_server(self.dashboard, host, port, log=self.log,
                                      ssl_context=self.https)
        except OSError as e:
            raise WebError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}; "
                           f"choose another address with --web ADDR:PORT (or web in the "
                           f"config file), or leave it off") from None
        self.dashboard.start(poll_first=False)  # the nodes are not started yet
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": SHUTDOWN_POLL},
                                        name="dashboard", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = connect_host(host)
        scheme = "https" if self.https else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def exposed(self) -> bool:
        return handler_open_to_others(parse_listen(self.listen)[0])

    def reload_tls(self, config) -> None:
        """New contexts from ``config``'s [tls] files (web.reload_tls; raises as it does)."""
        reload_tls(self.monitor, self.server, config)

    def set_nodes(self, specs: Iterable[NodeSpec]) -> None:
        self.monitor.set_nodes(node_addresses(specs))

    def stop(self) -> None:
        if self.server is not None:
            if self._thread is not None and self._thread.is_alive():
                self.server.shutdown()
                self._thread.join(5)
            self.server.server_close()
            self.server = None
        self.dashboard.stop()
