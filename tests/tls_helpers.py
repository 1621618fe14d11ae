"""Certificates and TLS nodes for the TLS tests.

``Certs`` are made once per test session with the same openssl code
``bscluster init --tls`` uses: the trial CA with node and client
certificates, plus what the refusal tests need: a second CA and a client
certificate it signed (wrong CA), an expired client certificate, an
expired node certificate, and a spare node certificate for reload.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bscluster.tls_init import Pair, make_ca, make_cert, make_trial
from servers import start_bsnode

LOG_DEADLINE = 10.0


@dataclass(frozen=True)
class Certs:
    ca: Pair
    node: Pair
    client: Pair
    other_ca: Pair
    other_client: Pair  # signed by other_ca: the wrong CA
    expired_client: Pair
    expired_node: Pair
    node2: Pair  # same CA, another serial: for reload

    def context(self, client: Pair | None = None, ca: Pair | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str((ca or self.ca).cert))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx

    def good(self) -> ssl.SSLContext:
        return self.context(self.client)


def make_certs(d: Path) -> Certs:
    trial = make_trial(d, ["127.0.0.1"])
    other = d / "other"
    other.mkdir()
    other_ca = make_ca(other, cn="some other CA")
    return Certs(
        ca=trial.ca, node=trial.node, client=trial.client, other_ca=other_ca,
        other_client=make_cert(other, other_ca, "client", client=True),
        expired_client=make_cert(d, trial.ca, "expired-client", client=True, days=-1),
        expired_node=make_cert(d, trial.ca, "expired-node", hosts=["127.0.0.1"], days=-1),
        node2=make_cert(d, trial.ca, "node2", hosts=["127.0.0.1"]),
    )


def tls_args(certs: Certs, node: Pair | None = None, mtls: bool = True) -> list[str]:
    node = node or certs.node
    args = ["--tls-cert", str(node.cert), "--tls-key", str(node.key)]
    return args + (["--tls-client-ca", str(certs.ca.cert)] if mtls else [])


def start_tls_node(certs: Certs, *extra: str, node: Pair | None = None, mtls: bool = True):
    return start_bsnode(*tls_args(certs, node, mtls), *extra)


def wait_log(server, pattern: str, deadline: float = LOG_DEADLINE, after: int = 0) -> str:
    """The first line of the node's stderr (from index ``after``) matching ``pattern``."""
    rx = re.compile(pattern)
    end = time.monotonic() + deadline
    while True:
        for line in list(server.lines)[after:]:
            if rx.search(line):
                return line
        if time.monotonic() > end:
            raise AssertionError(f"no log line like {pattern!r}; got: {list(server.lines)}")
        time.sleep(0.02)


def peer_serial(ctx: ssl.SSLContext, address) -> int:
    """The serial number of the certificate a TLS server at ``address`` shows now."""
    with socket.create_connection(address, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        return int(s.getpeercert()["serialNumber"], 16)


def cert_serial(pair) -> int:
    """The serial number of a certificate file (``pair.cert``)."""
    out = subprocess.run(["openssl", "x509", "-in", str(pair.cert), "-noout", "-serial"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("=")[1], 16)


def assert_still_serves(server, certs, good) -> None:
    """After a refused connection: a client served before it still is, and a new one too."""
    from bsclient import Client

    good.use("still")
    job_id = good.put(b"after the refusal")
    assert good.peek(job_id).body == b"after the refusal"
    good.delete(job_id)
    with Client(server.address, ssl_context=certs.good(), timeout=10) as fresh:
        assert fresh.stats()["current-connections"] >= 2
