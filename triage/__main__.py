"""Allows `python -m triage`."""

from triage.cli.main import main

main()
