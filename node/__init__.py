"""bsnode: one server speaking the beanstalkd 1.12 protocol (``python -m bsnode``)."""

from __future__ import annotations

import sys


def command_line() -> list[str]:
    """How to run this installation's bsnode, whatever PATH holds.

    The interpreter running this code, with ``-m bsnode``: the node that
    starts is the one installed beside the program that starts it (a venv's
    bin/ need not be on PATH).  Every launcher asks here.
    """
    return [sys.executable, "-m", "bsnode"]
