"""tests/spawns.py: which tests are integration, and the guard of unit runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import servers
from spawns import ProcessForbidden, SpawnFinder, forbid_processes


def _runs_a_command():
    return subprocess.run(["true"])


def _through_a_helper():
    return _runs_a_command()


_TABLE = {"cmd": _runs_a_command}


def _through_a_table(kind):
    return _TABLE[kind]()


def _pure(x):
    return sorted(x) + [len(x)]


class _Starter:
    def go(self):
        return _through_a_helper()


def _uses_a_class():
    return _Starter().go()


def _forks():
    return os.fork()


@pytest.mark.parametrize("function,starts", [
    (_runs_a_command, True), (_through_a_helper, True), (_through_a_table, True),
    (_uses_a_class, True), (_forks, True), (_pure, False),
])
def test_the_finder_follows_test_code_to_a_way_of_starting_a_process(function, starts):
    assert SpawnFinder().starts_processes(function) is starts


def test_the_server_helpers_are_seen_and_this_test_is_not_integration(request):
    finder = SpawnFinder()
    assert finder.starts_processes(servers.start_bsnode)
    assert finder.starts_processes(servers.start_beanstalkd)
    assert not finder.starts_processes(servers.free_port)
    assert request.node.get_closest_marker("integration") is None  # it starts nothing


def test_the_guard_refuses_every_way_and_puts_them_back():
    before = subprocess.Popen._execute_child, os.fork
    with forbid_processes("this test"):
        for start in (lambda: subprocess.run([sys.executable, "-c", ""]), os.fork,
                      lambda: os.posix_spawn(sys.executable, [sys.executable], {})):
            with pytest.raises(ProcessForbidden, match="this test starts a process"):
                start()
    assert (subprocess.Popen._execute_child, os.fork) == before


def test_project_functions_are_followed_classes_are_not():
    from bscluster import control, tls_init
    from bscluster.config import load_config
    from bscluster.supervisor import Supervisor
    finder = SpawnFinder()
    assert finder.starts_processes(control.start_detached)
    assert finder.starts_processes(tls_init.make_ca)  # runs openssl
    assert not finder.starts_processes(load_config)
    assert not finder._follow(Supervisor)  # driven on a fake clock by unit tests
