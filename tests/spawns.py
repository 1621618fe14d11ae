"""Which tests start processes: the `integration` marker, applied by conftest.

How this works
--------------
A test is integration when it starts a process (a bsnode, beanstalkd, a
cluster, openssl, a CLI run as a command).  Nobody marks that by hand:
``item_starts_processes`` reads the code a test can reach, its own function
and every fixture it uses (pytest's fixture closure, so a fixture built on
``bsnode`` counts), and follows each global name that is test-suite code
(tests/servers.py's ``start_bsnode``, a module's ``Cluster`` class, a helper,
a table of them) or a plain function of the project (``control.start_detached``,
``tls_init.make_ca``) until it finds a way to start a process: the
``subprocess`` or ``multiprocessing`` module, or ``os.fork``/``posix_spawn``
and friends.  Reaching one is enough: the test is marked.

Reading code can miss a path (the project's classes are not followed, so
that tests driving the supervisor on a fake clock stay unit tests), so
``forbid_processes`` is the check: in a ``-m "not integration"`` run every
unmarked test runs (fixtures included) with process creation made to fail,
naming the test, so a miss is a failure, not a process quietly started in a
unit run.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
_SPAWN_MODULES = ("subprocess", "multiprocessing")
_SPAWN_NAMES = frozenset({"fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve",
                          "execvp", "execvpe"})


PRODUCT_PACKAGES = ("bsnode", "bsclient", "bscluster")


def _is_product_function(obj: object) -> bool:
    """A plain function of this project (bscluster.tls_init.make_ca running
    openssl, control.start_detached).  Classes are not followed: tests drive
    the supervisor on a fake clock with no process; one that lets it spawn is
    caught by ``forbid_processes``."""
    module = getattr(obj, "__module__", None) or ""
    return isinstance(obj, types.FunctionType) and module.split(".")[0] in PRODUCT_PACKAGES


def _is_test_code(obj: object) -> bool:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return path is not None and Path(path).resolve().is_relative_to(TESTS_DIR)


def _codes(obj: object) -> Iterator[tuple[types.CodeType, dict]]:
    """Every code object of a function or class, with the globals it resolves names in."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if isinstance(obj, type):
        for member in vars(obj).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                yield from _codes(member)
    elif isinstance(obj, types.FunctionType):
        stack = [obj.__code__]
        while stack:
            code = stack.pop()
            yield code, obj.__globals__
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


class SpawnFinder:
    """Remembers what it has read, so a suite's worth of tests stays cheap."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}

    def starts_processes(self, obj: object) -> bool:
        key = id(obj)
        if key not in self._known:
            self._known[key] = False  # cycles: assume no while reading
            self._known[key] = self._reads_spawn(obj)
        return self._known[key]

    def _reads_spawn(self, obj: object) -> bool:
        for code, names in _codes(obj):
            for name in code.co_names:
                if name in _SPAWN_MODULES or name in _SPAWN_NAMES:
                    return True
                target = names.get(name)
                if target is None or isinstance(target, (int, float, str, bytes)):
                    continue
                if getattr(target, "__module__", None) in _SPAWN_MODULES:
                    return True
                if any(self._follow(t) for t in _callables(target)):
                    return True
        return False

    def _follow(self, target: object) -> bool:
        return (_is_test_code(target) or _is_product_function(target)) and \
            self.starts_processes(target)


def _callables(target: object) -> tuple[object, ...]:
    """A function or class, or those held in a table (``STARTERS[kind](...)``)."""
    if isinstance(target, (types.FunctionType, type)):
        return (target,)
    if isinstance(target, dict):
        target = tuple(target.values())
    if isinstance(target, (tuple, list)) and len(target) < 100:
        return tuple(t for t in target if isinstance(t, (types.FunctionType, type)))
    return ()


def item_starts_processes(finder: SpawnFinder, item) -> bool:
    """Does this test, or any fixture it uses, reach a way to start a process?"""
    function = getattr(item, "function", None)
    if function is not None and finder.starts_processes(function):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            if _is_test_code(fixturedef.func) and finder.starts_processes(fixturedef.func):
                return True
    return False


class ProcessForbidden(AssertionError):
    pass


@contextlib.contextmanager
def forbid_processes(test_id: str) -> Iterator[None]:
    """Make every way of starting a process fail while the test runs."""
    def refuse(*args, **kwargs):
        raise ProcessForbidden(
            f"{test_id} starts a process but is not marked integration; start it "
            f"through a fixture, a tests/ helper or a project function, which "
            f"tests/spawns.py follows, not through a method of a project class")

    patches = [(subprocess.Popen, "_execute_child"), (os, "fork"), (os, "posix_spawn"),
               (os, "posix_spawnp"), (os, "system"), (multiprocessing.Process, "start")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patches
             if hasattr(owner, name)]
    for owner, name, _ in saved:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
