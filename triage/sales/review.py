"""The review queue: messages the classifier was not sure enough about wait here for a person.

A label given in review is recorded three ways, in one transaction: on the ledger row
(`messages.reviewed_label`, `reviewed_by`), as a correction (source `review`) that becomes training
data, and — for `sales` or `marketing` — as a lead, exactly as the pipeline would have recorded it
had the classifier been sure. A reviewed message is never auto-answered: a person who labels it
sales is expected to answer it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from triage.core.errors import TriageError
from triage.core.models import LABELS, Address, LeadKind
from triage.core.settings import Settings
from triage.parsing.contacts import extract
from triage.sales.leads import assign_owner, business_due
from triage.store.corrections import insert_correction
from triage.store.db import Database, Tx, timestamp
from triage.store.leads import NewLead, record_lead

_PENDING = "decision = 'review' AND reviewed_label IS NULL"
_LEAD_KIND = {"sales": LeadKind.HOT, "marketing": LeadKind.NURTURE}


class ReviewError(TriageError):
    """Raised when a review command names an unknown message or label, or a message that is not
    (or no longer) waiting for review. A user mistake."""


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One message waiting for a person: what the model guessed, and how sure it was."""

    row_id: int
    message_id: str
    sender: str
    subject: str
    body: str
    guess: str
    confidence: float
    explanation: tuple[str, ...]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Labelled:
    """The result of labelling one message: the lead it made or joined, if any."""

    row_id: int
    label: str
    lead_id: int | None


def _terms(value: str | None) -> tuple[str, ...]:
    try:
        terms = json.loads(value or "[]")
    except ValueError:
        return ()
    return tuple(str(t) for t in terms) if isinstance(terms, list) else ()


def _item(r: sqlite3.Row) -> ReviewItem:
    return ReviewItem(
        row_id=int(r["id"]),
        message_id=r["message_id"],
        sender=r["sender"],
        subject=r["subject"],
        body=r["body"] or "",
        guess=r["label"] or "",
        confidence=float(r["confidence"] or 0.0),
        explanation=_terms(r["explanation"]),
        received_at=datetime.fromisoformat(r["created_at"]),
    )


def pending(c: Tx, limit: int | None = None) -> list[ReviewItem]:
    """Messages waiting for review, oldest first (at most `limit`)."""
    rows = c.execute(
        f"SELECT * FROM messages WHERE {_PENDING} ORDER BY id LIMIT ?",  # noqa: S608
        (-1 if limit is None else limit,),
    )
    return [_item(r) for r in rows]


def pending_count(c: Tx) -> int:
    """How many messages wait for review."""
    row = c.execute(f"SELECT COUNT(*) FROM messages WHERE {_PENDING}").fetchone()  # noqa: S608
    return int(row[0])


def label(
    db: Database,
    row_id: int,
    new_label: str,
    settings: Settings,
    *,
    by: str = "",
    now: datetime | None = None,
) -> Labelled:
    """Give message `row_id` (the ledger id `triage review list` shows) its label.

    Raises ReviewError for an unknown label or message, or one that was not sent to review or
    was already labelled.
    """
    if new_label not in LABELS:
        raise ReviewError(f"unknown label {new_label!r}; one of: {', '.join(LABELS)}")
    moment = now or datetime.now(UTC)
    at = timestamp(moment)
    with db.transaction() as c:
        row = c.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no message {row_id}")
        if row["decision"] != "review":
            raise ReviewError(
                f"message {row_id} was not sent to review (decision: {row['decision'] or 'none'})"
            )
        if row["reviewed_label"] is not None:
            who = f" by {row['reviewed_by']}" if row["reviewed_by"] else ""
            raise ReviewError(f"message {row_id} is already labelled {row['reviewed_label']}{who}")
        c.execute(
            "UPDATE messages SET reviewed_label = ?, reviewed_by = ?, updated_at = ? WHERE id = ?",
            (new_label, by, at, row_id),
        )
        insert_correction(
            c,
            message_row=row_id,
            message_id=row["message_id"],
            old_label=row["label"],
            new_label=new_label,
            source="review",
            subject=row["subject"],
            body=row["body"] or "",
            raw=row["raw"],
        )
        kind = _LEAD_KIND.get(new_label)
        lead_id = None if kind is None else _record(c, row, kind, new_label, by, settings)
    return Labelled(row_id, new_label, lead_id)


def _record(
    c: Tx,
    row: sqlite3.Row,
    kind: LeadKind,
    new_label: str,
    by: str,
    settings: Settings,
) -> int:
    """Record the lead the pipeline would have recorded; the contact comes from what the ledger
    kept (sender and body: form fields, signature lines)."""
    contact = extract(Address("", row["sender"]), (), row["body"] or "")
    if not contact.email:
        contact = replace(contact, email=row["sender"])
    # The prospect has waited since the message arrived, not since the review: count from then.
    arrived = datetime.fromisoformat(row["created_at"])
    hot = kind is LeadKind.HOT
    reason = f"labelled {new_label} in review" + (f" by {by}" if by else "")
    return record_lead(
        c,
        NewLead(
            message_row=int(row["id"]),
            kind=kind,
            contact=contact,
            label=new_label,
            confidence=1.0,
            explanation=(reason, *_terms(row["explanation"])),
            due_at=business_due(arrived, settings.leads.response_target_hours, settings)
            if hot
            else None,
            owner=assign_owner(c, settings.leads) if hot else "",
        ),
    )
