"""Handled messages as people label them: the review queue and the labels given to ledger rows.

This module is the SQL only; what a label causes (a correction, a lead) is decided in
`triage.sales.review`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from triage.core.models import DECISIONS
from triage.store.db import Row, Tx, timestamp

_PENDING = "decision = 'review' AND reviewed_label IS NULL"
_CHUNK = 500  # uids per query: well below SQLite's limit on bound parameters


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One message waiting for a person: what the model guessed, and how sure it was.

    `uncertainty` is 1 - (p_top - p_second) of the stored probabilities, between 0 and 1 (1: the
    two likeliest labels were equally likely), or None when no probabilities were stored.
    """

    row_id: int
    message_id: str
    sender: str
    subject: str
    body: str
    guess: str
    confidence: float
    explanation: tuple[str, ...]
    received_at: datetime
    uncertainty: float | None = None
    probabilities: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerMessage:
    """A handled message as the ledger keeps it, with the labels the model and people gave.

    `raw` is None when it was not read (the mailbox has it) or retention removed it.
    """

    row_id: int
    message_id: str
    uid: int
    sender: str
    subject: str
    body: str
    label: str | None
    decision: str | None
    reviewed_label: str | None
    reviewed_by: str
    explanation: tuple[str, ...]
    received_at: datetime
    raw: bytes | None = None

    @property
    def current_label(self) -> str | None:
        """The label that stands: a person's, else the decision."""
        return self.reviewed_label or self.decision


def terms(value: str | None) -> tuple[str, ...]:
    """The stored JSON list of explanation terms; () when it is missing or malformed."""
    try:
        found = json.loads(value or "[]")
    except ValueError:
        return ()
    return tuple(str(t) for t in found) if isinstance(found, list) else ()


def probabilities(value: str | None) -> tuple[tuple[str, float], ...]:
    """The stored JSON object of label probabilities as (label, p) pairs, likeliest first; ()
    when missing or malformed."""
    try:
        found = json.loads(value or "{}")
    except ValueError:
        return ()
    if not isinstance(found, dict):
        return ()
    pairs = [
        (str(k), float(v))
        for k, v in found.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return tuple(sorted(pairs, key=lambda pair: -pair[1]))


def _item(r: Row) -> ReviewItem:
    return ReviewItem(
        row_id=int(r["id"]),
        message_id=r["message_id"],
        sender=r["sender"],
        subject=r["subject"],
        body=r["body"] or "",
        guess=r["label"] or "",
        confidence=float(r["confidence"] or 0.0),
        explanation=terms(r["explanation"]),
        received_at=datetime.fromisoformat(r["created_at"]),
        uncertainty=None if r["uncertainty"] is None else float(r["uncertainty"]),
        probabilities=probabilities(r["probabilities"]),
    )


def _message(r: Row) -> LedgerMessage:
    keys = r.keys()
    return LedgerMessage(
        row_id=int(r["id"]),
        message_id=r["message_id"],
        uid=int(r["uid"]),
        sender=r["sender"] or "",
        subject=r["subject"] or "",
        body=r["body"] or "",
        label=r["label"],
        decision=r["decision"],
        reviewed_label=r["reviewed_label"],
        reviewed_by=r["reviewed_by"] or "",
        explanation=terms(r["explanation"]),
        received_at=datetime.fromisoformat(r["created_at"]),
        raw=bytes(r["raw"]) if "raw" in keys and r["raw"] is not None else None,
    )


def pending(c: Tx, limit: int | None = None) -> list[ReviewItem]:
    """Messages waiting for review, the one whose label would teach the model most first (at most
    `limit`): by uncertainty, highest first, then oldest first; messages without stored
    probabilities come last. The one order of the review queue, for every view of it."""
    rows = c.execute(
        # How much a person's label would teach the model (the dialect's `uncertainty`): equal
        # margins tie after its rounding, and the tie goes to the oldest message.
        f"SELECT m.*, {c.dialect.uncertainty} AS uncertainty FROM messages m"  # noqa: S608
        f" WHERE {_PENDING} ORDER BY uncertainty DESC NULLS LAST, m.created_at, m.id"
        + ("" if limit is None else " LIMIT ?"),
        () if limit is None else (limit,),
    )
    return [_item(r) for r in rows]


def pending_count(c: Tx) -> int:
    """How many messages wait for review."""
    row = c.execute(f"SELECT COUNT(*) FROM messages WHERE {_PENDING}").fetchone()  # noqa: S608
    return int(row[0])


def get_message(c: Tx, row_id: int) -> LedgerMessage | None:
    """Ledger row `row_id` with its raw message, or None."""
    row = c.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
    return _message(row) if row else None


def latest_message(c: Tx, account: str, message_id: str) -> LedgerMessage | None:
    """The newest ledger row of `account` with this Message-ID, or None."""
    row = c.execute(
        "SELECT * FROM messages WHERE account = ? AND message_id = ? ORDER BY id DESC LIMIT 1",
        (account, message_id),
    ).fetchone()
    return _message(row) if row else None


def relabelled(
    c: Tx, account: str, folder: str, uidvalidity: int, uids: Sequence[int], label: str
) -> dict[int, LedgerMessage]:
    """By uid: the decided rows among `uids` whose standing label differs from `label`.

    Filtered in SQL and without the raw message: a mailbox holds thousands of keyworded messages
    and almost none of them was re-labelled, so their contents are never read into memory.
    """
    out: dict[int, LedgerMessage] = {}
    for start in range(0, len(uids), _CHUNK):
        chunk = list(uids[start : start + _CHUNK])
        wanted_uids, uid_params = c.dialect.in_list("uid", chunk)
        decisions, decision_params = c.dialect.in_list("decision", DECISIONS)
        cur = c.execute(
            "SELECT id, uid, message_id, sender, subject, body, label, decision,"  # noqa: S608
            " reviewed_label, reviewed_by, explanation, created_at"
            " FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ?"
            f" AND {wanted_uids} AND {decisions}"
            " AND COALESCE(reviewed_label, decision) != ?",
            (account, folder, uidvalidity, *uid_params, *decision_params, label),
        )
        out.update((int(r["uid"]), _message(r)) for r in cur)
    return out


def set_reviewed_label(c: Tx, row_id: int, label: str, by: str, now: datetime) -> None:
    """Within the caller's transaction: remember the label a person gave ledger row `row_id`."""
    c.execute(
        "UPDATE messages SET reviewed_label = ?, reviewed_by = ?, updated_at = ? WHERE id = ?",
        (label, by, timestamp(now), row_id),
    )
