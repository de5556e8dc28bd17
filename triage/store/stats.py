"""Counts over the store for monitoring and overviews: metrics gauges and the demo's tables.

Reads only; each is one indexed query (or a few), cheap enough for every scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from triage.store.db import Tx
from triage.store.review import pending_count, terms


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What waits: for review, for a claim (the oldest new hot lead), for sending."""

    review: int
    oldest_new_hot_lead: str | None  # its creation time as stored, None when there is none
    queued_replies: int


def queue_counts(c: Tx) -> QueueCounts:
    """The review queue size, the oldest unclaimed hot lead's creation time, the outbox depth."""
    oldest = c.execute(
        "SELECT MIN(created_at) FROM leads WHERE kind = 'hot' AND status = 'new'"
    ).fetchone()[0]
    queued = c.execute("SELECT COUNT(*) FROM replies WHERE state = 'queued'").fetchone()[0]
    return QueueCounts(pending_count(c), oldest, int(queued))


@dataclass(frozen=True, slots=True)
class HandledMessage:
    """One message of the ledger with what became of it, for an overview table."""

    sender: str
    subject: str
    decision: str  # the decision, or the ledger state while there is none
    confidence: float | None
    reply_state: str | None
    reasons: tuple[str, ...]
    explanation: tuple[str, ...]


def handled_messages(c: Tx) -> list[HandledMessage]:
    """Every ledger message with its decision and reply state, oldest first."""
    rows = c.execute(
        "SELECT m.*, (SELECT state FROM replies r WHERE r.message_row = m.id"
        " ORDER BY r.id LIMIT 1) AS reply_state"
        " FROM messages m ORDER BY m.id"
    )
    return [
        HandledMessage(
            sender=r["sender"] or "",
            subject=r["subject"] or "",
            decision=r["decision"] or r["state"],
            confidence=r["confidence"],
            reply_state=r["reply_state"],
            reasons=terms(r["reasons"]),
            explanation=terms(r["explanation"]),
        )
        for r in rows
    ]
