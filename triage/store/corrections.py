"""Corrections: labels people gave to handled messages, kept as training data for the model.

Each correction carries its `source` (where the label came from) and a `weight` (how much it
counts when training), both fixed when it is recorded from the one table `CORRECTION_WEIGHTS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triage.core.errors import StoreError
from triage.core.settings import StoreSettings
from triage.store.db import Tx, server_reads, utcnow

# A correction is one person's explicit judgement of the company's own mail; among hundreds of
# generic corpus messages a weight of 1 would barely move the model (POPFile-style learning needs
# a correction to change the decision for that kind of message).
PERSON_WEIGHT = 8.0
# A lead closed won or lost confirms the label the model gave: true, but no news to the model,
# so it counts like one corpus message.
CONFIRMATION_WEIGHT = 1.0

# The one table of correction sources and their weights; training reads the stored weight.
CORRECTION_WEIGHTS: Mapping[str, float] = {
    "review": PERSON_WEIGHT,  # `triage review label`
    "folder": PERSON_WEIGHT,  # moved into another Triage/<Label> folder
    "keyword": PERSON_WEIGHT,  # given another $Triage-<Label> keyword
    "relabel": PERSON_WEIGHT,  # `triage leads relabel`: the lead's label was wrong
    "not-a-lead": PERSON_WEIGHT,  # `triage leads update --status dismissed --not-a-lead`
    "won": CONFIRMATION_WEIGHT,  # lead closed won: its label confirmed
    "lost": CONFIRMATION_WEIGHT,  # lead closed lost: still a real inquiry of its kind
}


def weight_for(source: str) -> float:
    """The weight of a correction from `source`; StoreError for a source not in the table."""
    try:
        return CORRECTION_WEIGHTS[source]
    except KeyError:
        raise StoreError(f"unknown correction source {source!r}") from None


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
    """Within the caller's transaction: record one correction, weighted by its `source`; False
    when it changes nothing (the message's latest correction already gives this label).

    A label given again after another one (sales, then marketing, then sales) becomes the latest
    again: training keeps the latest correction of a message, and one row per message and label
    would otherwise leave the label in between in force.
    """
    # One message's corrections are written one transaction at a time (a folder move seen by
    # an account's thread, a person's review in the console): the later one then sees the
    # earlier one as the latest, as SQLite's single writer guaranteed.
    c.dialect.lock(c, "correction", message_id)
    latest = c.execute(
        "SELECT id, new_label FROM corrections WHERE message_id = ?"
        " ORDER BY created_at DESC, id DESC LIMIT 1",
        (message_id,),
    ).fetchone()
    if latest is not None and latest["new_label"] == new_label:
        return False
    now = utcnow()
    moved = c.execute(
        "UPDATE corrections SET message_row = ?, old_label = ?, source = ?, weight = ?,"
        " created_at = ? WHERE message_id = ? AND new_label = ?",
        (message_row, old_label, source, weight_for(source), now, message_id, new_label),
    )
    if moved.rowcount:
        return True
    c.execute(
        "INSERT INTO corrections (message_row, message_id, old_label, new_label,"
        " source, weight, subject, body, raw, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_row,
            message_id,
            old_label,
            new_label,
            source,
            weight_for(source),
            subject,
            body,
            raw,
            now,
        ),
    )
    return True


@dataclass(frozen=True, slots=True)
class LeadCorrections:
    """What labelling a lead's messages recorded: how many corrections were new, and one note
    per message that could not be used (no Message-ID, no text left)."""

    label: str
    source: str
    added: int
    skipped: tuple[str, ...] = ()


def correct_lead_messages(c: Tx, lead_id: int, new_label: str, source: str) -> LeadCorrections:
    """Within the caller's transaction: record `new_label` as a correction of every message of
    lead `lead_id` (the lead workflow: won, lost, not a lead, relabelled).

    The messages' ledger labels are left as they are: the mailbox still carries the keyword of
    the model's decision, and the keyword scan would take a different ledger label for a new
    correction by a person (`triage.ingest.corrections`). A message without a Message-ID or
    without any text left (retention), or one that a confirmation (won, lost) would give a newer
    correction than a person's, is skipped with a note; the caller's change still happens.
    """
    rows = c.execute(
        "SELECT m.id, m.message_id, m.subject, m.body, m.raw,"
        " COALESCE(m.reviewed_label, m.decision) AS current"
        " FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
        " WHERE lm.lead_id = ? ORDER BY m.id",
        (lead_id,),
    ).fetchall()
    added = 0
    skipped = []
    confirmation = weight_for(source) < PERSON_WEIGHT
    for r in rows:
        message_id = (r["message_id"] or "").strip()
        body = r["body"] or ""
        raw = bytes(r["raw"]) if r["raw"] is not None else None
        if not message_id:
            skipped.append(f"message {r['id']} has no Message-ID")
            continue
        if not raw and not body.strip():
            # A subject alone is too little to learn from, and retention removed the rest.
            skipped.append(f"message {r['id']} has no text left (removed by retention)")
            continue
        if confirmation and _has_correction(c, message_id):
            # Training keeps the latest correction of a message: a confirmation of the model's
            # label must not become newer than what a person said about the message.
            skipped.append(f"message {r['id']} already has a correction; kept")
            continue
        added += insert_correction(
            c,
            message_row=int(r["id"]),
            message_id=message_id,
            old_label=r["current"],
            new_label=new_label,
            source=source,
            subject=r["subject"] or "",
            body=body,
            raw=raw,
        )
    if not rows:
        skipped.append(f"lead {lead_id} has no stored message")
    return LeadCorrections(new_label, source, added, tuple(skipped))


def _has_correction(c: Tx, message_id: str) -> bool:
    row = c.execute("SELECT 1 FROM corrections WHERE message_id = ? LIMIT 1", (message_id,))
    return row.fetchone() is not None


@dataclass(frozen=True, slots=True)
class StoredCorrection:
    """One correction as training reads it: the message, the label a person gave it, and how
    much it counts."""

    message_id: str
    new_label: str
    subject: str
    body: str
    raw: bytes | None
    weight: float = PERSON_WEIGHT


def read_corrections(store: StoreSettings | Path) -> list[StoredCorrection]:
    """Every correction in the store (a SQLite file's path, or the store settings), oldest
    first; StoreError when unreadable.

    The store is opened read-only and not migrated: training never changes it, and a running
    daemon may keep writing. A store from before weights were recorded weighs each correction
    by its source (a PostgreSQL store always has them).
    """
    if isinstance(store, StoreSettings) and store.is_postgresql:
        try:
            rows = [tuple(r) for r in server_reads(store).execute(_READ.format(weight="weight"))]
        except StoreError as exc:
            raise type(exc)(f"cannot read corrections: {exc}") from None
    else:
        rows = _read_sqlite(store.path if isinstance(store, StoreSettings) else store)
    return [
        StoredCorrection(
            message_id,
            new_label,
            subject,
            body,
            raw,
            float(stored) if stored is not None else CORRECTION_WEIGHTS.get(source, PERSON_WEIGHT),
        )
        for message_id, new_label, subject, body, raw, source, stored in rows
    ]


_READ = (
    "SELECT message_id, new_label, subject, body, raw, source, {weight}"
    " FROM corrections ORDER BY created_at, id"
)


def _read_sqlite(db_path: Path) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {db_path}: {exc}") from None
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(corrections)")}
        weight = "weight" if "weight" in columns else "NULL"
        return conn.execute(_READ.format(weight=weight)).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read corrections from {db_path}: {exc}") from None
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class CorrectionRow:
    """One correction as `triage corrections list` shows it."""

    id: int
    created_at: datetime
    message_row: int | None
    message_id: str
    subject: str
    old_label: str | None
    new_label: str
    source: str
    weight: float


def list_corrections(c: Tx, limit: int | None = None) -> list[CorrectionRow]:
    """Corrections, newest first (at most `limit`)."""
    rows = c.execute(
        "SELECT id, created_at, message_row, message_id, subject, old_label, new_label, source,"  # noqa: S608
        " weight FROM corrections ORDER BY created_at DESC, id DESC"
        + ("" if limit is None else " LIMIT ?"),
        () if limit is None else (limit,),
    )
    out = []
    for r in rows:
        created = datetime.fromisoformat(r["created_at"])
        out.append(
            CorrectionRow(
                id=int(r["id"]),
                created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
                message_row=r["message_row"],
                message_id=r["message_id"],
                subject=r["subject"] or "",
                old_label=r["old_label"],
                new_label=r["new_label"],
                source=r["source"],
                weight=float(r["weight"]),
            )
        )
    return out
