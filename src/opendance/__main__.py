"""`python -m opendance` is the `opendance` command."""

from opendance.cli import main

main()
