"""The sales digest and instant hot-lead alerts: build them, and send each exactly once.

The digest is an email to `digest.recipients` on the `digest.schedule` (cron, in
`digest.timezone`) with four sections: hot leads that no digest has reported yet, hot leads past
their response target that nobody has contacted, decisions waiting for review, and how many
marketing replies went out since the previous digest. Alerts are one short email per hot lead, as
it arrives (`leads.alert_hot`). Both are rendered from admin-editable templates in
`<replies.templates_dir>/digest/` in the same Jinja sandbox as replies.

Exactly once — the states of a row in `digests` (shared by digests and alerts):

    prepared ──▶ sending ──▶ sent
       ▲  │         ├──▶ prepared  (the server refused the message with 4xx: retry with backoff)
       └──┘         ├──▶ failed    (5xx, or `smtp.max_attempts` transient failures)
    retry later     └──▶ uncertain (the connection broke after the final dot, or triage died
                                    between committing `sending` and recording the reply)

1. Prepare, in one transaction: choose the leads, render, store the complete message (its
   Message-ID derived from the schedule slot, so a slot can only be prepared once) and set the
   leads' `digested_in` (or `alerted_at`). From here on the content is frozen: however often the
   send is retried, it is the same message, and no later digest reports those leads as new.
2. Send in two phases over one SMTP connection: envelope, DATA and the whole message *except the
   final "."*; then commit `sending`; then write the "." and read the reply; then commit `sent`.
   Until the final dot the server discards the message if we die or the connection drops, so a
   crash before `sending` is committed leaves `prepared`, which is safely sent again. A crash after
   it leaves `sending` — the message may or may not have been accepted — and such a row is marked
   `uncertain` and never resent automatically (logged as an error, shown by `triage digest
   --status`). We cannot ask the recipient's mailbox, so at-most-once is the choice for that
   window; it is the few milliseconds between the commit and the server's answer to the dot, and
   the leads of a lost digest still surface as overdue in the next one and in `triage leads list`.
   This matches the reply outbox, which is also at most once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import smtplib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import jinja2

from triage.act.outbox import CapReport, cap_report
from triage.act.replies import describe, make_environment, render_error_location
from triage.act.smtp import open_client
from triage.core.errors import (
    ConfigError,
    PermanentError,
    SendError,
    TemplateError,
    TriageError,
)
from triage.core.sanitize import is_addr_spec, one_line, shown, strip_invisible
from triage.core.settings import Settings, SmtpSettings
from triage.sales.leads import age, check_business_hours, is_overdue, zone
from triage.sales.review import ReviewItem, pending, pending_count
from triage.store.db import Database, Tx
from triage.store.leads import (
    LeadRecord,
    overdue_hot_leads,
    timestamp,
    unalerted_hot_leads,
    undigested_hot_leads,
)

log = logging.getLogger(__name__)

Checkpoint = Callable[[str], None]
DIGEST = "digest"
ALERT = "alert"
LATE_LIMIT = timedelta(hours=12)  # a slot missed by more (daemon down) is skipped, not sent late
RETRY_BROKEN = timedelta(minutes=10)  # wait before preparing again after a template error
ALERT_MAX_AGE = timedelta(days=1)  # leads older than this get no alert (e.g. alerts just enabled)
REVIEW_SHOWN = 20  # review items listed by name; the rest are counted
SNIPPET = 280  # characters of message text shown per lead
MAX_OUTPUT = 1_000_000  # characters per rendered part


def _no_checkpoint(_name: str) -> None:
    """The default checkpoint: no fault injection."""


# --- settings ------------------------------------------------------------------------------------


def check_settings(settings: Settings) -> None:
    """ConfigError unless the digest and lead settings are usable: call it at start-up so a typo
    in the schedule, time zone or business hours stops the daemon instead of every digest."""
    from croniter import croniter  # local: keeps importing triage cheap

    zone(settings.digest.timezone)
    check_business_hours(settings.leads)
    if not croniter.is_valid(settings.digest.schedule):
        raise ConfigError(f"digest.schedule {settings.digest.schedule!r} is not a cron expression")
    for address in (*settings.digest.recipients, *settings.leads.alert_recipients):
        _header_address("", address, "digest.recipients / leads.alert_recipients")
    _header_address("", sender(settings), "digest.from_address")
    subject_line(settings, {"new": 0, "overdue": 0, "review": 0, "marketing": 0})


def sender(settings: Settings) -> str:
    """The From address of digests and alerts: `digest.from_address` or `replies.from_address`."""
    return settings.digest.from_address or settings.replies.from_address


def templates_dir(settings: Settings) -> Path:
    """Where the digest and alert templates live: `<replies.templates_dir>/digest`."""
    return settings.replies.templates_dir / "digest"


def subject_line(settings: Settings, counts: Mapping[str, int]) -> str:
    """`digest.subject` with `{new}`, `{overdue}`, `{review}` and `{marketing}` filled in."""
    try:
        return one_line(settings.digest.subject.format_map(dict(counts)), 998)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"digest.subject {settings.digest.subject!r}: {exc!r}; "
            "use {new}, {overdue}, {review} and {marketing}"
        ) from None


# --- the schedule --------------------------------------------------------------------------------


def latest_slot(settings: Settings, now: datetime) -> datetime:
    """The most recent scheduled digest time at or before `now` (UTC)."""
    from croniter import croniter

    tz = zone(settings.digest.timezone)
    try:
        # croniter's get_prev is strict; one second later makes a slot at exactly `now` count.
        it = croniter(settings.digest.schedule, now.astimezone(tz) + timedelta(seconds=1))
        slot: datetime = it.get_prev(datetime)
    except ValueError as exc:  # croniter's errors derive from ValueError
        raise ConfigError(f"digest.schedule {settings.digest.schedule!r}: {exc}") from None
    return slot.astimezone(UTC)


def due(now: datetime, db: Database, settings: Settings) -> bool:
    """True when the latest scheduled slot has no digest yet and is at most LATE_LIMIT ago.

    Missed slots are not made up: the next digest reports every lead no digest has reported.
    """
    if not settings.digest.recipients:
        return False
    slot = latest_slot(settings, now)
    if now - slot > LATE_LIMIT:
        return False
    if _retry_after(db, DIGEST) > now:
        return False
    row = db.reads.execute(
        "SELECT 1 FROM digests WHERE kind = ? AND slot = ?", (DIGEST, timestamp(slot))
    ).fetchone()
    return row is None


def _retry_after(db: Database, kind: str) -> datetime:
    """Until when preparing `kind` is paused after a template or settings error."""
    row = db.reads.execute(
        "SELECT value FROM kv WHERE key = ?", (f"{kind}.retry_after",)
    ).fetchone()
    return datetime.fromisoformat(row["value"]) if row else datetime.min.replace(tzinfo=UTC)


def _pause(db: Database, kind: str, until: datetime) -> None:
    with db.transaction() as c:
        c.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (f"{kind}.retry_after", timestamp(until)),
        )


# --- what a digest shows -------------------------------------------------------------------------


def snippet(text: str, limit: int = SNIPPET) -> str:
    """The start of a message as one line, cut at a word boundary with "…"."""
    flat = " ".join(strip_invisible(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0]
    return cut + "…"


# A host name of letters, digits and hyphens ending in a name (no IP address, no IDN look-alike:
# `xn--` spells those out); with an optional path, it is what signatures give as a website.
_HOST = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_BARE_WEBSITE = re.compile(rf"(?i){_HOST}(?:[/?#]\S*)?")
_PLAIN_HOST = re.compile(_HOST)
# Characters a URL never holds unencoded; a backslash is a slash to browsers but not to urlsplit.
_NOT_IN_URL = re.compile(r"[\s\"'<>\\`{}|^]")


def website_link(website: str) -> tuple[str, str]:
    """(URL, host) to link a website the prospect gave: the link and its text; ("", "") unless
    it is an http(s) URL with a plain host name (never `javascript:`, `data:`, `mailto:`, a user
    name before the host, or odd characters). A bare `acme.example` is taken as https."""
    value = one_line(strip_invisible(website), 300)
    if _BARE_WEBSITE.fullmatch(value):
        value = "https://" + value
    if _NOT_IN_URL.search(value):
        return "", ""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        return "", ""
    if (
        parts.scheme not in ("http", "https")
        or "@" in parts.netloc  # "https://acme.example@evil.example" goes to evil.example
        or not _PLAIN_HOST.fullmatch(host)
    ):
        return "", ""
    return value, host


def mailto(email: str) -> str:
    """The `mailto:` URL of `email`, percent-encoded, when it is a plain addr-spec; else ""
    (the templates' `mailto` filter: the address is then shown as text, not linked)."""
    return "mailto:" + quote(email, safe="@") if is_addr_spec(email) else ""


@dataclass(frozen=True, slots=True)
class LeadView:
    """One lead as the templates see it: every value already a display string."""

    id: int
    name: str
    email: str
    company: str
    phone: str
    website: str
    website_url: str
    website_host: str
    owner: str
    status: str
    subject: str
    snippet: str
    terms: tuple[str, ...]
    confidence: str
    age: str
    received: str
    due: str
    overdue: bool
    overdue_by: str
    messages: int


@dataclass(frozen=True, slots=True)
class ReviewView:
    """One message waiting for review, as the templates see it."""

    id: int
    sender: str
    subject: str
    snippet: str
    guess: str
    confidence: str
    age: str


@dataclass(frozen=True, slots=True)
class DigestContent:
    """Everything one digest reports; `new_leads` are the leads it marks as reported.

    `overdue_leads` are the overdue leads an earlier digest reported; `overdue_total` also counts
    the new leads that are overdue already (listed among the new ones, marked).
    """

    now: datetime
    since: datetime | None
    new_leads: tuple[LeadRecord, ...]
    overdue_leads: tuple[LeadRecord, ...]
    overdue_total: int
    review: tuple[ReviewItem, ...]
    review_count: int
    marketing_sent: int
    # Replies created since the last digest that a sending cap held back (see `outbox`).
    caps: CapReport = field(default_factory=CapReport)

    def counts(self) -> dict[str, int]:
        """The numbers the subject line may use."""
        return {
            "new": len(self.new_leads),
            "overdue": self.overdue_total,
            "review": self.review_count,
            "marketing": self.marketing_sent,
        }


def local_time(moment: datetime | None, settings: Settings) -> str:
    """A time as people read it in the digest's time zone: \"Tue 14 May 08:00\" (\"\" for None)."""
    if moment is None:
        return ""
    return moment.astimezone(zone(settings.digest.timezone)).strftime("%a %d %b %H:%M")


def lead_view(lead: LeadRecord, now: datetime, settings: Settings) -> LeadView:
    """The display form of a lead (times in the digest's time zone)."""
    late = is_overdue(lead, now)
    website_url, website_host = website_link(lead.website)
    return LeadView(
        id=lead.id,
        name=shown(lead.name),
        email=shown(lead.email, 320),
        company=shown(lead.company),
        phone=shown(lead.phone),
        website=shown(lead.website),
        website_url=website_url,
        website_host=website_host,
        owner=shown(lead.owner),
        status=lead.status,
        subject=shown(lead.last_subject or lead.first_subject, 300),
        snippet=snippet(lead.last_body),
        terms=tuple(shown(t, 60) for t in lead.explanation[:8]),
        confidence=f"{lead.confidence:.0%}",
        age=age(lead.created_at, now),
        received=local_time(lead.created_at, settings),
        due=local_time(lead.due_at, settings),
        overdue=late,
        overdue_by=age(lead.due_at, now) if late and lead.due_at else "",
        messages=lead.message_count,
    )


def review_view(item: ReviewItem, now: datetime) -> ReviewView:
    """The display form of a review item."""
    return ReviewView(
        id=item.row_id,
        sender=shown(item.sender, 320),
        subject=shown(item.subject, 300),
        snippet=snippet(item.body, 160),
        guess=item.guess,
        confidence=f"{item.confidence:.0%}",
        age=age(item.received_at, now),
    )


def _previous_cutoff(c: Tx) -> datetime | None:
    row = c.execute(
        "SELECT covers_until FROM digests WHERE kind = ? AND covers_until IS NOT NULL"
        " ORDER BY id DESC LIMIT 1",
        (DIGEST,),
    ).fetchone()
    return datetime.fromisoformat(row["covers_until"]) if row else None


def collect(c: Tx, now: datetime) -> DigestContent:
    """Read what a digest at `now` reports. A lead that is new and already overdue is listed
    once, as new (marked overdue)."""
    since = _previous_cutoff(c)
    new = tuple(undigested_hot_leads(c))
    ids = {lead.id for lead in new}
    all_overdue = overdue_hot_leads(c, now)
    overdue = tuple(lead for lead in all_overdue if lead.id not in ids)
    row = c.execute(
        "SELECT COUNT(*) FROM replies WHERE state = 'sent' AND template = 'marketing'"
        " AND sent_at > ? AND sent_at <= ?",
        (timestamp(since) if since else "", timestamp(now)),
    ).fetchone()
    return DigestContent(
        now=now,
        since=since,
        new_leads=new,
        overdue_leads=overdue,
        overdue_total=len(all_overdue),
        review=tuple(pending(c, REVIEW_SHOWN)),
        review_count=pending_count(c),
        marketing_sent=int(row[0]),
        caps=cap_report(c, since),
    )


# --- rendering -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """The rendered parts of a digest or alert."""

    subject: str
    text: str
    html: str


def _common(settings: Settings, now: datetime) -> dict[str, Any]:
    return {
        "company_name": settings.replies.company_name,
        "generated_at": local_time(now, settings),
        "timezone": settings.digest.timezone,
        "response_target_hours": f"{settings.leads.response_target_hours:g}",
    }


def digest_context(content: DigestContent, settings: Settings) -> dict[str, Any]:
    """The variables of the digest templates (documented in `docs/leads.md`)."""
    now = content.now
    return {
        **_common(settings, now),
        "subject": subject_line(settings, content.counts()),
        "since": local_time(content.since, settings),
        "new_leads": [lead_view(lead, now, settings) for lead in content.new_leads],
        "overdue_leads": [lead_view(lead, now, settings) for lead in content.overdue_leads],
        "overdue_total": content.overdue_total,
        "overdue_new": content.overdue_total - len(content.overdue_leads),
        "review_items": [review_view(item, now) for item in content.review],
        "review_count": content.review_count,
        "review_more": max(0, content.review_count - len(content.review)),
        "marketing_sent": content.marketing_sent,
        "caps": content.caps,
    }


def _render_file(
    env: jinja2.Environment, directory: Path, name: str, ctx: Mapping[str, Any]
) -> str:
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"no template {directory / name}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{directory / name}:{exc.lineno}: {exc.message}") from None
    except OSError as exc:
        raise TemplateError(f"cannot read template {directory / name}: {exc}") from None
    try:
        output = template.render(ctx)
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        where = render_error_location(exc, directory, name)
        raise TemplateError(f"{where}: {describe(exc)}") from None
    if len(output) > MAX_OUTPUT:
        raise TemplateError(f"{directory / name}: output longer than {MAX_OUTPUT} characters")
    return output


def render(name: str, context: Mapping[str, Any], settings: Settings) -> Rendered:
    """Render `name`.subject/.txt/.html (`digest` or `alert`) from the templates directory."""
    directory = templates_dir(settings)
    # The part decides escaping, not each file's name: a `.txt` partial included from the HTML
    # part is escaped there, and the text parts are never escaped.
    plain = make_environment(directory, autoescape=False)
    html = make_environment(directory, autoescape=True)
    for env in (plain, html):
        env.filters["mailto"] = mailto
    return Rendered(
        subject=one_line(_render_file(plain, directory, f"{name}.subject", context), 998),
        text=_render_file(plain, directory, f"{name}.txt", context),
        html=_render_file(html, directory, f"{name}.html", context),
    )


def preview(settings: Settings, db: Database, now: datetime | None = None) -> Rendered:
    """What a digest sent now would say; reads only, marks nothing."""
    content = collect(db.reads, now or datetime.now(UTC))
    return render(DIGEST, digest_context(content, settings), settings)


# --- composing -----------------------------------------------------------------------------------


def _header_address(name: str, email: str, setting: str) -> HeaderAddress:
    try:
        return HeaderAddress(display_name=one_line(name), addr_spec=one_line(email, 320))
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{setting}: {email!r} is not an address ({exc})") from None


def instance(c: Tx) -> str:
    """A random token made once per database, inside the caller's write transaction.

    It goes into Message-IDs so that a staging copy, or a reinstall whose lead ids start at 1
    again, never produces the id of an earlier message (mail services drop such "duplicates").
    """
    row = c.execute("SELECT value FROM kv WHERE key = 'triage.instance'").fetchone()
    if row is not None:
        return str(row["value"])
    token = secrets.token_hex(8)
    c.execute("INSERT INTO kv (key, value) VALUES ('triage.instance', ?)", (token,))
    return token


def notice_message_id(kind: str, slot: str, settings: Settings, instance: str = "") -> str:
    """The Message-ID of the digest or alert for `slot`: the same slot (of the same database)
    always gives the same id, so a resend is recognisable as the same message."""
    domain = sender(settings).rpartition("@")[2].lower()
    if not re.fullmatch(r"[a-z0-9.-]+", domain):
        domain = "triage.invalid"
    digest = hashlib.sha256(f"{instance}\0{kind}\0{slot}".encode()).hexdigest()[:24]
    return f"<triage-{kind}.{digest}@{domain}>"


def compose(
    rendered: Rendered,
    recipients: Sequence[str],
    message_id: str,
    settings: Settings,
    now: datetime,
) -> EmailMessage:
    """The complete email: text and HTML alternatives, marked as automatically generated."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _header_address("triage", sender(settings), "digest.from_address")
    msg["To"] = [_header_address("", r, "digest.recipients") for r in recipients]
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    # RFC 3834: generated, not a reply; and ask vacation responders not to answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "bulk"
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # add_alternative copies it into the parts; it belongs on top
    return msg


# --- preparing (one transaction each) ------------------------------------------------------------


def _insert(
    c: Tx,
    kind: str,
    slot: str,
    msg: EmailMessage,
    recipients: Sequence[str],
    settings: Settings,
    now: datetime,
    *,
    lead_id: int | None = None,
    covers_until: datetime | None = None,
) -> int:
    at = timestamp(now)
    cur = c.execute(
        "INSERT INTO digests (state, message_id, raw, created_at, kind, slot, lead_id,"
        " recipients, envelope_from, covers_until, attempts, next_attempt, updated_at)"
        " VALUES ('prepared', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (
            str(msg["Message-ID"]),
            msg.as_bytes(policy=policy.SMTP),
            at,
            kind,
            slot,
            lead_id,
            json.dumps(list(recipients)),
            sender(settings),
            timestamp(covers_until) if covers_until else None,
            at,
            at,
        ),
    )
    return int(cur.lastrowid or 0)


def prepare_digest(
    settings: Settings, db: Database, now: datetime, slot: str
) -> tuple[int, DigestContent] | None:
    """Freeze the digest for `slot`: render it, store it `prepared` and mark its new leads as
    reported, all in one transaction. None when `slot` was already prepared."""
    recipients = settings.digest.recipients
    if not recipients:
        raise ConfigError("digest.recipients is empty: nobody to send the digest to")
    with db.transaction() as c:
        if c.execute(
            "SELECT 1 FROM digests WHERE kind = ? AND slot = ?", (DIGEST, slot)
        ).fetchone():
            return None
        content = collect(c, now)
        rendered = render(DIGEST, digest_context(content, settings), settings)
        mid = notice_message_id(DIGEST, slot, settings, instance(c))
        msg = compose(rendered, recipients, mid, settings, now)
        digest_id = _insert(c, DIGEST, slot, msg, recipients, settings, now, covers_until=now)
        c.executemany(
            "UPDATE leads SET digested_in = ? WHERE id = ?",
            [(digest_id, lead.id) for lead in content.new_leads],
        )
    log.info(
        "digest %d prepared: %d new hot leads, %d overdue, %d for review, %d marketing replies",
        digest_id,
        *content.counts().values(),
    )
    return digest_id, content


def alert_recipients(settings: Settings) -> tuple[str, ...]:
    """Who gets hot-lead alerts: `leads.alert_recipients`, else the digest's recipients."""
    return settings.leads.alert_recipients or settings.digest.recipients


def prepare_alerts(settings: Settings, db: Database, now: datetime) -> list[int]:
    """Freeze one alert per new hot lead not yet alerted (`alerted_at` set in the same
    transaction); returns the ids of the prepared rows."""
    recipients = alert_recipients(settings)
    if not settings.leads.alert_hot or not recipients:
        return []
    since = now - ALERT_MAX_AGE
    # Read first: the daemon calls this every few seconds, and a write transaction each time
    # would compete with the account workers for nothing.
    if not unalerted_hot_leads(db.reads, since):
        return []
    prepared = []
    with db.transaction() as c:
        for lead in unalerted_hot_leads(c, since):
            slot = f"lead-{lead.id}"
            if not c.execute(
                "SELECT 1 FROM digests WHERE kind = ? AND slot = ?", (ALERT, slot)
            ).fetchone():
                context = {**_common(settings, now), "lead": lead_view(lead, now, settings)}
                rendered = render(ALERT, context, settings)
                mid = notice_message_id(ALERT, slot, settings, instance(c))
                msg = compose(rendered, recipients, mid, settings, now)
                prepared.append(
                    _insert(c, ALERT, slot, msg, recipients, settings, now, lead_id=lead.id)
                )
            c.execute("UPDATE leads SET alerted_at = ? WHERE id = ?", (timestamp(now), lead.id))
    return prepared


# --- sending: two phases over SMTP ---------------------------------------------------------------

_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def dot_stuffed(raw: bytes) -> bytes:
    """The message as SMTP DATA carries it (RFC 5321 4.5.2): CRLF line ends, a leading "." on a
    line doubled, ending with CRLF — everything but the final ".\\r\\n"."""
    data = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", raw))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _refusal(stage: str, code: int, reply: bytes | str) -> TriageError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"SMTP {stage} refused: {code} {' '.join(text.split())}"[:500]
    return PermanentError(message) if 500 <= code <= 599 else SendError(message)


class AmbiguousError(TriageError):
    """Raised when the connection broke after the final dot: the server may have the message."""


class TwoPhaseSession:
    """One SMTP transaction whose last step — the final dot — is taken separately, so the caller
    can record `sending` between handing over the content and committing the delivery."""

    def __init__(self, client: smtplib.SMTP, where: str) -> None:
        self._client = client
        self._where = where

    def begin(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> list[str]:
        """MAIL FROM, RCPT TO each recipient, DATA and the content without the final dot.

        Returns the recipients the server refused (it accepted at least one). Raises SendError
        or PermanentError; nothing is delivered until `commit`.
        """
        client = self._client
        try:
            code, reply = client.mail(envelope_from)
            if code != 250:
                raise _refusal("MAIL FROM", code, reply)
            refused: dict[str, TriageError] = {}
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = _refusal(f"RCPT TO <{rcpt}>", code, reply)
            if len(refused) == len(recipients):
                transient = [e for e in refused.values() if not isinstance(e, PermanentError)]
                raise (transient or list(refused.values()))[0]
            client.putcmd("data")
            code, reply = client.getreply()
            if code != 354:
                raise _refusal("DATA", code, reply)
            client.send(dot_stuffed(raw))
        except UnicodeEncodeError:
            # smtplib speaks ASCII commands; internationalised addresses would need SMTPUTF8.
            raise PermanentError(
                f"non-ASCII address in {envelope_from!r} or {list(recipients)}: not supported"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SendError(f"SMTP {self._where}: {exc}") from None
        for error in refused.values():
            log.warning("%s", error)
        return list(refused)

    def commit(self) -> None:
        """Send the final dot and read the reply: returns when the server took the message.

        Raises SendError/PermanentError when it refused it (not delivered), AmbiguousError when
        the connection broke without a reply.
        """
        try:
            self._client.send(b".\r\n")
            code, reply = self._client.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise AmbiguousError(f"SMTP {self._where} broke after the message: {exc}") from None
        if code != 250:
            raise _refusal("message", code, reply)

    def abort(self) -> None:
        """Drop the connection without the final dot: the server discards the message."""
        self._client.close()

    def close(self) -> None:
        """QUIT, or just close when the connection is gone."""
        try:
            self._client.quit()
        except (smtplib.SMTPException, OSError):
            self._client.close()


def connect(settings: SmtpSettings) -> TwoPhaseSession:
    """Open the configured SMTP connection (`triage.act.smtp.open_client`) for two-phase sending."""
    return TwoPhaseSession(open_client(settings), f"{settings.host}:{settings.port}")


class Session(Protocol):
    """What sending needs from an SMTP connection: `TwoPhaseSession`, or a test double."""

    def begin(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> list[str]:
        """Envelope, DATA and the content without the final dot; returns refused recipients."""
        ...

    def commit(self) -> None:
        """The final dot and the server's reply."""
        ...

    def abort(self) -> None:
        """Drop the connection before the final dot."""
        ...

    def close(self) -> None:
        """End the connection."""
        ...


Connector = Callable[[SmtpSettings], Session]


@dataclass(frozen=True, slots=True)
class Pending:
    """A prepared digest or alert waiting to be sent."""

    id: int
    kind: str
    message_id: str
    raw: bytes
    recipients: tuple[str, ...]
    envelope_from: str
    attempts: int


def _pending(db: Database, now: datetime) -> list[Pending]:
    rows = db.reads.execute(
        "SELECT id, kind, message_id, raw, recipients, envelope_from, attempts FROM digests"
        " WHERE state = 'prepared' AND (next_attempt IS NULL OR next_attempt <= ?) ORDER BY id",
        (timestamp(now),),
    )
    return [
        Pending(
            id=int(r["id"]),
            kind=r["kind"],
            message_id=r["message_id"],
            raw=bytes(r["raw"]),
            recipients=tuple(json.loads(r["recipients"])),
            envelope_from=r["envelope_from"],
            attempts=int(r["attempts"]),
        )
        for r in rows
    ]


def _set(db: Database, row_id: int, now: datetime, **values: object) -> None:
    names = ", ".join(f"{k} = ?" for k in values)  # keys are literals from this module
    with db.transaction() as c:
        c.execute(
            f"UPDATE digests SET {names}, updated_at = ? WHERE id = ?",  # noqa: S608
            (*values.values(), timestamp(now), row_id),
        )


def _claim(db: Database, row_id: int, now: datetime) -> bool:
    with db.transaction() as c:
        cur = c.execute(
            "UPDATE digests SET state = 'sending', attempts = attempts + 1, updated_at = ?"
            " WHERE id = ? AND state = 'prepared'",
            (timestamp(now), row_id),
        )
    return cur.rowcount == 1


def _failed_attempt(
    db: Database, item: Pending, exc: TriageError, smtp: SmtpSettings, now: datetime
) -> str:
    """Record a try that delivered nothing: retry with backoff, or give up (5xx, too many)."""
    attempts = item.attempts + 1  # also right after `_claim`, which counted this try already
    if isinstance(exc, PermanentError) or attempts >= smtp.max_attempts:
        _set(db, item.id, now, state="failed", error=str(exc), attempts=attempts)
        log.error("%s %d (%s) failed for good: %s", item.kind, item.id, item.message_id, exc)
        return "failed"
    wait = min(smtp.retry_max, smtp.retry_initial * 2 ** (attempts - 1))
    _set(
        db,
        item.id,
        now,
        state="prepared",
        error=str(exc),
        attempts=attempts,
        next_attempt=timestamp(now + timedelta(seconds=wait)),
    )
    log.warning("%s %d not sent yet (%s); next try in %.0f s", item.kind, item.id, exc, wait)
    return "prepared"


def send_one(
    item: Pending,
    settings: Settings,
    db: Database,
    now: datetime,
    *,
    connector: Connector = connect,
    checkpoint: Checkpoint = _no_checkpoint,
) -> str:
    """Send one prepared row in two phases; returns its new state."""
    try:
        session = connector(settings.smtp)
    except TriageError as exc:
        return _failed_attempt(db, item, exc, settings.smtp, now)
    try:
        checkpoint("connected")
        try:
            refused = session.begin(item.envelope_from, item.recipients, item.raw)
        except (SendError, PermanentError) as exc:
            return _failed_attempt(db, item, exc, settings.smtp, now)
        checkpoint("content-sent")
        if not _claim(db, item.id, now):
            session.abort()  # another process sends it; without our dot the server drops ours
            return "taken"
        checkpoint("sending")
        try:
            session.commit()
        except AmbiguousError as exc:
            _set(db, item.id, now, state="uncertain", error=str(exc))
            log.error(
                "%s %d (%s) may or may not have been delivered: %s; it is not resent",
                item.kind,
                item.id,
                item.message_id,
                exc,
            )
            return "uncertain"
        except (SendError, PermanentError) as exc:
            return _failed_attempt(db, item, exc, settings.smtp, now)
        checkpoint("accepted")
        error = f"refused by the server: {', '.join(refused)}" if refused else None
        _set(db, item.id, now, state="sent", sent_at=timestamp(now), error=error)
        log.info("%s %d sent to %s", item.kind, item.id, ", ".join(item.recipients))
        return "sent"
    finally:
        session.close()


def recover(settings: Settings, db: Database, now: datetime) -> list[int]:
    """Mark rows left in `sending` by a process that died as `uncertain`; returns their ids.

    A live sender holds `sending` for at most one SMTP reply, so a row older than twice the SMTP
    timeout belongs to a dead process. Such a message may have been delivered: it is not resent.
    """
    stale = timestamp(now - timedelta(seconds=2 * settings.smtp.timeout + 60))
    stuck = "SELECT 1 FROM digests WHERE state = 'sending' AND updated_at < ?"
    if db.reads.execute(stuck, (stale,)).fetchone() is None:
        return []  # the usual case: no write transaction needed
    with db.transaction() as c:
        ids = [
            int(r["id"])
            for r in c.execute(
                "SELECT id FROM digests WHERE state = 'sending' AND updated_at < ?", (stale,)
            )
        ]
        c.executemany(
            "UPDATE digests SET state = 'uncertain', updated_at = ?, error = ? WHERE id = ?",
            [
                (timestamp(now), "triage stopped while sending: maybe delivered, not resent", i)
                for i in ids
            ],
        )
    for row_id in ids:
        log.error(
            "digest/alert %d was being sent when triage stopped; it may or may not have been "
            "delivered and is not resent (see triage digest --status)",
            row_id,
        )
    return ids


def deliver(
    settings: Settings,
    db: Database,
    now: datetime | None = None,
    *,
    connector: Connector = connect,
    checkpoint: Checkpoint = _no_checkpoint,
) -> dict[int, str]:
    """Send every prepared digest and alert that is due; returns row id → new state.

    Must be called outside a transaction: each step commits on its own.
    """
    if db.in_transaction:
        raise RuntimeError("deliver commits each step; call it outside a transaction")
    moment = now or datetime.now(UTC)
    return {
        item.id: send_one(item, settings, db, moment, connector=connector, checkpoint=checkpoint)
        for item in _pending(db, moment)
    }


# --- what the daemon and the CLI call ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """What one call did: the digest prepared (if any) and the rows it tried to send."""

    prepared: int | None = None
    delivered: Mapping[int, str] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


def run_digest_if_due(
    settings: Settings,
    db: Database,
    now: datetime | None = None,
    *,
    connector: Connector = connect,
    checkpoint: Checkpoint = _no_checkpoint,
) -> Run:
    """The daemon's periodic step: recover, prepare the digest when its slot is due, prepare
    hot-lead alerts, and send what is prepared. Never raises for a template, configuration or
    SMTP problem — it logs it and tries again later — so the daemon's loop goes on."""
    moment = now or datetime.now(UTC)
    recover(settings, db, moment)
    prepared = None
    counts: dict[str, int] = {}
    if _retry_after(db, ALERT) <= moment:
        try:
            prepare_alerts(settings, db, moment)
        except ConfigError as exc:
            log.error("cannot prepare hot-lead alerts: %s; trying again in 10 minutes", exc)
            _pause(db, ALERT, moment + RETRY_BROKEN)
    try:
        if due(moment, db, settings):
            made = prepare_digest(settings, db, moment, timestamp(latest_slot(settings, moment)))
            if made is not None:
                prepared, counts = made[0], made[1].counts()
            checkpoint("prepared")
    except ConfigError as exc:
        log.error("cannot prepare the digest: %s; trying again in 10 minutes", exc)
        _pause(db, DIGEST, moment + RETRY_BROKEN)
    sent = deliver(settings, db, moment, connector=connector, checkpoint=checkpoint)
    return Run(prepared, sent, counts)


def send_now(
    settings: Settings,
    db: Database,
    now: datetime | None = None,
    *,
    connector: Connector = connect,
    checkpoint: Checkpoint = _no_checkpoint,
) -> Run:
    """`triage digest --send`: send what is pending, then a digest now (off the schedule) — unless
    an earlier digest is still waiting to be sent, which would make this one misleading."""
    moment = now or datetime.now(UTC)
    recover(settings, db, moment)
    earlier = deliver(settings, db, moment, connector=connector, checkpoint=checkpoint)
    waiting = db.reads.execute(
        "SELECT id, error FROM digests WHERE kind = ? AND state = 'prepared' ORDER BY id LIMIT 1",
        (DIGEST,),
    ).fetchone()
    if waiting is not None:
        raise SendError(f"digest {waiting['id']} is still waiting to be sent: {waiting['error']}")
    made = prepare_digest(settings, db, moment, f"manual {timestamp(moment)}")
    assert made is not None  # a manual slot is unique to the microsecond
    checkpoint("prepared")
    sent = deliver(settings, db, moment, connector=connector, checkpoint=checkpoint)
    return Run(made[0], {**earlier, **sent}, made[1].counts())


@dataclass(frozen=True, slots=True)
class NoticeStatus:
    """One digest or alert row, for `triage digest --status`."""

    id: int
    kind: str
    state: str
    message_id: str
    created_at: str
    sent_at: str | None
    attempts: int
    error: str | None


def status(db: Database, limit: int = 20) -> list[NoticeStatus]:
    """The most recent digests and alerts, newest first."""
    rows = db.reads.execute(
        "SELECT id, kind, state, message_id, created_at, sent_at, attempts, error FROM digests"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [NoticeStatus(**dict(zip(r.keys(), tuple(r), strict=True))) for r in rows]
