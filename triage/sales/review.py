"""Labels people give: in the review queue (`triage review label`) or in their mail client.

The classifier was not sure enough about a `review` message, so it waits for a person. A label a
person gives — in review, or later by moving or keywording the message in the mailbox (see
`triage.ingest.corrections`) — is recorded by `relabel`, in the caller's one transaction: on the
ledger row (`messages.reviewed_label`, `reviewed_by`), as a correction that becomes training data,
and, when the label makes a lead (`triage.core.labels`) and the message has none yet, as the lead
the pipeline would have recorded had the classifier been sure; the audit log records who gave
which label (`review.label`, or `message.label` for a label given in the mailbox). A reviewed
message is never auto-answered: a person who labels it sales is expected to answer it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from triage.core.errors import TriageError
from triage.core.labels import lead_kind_for
from triage.core.models import LABELS, Address, LeadKind
from triage.core.settings import Settings
from triage.parsing.contacts import extract
from triage.sales.leads import assign_owner, business_due, record_event, record_lead_event
from triage.store import audit
from triage.store import review as store
from triage.store.corrections import insert_correction
from triage.store.db import Database, Tx
from triage.store.leads import NewLead, message_has_lead, record_lead
from triage.store.review import LedgerMessage, ReviewItem, pending, pending_count

__all__ = [
    "Labelled",
    "Relabelled",
    "ReviewError",
    "ReviewItem",
    "label",
    "pending",
    "pending_count",
    "relabel",
]


class ReviewError(TriageError):
    """Raised when a review command names an unknown message or label, or a message that is not
    (or no longer) waiting for review. A user mistake."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """The result of labelling one message: the lead it made or joined, if any."""

    row_id: int
    label: str
    lead_id: int | None


@dataclass(frozen=True, slots=True)
class Relabelled:
    """What one label given by a person recorded: a new correction or not, and the lead."""

    correction_added: bool
    lead_id: int | None


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
    with db.transaction() as c:
        message = store.get_message(c, row_id)
        if message is None:
            raise ReviewError(f"no message {row_id}")
        if message.decision != "review":
            raise ReviewError(
                f"message {row_id} was not sent to review (decision: {message.decision or 'none'})"
            )
        if message.reviewed_label is not None:
            who = f" by {message.reviewed_by}" if message.reviewed_by else ""
            raise ReviewError(f"message {row_id} is already labelled {message.reviewed_label}{who}")
        done = relabel(
            c,
            message,
            new_label,
            settings,
            old_label=message.label,
            source="review",
            by=by,
            reason=f"labelled {new_label} in review" + (f" by {by}" if by else ""),
            now=moment,
        )
    return Labelled(row_id, new_label, done.lead_id)


def relabel(
    c: Tx,
    message: LedgerMessage,
    new_label: str,
    settings: Settings,
    *,
    old_label: str | None,
    source: str,
    by: str,
    reason: str,
    subject: str | None = None,
    body: str | None = None,
    raw: bytes | None = None,
    now: datetime | None = None,
) -> Relabelled:
    """Within the caller's transaction: record the label `new_label` a person gave a handled
    message — on its ledger row, as a correction (`source`: review, folder, keyword), and, when
    the label makes a lead and the message is in none yet, as that lead.

    The correction keeps `subject`, `body` and `raw` when given (what the mailbox holds), else
    what the ledger kept. `reason` heads the lead's explanation.
    """
    moment = now or datetime.now(UTC)
    store.set_reviewed_label(c, message.row_id, new_label, by, moment)
    added = insert_correction(
        c,
        message_row=message.row_id,
        message_id=message.message_id,
        old_label=old_label,
        new_label=new_label,
        source=source,
        subject=message.subject if subject is None else subject,
        body=message.body if body is None else body,
        raw=message.raw if raw is None else raw,
    )
    kind = lead_kind_for(new_label)
    lead_id = None
    if kind is not None and not message_has_lead(c, message.row_id):
        lead_id = _record(c, message, kind, new_label, reason, settings)
    audit.record(
        c,
        by,
        "review.label" if source == "review" else "message.label",
        "message",
        message.row_id,
        {"label": new_label, "was": old_label, "source": source, "lead": lead_id},
        now=moment,
    )
    if lead_id is not None:
        record_lead_event(c, lead_id, "review", now=moment)
    record_event(
        c,
        "review.labelled",
        lead_id=lead_id,
        extra={
            "message": {
                "id": message.row_id,
                "message_id": message.message_id,
                "sender": message.sender,
                "subject": message.subject,
            },
            "label": new_label,
            "was": old_label,
            "source": source,
            "by": by,
        },
        now=moment,
    )
    return Relabelled(added, lead_id)


def _record(
    c: Tx,
    message: LedgerMessage,
    kind: LeadKind,
    new_label: str,
    reason: str,
    settings: Settings,
) -> int:
    """Record the lead the pipeline would have recorded; the contact comes from what the ledger
    kept (sender and body: form fields, signature lines)."""
    contact = extract(Address("", message.sender), (), message.body)
    if not contact.email:
        contact = replace(contact, email=message.sender)
    # The prospect has waited since the message arrived, not since the label: count from then.
    hot = kind is LeadKind.HOT
    return record_lead(
        c,
        NewLead(
            message_row=message.row_id,
            kind=kind,
            contact=contact,
            label=new_label,
            confidence=1.0,
            explanation=(reason, *message.explanation),
            due_at=business_due(message.received_at, settings.leads.response_target_hours, settings)
            if hot
            else None,
            owner=assign_owner(c, settings.leads) if hot else "",
        ),
    )
