"""`python -m bscluster` is the `bscluster` command."""

from bscluster.cli import main

main()
