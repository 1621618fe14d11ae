"""Trial certificates for ``bscluster init --tls``: a private CA, a node
certificate and a client certificate, made with the ``openssl`` command;
and ``dashboard_context``, which serves the dashboard over HTTPS with the
nodes' certificate when the config's [tls] table names one.

How this works
--------------
``make_trial(dir, hosts)`` runs ``openssl`` (found on PATH: it is the
system's tool, not one of ours) to write, in ``dir``::

    ca.pem / ca.key          a private certificate authority (CA:TRUE)
    node.pem / node.key      one server certificate for every node, with the
                             hosts as subjectAltName (serverAuth)
    client.pem / client.key  one client certificate (clientAuth), for mTLS

Keys are EC P-256, written mode 0600.  ``make_cert`` is also what the tests
use for a wrong CA or an expired certificate (``days=-1`` ends its validity
before now).  These files are for a trial: a real deployment brings
certificates from its own CA, with its own lifetimes and revocation.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

TRIAL_DAYS = 365
CA_DAYS = 3650
CURVE = "prime256v1"
TRIAL_WARNING = ("These certificates come from a private CA made for a trial. A real "
                 "deployment brings its own certificates (its own CA, lifetimes and "
                 "revocation); keep ca.key off the nodes.")


class TlsInitError(RuntimeError):
    """openssl is missing or refused; the message says what to do."""


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TrialFiles:
    ca: Pair
    node: Pair
    client: Pair


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise TlsInitError("the openssl command is not installed (Debian/Ubuntu: "
                           "apt-get install openssl); or bring your own certificates "
                           "and write the [tls] table by hand")
    return path


def _run(args: list[str]) -> None:
    proc = subprocess.run([openssl(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise TlsInitError(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


def make_ca(directory: Path, name: str = "ca", cn: str = "bscluster trial CA",
            days: int = CA_DAYS) -> Pair:
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    _run(["req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}",
          "-nodes", "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", f"/CN={cn}",
          "-days", str(days),
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _private(pair.key)
    return pair


def _san(hosts: list[str]) -> str:
    parts = []
    for host in dict.fromkeys(hosts):
        try:
            ipaddress.ip_address(host)
            parts.append(f"IP:{host}")
        except ValueError:
            parts.append(f"DNS:{host}")
    return ",".join(parts)


def make_cert(directory: Path, ca: Pair, name: str, *, client: bool = False,
              hosts: list[str] = (), days: int = TRIAL_DAYS) -> Pair:
    """A certificate signed by ``ca``: for a server (``hosts`` as SANs) or,
    with ``client=True``, for a client.  ``days=-1``: already expired."""
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    usage = "clientAuth" if client else "serverAuth"
    lines = ["basicConstraints=critical,CA:FALSE",
             "keyUsage=critical,digitalSignature",
             f"extendedKeyUsage={usage}"]
    if hosts:
        lines.append(f"subjectAltName={_san(list(hosts))}")
    with tempfile.TemporaryDirectory() as tmp:
        csr = Path(tmp) / "req.csr"
        ext = Path(tmp) / "ext.cnf"
        ext.write_text("\n".join(lines) + "\n")
        _run(["req", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes",
              "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}"])
        _run(["x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
              "-set_serial", str(int.from_bytes(os.urandom(8), "big") >> 1),
              "-days", str(days), "-extfile", str(ext), "-out", str(pair.cert)])
    _private(pair.key)
    return pair


TRIAL_DIR = "tls"  # beside the config file
TRIAL_TABLE = """
# TLS between clients and nodes (bscluster init --tls). The nodes serve TLS
# only and require a client certificate signed by ca (mutual TLS); clients,
# ClusterClient.from_config() and every bscluster command use cert and key.
# Environment: BSCLUSTER_TLS_CA, BSCLUSTER_TLS_CERT, BSCLUSTER_TLS_KEY,
# BSCLUSTER_TLS_VERIFY. Rotate: replace node.pem/node.key, then run
# `bscluster reload` (docs/SECURITY.md). THESE ARE TRIAL CERTIFICATES from a private CA:
# a real deployment brings its own.
[tls]
ca = "{dir}/ca.pem"
cert = "{dir}/client.pem"
key = "{dir}/client.key"
verify = true
node_cert = "{dir}/node.pem"
node_key = "{dir}/node.key"
client_auth = true
"""


def trial_table(config_path: Path, host: str) -> str:
    """Make the trial certificates beside ``config_path``; the [tls] text for it."""
    names = [host] if host not in ("0.0.0.0", "::", "") else [socket.gethostname()]
    make_trial(config_path.parent / TRIAL_DIR, names)
    return TRIAL_TABLE.format(dir=TRIAL_DIR)


def by_hand_command(tls, host: str, port: int) -> str:
    """The telnet of a TLS node: an ``openssl s_client`` line with [tls]'s files."""
    args = ["openssl", "s_client", "-quiet", "-crlf", "-connect", f"{host}:{port}"]
    if tls.ca:
        args += ["-CAfile", tls.ca]
    if tls.cert:
        args += ["-cert", tls.cert, "-key", tls.key]
    return " ".join(shlex.quote(a) for a in args)


def dashboard_context(config) -> ssl.SSLContext | None:
    """HTTPS for the dashboard: the nodes' certificate and key ([tls] node_cert,
    node_key), with bsnode's TLS rules; no client certificate is asked for
    (the dashboard's token guards its actions).  None: plain HTTP."""
    tls = config.tls
    if tls is None or not tls.node_cert:
        return None
    from bsnode.tls import TlsFiles

    return TlsFiles(tls.node_cert, tls.node_key).context()


def make_trial(directory: str | os.PathLike, hosts: list[str]) -> TrialFiles:
    """A CA, one node certificate for ``hosts`` (plus localhost/127.0.0.1)
    and one client certificate, in ``directory`` (created 0700)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = make_ca(d)
    node = make_cert(d, ca, "node", hosts=[*hosts, "localhost", "127.0.0.1"])
    client = make_cert(d, ca, "client", client=True)
    return TrialFiles(ca, node, client)
