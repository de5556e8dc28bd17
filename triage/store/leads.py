"""Leads in the database: prospects queued for sales staff (hot) or kept for nurture.

A lead gathers every message of one conversation. A new message joins the open lead of its thread
(its In-Reply-To/References name a message of the lead, or a reply we sent to one), else the open
lead of the same address, so staff see one record per prospect, not one per email. A nurture lead
that turns hot is upgraded and reaches sales staff like a new hot lead.

This module is the SQL only; the rules (valid status changes, assignment, response targets) live
in `triage.sales.leads`. Every timestamp is
stored as UTC ISO 8601 text with microseconds, so the text
sorts and compares like the time it stands for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from triage.core.models import Contact, LeadKind
from triage.core.sanitize import is_addr_spec
from triage.store.db import Row, Tx, inserted_id, timestamp, utcnow

OPEN_STATUSES = ("new", "claimed", "contacted")
CLOSED_STATUSES = ("won", "lost", "dismissed")
STATUSES = (*OPEN_STATUSES, *CLOSED_STATUSES)

# Built from the constants above only; never from input.
_OPEN = "status IN ({})".format(", ".join(f"'{s}'" for s in OPEN_STATUSES))
_SELECT = (
    "SELECT l.*,"
    " (SELECT COUNT(*) FROM lead_messages lm WHERE lm.lead_id = l.id) AS message_count,"
    " (SELECT m.subject FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
    "  WHERE lm.lead_id = l.id ORDER BY m.id LIMIT 1) AS first_subject,"
    " (SELECT m.subject FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
    "  WHERE lm.lead_id = l.id ORDER BY m.id DESC LIMIT 1) AS last_subject,"
    " (SELECT m.body FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
    "  WHERE lm.lead_id = l.id ORDER BY m.id DESC LIMIT 1) AS last_body,"
    " (SELECT m.created_at FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
    "  WHERE lm.lead_id = l.id ORDER BY m.id DESC LIMIT 1) AS last_message_at"
    " FROM leads l"
)
MAX_THREAD_IDS = 50  # a References header can be long; the newest ids find the thread
NOTE_AUTHOR = "triage"  # the author of the notes triage itself adds to a lead
INVALID_ADDRESS_NOTE = (
    "The sender address is not a valid address, so it was not stored as the lead's address; "
    "the message shows what was given."
)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NewLead:
    """What the pipeline knows about a prospect when one of their messages is handled.

    `thread_ids` are the Message-IDs the message refers to (In-Reply-To, References); when one
    of them belongs to an open lead the message joins that lead whatever address it came from.
    """

    message_row: int
    kind: LeadKind
    contact: Contact
    label: str
    confidence: float
    explanation: Sequence[str]
    due_at: datetime | None = None
    owner: str = ""
    thread_ids: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class LeadRecord:
    """One lead as stored, with a summary of its messages."""

    id: int
    kind: str
    status: str
    email: str
    name: str
    company: str
    phone: str
    website: str
    label: str
    confidence: float
    explanation: tuple[str, ...]
    owner: str
    due_at: datetime | None
    digested_in: int | None
    alerted_at: datetime | None
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    contacted_at: datetime | None
    closed_at: datetime | None
    message_count: int
    first_subject: str
    last_subject: str
    last_body: str
    last_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class LeadMessage:
    """One message of a lead, from the ledger (`body` is empty once retention removed it), with
    what the classifier said of it: `label`, `confidence`, and the `reasons` of its decision."""

    row_id: int
    message_id: str
    sender: str
    subject: str
    body: str
    decision: str
    received_at: datetime
    label: str = ""
    confidence: float | None = None
    reasons: tuple[str, ...] = ()
    reviewed_label: str = ""
    reviewed_by: str = ""


@dataclass(frozen=True, slots=True)
class LeadNote:
    """A note a person added to a lead."""

    id: int
    author: str
    text: str
    created_at: datetime


def _explanation(value: str | None) -> tuple[str, ...]:
    try:
        terms = json.loads(value or "[]")
    except ValueError:
        return ()
    return tuple(str(t) for t in terms) if isinstance(terms, list) else ()


def _record(r: Row) -> LeadRecord:
    created = _time(r["created_at"])
    updated = _time(r["updated_at"])
    assert created is not None and updated is not None
    return LeadRecord(
        id=int(r["id"]),
        kind=r["kind"],
        status=r["status"],
        email=r["email"],
        name=r["name"],
        company=r["company"],
        phone=r["phone"],
        website=r["website"],
        label=r["label"],
        confidence=float(r["confidence"]),
        explanation=_explanation(r["explanation"]),
        owner=r["owner"],
        due_at=_time(r["due_at"]),
        digested_in=r["digested_in"],
        alerted_at=_time(r["alerted_at"]),
        created_at=created,
        updated_at=updated,
        claimed_at=_time(r["claimed_at"]),
        contacted_at=_time(r["contacted_at"]),
        closed_at=_time(r["closed_at"]),
        message_count=int(r["message_count"]),
        first_subject=r["first_subject"] or "",
        last_subject=r["last_subject"] or "",
        last_body=r["last_body"] or "",
        last_message_at=_time(r["last_message_at"]),
    )


# --- recording (inside the pipeline's transaction) -----------------------------------------------


def _thread_lead(c: Tx, thread_ids: Sequence[str]) -> Row | None:
    """The open lead one of `thread_ids` belongs to: a message of it, or our reply to one."""
    ids = [i.strip() for i in thread_ids if i.strip()][-MAX_THREAD_IDS:]
    if not ids:
        return None
    ours, ours_params = c.dialect.in_list("message_id", ids)
    replies, replies_params = c.dialect.in_list("reply_message_id", ids)
    row: Row | None = c.execute(
        "SELECT l.id, l.kind, l.owner FROM leads l JOIN lead_messages lm ON lm.lead_id = l.id"  # noqa: S608
        f" WHERE l.{_OPEN} AND lm.message_row IN ("
        f"  SELECT id FROM messages WHERE {ours}"
        f"  UNION SELECT message_row FROM replies WHERE {replies})"
        " ORDER BY l.kind = 'hot' DESC, l.id DESC LIMIT 1",
        (*ours_params, *replies_params),
    ).fetchone()
    return row


def _address_lead(c: Tx, email: str) -> Row | None:
    row: Row | None = c.execute(
        f"SELECT id, kind, owner FROM leads WHERE email = ? AND {_OPEN}"  # noqa: S608
        " ORDER BY kind = 'hot' DESC, id DESC LIMIT 1",
        (email,),
    ).fetchone()
    return row


def _note_once(c: Tx, lead_id: int, text: str, at: str) -> None:
    """Add triage's note `text` to a lead unless it already has it."""
    if c.execute(
        "SELECT 1 FROM lead_notes WHERE lead_id = ? AND author = ? AND text = ?",
        (lead_id, NOTE_AUTHOR, text),
    ).fetchone():
        return
    c.execute(
        "INSERT INTO lead_notes (lead_id, author, text, created_at) VALUES (?, ?, ?, ?)",
        (lead_id, NOTE_AUTHOR, text, at),
    )


def lock_prospects(c: Tx) -> None:
    """Within the caller's transaction: wait for, then hold until it ends, the lock that
    serialises recording what is known about prospects (their leads, the replies to them).

    SQLite serialises every write transaction anyway. On PostgreSQL two transactions would
    otherwise both find no open lead (or no reply within the window) for a new prospect and
    both add one. One lock rather than one per address: a batch records several prospects in
    one transaction, and per-address locks taken in the order of its messages could deadlock
    two batches. It is held for the milliseconds of recording (rendering and sending happen
    outside the transaction).
    """
    c.dialect.lock(c, "prospects", "")


def record_lead(c: Tx, lead: NewLead) -> int:
    """Within the caller's transaction: add the message to the prospect's lead; return its id.

    Only a plain addr-spec is stored as the lead's address. Anything else ("jane@acme.example?
    bcc=…&body=…" becomes a mailto link with extra recipients and a body of the sender's choosing)
    is dropped and the lead kept without it, with a note saying why: a person still decides.
    """
    # Before looking for the prospect's lead: a concurrent first message must find ours.
    lock_prospects(c)
    given = lead.contact.email.strip().lower()
    email = given if is_addr_spec(given) else ""
    now = utcnow()
    due = timestamp(lead.due_at) if lead.due_at else None
    explanation = json.dumps(list(lead.explanation))
    existing = _thread_lead(c, lead.thread_ids) if lead.thread_ids else None
    if existing is None and email:
        existing = _address_lead(c, email)
    if existing is None:
        cur = c.execute(
            "INSERT INTO leads (kind, email, name, company, phone, website, label, confidence,"
            " explanation, owner, due_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                lead.kind.value,
                email,
                lead.contact.name,
                lead.contact.company,
                lead.contact.phone,
                lead.contact.website,
                lead.label,
                lead.confidence,
                explanation,
                lead.owner,
                due,
                now,
                now,
            ),
        )
        lead_id = inserted_id(cur)
    else:
        lead_id = int(existing["id"])
        upgrade = existing["kind"] != LeadKind.HOT.value and lead.kind is LeadKind.HOT
        # Fill contact fields a later message reveals; a nurture lead that turns hot is upgraded
        # (with the hot lead's due time, owner and explanation) and counts as new for the next
        # digest and alert, so it reaches sales staff.
        c.execute(
            "UPDATE leads SET name = COALESCE(NULLIF(name, ''), :name),"
            " company = COALESCE(NULLIF(company, ''), :company),"
            " phone = COALESCE(NULLIF(phone, ''), :phone),"
            " website = COALESCE(NULLIF(website, ''), :website),"
            " email = COALESCE(NULLIF(email, ''), :email), updated_at = :now,"
            " kind = CASE WHEN :up THEN 'hot' ELSE kind END,"
            " label = CASE WHEN :up THEN :label ELSE label END,"
            " confidence = CASE WHEN :up THEN :confidence ELSE confidence END,"
            " explanation = CASE WHEN :up THEN :explanation ELSE explanation END,"
            " due_at = CASE WHEN :up THEN :due ELSE due_at END,"
            " owner = CASE WHEN :up AND owner = '' THEN :owner ELSE owner END,"
            " digested_in = CASE WHEN :up THEN NULL ELSE digested_in END,"
            " alerted_at = CASE WHEN :up THEN NULL ELSE alerted_at END"
            " WHERE id = :id",
            {
                "name": lead.contact.name,
                "company": lead.contact.company,
                "phone": lead.contact.phone,
                "website": lead.contact.website,
                "email": email,
                "now": now,
                "up": upgrade,
                "label": lead.label,
                "confidence": lead.confidence,
                "explanation": explanation,
                "due": due,
                "owner": lead.owner,
                "id": lead_id,
            },
        )
    c.execute(
        "INSERT INTO lead_messages (lead_id, message_row) VALUES (?, ?)"
        " ON CONFLICT (lead_id, message_row) DO NOTHING",
        (lead_id, lead.message_row),
    )
    if given and not email:
        _note_once(c, lead_id, INVALID_ADDRESS_NOTE, now)
    return lead_id


# --- reading -------------------------------------------------------------------------------------


def message_has_lead(c: Tx, message_row: int) -> bool:
    """Whether ledger row `message_row` belongs to a lead (of any kind or status)."""
    row = c.execute(
        "SELECT 1 FROM lead_messages WHERE message_row = ? LIMIT 1", (message_row,)
    ).fetchone()
    return row is not None


def get_lead(c: Tx, lead_id: int) -> LeadRecord | None:
    """One lead by id, or None."""
    r = c.execute(_SELECT + " WHERE l.id = ?", (lead_id,)).fetchone()
    return _record(r) if r else None


def find_leads(
    c: Tx,
    statuses: Iterable[str] = OPEN_STATUSES,
    kind: str | None = None,
) -> list[LeadRecord]:
    """Leads in any of `statuses` (and of `kind` when given), oldest first."""
    wanted = list(statuses)
    if not wanted:
        return []
    in_statuses, params = c.dialect.in_list("l.status", wanted)
    sql = _SELECT + f" WHERE {in_statuses}"
    if kind is not None:
        sql += " AND l.kind = ?"
        params.append(kind)
    return [_record(r) for r in c.execute(sql + " ORDER BY l.id", params)]


def undigested_hot_leads(c: Tx) -> list[LeadRecord]:
    """Open hot leads that no digest has reported yet, oldest first."""
    rows = c.execute(
        _SELECT + f" WHERE l.kind = 'hot' AND l.digested_in IS NULL AND l.{_OPEN} ORDER BY l.id"
    )
    return [_record(r) for r in rows]


def overdue_hot_leads(c: Tx, now: datetime) -> list[LeadRecord]:
    """Hot leads past their response target that nobody has contacted yet, most overdue first."""
    rows = c.execute(
        _SELECT + " WHERE l.kind = 'hot' AND l.status IN ('new', 'claimed')"
        " AND l.due_at IS NOT NULL AND l.due_at < ? ORDER BY l.due_at, l.id",
        (timestamp(now),),
    )
    return [_record(r) for r in rows]


def unalerted_hot_leads(c: Tx, since: datetime) -> list[LeadRecord]:
    """New hot leads without an alert yet that arrived or turned hot after `since`."""
    rows = c.execute(
        _SELECT + " WHERE l.kind = 'hot' AND l.status = 'new' AND l.alerted_at IS NULL"
        " AND l.updated_at >= ? ORDER BY l.id",
        (timestamp(since),),
    )
    return [_record(r) for r in rows]


def lead_messages(
    c: Tx, lead_id: int, latest: int | None = None, *, oldest: int | None = None
) -> list[LeadMessage]:
    """The messages of a lead, oldest first; only the `latest` ones, or the `oldest` ones, when
    given (a stranger can send a lead any number of messages, a page shows a bounded few)."""
    order, limit = ("ASC", oldest) if oldest is not None else ("DESC", latest)
    rows = c.execute(
        "SELECT m.id, m.message_id, m.sender, m.subject, m.body, m.decision, m.created_at,"  # noqa: S608
        " m.label, m.confidence, m.reasons, m.reviewed_label, m.reviewed_by"
        " FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
        f" WHERE lm.lead_id = ? ORDER BY m.id {order}" + ("" if limit is None else " LIMIT ?"),
        (lead_id,) if limit is None else (lead_id, limit),
    ).fetchall()
    if order == "DESC":
        rows = list(reversed(rows))
    out = []
    for r in rows:
        received = _time(r["created_at"])
        assert received is not None
        out.append(
            LeadMessage(
                row_id=int(r["id"]),
                message_id=r["message_id"],
                sender=r["sender"],
                subject=r["subject"],
                body=r["body"] or "",
                decision=r["decision"] or "",
                received_at=received,
                label=r["label"] or "",
                confidence=None if r["confidence"] is None else float(r["confidence"]),
                reasons=_explanation(r["reasons"]),
                reviewed_label=r["reviewed_label"] or "",
                reviewed_by=r["reviewed_by"] or "",
            )
        )
    return out


def count_lead_messages(c: Tx, lead_id: int) -> int:
    """How many messages a lead has."""
    row = c.execute("SELECT COUNT(*) FROM lead_messages WHERE lead_id = ?", (lead_id,)).fetchone()
    return int(row[0])


def lead_notes(c: Tx, lead_id: int) -> list[LeadNote]:
    """The notes of a lead, oldest first."""
    rows = c.execute(
        "SELECT id, author, text, created_at FROM lead_notes WHERE lead_id = ? ORDER BY id",
        (lead_id,),
    )
    out = []
    for r in rows:
        created = _time(r["created_at"])
        assert created is not None
        out.append(LeadNote(int(r["id"]), r["author"], r["text"], created))
    return out


@dataclass(frozen=True, slots=True)
class OwnerLoad:
    """How busy one staff member is: open hot leads owned, and when they last got one."""

    owner: str
    open_leads: int
    last_assigned: str


def owner_loads(c: Tx, staff: Sequence[str]) -> list[OwnerLoad]:
    """The load of every name in `staff`, in `staff` order (zero and "" for a newcomer)."""
    rows = c.execute(
        f"SELECT owner, SUM(CASE WHEN {_OPEN} THEN 1 ELSE 0 END) AS open_leads,"  # noqa: S608
        " MAX(created_at) AS last_assigned FROM leads WHERE kind = 'hot' AND owner != ''"
        " GROUP BY owner"
    )
    found = {r["owner"]: (int(r["open_leads"] or 0), r["last_assigned"] or "") for r in rows}
    return [OwnerLoad(name, *found.get(name, (0, ""))) for name in staff]


# --- the console's lead queue ------------------------------------------------------------------

QUEUE_SORTS = ("activity", "due")
UNASSIGNED = "-"  # the owner filter's value for leads nobody owns


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """What the lead queue shows: leads in `statuses`, of `kind` (None: any), owned by `owner`
    (None: anybody; UNASSIGNED: nobody), only overdue ones at `now`, matching `search` in the
    name, address, company or a message subject; sorted by `sort` (QUEUE_SORTS: newest activity
    first, or soonest due first with leads without a target last)."""

    statuses: Sequence[str] = OPEN_STATUSES
    kind: str | None = None
    owner: str | None = None
    overdue: bool = False
    search: str = ""
    sort: str = "activity"


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere (its own % _ and \\ taken literally)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _subject_leads(c: Tx, pattern: str) -> list[int]:
    """The leads with a message whose subject matches LIKE `pattern`.

    Read once per page, over the `messages_subject` index (a few megabytes even for 100,000
    messages), instead of each lead's ledger rows, whose bodies and raw messages would be read
    with them."""
    rows = c.execute(
        "SELECT DISTINCT lm.lead_id FROM lead_messages lm WHERE lm.message_row IN"  # noqa: S608
        f" (SELECT id FROM messages WHERE subject {c.dialect.ci_like} ? ESCAPE '\\')",
        (pattern,),
    )
    return [int(r[0]) for r in rows]


def _queue_where(c: Tx, wanted: QueueFilter, now: datetime) -> tuple[str, list[object]]:
    statuses, params = c.dialect.in_list("status", list(wanted.statuses))
    where = [statuses]
    if wanted.kind is not None:
        where.append("kind = ?")
        params.append(wanted.kind)
    if wanted.owner is not None:
        where.append("owner = ?")
        params.append("" if wanted.owner == UNASSIGNED else wanted.owner)
    if wanted.overdue:
        where.append(
            "kind = 'hot' AND status IN ('new', 'claimed') AND due_at IS NOT NULL AND due_at < ?"
        )
        params.append(timestamp(now))
    text = wanted.search.strip()
    if text:
        pattern = _like(text)
        like = c.dialect.ci_like
        by_subject, subject_params = c.dialect.in_many("id", _subject_leads(c, pattern))
        where.append(
            f"(name {like} ? ESCAPE '\\' OR email {like} ? ESCAPE '\\'"
            f" OR company {like} ? ESCAPE '\\' OR {by_subject})"
        )
        params.extend([pattern] * 3)
        params.extend(subject_params)
    return " AND ".join(where), params


def queue(
    c: Tx, wanted: QueueFilter, now: datetime, *, limit: int, offset: int = 0
) -> tuple[list[LeadRecord], int]:
    """One page of the lead queue (`limit` leads after `offset`) and how many leads match.

    The page's ids are chosen first from the leads table alone; only those leads get the summary
    of their messages (`_SELECT`), so a page costs the same with 10 leads or 10,000."""
    if not list(wanted.statuses):
        return [], 0
    where, params = _queue_where(c, wanted, now)
    if wanted.sort == "due":
        order = "due_at IS NULL, due_at, id"
        outer = "l.due_at IS NULL, l.due_at, l.id"
    else:
        order = "updated_at DESC, id DESC"
        outer = "l.updated_at DESC, l.id DESC"
    found = c.execute(f"SELECT COUNT(*) FROM leads WHERE {where}", params).fetchone()  # noqa: S608
    total = int(found[0])
    page = c.execute(
        f"SELECT id FROM leads WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",  # noqa: S608
        (*params, limit, offset),
    ).fetchall()
    if not page:
        return [], total
    on_page, ids = c.dialect.in_list("l.id", [int(r["id"]) for r in page])
    rows = c.execute(_SELECT + f" WHERE {on_page} ORDER BY {outer}", ids)
    return [_record(r) for r in rows], total


def owners(c: Tx) -> list[str]:
    """Every name that owns a lead, sorted: the queue's owner filter."""
    rows = c.execute("SELECT DISTINCT owner FROM leads WHERE owner != '' ORDER BY owner")
    return [str(r[0]) for r in rows]


@dataclass(frozen=True, slots=True)
class LeadReply:
    """A reply triage wrote to one message of a lead (the outbox row): its state and raw message."""

    id: int
    message_row: int
    recipient: str
    template: str
    mode: str
    state: str
    raw: bytes
    created_at: datetime
    sent_at: datetime | None


def lead_replies(c: Tx, lead_id: int) -> list[LeadReply]:
    """The replies to the messages of a lead (`replies.message_row` names the ledger row they
    answer), oldest first."""
    rows = c.execute(
        "SELECT r.id, r.message_row, r.recipient, r.template, r.mode, r.state, r.raw,"
        " r.created_at, r.sent_at FROM lead_messages lm JOIN replies r"
        " ON r.message_row = lm.message_row WHERE lm.lead_id = ? ORDER BY r.id",
        (lead_id,),
    )
    out = []
    for r in rows:
        created = _time(r["created_at"])
        assert created is not None
        out.append(
            LeadReply(
                id=int(r["id"]),
                message_row=int(r["message_row"]),
                recipient=r["recipient"],
                template=r["template"],
                mode=r["mode"],
                state=r["state"],
                raw=bytes(r["raw"] or b""),
                created_at=created,
                sent_at=_time(r["sent_at"]),
            )
        )
    return out


# --- changing ------------------------------------------------------------------------------------


def set_status(
    c: Tx,
    lead_id: int,
    status: str,
    now: datetime,
    owner: str | None = None,
) -> None:
    """Within the caller's transaction: store a status change (checked by the caller)."""
    at = timestamp(now)
    c.execute(
        "UPDATE leads SET status = ?, updated_at = ?, owner = COALESCE(?, owner),"
        " claimed_at = CASE WHEN ? = 'claimed' THEN ? ELSE claimed_at END,"
        " contacted_at = CASE WHEN ? = 'contacted' THEN ? ELSE contacted_at END,"
        " closed_at = CASE WHEN ? IN ('won', 'lost', 'dismissed') THEN ? ELSE closed_at END"
        " WHERE id = ?",
        (status, at, owner, status, at, status, at, status, at, lead_id),
    )


def set_owner(c: Tx, lead_id: int, owner: str, now: datetime) -> None:
    """Within the caller's transaction: give a lead to `owner` (its status stays)."""
    c.execute(
        "UPDATE leads SET owner = ?, updated_at = ? WHERE id = ?", (owner, timestamp(now), lead_id)
    )


def add_note(c: Tx, lead_id: int, author: str, text: str, now: datetime) -> int:
    """Within the caller's transaction: add a note to a lead; returns the note's id."""
    at = timestamp(now)
    cur = c.execute(
        "INSERT INTO lead_notes (lead_id, author, text, created_at) VALUES (?, ?, ?, ?)"
        " RETURNING id",
        (lead_id, author, text, at),
    )
    c.execute("UPDATE leads SET updated_at = ? WHERE id = ?", (at, lead_id))
    return inserted_id(cur)
