"""The SQLite database file: opening it, migrating it, and transactions.

One `Database` wraps one connection. Writes happen inside `transaction()`, which commits on
success and rolls back on error, so an effect and its record land together or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from triage.errors import StoreError
from triage.store.schema import MIGRATIONS


def utcnow() -> str:
    """The current time as the ISO 8601 text stored in every timestamp column."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Database:
    """An open, migrated triage database."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
            # the block we say it is.
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop
            # the last transactions, and the ledger makes that safe to redo.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"the database {path} is unusable: {exc}") from None

    @property
    def schema_version(self) -> int:
        """The `user_version` of the open database: how many migrations it has had."""
        row = self.conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the database {self.path} has schema {current}, newer than this triage "
                f"({len(MIGRATIONS)}); upgrade triage"
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # executescript commits first; wrap each migration so it applies entirely or not.
            self.conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        self.conn.close()
