"""Saved versions of reply template files (table `template_versions`): what the console's editor
wrote, who saved it and when, for the history, the diff and rollback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from triage.store.db import Row, Tx, inserted_id, timestamp


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One saved text of one template file."""

    id: int
    filename: str
    text: str
    saved_by: str
    saved_at: str
    note: str


def _version(r: Row) -> TemplateVersion:
    return TemplateVersion(
        int(r["id"]), r["filename"], r["text"], r["saved_by"], r["saved_at"], r["note"]
    )


def add(c: Tx, filename: str, text: str, saved_by: str, now: datetime, note: str = "") -> int:
    """Record one version of `filename` inside the caller's transaction; returns its id."""
    cur = c.execute(
        "INSERT INTO template_versions (filename, text, saved_by, saved_at, note)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (filename, text, saved_by, timestamp(now), note),
    )
    return inserted_id(cur)


def history(c: Tx, filename: str) -> list[TemplateVersion]:
    """Every version of `filename`, newest first."""
    rows = c.execute(
        "SELECT * FROM template_versions WHERE filename = ? ORDER BY id DESC", (filename,)
    )
    return [_version(r) for r in rows]


def get(c: Tx, version_id: int) -> TemplateVersion | None:
    """One version by id, or None."""
    row = c.execute("SELECT * FROM template_versions WHERE id = ?", (version_id,)).fetchone()
    return _version(row) if row else None


def latest(c: Tx, filename: str) -> TemplateVersion | None:
    """The newest version of `filename`, or None before its first save."""
    row = c.execute(
        "SELECT * FROM template_versions WHERE filename = ? ORDER BY id DESC LIMIT 1", (filename,)
    ).fetchone()
    return _version(row) if row else None


def latest_by_file(c: Tx) -> dict[str, TemplateVersion]:
    """The newest version of every file that has one, by file name."""
    rows = c.execute(
        "SELECT * FROM template_versions WHERE id IN"
        " (SELECT MAX(id) FROM template_versions GROUP BY filename)"
    )
    return {r["filename"]: _version(r) for r in rows}


@dataclass(frozen=True, slots=True)
class SampleMessage:
    """A recent answered-kind message (sales or marketing) a preview can reply to, with the lead
    it belongs to when there is one."""

    row_id: int
    message_id: str
    sender: str
    subject: str
    language: str
    decision: str
    reasons: str
    created_at: str
    lead_kind: str
    lead_email: str
    lead_name: str
    lead_company: str
    lead_owner: str


_SAMPLE_SELECT = (
    "SELECT m.id, m.message_id, m.sender, m.subject, m.language, m.decision, m.reasons,"
    " m.created_at, l.kind AS lead_kind, l.email AS lead_email, l.name AS lead_name,"
    " l.company AS lead_company, l.owner AS lead_owner"
    " FROM messages m"
    " LEFT JOIN leads l ON l.id = (SELECT lm.lead_id FROM lead_messages lm"
    "   WHERE lm.message_row = m.id ORDER BY lm.lead_id DESC LIMIT 1)"
)


def _sample(r: Row) -> SampleMessage:
    return SampleMessage(
        row_id=int(r["id"]),
        message_id=r["message_id"],
        sender=r["sender"] or "",
        subject=r["subject"] or "",
        language=r["language"] or "",
        decision=r["decision"] or "",
        reasons=r["reasons"] or "[]",
        created_at=r["created_at"],
        lead_kind=r["lead_kind"] or "",
        lead_email=r["lead_email"] or "",
        lead_name=r["lead_name"] or "",
        lead_company=r["lead_company"] or "",
        lead_owner=r["lead_owner"] or "",
    )


def recent_messages(c: Tx, limit: int = 20) -> list[SampleMessage]:
    """The latest messages decided sales or marketing, newest first."""
    rows = c.execute(
        _SAMPLE_SELECT + " WHERE m.decision IN ('sales', 'marketing')"
        " ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
        (limit,),
    )
    return [_sample(r) for r in rows]


def message(c: Tx, row_id: int) -> SampleMessage | None:
    """One message decided sales or marketing, or None."""
    row = c.execute(
        _SAMPLE_SELECT + " WHERE m.id = ? AND m.decision IN ('sales', 'marketing')", (row_id,)
    ).fetchone()
    return _sample(row) if row else None
