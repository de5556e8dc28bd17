"""Proving the store writable without changing it, for `triage doctor`."""

from __future__ import annotations

import sqlite3

from triage.core.errors import StoreError
from triage.store.db import Database


def probe_write(db: Database) -> int:
    """Take the write lock and write a row, then roll back; returns the schema version.
    StoreError if SQLite refuses.

    Nothing is left behind; a daemon holding the lock makes this wait up to the busy timeout.
    """
    try:
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            db.conn.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES ('doctor', 'write test')"
            )
        finally:
            db.conn.execute("ROLLBACK")
        return db.schema_version
    except sqlite3.Error as exc:
        raise StoreError(f"{db.path} is not writable: {exc}") from None
