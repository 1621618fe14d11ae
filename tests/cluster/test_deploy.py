"""deploy/: every file parses, every flag it passes to bsnode exists, the pieces agree.

Checkers used when present: systemd-analyze (verify, and an offline security
score).  kubectl and docker need a server, so Kubernetes and compose files are
checked structurally here instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bscluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "kubernetes"

# beanstalkd 1.12's flags (bsnode takes the same): flag -> takes a value
KNOWN_FLAGS = {"-b": True, "-f": True, "-F": False, "-l": True, "-p": True, "-u": True,
               "-z": True, "-s": True, "-v": False, "-V": False, "-h": False}
_HELP_LINE = re.compile(r"^ (-[A-Za-z]|--[a-z][a-z-]+)( [A-Z:]+)?\s")


def flags_from_help(argv: list[str]) -> dict[str, bool] | None:
    try:
        r = subprocess.run(argv + ["-h"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    flags = {}
    for line in (r.stdout + r.stderr).splitlines():
        m = _HELP_LINE.match(line)
        if m:
            flags[m.group(1)] = m.group(2) is not None
    return flags or None


@pytest.fixture(scope="module")
def bsnode_flags() -> dict[str, bool]:
    """bsnode's flag set from `bsnode -h`, or beanstalkd's if bsnode cannot say."""
    flags = flags_from_help([sys.executable, "-m", "bsnode"]) or dict(KNOWN_FLAGS)
    assert {"-l", "-p", "-b", "-f", "-F", "-z", "-s"} <= set(flags)
    return flags


def check_argv(argv: list[str], flags: dict[str, bool], where: str) -> dict[str, str]:
    """Every option is a bsnode flag with its value; returns {flag: value}."""
    assert Path(argv[0]).name == "bsnode", f"{where}: runs {argv[0]}, not bsnode"
    seen: dict[str, str] = {}
    args = iter(argv[1:])
    for arg in args:
        assert arg.startswith("-") and arg in flags, f"{where}: {arg!r} is not a bsnode flag"
        value = next(args, None) if flags[arg] else ""
        assert value is not None and not value.startswith("-"), f"{where}: {arg} needs a value"
        seen[arg] = value
    for numeric in ("-p", "-f", "-z", "-s"):
        if numeric in seen:
            assert seen[numeric].isdigit(), f"{where}: {numeric} {seen[numeric]!r}"
    assert not ({"-f", "-F"} <= set(seen)), f"{where}: both -f and -F"
    return seen


def test_beanstalkd_takes_the_same_flags(bsnode_flags):
    if not Path("/usr/bin/beanstalkd").exists():
        pytest.skip("/usr/bin/beanstalkd is not installed")
    assert flags_from_help(["/usr/bin/beanstalkd"]) == KNOWN_FLAGS
    assert {k: v for k, v in bsnode_flags.items() if k in KNOWN_FLAGS} == KNOWN_FLAGS
    assert bsnode_flags.get("--metrics") is True  # bsnode's extensions are read too


# --- systemd ---------------------------------------------------------------------------
def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def unit_values(path: Path, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in path.read_text().splitlines()
            if ln.startswith(key + "=")]


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ${VAR} is one word, $VAR splits on spaces."""
    out = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", word)
        if m and m.group(1):
            out.append(env[m.group(1)])
        elif m:
            out.extend(env[m.group(2)].split())
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda v: env[v.group(1)], word))
    return out


def test_node_unit_passes_only_bsnode_flags(bsnode_flags):
    unit = SYSTEMD / "bsnode@.service"
    files = [Path(p) for p in unit_values(unit, "EnvironmentFile")]
    assert [p.name for p in files] == ["bsnode", "bsnode-%i"]
    env = {**read_env_file(SYSTEMD / "bsnode.env"), **read_env_file(SYSTEMD / "bsnode-node1.env"),
           "STATE_DIRECTORY": "/var/lib/bsnode/node1"}
    (exec_start,) = unit_values(unit, "ExecStart")
    seen = check_argv(expand_exec(exec_start, env), bsnode_flags, "bsnode@.service")
    assert seen["-l"] == "127.0.0.1" and seen["-p"] == "11300"
    assert seen["-b"] == env["STATE_DIRECTORY"]
    assert unit_values(unit, "StateDirectory") == ["bsnode/%i"]
    assert "yes" in unit_values(unit, "DynamicUser")
    assert unit_values(unit, "ProtectSystem") == ["strict"]


def test_supervisor_unit_and_its_config(bsnode_flags):
    unit = SYSTEMD / "bscluster.service"
    (exec_start,) = unit_values(unit, "ExecStart")
    assert shlex.split(exec_start)[1:] == ["up"]  # foreground: systemd supervises it
    (config_env,) = unit_values(unit, "Environment")
    assert config_env == "BSCLUSTER_CONFIG=/etc/bscluster/bscluster.toml"
    assert unit_values(unit, "User") == ["bscluster"]
    assert unit_values(unit, "KillMode") == ["mixed"]
    config = load_config(SYSTEMD / "bscluster.toml", env={})
    assert str(config.data_dir) == "/var/lib/" + unit_values(unit, "StateDirectory")[0]
    for node in config.nodes:  # what the supervisor will run
        check_argv(node.argv(config.node_command), bsnode_flags, f"bscluster.toml {node.name}")
    sysusers = (SYSTEMD / "bscluster.sysusers").read_text()
    assert re.search(r"^u bscluster ", sysusers, re.M)


def test_proxy_unit_serves_the_cluster_of_the_clients_config():
    unit = SYSTEMD / "bscluster-proxy.service"
    (exec_start,) = unit_values(unit, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/bscluster/bin/bscluster" and argv[1:] == ["proxy"]
    # the same file as the supervisor's and every client's: one list of nodes
    assert unit_values(unit, "Environment") == \
        unit_values(SYSTEMD / "bscluster.service", "Environment")
    (reload,) = unit_values(unit, "ExecReload")
    assert shlex.split(reload)[1:] == ["-HUP", "$MAINPID"]  # the proxy's config reload
    assert unit_values(unit, "DynamicUser") == ["yes"] and not unit_values(unit, "StateDirectory")
    assert unit_values(unit, "ProtectSystem") == ["strict"]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


@pytest.fixture
def units_for_verify(tmp_path) -> Path:
    """Copies of the units whose /opt/bscluster/bin/ programs exist (as stubs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bsnode", "bscluster"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text().replace("/opt/bscluster/bin/", f"{bin_dir}/")
        (tmp_path / unit.name).write_text(text)
    os.symlink("bsnode@.service", tmp_path / "bsnode@node1.service")
    return tmp_path


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["bsnode@node1.service", "bscluster.service",
                                  "bscluster-proxy.service"])
def test_systemd_analyze_verify(units_for_verify, unit):
    r = subprocess.run(["systemd-analyze", "verify", str(units_for_verify / unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["bsnode@node1.service", "bscluster.service",
                                  "bscluster-proxy.service"])
def test_systemd_hardening_score(units_for_verify, unit):
    """`systemd-analyze security` rates exposure 0 (locked) .. 10; keep it under 2.5."""
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=25",
                        str(units_for_verify / unit)], capture_output=True, text=True,
                       timeout=60)
    if "Unknown option" in r.stderr or "unrecognized option" in r.stderr:
        pytest.skip("this systemd-analyze cannot score units offline")
    assert r.returncode == 0, r.stdout[-600:] + r.stderr


# --- containers -------------------------------------------------------------------------
def dockerfile_instruction(name: str) -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    (value,) = re.findall(rf"^{name} (\[.*\])$", text, re.M)
    return json.loads(value)


def test_dockerfile(bsnode_flags):
    text = (DOCKER / "Dockerfile").read_text()
    argv = dockerfile_instruction("ENTRYPOINT") + dockerfile_instruction("CMD")
    seen = check_argv(argv, bsnode_flags, "Dockerfile")
    assert re.search(rf"^VOLUME {seen['-b']}$", text, re.M)
    assert re.search(rf"^EXPOSE {seen['-p']}$", text, re.M)
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert not user.startswith(("0", "root")), "the image must not run as root"
    assert "HEALTHCHECK" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in copied.split():
            assert f"!{path}" in ignore or f"!{path}/" in ignore, path


def test_compose(bsnode_flags):
    import yaml
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = dict(doc["services"])
    proxy = services.pop("proxy")
    assert sorted(services) == ["node1", "node2", "node3", "node4"]
    clients = load_config(DOCKER / "bscluster.toml", env={})
    assert [n.name for n in clients.nodes] == sorted(services)
    volumes = set()
    for node in clients.nodes:
        svc = services[node.name]
        seen = check_argv(["bsnode", *svc["command"]], bsnode_flags, f"compose {node.name}")
        (volume,) = svc["volumes"]
        name, target = volume.split(":")
        assert target == seen["-b"] and name in doc["volumes"]
        volumes.add(name)
        (port,) = svc["ports"]
        host, host_port, container_port = port.split(":")
        assert host == "127.0.0.1", "publish on loopback only"
        assert container_port == seen["-p"]
        assert f"{host}:{host_port}" == node.address  # what clients are told
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert len(volumes) == 4  # one binlog volume per node
    _check_compose_proxy(proxy, services, bsnode_flags)


def _check_compose_proxy(proxy: dict, nodes: dict, bsnode_flags) -> None:
    """The proxy service routes over the node services by their names on the compose
    network, and is published on loopback like them."""
    assert proxy["entrypoint"] == ["/opt/bscluster/bin/bscluster", "proxy"]
    assert proxy["command"] == ["--config", "/etc/bscluster/bscluster.toml"]
    (volume,) = proxy["volumes"]
    source, target, mode = volume.split(":")
    assert (source, target, mode) == ("./proxy.toml", "/etc/bscluster/bscluster.toml", "ro")
    config = load_config(DOCKER / source, env={})
    assert [n.name for n in config.nodes] == sorted(nodes) == sorted(proxy["depends_on"])
    for node in config.nodes:
        seen = check_argv(["bsnode", *nodes[node.name]["command"]], bsnode_flags, node.name)
        assert (node.host, str(node.port)) == (node.name, seen["-p"])
    (port,) = proxy["ports"]
    host, host_port, container_port = port.split(":")
    assert host == "127.0.0.1" and config.proxy == f"0.0.0.0:{container_port}"
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert f'("127.0.0.1", {container_port})' in proxy["healthcheck"]["test"][-1]


def test_compose_proxy_healthcheck_tells_a_serving_proxy_from_none(tmp_path):
    """The healthcheck's probe, run as compose runs it but on this test's ports."""
    import yaml
    from bscluster.procs import start_proxy, write_config
    from servers import free_port
    probe = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["proxy"]
    code = probe["healthcheck"]["test"][-1]
    with start_proxy(write_config(tmp_path / "p.toml", [free_port()])) as proxy:
        served = subprocess.run([sys.executable, "-c", code.replace("11400", str(proxy.port))],
                                capture_output=True, timeout=30)
    assert served.returncode == 0, served.stderr
    nobody = subprocess.run([sys.executable, "-c", code.replace("11400", str(free_port()))],
                            capture_output=True, timeout=30)
    assert nobody.returncode != 0


# --- Kubernetes ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def k8s():
    import yaml
    docs = [d for d in yaml.safe_load_all((K8S / "bscluster.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_statefulset_and_headless_service(k8s, bsnode_flags):
    svc, sts = k8s["Service"], k8s["StatefulSet"]
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (svc["spec"]["selector"], sts["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    seen = check_argv(container["command"] + container["args"], bsnode_flags, "StatefulSet")
    (port,) = container["ports"]
    assert str(port["containerPort"]) == seen["-p"]
    assert svc["spec"]["ports"][0]["port"] == port["containerPort"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == seen["-b"]
    claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
    assert claims == [mount["name"]]  # a persistent volume per pod for its binlog
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_client_config_maps_pods_to_node_names(k8s, tmp_path):
    sts, svc = k8s["StatefulSet"], k8s["Service"]
    path = tmp_path / "bscluster.toml"
    path.write_text(k8s["ConfigMap"]["data"]["bscluster.toml"])
    config = load_config(path, env={})
    assert len(config.nodes) == sts["spec"]["replicas"]
    port = sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    for i, node in enumerate(config.nodes):
        # StatefulSet pods are <name>-0, <name>-1, ...; nodeI is pod I-1
        assert node.name == f"node{i + 1}"
        assert node.host == f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}"
        assert node.port == port
    from bsclient import config as bsclient_config
    theirs = {n.name: n.address for n in bsclient_config.read_config_file(path)}
    assert theirs == config.addresses


def test_network_policy_limits_who_connects(k8s):
    policy = k8s["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == \
        k8s["StatefulSet"]["spec"]["selector"]["matchLabels"]
    assert policy["ingress"][0]["from"], "ingress must name who may connect"


def test_proxy_sidecar_in_the_docs_fits_the_manifest(k8s):
    """docs/DEPLOY.md's sidecar: the ConfigMap it mounts, the label the policy admits."""
    import yaml
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    (block,) = re.findall(r"```yaml\n(# in the application's Deployment.*?)```", text, re.S)
    template = yaml.safe_load(block)
    policy = k8s["NetworkPolicy"]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert policy["matchLabels"].items() <= template["metadata"]["labels"].items()
    proxy = next(c for c in template["spec"]["containers"] if c["name"] == "bscluster-proxy")
    argv = proxy["command"]
    assert argv[:2] == ["/opt/bscluster/bin/bscluster", "proxy"] and argv[2] == "--config"
    (mount,) = proxy["volumeMounts"]
    assert Path(argv[3]).parent == Path(mount["mountPath"])
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    config_map = k8s["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert Path(argv[3]).name in config_map["data"]
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_deploy_file_is_checked():
    checked = {"systemd/bsnode@.service", "systemd/bsnode.env", "systemd/bsnode-node1.env",
               "systemd/bscluster.service", "systemd/bscluster.toml",
               "systemd/bscluster-proxy.service", "docker/proxy.toml",
               "systemd/bscluster.sysusers", "docker/Dockerfile",
               "docker/Dockerfile.dockerignore", "docker/compose.yaml",
               "docker/bscluster.toml", "kubernetes/bscluster.yaml"}
    present = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert present == checked, "a new deploy file needs a test"
