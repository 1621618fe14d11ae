"""`bscluster proxy` follows a changed node set on SIGHUP (proxy_reload), no restart.

The first tests drive ``Change`` and ``Reloader`` without a process (the
ClusterClient's connections are lazy; nothing connects).  Then real bsnodes
behind a real proxy: a node added, a node leaving, a broken config; and the
supervisor passing `up --nodes N+1` and `remove` on to the proxy it runs.
Every wait is on an event (a log line, a reply), bounded.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import sys
import threading

import greenstalk
import pytest
from bsclient import Client, ClusterClient, NodeAddress
from bsclient.config import ClusterLayout
from bsclient.ring import placement
from bscluster.config import DEFAULT_PROXY_LISTEN, ConfigError, load_config
from bscluster.proxy_ids import decode
from bscluster.proxy_proc import RESTART_RESET, ProxyProc
from bscluster.proxy_reload import Change, Reloader, reader
from bscluster.runtime import write_json
from bscluster.supervisor import Supervisor
from bscluster.template import render_config
from clusters import Cluster
from fake_clock import FakeClock
from proxyrun import ProxiedCluster
from servers import free_port, poll, start_bsnode

TUBES = [f"t{i}" for i in range(500)]


def write(path, ports: list[int], leaving=(), weights=None, extra: str = ""):
    """A config naming each node's port ([nodes.nodeI]), some leaving or weighted."""
    lines = ["[cluster]", f"nodes = {len(ports)}", "binlog = false", extra, ""]
    for i, port in enumerate(ports, 1):
        name = f"node{i}"
        lines += [f"[nodes.{name}]", f"port = {port}"]
        lines += ["leaving = true"] if name in leaving else []
        lines += [f"weight = {(weights or {})[name]}"] if name in (weights or {}) else []
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def owned(node: str, count: int, leaving=()) -> str:
    """A tube the ring of node1..node{count} (some leaving) gives ``node``."""
    ring = placement([NodeAddress(f"node{i}", "-", leaving=f"node{i}" in leaving)
                      for i in range(1, count + 1)])
    return next(t for t in TUBES if ring.node_for(t) == node)


# --- the diff, without processes -----------------------------------------------------
def nodes(*specs) -> tuple[NodeAddress, ...]:
    return tuple(NodeAddress(*s) for s in specs)


def test_change_names_everything_that_moved():
    old = ClusterLayout(nodes(("node1", "h:1"), ("node2", "h:2"), ("node3", "h:3", 1, True),
                              ("node5", "h:5")), "md5", {"hot": 2, "warm": 3})
    new = ClusterLayout(nodes(("node1", "h:1", 2), ("node2", "h:2", 1, True), ("node3", "h:3"),
                              ("node4", "h:4"), ("node5", "h:9")), "ketama", {"hot": 3})
    change = Change.of_layouts(old, new)
    assert change.added == ("node4",) and change.removed == ()
    assert change.leaving == ("node2",) and change.staying == ("node3",)
    assert change.moved == (("node5", "h:9"),) and change.weights == (("node1", 1, 2),)
    assert change.ring == ("md5", "ketama")
    assert change.spread == (("hot", 2, 3), ("warm", 3, 1))
    assert change.routing and str(change) == (
        "+node4, node2 leaving, node3 no longer leaving, node5 moved to h:9, "
        "node1 weight 1->2, ring md5->ketama, tube hot spread 2->3, tube warm spread 3->1")
    gone = Change.of_layouts(new, ClusterLayout(new.nodes[:3], "ketama", {"hot": 3}))
    assert gone.removed == ("node4", "node5") and str(gone) == "-node4, -node5"
    same = Change.of_layouts(old, old)
    assert not same and str(same) == "no change"


def test_settings_read_only_at_start_are_named_not_applied(tmp_path):
    old = load_config(write(tmp_path / "a.toml", [1, 2]), env={})
    new = load_config(write(tmp_path / "b.toml", [1, 2], extra="max_job_size = 1000"), env={})
    change = Change.between(old, new)
    assert change and not change.routing
    assert str(change) == "max_job_size (65535->1000) changed: applies when the proxy restarts"
    polling = load_config(write(tmp_path / "c.toml", [1, 2], extra="proxy_busy_poll = 0"), env={})
    assert str(Change.between(old, polling)) == (
        "proxy_busy_poll (50->0) changed: applies when the proxy restarts")


def test_tls_files_for_the_nodes_apply_at_once_those_the_proxy_serves_at_restart(tmp_path):
    for name in ("ca.pem", "one.pem", "one.pem.key", "two.pem", "two.pem.key"):
        (tmp_path / name).write_text("(checked to exist, not read)")

    def config(name, cert, proxy_tls=False):
        tls = (f"proxy_tls = {str(proxy_tls).lower()}\n[tls]\nca = \"ca.pem\"\n"
               f"cert = \"{cert}\"\nkey = \"{cert}.key\"\nnode_cert = \"{cert}\"\n"
               f"node_key = \"{cert}.key\"\n")
        return load_config(write(tmp_path / name, [1, 2], extra=tls), env={})

    # the proxy's own node connections: read again on every SIGHUP (Reloader), so a
    # change of path is no restart matter
    assert not Change.between(config("a.toml", "one.pem"), config("b.toml", "two.pem"))
    # the files its listener serves under proxy_tls: read at start
    change = Change.between(config("c.toml", "one.pem", True), config("d.toml", "two.pem", True))
    assert change and not change.routing
    assert str(change) == ("the [tls] files the proxy serves (proxy_tls) changed: applies when "
                           "the proxy restarts")


class Read:
    """The proxy's ``read``: the config file at ``path`` (as ``reader`` reads it)."""

    def __init__(self, path):
        self.path = path
        self.read = reader(str(path), None)

    def __call__(self):
        return self.read()


@pytest.fixture
def reloader(tmp_path):
    path = write(tmp_path / "c.toml", [41001, 41002, 41003])
    read = Read(path)
    config = read()
    cc = ClusterClient.from_layout(config.layout())
    numbers = {n: int(n[4:]) for n in cc.nodes}
    yield Reloader(cc, numbers, config, read), path
    cc.close()


def test_reload_applies_the_layout_and_renumbers_in_place(reloader, caplog):
    r, path = reloader
    numbers = r.numbers
    write(path, [41001, 41002, 41003, 41004], leaving=("node2",))
    with caplog.at_level(logging.INFO, "bscluster.proxy"):
        change = r.reload()
    assert change.added == ("node4",) and change.leaving == ("node2",)
    assert caplog.messages == ["reload: +node4, node2 leaving"]
    assert r.cc.nodes == ("node1", "node2", "node3", "node4")
    assert r.cc.ring.weights == {"node1": 1, "node3": 1, "node4": 1}
    assert r.numbers is numbers and numbers == {"node1": 1, "node2": 2, "node3": 3, "node4": 4}
    write(path, [41001, 41002, 41003])  # node4 gone again (nodes lowered)
    assert r.reload().removed == ("node4",)
    assert numbers == {"node1": 1, "node2": 2, "node3": 3} and "node4" not in r.cc.nodes


@pytest.mark.parametrize("broken, problem", [
    ("[cluster]\nnodes = = 3\n", "not valid TOML"),
    ("[cluster]\nnodes = 3\nbase_prot = 1\n", "base_prot"),  # a misspelt key
    (None, "every node is leaving"),
    ("TLS", "cannot load TLS files"),  # a node added too: not applied either
])
def test_a_broken_config_is_refused_and_routing_kept(reloader, caplog, broken, problem):
    r, path = reloader
    if broken is None:
        write(path, [41001, 41002, 41003], leaving=("node1", "node2", "node3"))
    elif broken == "TLS":
        (path.parent / "garbage.pem").write_text("not a certificate")
        write(path, [41001, 41002, 41003, 41004],
              extra='[tls]\nca = "garbage.pem"\ncert = "garbage.pem"\nkey = "garbage.pem"')
    else:
        path.write_text(broken)
    ring, numbers = r.cc.ring, dict(r.numbers)
    with caplog.at_level(logging.INFO, "bscluster.proxy"):
        assert r.reload() is None
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("reload refused, routing and TLS unchanged: ")
    assert problem in caplog.messages[0]
    assert r.cc.ring is ring and r.numbers == numbers
    write(path, [41001, 41002, 41003, 41004])  # fixed: the next HUP applies it
    assert r.reload().added == ("node4",)


def test_wanted_json_is_read_as_the_supervisor_wrote_it(tmp_path):
    config = load_config(write(tmp_path / "c.toml", [41001, 41002]), env={})
    wanted = tmp_path / "wanted.json"
    write_json(wanted, config.to_dict())
    assert reader(None, str(wanted))().layout() == config.layout()
    wanted.write_text("{")
    with pytest.raises(ConfigError, match="cannot read .*wanted.json"):
        reader(None, str(wanted))()


def test_proxy_proc_reload_signals_only_a_running_proxy(tmp_path):
    sent = []

    class Popen:
        pid, returncode = 4242, None

        def send_signal(self, sig):
            sent.append(sig)

    proc = ProxyProc("127.0.0.1:0", tmp_path / "wanted.json", lambda _: None, lambda: 0.0)
    proc.reload()  # not started: it reads wanted.json when it starts
    proc.popen = Popen()
    proc.reload()
    proc.popen.returncode = 0  # exited
    proc.reload()
    assert sent == [signal.SIGHUP]


@pytest.mark.integration
def test_a_reload_sent_while_the_proxy_starts_is_applied_not_fatal(tmp_path):
    """SIGHUP's default action ends a process: the supervisor starts its proxy with
    the signal blocked, and the proxy takes it once its handler is in place."""
    with start_bsnode() as n1, start_bsnode() as n2, start_bsnode() as n3:
        wanted = tmp_path / "wanted.json"
        write_json(wanted, load_config(write(tmp_path / "c.toml", [n1.port, n2.port]),
                                       env={}).to_dict())
        port = free_port()
        proc = ProxyProc(f"127.0.0.1:{port}", wanted, lambda _: None, lambda: 0.0)
        proc.tick(0.0, dict(os.environ))
        try:
            write_json(wanted, load_config(write(tmp_path / "c.toml", [n1.port, n2.port,
                                                                         n3.port]),
                                           env={}).to_dict())
            proc.reload()  # long before the proxy has imported anything
            tube = owned("node3", 3)

            def put_while_alive():
                assert proc.popen.poll() is None, f"the proxy died ({proc.popen.returncode})"
                return _put(port, tube)

            job_id = poll(put_while_alive, what="the proxy to take a put")
            assert decode(job_id)[0] == "node3"
            assert proc.popen.poll() is None
        finally:
            proc.stop()
            proc.popen.wait(10)


class FakeProxy:
    """The supervisor's ProxyProc, counting the SIGHUPs it would send."""

    def __init__(self):
        self.reloads = 0

    def reload(self):
        self.reloads += 1


@pytest.fixture
def supervisor(tmp_path):
    config = load_config(flags={"nodes": 2, "data_dir": str(tmp_path), "binlog": False,
                                "base_port": 41000}, env={})
    s = Supervisor(config, out=io.StringIO(), clock=FakeClock())
    s._set_nodes(config)
    s.proxy = FakeProxy()
    s.paths.requests.mkdir(parents=True)
    return s, config


def test_supervisor_passes_a_changed_wanted_json_on_to_its_proxy(supervisor):
    s, config = supervisor
    write_json(s.paths.wanted, config.to_dict())
    s._reload()  # unchanged (a restart or drain request): no SIGHUP
    assert s.proxy.reloads == 0
    doc = config.to_dict()
    doc["nodes"][1]["leaving"] = True  # what `remove` writes first
    write_json(s.paths.wanted, doc)
    s._reload()
    assert s.proxy.reloads == 1 and s.config.layout().nodes[1].leaving


def test_supervisor_leaves_a_request_still_being_written(supervisor):
    """write_json's temp file in requests/ is not a request yet: a HUP arriving
    while `drain` writes its request must not take (and delete) it."""
    s, _ = supervisor
    partial = s.paths.requests / ".1-2.json.2.tmp"
    partial.write_text('{"op": "drain", "node": "node1"}')
    s._reload()
    assert partial.exists() and "node1" not in s.drained
    partial.rename(s.paths.requests / "1-2.json")
    s._reload()
    assert "node1" in s.drained and not any(s.paths.requests.iterdir())


def test_init_template_shows_the_proxy_setting(tmp_path):
    text = render_config()
    assert f'# proxy = "{DEFAULT_PROXY_LISTEN}"' in text
    path = tmp_path / "bscluster.toml"
    path.write_text(text.replace("# proxy = ", "proxy = "))
    assert load_config(path, env={}).proxy == DEFAULT_PROXY_LISTEN


# --- a real proxy ----------------------------------------------------------------------
def logged(server, text: str) -> bool:
    return any(text in line for line in list(server.lines))


def hup(cluster: ProxiedCluster, expect: str) -> None:
    cluster.proxy.signal(signal.SIGHUP)
    poll(lambda: logged(cluster.proxy, expect), what=f"the proxy to log {expect!r}")


def ports(cluster: ProxiedCluster) -> list[int]:
    return [n.port for n in cluster.nodes]


@pytest.mark.integration
def test_added_node_gets_its_tubes_and_reserved_jobs_stay_deletable(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = owned("node4", 4)
        with greenstalk.Client(cluster.address, use=tube, watch=tube) as c:
            c.put("before")  # on the 3-node ring's owner
            held = c.reserve(timeout=2)
            cluster.nodes.append(start_bsnode())  # stopped with the cluster
            write(cluster.config, ports(cluster))
            hup(cluster, "reload: +node4")
            assert logged(cluster.proxy, "bscluster proxy: reload: +node4")
            new_id = c.put("after")
            assert decode(new_id) == ("node4", decode(new_id)[1])
            with Client(("127.0.0.1", cluster.nodes[3].port)) as node4:
                node4.use(tube)
                assert node4.peek_ready().body == b"after"
            c.delete(held)  # reserved before the reload, on a connection it kept
            assert c.reserve(timeout=2).id == new_id
        assert cluster.proxy.proc.poll() is None


@pytest.mark.integration
def test_leaving_node_gets_no_puts_but_is_still_reserved_from(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = owned("node2", 3)
        with greenstalk.Client(cluster.address, use=tube, watch=tube) as c:
            before = [c.put(f"old {i}") for i in range(3)]
            assert {decode(i)[0] for i in before} == {"node2"}
            write(cluster.config, ports(cluster), leaving=("node2",))
            hup(cluster, "reload: node2 leaving")
            after = [c.put(f"new {i}") for i in range(3)]
            assert "node2" not in {decode(i)[0] for i in after}
            with Client(("127.0.0.1", cluster.nodes[1].port)) as node2:
                assert node2.stats_tube(tube)["current-jobs-ready"] == 3  # no new one
            got = set()
            for _ in range(6):
                job = c.reserve(timeout=5)
                got.add(job.id)
                c.delete(job)
            assert got == set(before) | set(after)  # node2's too, through the proxy


@pytest.mark.integration
def test_broken_config_on_hup_keeps_routing_and_serving(tmp_path):
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = owned("node3", 3)
        cluster.config.write_text("[cluster]\nnodes = \n")
        hup(cluster, "reload refused, routing and TLS unchanged: config file")
        write(cluster.config, ports(cluster), leaving=("node1", "node2", "node3"))
        hup(cluster, "every node is leaving")
        with greenstalk.Client(cluster.address, use=tube, watch=tube) as c:
            job_id = c.put("still routed")
            assert decode(job_id)[0] == "node3"
            assert c.reserve(timeout=2).id == job_id
        assert cluster.proxy.proc.poll() is None
        assert not logged(cluster.proxy, "reload: ")  # nothing was applied


@pytest.mark.integration
def test_a_waiting_reserve_outlives_a_removed_and_a_moved_node(tmp_path):
    """A client waits in reserve while node3 is removed, then while node1 (the
    tube's owner) moves to another address; each time the job put after the
    reload reaches it (its waits on the closed connections end, new ones start)."""
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = owned("node1", 3)
        assert owned("node1", 2) == tube

        def across(change, expect: str, body: str) -> None:
            got = []
            with greenstalk.Client(cluster.address, watch=tube) as waiter, \
                    greenstalk.Client(cluster.address, use=tube) as producer:
                thread = threading.Thread(target=lambda: got.append(waiter.reserve(timeout=20)))
                thread.start()
                poll(lambda: producer.stats()["current-waiting"] == 1, what="the reserve")
                change()
                hup(cluster, expect)
                job_id = producer.put(body)
                thread.join(25)
                assert [(j.id, j.body) for j in got] == [(job_id, body)]
                waiter.delete(got[0])

        across(lambda: write(cluster.config, ports(cluster)[:2]), "reload: -node3", "one")
        new = start_bsnode()
        cluster.nodes.append(new)  # stopped with the cluster
        across(lambda: write(cluster.config, [new.port, cluster.nodes[1].port]),
               f"reload: node1 moved to 127.0.0.1:{new.port}", "two")
        with Client(("127.0.0.1", new.port)) as node1:
            assert node1.stats()["total-jobs"] == 1  # "two", at the new address


@pytest.mark.integration
def test_a_move_under_pipelined_puts_answers_everything_and_keeps_the_node(tmp_path):
    """Producers pipeline puts to node1's tube while node1 moves: every put is
    answered (INSERTED, or INTERNAL_ERROR for one in flight on the old
    connection), and node1 is never taken for dead (no put fails over to
    another node): the puts after the move go to its new address."""
    with ProxiedCluster(tmp_path, 3) as cluster:
        tube = owned("node1", 3)
        stop = threading.Event()
        replies: list[list[bytes]] = []

        def produce() -> None:
            with socket.create_connection(cluster.address, timeout=10) as s:
                lines = s.makefile("rb")
                s.sendall(f"use {tube}\r\n".encode())
                lines.readline()
                for _ in range(5000):  # bounded; ends when the test has seen the move
                    if stop.is_set():
                        break
                    s.sendall(b"put 0 0 60 1\r\nx\r\n" * 16)
                    replies.extend(lines.readline().split() for _ in range(16))

        threads = [threading.Thread(target=produce) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            poll(lambda: len(replies) > 500, what="puts through the proxy")
            new = start_bsnode()
            cluster.nodes.append(new)  # stopped with the cluster
            write(cluster.config, [new.port] + ports(cluster)[1:3])
            hup(cluster, "reload: node1 moved to")
            moved = len(replies)
            poll(lambda: len(replies) > moved + 1000, what="puts after the move")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)  # every put was answered
        assert {r[0] for r in replies} <= {b"INSERTED", b"INTERNAL_ERROR"}
        assert {decode(int(r[1]))[0] for r in replies if r[0] == b"INSERTED"} == {"node1"}
        with Client(("127.0.0.1", new.port)) as node1:
            assert node1.stats()["total-jobs"] >= 900  # the puts after the move


# --- under the supervisor -------------------------------------------------------------
def _put(port: int, tube: str):
    try:
        with greenstalk.Client(("127.0.0.1", port), use=tube) as c:
            return c.put("x")
    except OSError:
        return None


@pytest.mark.integration
def test_up_proxy_follows_grow_and_remove(tmp_path):
    """`up` with nodes = 3 against a running `up --proxy` reaches the proxy
    (+node3), so does a new weight; `remove node3` makes it leaving there
    first, then forgets it (-node3)."""
    cluster = Cluster(tmp_path, f"{sys.executable} -m bsnode", nodes=2,
                      extra_env={"BSCLUSTER_BINLOG": "false"})
    del cluster.env["BSCLUSTER_NODES"]  # the config file says how many
    config = tmp_path / "bscluster.toml"
    config.write_text(f"[cluster]\nnodes = 2\nbase_port = {cluster.base_port}\n")
    proxy_port = cluster.base_port + 5
    try:
        cluster.start_foreground("--proxy", f"127.0.0.1:{proxy_port}")
        tube = owned("node3", 3)
        first = poll(lambda: _put(proxy_port, tube), what="the proxy to take a put")
        assert decode(first)[0] != "node3"
        config.write_text(f"[cluster]\nnodes = 3\nbase_port = {cluster.base_port}\n")
        cluster.run("up", check=True)
        poll(lambda: "reload: +node3" in cluster.output(), what="the proxy to add node3")
        job_id = _put(proxy_port, tube)
        assert decode(job_id)[0] == "node3"
        with Client(("127.0.0.1", cluster.base_port + 2)) as node3:
            node3.use(tube)
            assert node3.peek_ready().id == decode(job_id)[1]
        config.write_text(f"[cluster]\nnodes = 3\nbase_port = {cluster.base_port}\n"
                          f"[nodes.node3]\nweight = 3\n")
        cluster.run("up", check=True)  # no new node: only the routing changes
        poll(lambda: "reload: node3 weight 1->3" in cluster.output(),
             what="the proxy to take node3's weight")
        r = cluster.run("remove", "node3", "--timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        out = cluster.output()
        assert "reload: node3 leaving" in out and "reload: -node3" in out
        assert out.index("reload: node3 leaving") < out.index("reload: -node3")
        assert decode(_put(proxy_port, tube))[0] != "node3"
    finally:
        cluster.cleanup()


def test_proxy_restart_back_off_grows_only_while_it_keeps_dying_young(tmp_path):
    """0.5 s, doubling while the proxy dies within RESTART_RESET of starting; one that
    ran that long (a sidecar killed after serving a while) is back after 0.5 s."""
    now = [0.0]

    class Popen:
        pid, returncode = 4242, None

    proc = ProxyProc("127.0.0.1:0", tmp_path / "wanted.json", lambda _: None, lambda: now[0])
    waits = []
    for ran in (1.0, 1.0, 1.0, RESTART_RESET, 1.0):
        proc.popen, proc.started_at = Popen(), now[0]
        now[0] += ran
        assert proc.exited(4242, 1)
        waits.append(proc.restart_at - now[0])
        now[0] = proc.restart_at
    assert waits == [0.5, 1.0, 2.0, 0.5, 1.0]
    assert proc.exits == 5 and proc.last_exit == "exit 1"
