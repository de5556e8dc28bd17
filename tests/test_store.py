"""The SQLite store: migrations keep data across upgrades; a newer schema is refused clearly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from triage.core.errors import StoreError
from triage.store.db import Database
from triage.store.ledger import Ledger
from triage.store.schema import MIGRATIONS


def test_a_version_1_database_upgrades_without_losing_data(tmp_path: Path) -> None:
    """A store written by the first schema gains every later migration and keeps its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, created_at,"
        " updated_at) VALUES ('a', 'INBOX', 7, 42, '<kept@example.test>', 'then', 'then')"
    )
    conn.commit()
    conn.close()

    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    row = Ledger(db).rows_for("a", "INBOX", 7, [42])[42]
    assert row.message_id == "<kept@example.test>"
    db.close()


def test_a_fresh_database_gets_the_latest_schema_and_reopens(tmp_path: Path) -> None:
    """Opening twice applies migrations once."""
    path = tmp_path / "new.db"
    Database(path).close()
    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    db.close()


def test_a_database_from_a_newer_triage_is_refused(tmp_path: Path) -> None:
    """Downgrading never silently corrupts: a newer schema is a clear one-line StoreError."""
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this triage"):
        Database(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """Garbage instead of a database: StoreError naming the file, no traceback from sqlite."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        Database(path)


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    """Effects and their records land together or not at all."""
    db = Database(tmp_path / "t.db")
    with pytest.raises(RuntimeError), db.transaction() as c:
        c.execute("INSERT INTO kv (key, value) VALUES ('a', 'b')")
        raise RuntimeError("boom")
    assert db.reads.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 0
    db.close()
