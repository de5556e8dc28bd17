"""Leads: prospects queued for sales staff (hot) or kept for nurture.

A lead gathers every message of one conversation: a new message from the same address joins the
prospect's open lead of the same kind (or upgrades a nurture lead to hot), so staff see one record
per prospect, not one per email.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from triage.models import Contact, LeadKind
from triage.store.db import utcnow

OPEN_STATUSES = ("new", "claimed", "contacted")


@dataclass(frozen=True, slots=True)
class NewLead:
    """What the pipeline knows about a prospect when one of their messages is handled."""

    message_row: int
    kind: LeadKind
    contact: Contact
    label: str
    confidence: float
    explanation: Sequence[str]
    due_at: datetime | None = None
    owner: str = ""


def record_lead(c: sqlite3.Connection, lead: NewLead) -> int:
    """Within the caller's transaction: add the message to the prospect's lead; return its id."""
    email = lead.contact.email.lower()
    now = utcnow()
    marks = ",".join("?" * len(OPEN_STATUSES))
    existing = c.execute(
        f"SELECT id, kind FROM leads WHERE email = ? AND status IN ({marks})"  # noqa: S608
        " ORDER BY kind = 'hot' DESC, id DESC LIMIT 1",
        (email, *OPEN_STATUSES),
    ).fetchone()
    if existing is None:
        cur = c.execute(
            "INSERT INTO leads (kind, email, name, company, phone, website, label, confidence,"
            " explanation, owner, due_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                lead.kind.value,
                email,
                lead.contact.name,
                lead.contact.company,
                lead.contact.phone,
                lead.contact.website,
                lead.label,
                lead.confidence,
                json.dumps(list(lead.explanation)),
                lead.owner,
                lead.due_at.isoformat() if lead.due_at else None,
                now,
                now,
            ),
        )
        lead_id = int(cur.lastrowid or 0)
    else:
        lead_id = int(existing["id"])
        upgrade = existing["kind"] != LeadKind.HOT.value and lead.kind is LeadKind.HOT
        # Fill contact fields a later message reveals; a nurture lead that turns hot is upgraded
        # (and gets the hot lead's due time) so it reaches sales staff.
        c.execute(
            "UPDATE leads SET name = COALESCE(NULLIF(name, ''), ?),"
            " company = COALESCE(NULLIF(company, ''), ?), phone = COALESCE(NULLIF(phone, ''), ?),"
            " website = COALESCE(NULLIF(website, ''), ?), updated_at = ?,"
            " kind = CASE WHEN ? THEN 'hot' ELSE kind END,"
            " label = CASE WHEN ? THEN ? ELSE label END,"
            " confidence = CASE WHEN ? THEN ? ELSE confidence END,"
            " explanation = CASE WHEN ? THEN ? ELSE explanation END,"
            " due_at = CASE WHEN ? THEN ? ELSE due_at END,"
            " digested_in = CASE WHEN ? THEN NULL ELSE digested_in END"
            " WHERE id = ?",
            (
                lead.contact.name,
                lead.contact.company,
                lead.contact.phone,
                lead.contact.website,
                now,
                upgrade,
                upgrade,
                lead.label,
                upgrade,
                lead.confidence,
                upgrade,
                json.dumps(list(lead.explanation)),
                upgrade,
                lead.due_at.isoformat() if lead.due_at else None,
                upgrade,
                lead_id,
            ),
        )
    c.execute(
        "INSERT OR IGNORE INTO lead_messages (lead_id, message_row) VALUES (?, ?)",
        (lead_id, lead.message_row),
    )
    return lead_id
