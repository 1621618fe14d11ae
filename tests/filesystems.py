"""Directories on each kind of filesystem this machine offers, for the binlog tests.

How this works
--------------
The binlog writes records through a memory map on filesystems where
allocated space stays allocated (ext4, xfs, tmpfs) and through pwrite
elsewhere (overlayfs: every container's root, copy-on-write or network
filesystems); node/binlog_io.py makes that choice.  The binlog's tests run
their data dir on each kind, so both ways are checked on the filesystems
users have:

* ``ext4`` (or whatever the temporary directory is on): ``tempfile.gettempdir()``;
* ``tmpfs``: /dev/shm, or a tmpfs mounted here when running as root;
* ``overlay``: an overlayfs mounted here (root only; a container's root
  filesystem already is one, then the temporary directory covers it).

``BSNODE_TEST_FS`` (e.g. ``ext4,overlay``) limits the runs to those kinds;
a kind that is asked for but cannot be had is an error, not a skip.
Everything mounted is unmounted when the session ends.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bsnode.binlog_io import filesystem_type

ENV = "BSNODE_TEST_FS"
_SHM = "/dev/shm"
_MNT_DETACH = 2  # umount2 flag: detach now, finish when no longer busy


def wanted_kinds() -> tuple[str, ...] | None:
    """The kinds ``BSNODE_TEST_FS`` names, or None for every one available."""
    value = os.environ.get(ENV, "").strip()
    return tuple(k.strip() for k in value.split(",") if k.strip()) or None


def param_kinds() -> list[str]:
    """The kinds to parametrize over (known before anything is mounted)."""
    default = filesystem_type(tempfile.gettempdir()) or "unknown"
    return list(wanted_kinds() or dict.fromkeys((default, "tmpfs", "overlay")))


def _mount(stack: ExitStack, kind: str, options: str, where: str) -> str | None:
    """mount(2) (no process: these tests stay unit tests); None when mounted
    (unmounted with the stack), else why not."""
    if os.geteuid() != 0:
        return f"mounting a {kind} needs root"
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(where)
    if libc.mount(kind.encode(), target, kind.encode(), 0, options.encode()) != 0:
        return f"mount -t {kind} failed: {os.strerror(ctypes.get_errno())}"
    stack.callback(libc.umount2, target, _MNT_DETACH)
    return None


def _overlay(stack: ExitStack, top: str) -> tuple[str | None, str | None]:
    parts = {p: os.path.join(top, "overlay-" + p) for p in ("lower", "upper", "work", "merged")}
    for path in parts.values():
        os.mkdir(path)
    why = _mount(stack, "overlay", f"lowerdir={parts['lower']},upperdir={parts['upper']},"
                                   f"workdir={parts['work']}", parts["merged"])
    return (None, why) if why else (parts["merged"], None)


def _tmpfs(stack: ExitStack, top: str) -> tuple[str | None, str | None]:
    if filesystem_type(_SHM) == "tmpfs" and os.access(_SHM, os.W_OK):
        where = tempfile.mkdtemp(prefix="bsnode-test-", dir=_SHM)
        stack.callback(shutil.rmtree, where, True)
        return where, None
    where = os.path.join(top, "tmpfs")
    os.mkdir(where)
    why = _mount(stack, "tmpfs", "size=256m,mode=0700", where)
    return (None, why) if why else (where, None)


@contextmanager
def filesystem_dirs() -> Iterator[dict[str, tuple[str | None, str | None]]]:
    """{kind: (a directory on it, None)} or {kind: (None, why there is none)}."""
    with ExitStack() as stack:
        top = tempfile.mkdtemp(prefix="bsnode-fs-")
        stack.callback(shutil.rmtree, top, True)
        found = {filesystem_type(top) or "unknown": (top, None)}
        for kind, make in (("tmpfs", _tmpfs), ("overlay", _overlay)):
            if kind not in found:
                found[kind] = make(stack, top)
        for kind, (where, _) in list(found.items()):
            if where is not None and filesystem_type(where) != kind:
                found[kind] = (None, f"{where} is {filesystem_type(where)}, not {kind}")
        yield found
