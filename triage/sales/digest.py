"""The sales digest and instant hot-lead alerts: build them, and send each exactly once.

The digest is an email to `digest.recipients` on the `digest.schedule` (cron, in
`digest.timezone`) with four sections: hot leads that no digest has reported yet, hot leads past
their response target that nobody has contacted, decisions waiting for review, and how many
marketing replies went out since the previous digest. Alerts are one short email per hot lead, as
it arrives (`leads.alert_hot`). Both are rendered from admin-editable templates in
`<replies.templates_dir>/digest/` in the same Jinja sandbox as replies.

Exactly once, in two steps:

1. Prepare, in one transaction: choose the leads, render, queue the complete message in the
   delivery queue (its Message-ID derived from the schedule slot, so a slot can only be prepared
   once) and set the leads' `digested_in` (or `alerted_at`). From here on the content is frozen:
   however often the send is retried, it is the same message, and no later digest reports those
   leads as new.
2. Send it like every outbound mail (`triage.act.outbox`): two phases over SMTP with the final
   dot held back until `sending` is recorded; a mail that may or may not have arrived becomes
   `uncertain`, is never resent automatically, and shows in `triage outbox list` and
   `triage digest --status`. The leads of a lost digest still surface as overdue in the next one
   and in `triage leads list`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2

from triage.act.compose import header_address
from triage.act.outbox import Delivery, Outcome, Outgoing, recover, stale_claims
from triage.act.replies import describe, make_environment, render_error_location
from triage.act.smtp import SmtpSession, connect
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import ConfigError, SendError, TemplateError
from triage.core.sanitize import is_addr_spec, one_line, shown, strip_invisible
from triage.core.settings import Settings, SmtpSettings
from triage.sales.leads import age, check_business_hours, is_overdue, zone
from triage.sales.review import ReviewItem, pending, pending_count
from triage.store import digests as store
from triage.store.db import Database, Tx, timestamp
from triage.store.leads import (
    LeadRecord,
    overdue_hot_leads,
    unalerted_hot_leads,
    undigested_hot_leads,
)
from triage.store.outbox import CapReport, cap_report, sent_with_template

log = logging.getLogger(__name__)

Connector = Callable[[SmtpSettings], SmtpSession]
DIGEST = "digest"
ALERT = "alert"
LATE_LIMIT = timedelta(hours=12)  # a slot missed by more (daemon down) is skipped, not sent late
RETRY_BROKEN = timedelta(minutes=10)  # wait before preparing again after a template error
ALERT_MAX_AGE = timedelta(days=1)  # leads older than this get no alert (e.g. alerts just enabled)
REVIEW_SHOWN = 20  # review items listed by name; the rest are counted
SNIPPET = 280  # characters of message text shown per lead
MAX_OUTPUT = 1_000_000  # characters per rendered part


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
        header_address("", address, "digest.recipients / leads.alert_recipients", ConfigError)
    header_address("", sender(settings), "digest.from_address", ConfigError)
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
    if store.retry_after(db.reads, DIGEST) > now:
        return False
    return not store.slot_taken(db.reads, DIGEST, timestamp(slot))


def _pause(db: Database, kind: str, until: datetime) -> None:
    with db.transaction() as tx:
        store.pause(tx, kind, until)


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


def collect(c: Tx, now: datetime) -> DigestContent:
    """Read what a digest at `now` reports. A lead that is new and already overdue is listed
    once, as new (marked overdue)."""
    since = store.previous_cutoff(c, DIGEST)
    new = tuple(undigested_hot_leads(c))
    ids = {lead.id for lead in new}
    all_overdue = overdue_hot_leads(c, now)
    overdue = tuple(lead for lead in all_overdue if lead.id not in ids)
    return DigestContent(
        now=now,
        since=since,
        new_leads=new,
        overdue_leads=overdue,
        overdue_total=len(all_overdue),
        review=tuple(pending(c, REVIEW_SHOWN)),
        review_count=pending_count(c),
        marketing_sent=sent_with_template(c, "marketing", since, now),
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
    msg["From"] = header_address("triage", sender(settings), "digest.from_address", ConfigError)
    msg["To"] = [header_address("", r, "digest.recipients", ConfigError) for r in recipients]
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
    return store.insert(
        c,
        kind=kind,
        slot=slot,
        message_id=str(msg["Message-ID"]),
        raw=msg.as_bytes(policy=policy.SMTP),
        recipients=recipients,
        envelope_from=sender(settings),
        now=now,
        lead_id=lead_id,
        covers_until=covers_until,
    )


def prepare_digest(
    settings: Settings, db: Database, now: datetime, slot: str
) -> tuple[int, DigestContent] | None:
    """Freeze the digest for `slot`: render it, store it `prepared` and mark its new leads as
    reported, all in one transaction. None when `slot` was already prepared."""
    recipients = settings.digest.recipients
    if not recipients:
        raise ConfigError("digest.recipients is empty: nobody to send the digest to")
    with db.transaction() as c:
        if store.slot_taken(c, DIGEST, slot):
            return None
        content = collect(c, now)
        rendered = render(DIGEST, digest_context(content, settings), settings)
        mid = notice_message_id(DIGEST, slot, settings, store.instance(c))
        msg = compose(rendered, recipients, mid, settings, now)
        digest_id = _insert(c, DIGEST, slot, msg, recipients, settings, now, covers_until=now)
        store.mark_digested(c, digest_id, (lead.id for lead in content.new_leads))
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
            if not store.slot_taken(c, ALERT, slot):
                context = {**_common(settings, now), "lead": lead_view(lead, now, settings)}
                rendered = render(ALERT, context, settings)
                mid = notice_message_id(ALERT, slot, settings, store.instance(c))
                msg = compose(rendered, recipients, mid, settings, now)
                prepared.append(
                    _insert(c, ALERT, slot, msg, recipients, settings, now, lead_id=lead.id)
                )
            store.mark_alerted(c, lead.id, now)
    return prepared


# --- sending: the delivery queue ----------------------------------------------------------------


def deliver(
    settings: Settings,
    db: Database,
    now: datetime | None = None,
    *,
    connector: Connector = connect,
    checkpoint: Checkpoint = no_checkpoint,
) -> dict[int, Outcome]:
    """Send every queued digest and alert that is due (`triage.act.outbox.Delivery`); returns
    row id → outcome. Must be called outside a transaction: each step commits on its own."""
    moment = now or datetime.now(UTC)
    items = [
        Outgoing("digests", n.id, n.kind, n.envelope_from, n.recipients, n.raw, n.attempts)
        for n in store.due(db.reads, moment)
    ]
    delivery = Delivery(db, settings.smtp, clock=lambda: moment, checkpoint=checkpoint)
    return delivery.send_batch(items, lambda: connector(settings.smtp))


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
    checkpoint: Checkpoint = no_checkpoint,
) -> Run:
    """The daemon's periodic step: recover, prepare the digest when its slot is due, prepare
    hot-lead alerts, and send what is prepared. Never raises for a template, configuration or
    SMTP problem — it logs it and tries again later — so the daemon's loop goes on."""
    moment = now or datetime.now(UTC)
    recover(db, stale_claims(settings.smtp, moment))
    prepared = None
    counts: dict[str, int] = {}
    if store.retry_after(db.reads, ALERT) <= moment:
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
    checkpoint: Checkpoint = no_checkpoint,
) -> Run:
    """`triage digest --send`: send what is pending, then a digest now (off the schedule) — unless
    an earlier digest is still waiting to be sent, which would make this one misleading."""
    moment = now or datetime.now(UTC)
    recover(db, stale_claims(settings.smtp, moment))
    earlier = deliver(settings, db, moment, connector=connector, checkpoint=checkpoint)
    waiting = store.waiting(db.reads, DIGEST)
    if waiting is not None:
        raise SendError(f"digest {waiting[0]} is still waiting to be sent: {waiting[1]}")
    made = prepare_digest(settings, db, moment, f"manual {timestamp(moment)}")
    assert made is not None  # a manual slot is unique to the microsecond
    checkpoint("prepared")
    sent = deliver(settings, db, moment, connector=connector, checkpoint=checkpoint)
    return Run(made[0], {**earlier, **sent}, made[1].counts())


def status(db: Database, limit: int = 20) -> list[store.NoticeStatus]:
    """The most recent digests and alerts, newest first."""
    return store.status(db.reads, limit)
