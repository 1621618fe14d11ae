"""`bscluster reload`: certificates rewritten in place are read again, cluster-wide.

How this works
--------------
The operator writes new files over the ones ``[tls]`` names (a temporary
name, then ``mv``) and runs `bscluster reload`.  The command asks the
supervisor (a ``reload-tls`` request in its mailbox + SIGHUP, as drain and
restart do), which

* sends SIGHUP to every RUNNING node started with TLS (bsnode then reads
  its certificate, key and client CA again; a node without TLS keeps
  SIGHUP's default action, which would end it, so it is never sent one),
* sends SIGHUP to the proxy it runs (it reads ``[tls]`` again: proxy_reload),
* gives the dashboard new contexts (web.reload_tls),

and publishes what it did under ``tls_reload`` in its state file.  The
command then checks each node from outside: a TLS connection, made with the
client files as they are now, must be shown the certificate that is in
``node_cert`` now.  Exit status 1 if a node shows another one (bsnode keeps
the old files when the new ones cannot be loaded, and logs why) or the
dashboard could not load them.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time

import click
from bscluster import control
from bscluster.config import ConfigError
from bscluster.options import config_option, data_dir_option, json_option
from bscluster.probe import presented_certificate
from bscluster.states import State
from bscluster.truth import ASKING_EXIT_HELP

OP = "reload-tls"  # the supervisor's request
REPLY_TIMEOUT = 10.0  # seconds for the supervisor to act on the request
CHECK_TIMEOUT = 5.0  # seconds for each node to present the new certificate
POLL = 0.1


def file_certificate(path: str) -> bytes:
    """The first certificate in a PEM file, as DER (what a TLS peer sends); raises OSError,
    ValueError."""
    with open(path) as f:
        text = f.read()
    end = text.find(ssl.PEM_FOOTER)
    if text.find(ssl.PEM_HEADER) < 0 or end < 0:
        raise ValueError(f"{path} holds no PEM certificate")
    return ssl.PEM_cert_to_DER_cert(text[:end + len(ssl.PEM_FOOTER)].lstrip())


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def check_node(host: str, port: int, want: bytes, ssl_context,
               timeout: float = CHECK_TIMEOUT) -> dict:
    """Poll until the node at host:port presents ``want``; what it presents at the end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            der = presented_certificate(host, port, ssl_context)
            error = None
        except OSError as e:
            der, error = None, str(e) or type(e).__name__
        if der == want or time.monotonic() > deadline:
            return {"reloaded": der == want, "presents": fingerprint(der) if der else None,
                    "error": error}
        time.sleep(POLL)


@click.command(epilog=ASKING_EXIT_HELP)
@config_option
@data_dir_option
@json_option
def reload(config_file, data_dir, as_json) -> None:
    """Make the running cluster read its TLS certificate files again, without a restart.

    First write the new files over the ones [tls] names (to a temporary name,
    then mv). Every node serving TLS then reads node_cert, node_key and its
    client CA again, the proxy (up --proxy) its client certificate, and the
    dashboard (up --web) both; connections already open keep theirs. Each
    node is then checked: it must present the certificate now in node_cert.

    Exit status 1 if a node presents another one (it keeps the old files when
    the new ones cannot be loaded, and its log says why: `bscluster logs
    NODE`) or the dashboard could not load them.
    """
    from bscluster.ops import running, wait_for

    _, paths, state = running(config_file, data_dir)
    config = control.running_config(paths)
    tls = config.tls if config is not None else None
    if tls is None:
        raise click.ClickException("the cluster runs without TLS (no [tls] in its config): "
                                   "there are no certificates to reload")
    ask = control.send_request(paths, state, OP)
    done = wait_for(paths, lambda s: (s.get("tls_reload") or {}).get("id") == ask,
                    REPLY_TIMEOUT, "the supervisor's reload")
    report = _report(done, config)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report, tls.node_cert)
    if any(r["reloaded"] is False for r in report["nodes"].values()) or \
            report["dashboard"] not in (None, "reloaded"):
        raise SystemExit(1)


def _report(state: dict, config) -> dict:
    answer = state["tls_reload"]
    nodes: dict[str, dict] = {}
    want = None
    if config.tls.node_cert:
        try:
            want = file_certificate(config.tls.node_cert)
        except (OSError, ValueError) as e:
            raise click.ClickException(
                f"cannot read node_cert {config.tls.node_cert}: {e}; the nodes keep the "
                f"certificate they had (`bscluster logs NODE` says why)") from None
    try:
        client = config.ssl_context()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    for name, entry in state["nodes"].items():
        if name not in answer["nodes"]:
            if entry["state"] != State.RUNNING.value:
                why = f"{entry['state']}: it reads the files when it next starts"
            elif want is None:
                why = "serves plain TCP ([tls] names no node_cert)"
            else:
                why = (f"serves plain TCP: it started before [tls] named node_cert; "
                       f"`bscluster restart {name}` makes it serve TLS")
            nodes[name] = {"reloaded": None, "note": why}
        else:
            nodes[name] = check_node(entry["host"], entry["port"], want, client)
    return {"nodes": nodes, "node_cert": fingerprint(want) if want else None,
            "proxy": answer["proxy"], "dashboard": answer["dashboard"]}


def _print(report: dict, node_cert: str | None) -> None:
    for name, r in report["nodes"].items():
        if r["reloaded"] is None:
            click.echo(f"{name}: {r['note']}")
        elif r["reloaded"]:
            click.echo(f"{name}: presents the certificate in {node_cert} "
                       f"(sha256 {report['node_cert']}...)")
        elif r["presents"]:
            click.echo(f"{name}: still presents another certificate (sha256 "
                       f"{r['presents']}...): the files did not load; see `bscluster logs "
                       f"{name}`")
        else:
            click.echo(f"{name}: cannot be checked: {r['error']}")
    if report["proxy"]:
        click.echo("proxy: reads [tls] again for its node connections (see `bscluster logs`)")
    if report["dashboard"] is not None:
        click.echo(f"dashboard: {report['dashboard']}")
