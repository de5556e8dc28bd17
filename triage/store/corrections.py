"""Corrections: labels people gave to handled messages, kept as training data for the model."""

from __future__ import annotations

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
