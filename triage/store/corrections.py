"""Corrections: labels people gave to handled messages, kept as training data for the model."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from triage.core.errors import StoreError
from triage.store.db import Tx, utcnow


def insert_correction(
    c: Tx,
    *,
    message_row: int | None,
    message_id: str,
    old_label: str | None,
    new_label: str,
    source: str,
    subject: str,
    body: str,
    raw: bytes | None,
) -> bool:
    """Within the caller's transaction: record one correction; False if it was already there."""
    cur = c.execute(
        "INSERT OR IGNORE INTO corrections (message_row, message_id, old_label, new_label,"
        " source, subject, body, raw, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (message_row, message_id, old_label, new_label, source, subject, body, raw, utcnow()),
    )
    return cur.rowcount > 0


@dataclass(frozen=True, slots=True)
class StoredCorrection:
    """One correction as training reads it: the message and the label a person gave it."""

    message_id: str
    new_label: str
    subject: str
    body: str
    raw: bytes | None


def read_corrections(db_path: Path) -> list[StoredCorrection]:
    """Every correction in the store at `db_path`, oldest first; StoreError when unreadable.

    The store is opened read-only and not migrated: training never changes it, and a running
    daemon may keep writing.
    """
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {db_path}: {exc}") from None
    try:
        rows = conn.execute(
            "SELECT message_id, new_label, subject, body, raw FROM corrections "
            "ORDER BY created_at, id"
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read corrections from {db_path}: {exc}") from None
    finally:
        conn.close()
    return [
        StoredCorrection(message_id, new_label, subject, body, raw)
        for message_id, new_label, subject, body, raw in rows
    ]
