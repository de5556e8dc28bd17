"""Runs the `triage` command with the store failing as a full disk does (for fault tests).

    python tests/fault_driver.py --config CONFIG run

Every write that records a fetched message raises `sqlite3.OperationalError("database or disk is
full")`, as SQLite does when the disk under the store fills up.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence

from triage.cli.main import main
from triage.store.ledger import Ledger


def disk_full(*_args: object, **_kwargs: object) -> None:
    """What SQLite raises when the disk is full."""
    raise sqlite3.OperationalError("database or disk is full")


def arm(names: Sequence[str] = ("record_seen",)) -> None:
    """Make the ledger's writes of `names` fail like a full disk."""
    for name in names:
        setattr(Ledger, name, disk_full)


if __name__ == "__main__":
    arm()
    sys.argv[0] = "triage"
    main()
