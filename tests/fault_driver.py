"""Runs the `triage` command with the store failing as a full disk does (for fault tests).

    python tests/fault_driver.py --config CONFIG run
    TRIAGE_FAULT_ACCOUNT=sales python tests/fault_driver.py --config CONFIG run

Every write that records a fetched message raises `sqlite3.OperationalError("database or disk is
full")`, as SQLite does when the disk under the store fills up. With `TRIAGE_FAULT_ACCOUNT` set,
the store works and instead every pass over that account's folders raises `RuntimeError` (a
failure that is neither the store's nor a server's), while the other accounts work.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence

from triage.cli.main import main
from triage.ingest.sync import FolderSync, SyncResult
from triage.store.ledger import Ledger


def disk_full(*_args: object, **_kwargs: object) -> None:
    """What SQLite raises when the disk is full."""
    raise sqlite3.OperationalError("database or disk is full")


def arm(names: Sequence[str] = ("record_seen",)) -> None:
    """Make the ledger's writes of `names` fail like a full disk."""
    for name in names:
        setattr(Ledger, name, disk_full)


def break_account(name: str) -> None:
    """Make every pass over the folders of account `name` fail with a RuntimeError."""
    real = FolderSync.sync

    def sync(self: FolderSync) -> SyncResult:
        if self.account == name:
            raise RuntimeError(f"injected fault in account {name}")
        return real(self)

    FolderSync.sync = sync  # type: ignore[method-assign]


if __name__ == "__main__":
    account = os.environ.get("TRIAGE_FAULT_ACCOUNT")
    if account:
        break_account(account)
    else:
        arm()
    sys.argv[0] = "triage"
    main()
