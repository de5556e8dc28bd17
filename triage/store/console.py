"""What the console's dashboard and admin pages read: grouped figures, the decisions log, the
mailboxes and the outbox. Reads only.

Every figure over messages is one grouped query over an arrival range (`created_at`, indexed by
`messages_created` and the covering `messages_decided`), so a page stays fast with 100,000
messages. Days and weeks are UTC: the first ten characters of a stored timestamp are its UTC date.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from triage.core.models import DECISIONS
from triage.store.db import Row, Tx, timestamp
from triage.store.review import terms

PAGE_SIZE = 50


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- dashboard -----------------------------------------------------------------------------------


def decisions_per_day(c: Tx, start: datetime, end: datetime) -> dict[tuple[date, str], int]:
    """Messages decided per (UTC day of arrival, decision) in [start, end); backfill left out
    (it arrived when triage first saw the folder, not when it was written)."""
    rows = c.execute(
        "SELECT substr(created_at, 1, 10) AS day, decision, COUNT(*) AS n FROM messages"
        " WHERE created_at >= ? AND created_at < ? AND backfill = 0 AND decision IS NOT NULL"
        " GROUP BY day, decision",
        (timestamp(start), timestamp(end)),
    )
    return {(date.fromisoformat(r["day"]), r["decision"]): int(r["n"]) for r in rows}


@dataclass(frozen=True, slots=True)
class HotLeadTimes:
    """One hot lead's arrival and first human contact (None while nobody has contacted it)."""

    created_at: datetime
    contacted_at: datetime | None
    due_at: datetime | None


def hot_leads_since(c: Tx, start: datetime, end: datetime) -> list[HotLeadTimes]:
    """Hot leads created in [start, end): when they arrived, were contacted and were due.

    A few thousand rows at most (hot leads of twelve weeks); the weekly medians are computed by
    the caller from these.
    """
    rows = c.execute(
        "SELECT created_at, contacted_at, due_at FROM leads"
        " WHERE kind = 'hot' AND created_at >= ? AND created_at < ?",
        (timestamp(start), timestamp(end)),
    )
    out = []
    for r in rows:
        created = _time(r["created_at"])
        assert created is not None
        out.append(HotLeadTimes(created, _time(r["contacted_at"]), _time(r["due_at"])))
    return out


@dataclass(frozen=True, slots=True)
class ReviewSpan:
    """One message decided `review`: when it arrived and when a person labelled it (None while
    it waits)."""

    created_at: datetime
    reviewed_at: datetime | None


def review_spans(c: Tx, start: datetime) -> list[ReviewSpan]:
    """Messages decided `review` that were still waiting at some time after `start`.

    The ledger keeps no separate time for a review label: `updated_at` is taken, which the label
    sets (and nothing changes a labelled row later but retention, which removes it).
    """
    rows = c.execute(
        "SELECT created_at, reviewed_label, updated_at FROM messages"
        " WHERE decision = 'review' AND (reviewed_label IS NULL OR updated_at >= ?)",
        (timestamp(start),),
    )
    out = []
    for r in rows:
        created = _time(r["created_at"])
        assert created is not None
        reviewed = _time(r["updated_at"]) if r["reviewed_label"] is not None else None
        out.append(ReviewSpan(created, reviewed))
    return out


def replies_sent_per_day(c: Tx, start: datetime, end: datetime) -> dict[date, int]:
    """Replies sent, per UTC day they went to the mail server, in [start, end).

    Dated by `claimed_at` (indexed: when the reply was handed to SMTP, seconds before the
    server's answer dated `sent_at`): a reply a person settled as sent days later counts on the
    day it actually went out.
    """
    rows = c.execute(
        "SELECT substr(claimed_at, 1, 10) AS day, COUNT(*) AS n FROM replies"
        " WHERE claimed_at >= ? AND claimed_at < ? AND state = 'sent' GROUP BY day",
        (timestamp(start), timestamp(end)),
    )
    return {date.fromisoformat(r["day"]): int(r["n"]) for r in rows}


# --- decisions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One decided message in the decisions log."""

    id: int
    created_at: datetime
    sender: str
    subject: str
    decision: str
    label: str | None
    confidence: float | None
    reasons: tuple[str, ...]
    reply_state: str | None  # the latest reply's state, None when no reply was recorded


def _reply_states(c: Tx, rows: Sequence[int]) -> dict[int, str]:
    if not rows:
        return {}
    wanted, params = c.dialect.in_list("message_row", rows)
    found = c.execute(
        f"SELECT message_row, state FROM replies WHERE {wanted} ORDER BY id",  # noqa: S608
        params,
    )
    return {int(r["message_row"]): str(r["state"]) for r in found}


def recent_decisions(
    c: Tx, decision: str | None, page: int, size: int = PAGE_SIZE
) -> tuple[list[DecisionRow], bool]:
    """Page `page` (from 0) of the decided messages, newest first, optionally of one
    `decision`; and whether a further page exists."""
    where = "decision IS NOT NULL"
    params: list[object] = []
    if decision is not None:
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}")
        where = "decision = ?"
        params.append(decision)
    rows = c.execute(
        "SELECT id, created_at, sender, subject, decision, label, confidence, reasons"  # noqa: S608
        f" FROM messages WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        (*params, size + 1, page * size),
    ).fetchall()
    more = len(rows) > size
    rows = rows[:size]
    states = _reply_states(c, [int(r["id"]) for r in rows])
    out = []
    for r in rows:
        created = _time(r["created_at"])
        assert created is not None
        out.append(
            DecisionRow(
                id=int(r["id"]),
                created_at=created,
                sender=r["sender"] or "",
                subject=r["subject"] or "",
                decision=r["decision"],
                label=r["label"],
                confidence=None if r["confidence"] is None else float(r["confidence"]),
                reasons=terms(r["reasons"]),
                reply_state=states.get(int(r["id"])),
            )
        )
    return out, more


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """The reply recorded for a message (the newest, if several)."""

    id: int
    state: str
    recipient: str
    template: str
    mode: str
    created_at: datetime | None
    sent_at: datetime | None
    error: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class DecisionDetail:
    """One message of the ledger with everything its decision stored."""

    id: int
    message_id: str
    account: str
    folder: str
    created_at: datetime
    state: str
    sender: str
    subject: str
    language: str
    body: str | None
    decision: str | None
    label: str | None
    confidence: float | None
    probabilities: dict[str, float]
    explanation: tuple[str, ...]
    reasons: tuple[str, ...]
    may_reply: bool | None
    backfill: bool
    reviewed_label: str | None
    reviewed_by: str
    reply: ReplyRecord | None


def _probabilities(value: str | None) -> dict[str, float]:
    try:
        found = json.loads(value or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in found.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }


def _reply(r: Row) -> ReplyRecord:
    return ReplyRecord(
        id=int(r["id"]),
        state=str(r["state"]),
        recipient=r["recipient"] or "",
        template=r["template"] or "",
        mode=r["mode"] or "",
        created_at=_time(r["created_at"]),
        sent_at=_time(r["sent_at"]),
        error=r["error"],
        raw=bytes(r["raw"] or b""),
    )


def decision_detail(c: Tx, row_id: int) -> DecisionDetail | None:
    """Ledger row `row_id` with its decision and its newest reply, or None."""
    r = c.execute(
        "SELECT id, message_id, account, folder, created_at, state, sender, subject, language,"
        " body, decision, label, confidence, probabilities, explanation, reasons, may_reply,"
        " backfill, reviewed_label, reviewed_by FROM messages WHERE id = ?",
        (row_id,),
    ).fetchone()
    if r is None:
        return None
    reply = c.execute(
        "SELECT id, state, recipient, template, mode, created_at, sent_at, error, raw"
        " FROM replies WHERE message_row = ? ORDER BY id DESC LIMIT 1",
        (row_id,),
    ).fetchone()
    created = _time(r["created_at"])
    assert created is not None
    return DecisionDetail(
        id=int(r["id"]),
        message_id=r["message_id"] or "",
        account=r["account"],
        folder=r["folder"],
        created_at=created,
        state=r["state"],
        sender=r["sender"] or "",
        subject=r["subject"] or "",
        language=r["language"] or "",
        body=r["body"],
        decision=r["decision"],
        label=r["label"],
        confidence=None if r["confidence"] is None else float(r["confidence"]),
        probabilities=_probabilities(r["probabilities"]),
        explanation=terms(r["explanation"]),
        reasons=terms(r["reasons"]),
        may_reply=None if r["may_reply"] is None else bool(r["may_reply"]),
        backfill=bool(r["backfill"]),
        reviewed_label=r["reviewed_label"],
        reviewed_by=r["reviewed_by"] or "",
        reply=_reply(reply) if reply is not None else None,
    )


# --- model and health ----------------------------------------------------------------------------


def corrections_since(c: Tx, since: datetime | None) -> tuple[int, int]:
    """(all corrections, those recorded at or after `since`; all when `since` is None)."""
    total = int(c.execute("SELECT COUNT(*) FROM corrections").fetchone()[0])
    if since is None:
        return total, total
    newer = c.execute(
        "SELECT COUNT(*) FROM corrections WHERE created_at >= ?", (timestamp(since),)
    ).fetchone()[0]
    return total, int(newer)


@dataclass(frozen=True, slots=True)
class MailboxRow:
    """One watched folder as the store records it."""

    account: str
    folder: str
    uidvalidity: int
    last_uid: int
    first_seen: datetime | None
    last_sync: datetime | None


def mailboxes(c: Tx) -> list[MailboxRow]:
    """Every folder the daemon has watched, by account and folder."""
    rows = c.execute(
        "SELECT account, folder, uidvalidity, last_uid, first_seen, last_sync FROM mailbox_state"
        " ORDER BY account, folder"
    )
    return [
        MailboxRow(
            account=r["account"],
            folder=r["folder"],
            uidvalidity=int(r["uidvalidity"]),
            last_uid=int(r["last_uid"]),
            first_seen=_time(r["first_seen"]),
            last_sync=_time(r["last_sync"]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class OutboxState:
    """One delivery table by state: how many rows, and the oldest queued one's creation."""

    table: str
    counts: dict[str, int]
    oldest_queued: datetime | None


def outbox_states(c: Tx) -> list[OutboxState]:
    """Replies and digests (with alerts): counts per state (from the `state` indexes) and the
    creation time of the oldest queued row."""
    out = []
    for table in ("replies", "digests"):
        counts = {
            str(r[0]): int(r[1])
            for r in c.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")  # noqa: S608
        }
        oldest = c.execute(
            f"SELECT MIN(created_at) FROM {table} WHERE state = 'queued'"  # noqa: S608
        ).fetchone()[0]
        out.append(OutboxState(table, counts, _time(oldest)))
    return out
