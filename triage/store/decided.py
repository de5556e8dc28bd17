"""Handled messages as the ledger kept them, read-only: what `triage model compare` runs the live
and the candidate model over."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from triage.core.errors import StoreError
from triage.core.settings import StoreSettings
from triage.store.db import server_reads, timestamp


@dataclass(frozen=True, slots=True)
class DecidedMessage:
    """One decided message: what the ledger kept of it, and the decision it got."""

    row_id: int
    message_id: str
    sender: str
    subject: str
    body: str
    language: str
    decision: str
    # Why it was not answered, as recorded: a header rule's reason names the rule first.
    reasons: tuple[str, ...] = ()


def decided_since(store: StoreSettings | Path, since: datetime) -> list[DecidedMessage]:
    """The messages decided (sales, marketing, other or review) since `since`, oldest first,
    from the store (a SQLite file's path, or the store settings).

    The store is opened read-only and not migrated, like training's reads: comparing models
    never changes it, and a running daemon may keep writing. StoreError when it is unreadable.
    """
    params = (timestamp(since),)
    if isinstance(store, StoreSettings) and store.is_postgresql:
        try:
            rows = [tuple(r) for r in server_reads(store).execute(_DECIDED, params)]
        except StoreError as exc:
            raise type(exc)(f"cannot read messages: {exc}") from None
    else:
        rows = _read_sqlite(store.path if isinstance(store, StoreSettings) else store, params)
    return [
        DecidedMessage(
            int(row_id),
            message_id or "",
            sender or "",
            subject or "",
            body or "",
            lang or "",
            dec,
            _reasons(reasons),
        )
        for row_id, message_id, sender, subject, body, lang, dec, reasons in rows
    ]


_DECIDED = (
    "SELECT id, message_id, sender, subject, body, language, decision, reasons"
    " FROM messages WHERE decision IS NOT NULL AND created_at >= ? ORDER BY id"
)


def _read_sqlite(db_path: Path, params: tuple[str]) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {db_path}: {exc}") from None
    try:
        return conn.execute(_DECIDED, params).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read messages from {db_path}: {exc}") from None
    finally:
        conn.close()


def _reasons(stored: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(stored or "[]")
    except ValueError:
        return ()
    return tuple(str(r) for r in value) if isinstance(value, list) else ()
