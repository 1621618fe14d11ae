"""Job ids the proxy hands out: one number per (node, node's job id).

How this works
--------------
Every node numbers its own jobs 1, 2, 3, ...; two nodes reuse the same ids.
A beanstalkd client knows only a number, so the proxy folds the node into it:

    proxy id = node job id * ID_RADIX + (I - 1)        for node ``nodeI``

``I`` is the number in the node's stable name (node1 .. node1000, the
names ``bscluster`` gives its nodes and the ring hashes), never a position in
a list or an address.  The id is a pure function of (node, node's job id):
no table, no state, so it means the same in every proxy process, before and
after a proxy restart, and for as long as the job lives on its node.

Limits (docs/PROXY.md, "Job ids"):

* at most ``ID_RADIX`` (1000, bscluster's ``MAX_NODES``) nodes;
* a node's own ids must stay below (2**64 - 1) / ID_RADIX (1.8e16) to fit
  beanstalkd's u64; clients that keep ids in a double (JavaScript) are exact
  up to 2**53, i.e. while a node has handed out fewer than 9e12 ids;
* renumbering a node (its jobs served under another nodeI name) changes its
  jobs' ids; a removed node's ids answer NOT_FOUND.
"""

from __future__ import annotations

from bsclient.protocol import U64_MAX
from bscluster.config import MAX_NODES

ID_RADIX = MAX_NODES  # changing it changes every id a proxy ever handed out
_PREFIX = "node"
_DIGITS = len(str(ID_RADIX - 1))
assert 10 ** _DIGITS == ID_RADIX, "digits() needs a power of ten"


def node_number(name: str) -> int:
    """1000 for "node1000"; ValueError for a name the scheme cannot carry."""
    digits = name[len(_PREFIX):]
    if not name.startswith(_PREFIX) or not digits.isdigit() or digits[0] == "0":
        raise ValueError(f"node name {name!r} is not nodeI: the proxy's job ids need "
                         f"numbered node names")
    number = int(digits)
    if number > ID_RADIX:
        raise ValueError(f"node {name}: the proxy's job ids carry at most {ID_RADIX} nodes")
    return number


def encode(node_number_: int, job_id: int) -> int:
    """The proxy id of job ``job_id`` on node ``node{node_number_}``."""
    return job_id * ID_RADIX + node_number_ - 1


def digits(node_number_: int) -> bytes:
    """What node ``node{node_number_}``'s job ids get appended, in decimal, to become proxy
    ids: ``encode(3, 17) == int(b"17" + digits(3))``, so a reply's id is rewritten by
    formatting ``b"%d%s" % (job_id, digits)``, without the arithmetic."""
    return b"%0*d" % (_DIGITS, node_number_ - 1)


def decode(proxy_id: int) -> tuple[str, int] | None:
    """``("node3", 17)`` for a proxy id; None for an id no node can have."""
    job_id, slot = divmod(proxy_id, ID_RADIX)
    if job_id == 0 or proxy_id > U64_MAX:
        return None
    name = _NAMES.get(slot)
    if name is None:
        name = _NAMES[slot] = f"{_PREFIX}{slot + 1}"
    return name, job_id


_NAMES: dict[int, str] = {}  # slot -> node name, as made (a command by id makes none)
