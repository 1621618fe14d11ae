"""The tests' server plumbing: ``bscluster.procs`` (shared with bench/), re-exported
under the name the test modules import."""

from bscluster.procs import (  # noqa: F401 - re-exported
    BEANSTALKD,
    HAVE_BEANSTALKD,
    START_DEADLINE,
    Server,
    _drain,  # noqa: F401 - tests/differential/pristine.py
    bscluster_command,
    bsnode_command,
    free_port,
    poll,
    start,
    start_beanstalkd,
    start_bsnode,
    wait_connectable,
)
