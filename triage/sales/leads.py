"""Lead operations: the workflow rules, who gets a lead, when it is due, export and retention.

Status flow (anything else is refused):

    new ──▶ claimed ──▶ contacted ──▶ won | lost
     └──────────┴────────────┴──────▶ dismissed

The label table (`triage.core.labels`) says which labels make which kind of lead: hot leads are
due within `leads.response_target_hours` business hours, nurture leads have no target; `review`
decisions wait for a person (`triage.sales.review`).
The pipeline calls `assign_owner` and `business_due` inside its transaction; the CLI and the web
console call the rest. Every change a person makes (claim, assign, status, note, relabel) is
written to the audit log (`triage.store.audit`) in the same transaction as the change.

Closing a lead teaches the model: won or lost confirms its label, dismissed as "not a lead" and
`relabel` correct it; each is a weighted correction (`triage.store.corrections`) recorded in the
same transaction as the change, and `triage train --with-corrections` learns from them.
"""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from triage.core.errors import ConfigError, TriageError
from triage.core.labels import LABEL_TABLE
from triage.core.models import LABELS, LeadKind
from triage.core.sanitize import strip_invisible
from triage.core.settings import LeadsSettings, Settings
from triage.store import audit
from triage.store import leads as store
from triage.store import webhooks as hooks
from triage.store.corrections import LeadCorrections, correct_lead_messages
from triage.store.db import Database, Tx, timestamp
from triage.store.leads import (
    CLOSED_STATUSES,
    OPEN_STATUSES,
    STATUSES,
    LeadMessage,
    LeadNote,
    LeadRecord,
    LeadReply,
)
from triage.store.retention import empty_before

log = logging.getLogger(__name__)

KINDS = tuple(kind.value for kind in LeadKind)
TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "new": ("claimed", "dismissed"),
    "claimed": ("contacted", "dismissed"),
    "contacted": ("won", "lost", "dismissed"),
    "won": (),
    "lost": (),
    "dismissed": (),
}
OTHER_LABEL = "other"  # what a lead that was no lead at all should have been labelled
MAX_SEARCH_DAYS = 3 * 366  # business days so sparse that a target lies further out are a mistake


class LeadError(TriageError):
    """Raised when a lead command names an unknown lead or status, or a status change the
    workflow does not allow; the message says what would be valid. A user mistake."""


# --- the workflow --------------------------------------------------------------------------------


def check_status(status: str) -> str:
    """`status` if it is a known lead status, else LeadError listing the known ones."""
    if status not in STATUSES:
        raise LeadError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
    return status


def check_kind(kind: str) -> str:
    """`kind` if it is a known lead kind (hot, nurture), else LeadError."""
    if kind not in KINDS:
        raise LeadError(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


def check_transition(lead: LeadRecord, status: str) -> None:
    """Raise LeadError unless `lead` may move to `status`; the message says what may follow."""
    allowed = TRANSITIONS[lead.status]
    if status in allowed:
        return
    if not allowed:
        raise LeadError(f"lead {lead.id} is {lead.status}, which is final")
    hint = ""
    if lead.status == "new" and status in ("contacted", "won", "lost"):
        hint = f"; claim it first: triage leads claim {lead.id} --by NAME"
    raise LeadError(
        f"lead {lead.id} is {lead.status}; it can become {' or '.join(allowed)}, not {status}{hint}"
    )


def _require(c: Tx, lead_id: int) -> LeadRecord:
    lead = store.get_lead(c, lead_id)
    if lead is None:
        raise LeadError(f"no lead {lead_id}")
    return lead


def list_leads(
    db: Database, statuses: Sequence[str] = OPEN_STATUSES, kind: str | None = None
) -> list[LeadRecord]:
    """Leads in `statuses` (default: the open ones), of `kind` when given; oldest first."""
    for status in statuses:
        check_status(status)
    if kind is not None:
        check_kind(kind)
    return store.find_leads(db.reads, statuses, kind)


PER_PAGE = 50  # leads on one page of the console's queue


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One page of the lead queue (leads as staff may see them) and where it lies among all."""

    leads: list[LeadRecord]
    total: int
    page: int
    pages: int


def queue(
    db: Database,
    wanted: store.QueueFilter,
    now: datetime,
    *,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> QueuePage:
    """Page `page` (from 1) of the leads `wanted` selects; LeadError for an unknown status,
    kind or order."""
    for status in wanted.statuses:
        check_status(status)
    if wanted.kind is not None:
        check_kind(wanted.kind)
    if wanted.sort not in store.QUEUE_SORTS:
        raise LeadError(f"unknown order {wanted.sort!r}; one of: {', '.join(store.QUEUE_SORTS)}")
    page = max(1, page)
    found, total = store.queue(db.reads, wanted, now, limit=per_page, offset=(page - 1) * per_page)
    pages = max(1, -(-total // per_page))
    return QueuePage([for_staff(lead) for lead in found], total, page, pages)


@dataclass(frozen=True, slots=True)
class LeadDetail:
    """A lead with its messages and notes, for `triage leads show`."""

    lead: LeadRecord
    messages: list[LeadMessage]
    notes: list[LeadNote]


def show(db: Database, lead_id: int) -> LeadDetail:
    """One lead in full; LeadError when there is none."""
    lead = _require(db.reads, lead_id)
    return LeadDetail(
        lead, store.lead_messages(db.reads, lead_id), store.lead_notes(db.reads, lead_id)
    )


@dataclass(frozen=True, slots=True)
class SentReply:
    """A reply triage wrote for a message of a lead: the outbox row and its text part."""

    reply: LeadReply
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class LeadPage:
    """Everything the console's lead page shows: the lead, its conversation, the replies triage
    wrote, the notes, and who changed what (the audit entries about the lead, oldest first)."""

    detail: LeadDetail  # its messages: the latest PAGE_MESSAGES
    replies: list[SentReply]
    history: list[audit.AuditEntry]
    total_messages: int


def reply_text(raw: bytes) -> tuple[str, str]:
    """(subject, text part) of a reply triage composed; ("", "") when it cannot be read."""
    if not raw:
        return "", ""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    subject = strip_invisible(str(message.get("Subject", "")))
    part = (
        message.get_body(preferencelist=("plain",)) if isinstance(message, EmailMessage) else None
    )
    if part is None or not isinstance(part, EmailMessage):
        return subject, ""
    try:
        return subject, strip_invisible(part.get_content())
    except (LookupError, ValueError):
        return subject, ""


# The messages a lead's page shows: the latest ones (`triage leads show` lists every one).
PAGE_MESSAGES = 50


def page(db: Database, lead_id: int) -> LeadPage:
    """The console's view of one lead, as staff may see it; LeadError when there is none."""
    lead = _require(db.reads, lead_id)
    messages = store.lead_messages(db.reads, lead_id, latest=PAGE_MESSAGES)
    detail = detail_for_staff(LeadDetail(lead, messages, store.lead_notes(db.reads, lead_id)))
    replies = []
    for found in store.lead_replies(db.reads, lead_id):
        subject, text = reply_text(found.raw)
        replies.append(SentReply(found, subject, text))
    total = store.count_lead_messages(db.reads, lead_id)
    return LeadPage(detail, replies, audit.for_target(db.reads, "lead", lead_id), total)


def claim(db: Database, lead_id: int, by: str, now: datetime | None = None) -> LeadRecord:
    """`by` takes the lead: it becomes claimed and `by` its owner. Claiming one's own claimed
    lead again changes nothing; someone else's claimed lead is refused."""
    by = by.strip()
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        lead = _require(c, lead_id)
        if lead.status == "claimed":
            if lead.owner == by:
                return lead
            raise LeadError(f"lead {lead_id} is already claimed by {lead.owner or 'someone'}")
        check_transition(lead, "claimed")
        if not by:
            raise LeadError("a claim needs a name: --by NAME")
        store.set_status(c, lead_id, "claimed", moment, owner=by)
        audit.record(
            c,
            by,
            "lead.claim",
            "lead",
            lead_id,
            {"from": lead.status, "to": "claimed", "owner": by, "was_owner": lead.owner},
            now=moment,
        )
        record_event(
            c,
            "lead.status_changed",
            lead_id=lead_id,
            extra={"from": lead.status, "to": "claimed", "by": by},
            now=moment,
        )
        return _require(c, lead_id)


def assign(db: Database, lead_id: int, to: str, by: str, now: datetime | None = None) -> LeadRecord:
    """`by` gives an open lead to `to`, who becomes its owner; its status stays (the new owner
    claims or works it). Giving it to its owner changes nothing; a closed lead is refused."""
    to = to.strip()
    by = by.strip()
    if not to:
        raise LeadError("an assignment needs a name: --to NAME")
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        lead = _require(c, lead_id)
        if lead.status in CLOSED_STATUSES:
            raise LeadError(f"lead {lead_id} is {lead.status}, which is final")
        if lead.owner == to:
            return lead
        store.set_owner(c, lead_id, to, moment)
        audit.record(
            c, by, "lead.assign", "lead", lead_id, {"to": to, "was_owner": lead.owner}, now=moment
        )
        record_event(
            c,
            "lead.updated",
            lead_id=lead_id,
            extra={"change": "owner", "owner": to, "was_owner": lead.owner, "by": by},
            now=moment,
        )
        return _require(c, lead_id)


@dataclass(frozen=True, slots=True)
class LeadUpdate:
    """A lead after a change, and the corrections the change recorded (None: none were due)."""

    lead: LeadRecord
    corrections: LeadCorrections | None = None


def confirmed_label(kind: str) -> str:
    """The label a lead of `kind` confirms when it is closed won or lost (hot: sales, nurture:
    marketing), from the label table."""
    for label, row in LABEL_TABLE.items():
        if row.lead_kind is not None and row.lead_kind.value == kind:
            return label
    raise LeadError(f"no label makes a {kind} lead")


def update(
    db: Database,
    lead_id: int,
    *,
    status: str | None = None,
    note: str | None = None,
    by: str = "",
    not_a_lead: bool = False,
    now: datetime | None = None,
) -> LeadUpdate:
    """Move a lead to `status` and/or add a note by `by`, in one transaction.

    Setting the status it already has changes nothing; `claimed` makes `by` the owner. Closing a
    lead teaches the model, in the same transaction: `won` or `lost` records a correction
    confirming its label (`confirmed_label`), `dismissed` with `not_a_lead` one saying `other`
    (also for a lead dismissed earlier).
    """
    if status is None and not (note or "").strip():
        raise LeadError("nothing to update: give --status and/or --note")
    if status is not None:
        check_status(status)
    if not_a_lead and status != "dismissed":
        raise LeadError("--not-a-lead goes with --status dismissed")
    by = by.strip()
    moment = now or datetime.now(UTC)
    corrections = None
    event: tuple[str, dict[str, Any]] | None = None
    with db.transaction() as c:
        lead = _require(c, lead_id)
        if status is not None and status != lead.status:
            check_transition(lead, status)
            if status == "claimed" and not by:
                raise LeadError("a claim needs a name: --by NAME")
            store.set_status(c, lead_id, status, moment, owner=by if status == "claimed" else None)
            detail: dict[str, Any] = {"from": lead.status, "to": status}
            if status == "claimed":
                detail.update(owner=by, was_owner=lead.owner)
            if not_a_lead:
                detail["not_a_lead"] = True
            audit.record(c, by, "lead.status", "lead", lead_id, detail, now=moment)
            event = ("lead.status_changed", {"from": lead.status, "to": status, "by": by})
            if status in ("won", "lost"):
                corrections = correct_lead_messages(
                    c, lead_id, confirmed_label(lead.kind), source=status
                )
        if not_a_lead:
            corrections = correct_lead_messages(c, lead_id, OTHER_LABEL, source="not-a-lead")
            _note_label(c, lead_id, by, "not a lead: labelled other for training", moment)
            audit.record(
                c,
                by,
                "lead.relabel",
                "lead",
                lead_id,
                {"label": OTHER_LABEL, "was": lead.label, "source": "not-a-lead"},
                now=moment,
            )
        if note and note.strip():
            note_id = store.add_note(c, lead_id, by, note.strip(), moment)
            audit.record(c, by, "lead.note", "lead", lead_id, {"note": note_id}, now=moment)
        noted = bool(note and note.strip())
        if event is None and (noted or not_a_lead):
            # No status change, but a note or a relabel changed what the lead's row says.
            event = ("lead.updated", {"change": "note" if noted else "relabel", "by": by})
        if event is not None:
            # Last, so that the event carries the lead with everything this update wrote.
            record_event(c, event[0], lead_id=lead_id, extra=event[1], now=moment)
        return LeadUpdate(_require(c, lead_id), corrections)


def relabel(
    db: Database, lead_id: int, label: str, *, by: str = "", now: datetime | None = None
) -> LeadUpdate:
    """The lead's label was wrong: record `label` as a correction of each of its messages and a
    note on the lead, in one transaction. The lead's status is left to the workflow."""
    if label not in LABELS:
        raise LeadError(f"unknown label {label!r}; one of: {', '.join(LABELS)}")
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        lead = _require(c, lead_id)
        if label == lead.label:
            raise LeadError(f"lead {lead_id} is already labelled {label}")
        corrections = correct_lead_messages(c, lead_id, label, source="relabel")
        _note_label(c, lead_id, by.strip(), f"relabelled {label} (was {lead.label})", moment)
        audit.record(
            c,
            by.strip(),
            "lead.relabel",
            "lead",
            lead_id,
            {"label": label, "was": lead.label, "source": "relabel"},
            now=moment,
        )
        record_event(
            c,
            "lead.updated",
            lead_id=lead_id,
            extra={"change": "label", "label": label, "was": lead.label, "by": by.strip()},
            now=moment,
        )
        return LeadUpdate(_require(c, lead_id), corrections)


def _note_label(c: Tx, lead_id: int, by: str, text: str, moment: datetime) -> None:
    # A note keeps who taught the model what, visible where staff look: on the lead.
    store.add_note(c, lead_id, by or store.NOTE_AUTHOR, text, moment)


def is_overdue(lead: LeadRecord, now: datetime) -> bool:
    """True when a hot lead is past its response target and nobody has contacted the prospect."""
    return (
        lead.kind == "hot"
        and lead.status in ("new", "claimed")
        and lead.due_at is not None
        and lead.due_at < now
    )


# --- assignment ----------------------------------------------------------------------------------


def assign_owner(c: Tx, settings: LeadsSettings) -> str:
    """Who gets a new hot lead: "" when `assignment` is "none" or there is no staff.

    Called inside the pipeline's transaction. Both strategies read the leads table instead of
    keeping a cursor, so a rolled-back transaction or a call whose result is not used (the
    message joined an existing lead) leaves no trace:
    - round-robin: the staff member whose latest hot lead is oldest (never had one: first);
    - least-busy: the fewest open hot leads, ties broken like round-robin.
    """
    staff = [name for name in dict.fromkeys(s.strip() for s in settings.staff) if name]
    if settings.assignment == "none" or not staff:
        return ""
    loads = store.owner_loads(c, staff)
    if settings.assignment == "least-busy":
        chosen = min(loads, key=lambda load: (load.open_leads, load.last_assigned))
    else:
        # min() keeps the first of equals, so newcomers are served in `staff` order.
        chosen = min(loads, key=lambda load: load.last_assigned)
    return chosen.owner


# --- response targets ----------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """The time zone called `name` (IANA, e.g. "Europe/Berlin"); ConfigError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"digest.timezone {name!r} is not a known time zone") from None


def check_business_hours(settings: LeadsSettings) -> None:
    """ConfigError unless the business hours and days describe some working time each week."""
    opens, closes = settings.business_hours
    if not 0 <= opens < closes <= 24:
        raise ConfigError(
            f"leads.business_hours {list(settings.business_hours)} must be [open, close] "
            "with 0 <= open < close <= 24"
        )
    days = set(settings.business_days)
    if not days or not days <= set(range(7)):
        raise ConfigError(
            f"leads.business_days {list(settings.business_days)} must be weekday numbers "
            "0 (Monday) to 6 (Sunday), at least one"
        )


def _at(day: date, hour: int, tz: ZoneInfo) -> datetime:
    # Adding hours to midnight also handles a closing hour of 24.
    return datetime.combine(day, time(), tzinfo=tz) + timedelta(hours=hour)


def business_due(start: datetime, hours: float, settings: Settings) -> datetime:
    """The moment `hours` business hours after `start` (UTC), counting only
    `leads.business_hours` on `leads.business_days` in the `digest.timezone`.

    A message that arrives out of hours starts counting at the next opening. Times inside a day
    are wall-clock times, so "9 to 17" stays 9 to 17 across daylight-saving changes. Invalid
    business hours fall back to plain hours (and `check_settings` reports them at start-up).
    """
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC)
    if hours <= 0:
        return start
    try:
        tz = zone(settings.digest.timezone)
        check_business_hours(settings.leads)
    except ConfigError as exc:
        log.error("%s; using %g plain hours as the response target", exc, hours)
        return start + timedelta(hours=hours)
    opens, closes = settings.leads.business_hours
    days = set(settings.leads.business_days)
    remaining = timedelta(hours=hours)
    local = start.astimezone(tz)
    day = local.date()
    for _ in range(MAX_SEARCH_DAYS):
        if day.weekday() in days:
            begin = max(local, _at(day, opens, tz))
            end = _at(day, closes, tz)
            if begin < end:
                if remaining <= end - begin:
                    return (begin + remaining).astimezone(UTC)
                remaining -= end - begin
        day += timedelta(days=1)
    return start + timedelta(hours=hours)


def response_target(settings: Settings) -> Callable[[datetime], datetime]:
    """The pipeline's `response_target`: arrival time → due time of a hot lead."""
    hours = settings.leads.response_target_hours
    return lambda arrival: business_due(arrival, hours, settings)


# --- presentation --------------------------------------------------------------------------------


def for_staff(lead: LeadRecord) -> LeadRecord:
    """`lead` as staff may see it: every text without the invisible characters (bidi overrides,
    zero-width characters) that make a value read other than it shows. For display and export
    only; the stored lead keeps what the prospect wrote."""
    return replace(
        lead,
        name=strip_invisible(lead.name),
        email=strip_invisible(lead.email),
        company=strip_invisible(lead.company),
        phone=strip_invisible(lead.phone),
        website=strip_invisible(lead.website),
        owner=strip_invisible(lead.owner),
        explanation=tuple(strip_invisible(term) for term in lead.explanation),
        first_subject=strip_invisible(lead.first_subject),
        last_subject=strip_invisible(lead.last_subject),
        last_body=strip_invisible(lead.last_body),
    )


def detail_for_staff(detail: LeadDetail) -> LeadDetail:
    """`detail` as staff may see it: the lead, its messages and notes through `for_staff`."""
    return LeadDetail(
        for_staff(detail.lead),
        [
            replace(
                m,
                sender=strip_invisible(m.sender),
                subject=strip_invisible(m.subject),
                body=strip_invisible(m.body),
            )
            for m in detail.messages
        ],
        [
            replace(n, author=strip_invisible(n.author), text=strip_invisible(n.text))
            for n in detail.notes
        ],
    )


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else ""


def lead_as_dict(lead: LeadRecord, now: datetime) -> dict[str, Any]:
    """A lead as JSON-ready data (times as UTC ISO 8601), for `--json` output."""
    return {
        "id": lead.id,
        "kind": lead.kind,
        "status": lead.status,
        "name": lead.name,
        "email": lead.email,
        "company": lead.company,
        "phone": lead.phone,
        "website": lead.website,
        "owner": lead.owner,
        "label": lead.label,
        "confidence": round(lead.confidence, 4),
        "explanation": list(lead.explanation),
        "created": _iso(lead.created_at),
        "updated": _iso(lead.updated_at),
        "due": _iso(lead.due_at),
        "overdue": is_overdue(lead, now),
        "claimed": _iso(lead.claimed_at),
        "contacted": _iso(lead.contacted_at),
        "closed": _iso(lead.closed_at),
        "messages": lead.message_count,
        "subject": lead.first_subject,
        "last_message": _iso(lead.last_message_at),
    }


def detail_as_dict(detail: LeadDetail, now: datetime) -> dict[str, Any]:
    """A lead with its messages and notes as JSON-ready data."""
    data = lead_as_dict(detail.lead, now)
    data["conversation"] = [
        {
            "message_id": m.message_id,
            "sender": m.sender,
            "subject": m.subject,
            "received": _iso(m.received_at),
            "decision": m.decision,
            "body": m.body,
        }
        for m in detail.messages
    ]
    data["notes"] = [
        {"author": n.author, "text": n.text, "created": _iso(n.created_at)} for n in detail.notes
    ]
    return data


def age(since: datetime, now: datetime) -> str:
    """A short human age: "45m", "5h", "3d"."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# --- export --------------------------------------------------------------------------------------

EXPORT_FIELDS = (
    "id",
    "kind",
    "status",
    "first_name",
    "last_name",
    "name",
    "email",
    "company",
    "phone",
    "website",
    "owner",
    "label",
    "confidence",
    "explanation",
    "created",
    "updated",
    "due",
    "overdue",
    "claimed",
    "contacted",
    "closed",
    "messages",
    "first_subject",
    "first_message",
    "last_message_at",
    "notes",
)
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def split_name(name: str) -> tuple[str, str]:
    """(first, last) for a CRM: "Doe, Jane" → (Jane, Doe); "Jane van Doe" → (Jane van, Doe);
    a single word is a first name."""
    name = " ".join(name.split())
    if "," in name:
        last, _, first = name.partition(",")
        return first.strip(), last.strip()
    first, _, last = name.rpartition(" ")
    return (first, last) if first else (last, "")


def export_row(c: Tx, found: LeadRecord, now: datetime) -> dict[str, str]:
    """One lead as its CSV row (EXPORT_FIELDS order), values as staff may see them. Only the
    first message is read: a webhook event builds this row in the transaction of its change,
    and a lead may hold any number of messages."""
    detail = detail_for_staff(
        LeadDetail(found, store.lead_messages(c, found.id, oldest=1), store.lead_notes(c, found.id))
    )
    lead, messages, notes = detail.lead, detail.messages, detail.notes
    first, last = split_name(lead.name)
    return {
        "id": str(lead.id),
        "kind": lead.kind,
        "status": lead.status,
        "first_name": first,
        "last_name": last,
        "name": lead.name,
        "email": lead.email,
        "company": lead.company,
        "phone": lead.phone,
        "website": lead.website,
        "owner": lead.owner,
        "label": lead.label,
        "confidence": f"{lead.confidence:.2f}",
        "explanation": "; ".join(lead.explanation),
        "created": _iso(lead.created_at),
        "updated": _iso(lead.updated_at),
        "due": _iso(lead.due_at),
        "overdue": "yes" if is_overdue(lead, now) else "no",
        "claimed": _iso(lead.claimed_at),
        "contacted": _iso(lead.contacted_at),
        "closed": _iso(lead.closed_at),
        "messages": str(lead.message_count),
        "first_subject": lead.first_subject,
        "first_message": messages[0].body if messages else "",
        "last_message_at": _iso(lead.last_message_at),
        "notes": "\n".join(f"{n.author}: {n.text}" if n.author else n.text for n in notes),
    }


def export_rows(db: Database, now: datetime | None = None) -> list[dict[str, str]]:
    """Every lead (all statuses) as one CSV row each, in EXPORT_FIELDS order, oldest first;
    values as staff may see them (`for_staff`)."""
    moment = now or datetime.now(UTC)
    return [export_row(db.reads, found, moment) for found in store.find_leads(db.reads, STATUSES)]


def write_csv(rows: Iterable[Mapping[str, str]], out: IO[str], *, excel_safe: bool = False) -> int:
    """Write RFC 4180 CSV (header row, CRLF, quotes where needed); returns the rows written.

    `out` must be opened with `newline=""` so newlines inside values survive. `excel_safe`
    prefixes a `'` to values a spreadsheet would run as a formula; it changes those values, so it
    is off by default (the plain export round-trips exactly through any CSV reader).
    """
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(_defused(row) if excel_safe else row)
        count += 1
    return count


def _defused(row: Mapping[str, str]) -> dict[str, str]:
    return {k: "'" + v if v.startswith(_FORMULA_START) else v for k, v in row.items()}


# --- webhook events ------------------------------------------------------------------------------


def new_event_id() -> str:
    """A fresh event id (`webhook-id`): `msg_` and 26 random base32 characters."""
    return "msg_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def lead_data(c: Tx, lead_id: int, now: datetime) -> dict[str, Any] | None:
    """A lead as a webhook carries it: its CSV export row and the subjects of its messages.
    None when there is no such lead."""
    found = store.get_lead(c, lead_id)
    if found is None:
        return None
    data: dict[str, Any] = dict(export_row(c, found, now))
    data["subjects"] = [
        strip_invisible(m.subject) for m in store.lead_messages(c, lead_id, latest=PAGE_MESSAGES)
    ]
    return data


def record_event(
    c: Tx,
    event: str,
    *,
    lead_id: int | None = None,
    extra: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str | None:
    """Within the caller's transaction (the change's own): queue `event` for each webhook
    endpoint that takes it, with the lead `lead_id` as it is now (`lead_data`) and `extra`.
    Returns the event's id, None when no endpoint takes it (nothing is recorded then)."""
    endpoints = hooks.subscribers(c, event)
    if not endpoints:
        return None
    moment = now or datetime.now(UTC)
    data: dict[str, Any] = dict(extra or {})
    if lead_id is not None:
        data["lead"] = lead_data(c, lead_id, moment)
    event_id = new_event_id()
    hooks.record_event(c, event_id, event, lead_id, data, moment, endpoints)
    return event_id


def record_lead_event(c: Tx, lead_id: int, cause: str, now: datetime | None = None) -> str | None:
    """Within the transaction that just recorded a message's lead (`triage.store.leads.
    record_lead`): `lead.created` when the message made the lead, else `lead.updated` (the
    message joined it). `cause` says what recorded it (`message`, `review`)."""
    if not hooks.takes_any(c, ("lead.created", "lead.updated")):
        return None  # the usual case without webhooks: one small read, no lead read
    found = store.get_lead(c, lead_id)
    if found is None:
        return None
    # A lead made in this transaction has exactly this message and was not touched since.
    created = found.message_count == 1 and found.created_at == found.updated_at
    if created:
        return record_event(c, "lead.created", lead_id=lead_id, extra={"cause": cause}, now=now)
    return record_event(
        c, "lead.updated", lead_id=lead_id, extra={"change": cause, "by": ""}, now=now
    )


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """How many rows retention emptied in one run."""

    messages: int = 0
    corrections: int = 0
    digests: int = 0
    webhook_events: int = 0


def apply_retention(
    settings: LeadsSettings, db: Database, now: datetime | None = None
) -> RetentionResult:
    """Delete message content older than `leads.retention_days` (0: keep forever).

    Emptied: `messages.body` and `messages.raw` (lead records, senders and subjects stay),
    `corrections.raw` (the raw message; the correction's subject and body text stay, because they
    are the model's training data — delete those with the corrections themselves if they must go),
    the raw message of finished digests and alerts (they quote message snippets), and the data
    of webhook events no endpoint still has to receive (they hold the lead and its first
    message). Idempotent and cheap when there is nothing to do; the daemon calls it once a day.
    """
    if settings.retention_days <= 0:
        return RetentionResult()
    moment = now or datetime.now(UTC)
    cutoff = timestamp(moment - timedelta(days=settings.retention_days))
    with db.transaction() as c:
        emptied = empty_before(c, cutoff)
        events = hooks.empty_before(c, cutoff)
    result = RetentionResult(emptied.messages, emptied.corrections, emptied.digests, events)
    if result.messages or result.corrections or result.digests or events:
        log.info(
            "retention (%d days): emptied %d messages, %d corrections, %d digests,"
            " %d webhook events",
            settings.retention_days,
            result.messages,
            result.corrections,
            result.digests,
            events,
        )
    return result


__all__ = [
    "CLOSED_STATUSES",
    "KINDS",
    "OPEN_STATUSES",
    "STATUSES",
    "TRANSITIONS",
    "LeadDetail",
    "LeadError",
    "LeadPage",
    "QueuePage",
    "RetentionResult",
    "SentReply",
    "apply_retention",
    "assign",
    "assign_owner",
    "business_due",
    "check_business_hours",
    "claim",
    "detail_for_staff",
    "export_row",
    "export_rows",
    "for_staff",
    "is_overdue",
    "list_leads",
    "page",
    "queue",
    "record_event",
    "record_lead_event",
    "reply_text",
    "response_target",
    "show",
    "update",
    "write_csv",
]
