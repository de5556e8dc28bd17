"""What a digest or alert says: the leads and review items it reports, as display values, and
the templates rendered from them (`<replies.templates_dir>/digest/`, the reply sandbox)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2

from triage.act.replies import describe, make_environment, render_error_location
from triage.core.errors import ConfigError, TemplateError
from triage.core.sanitize import is_addr_spec, one_line, shown, strip_invisible
from triage.core.settings import Settings
from triage.sales.drift import alert_line, verdict
from triage.sales.leads import age, is_overdue, zone
from triage.sales.review import ReviewItem, pending, pending_count
from triage.store import digests as store
from triage.store.db import Database, Tx
from triage.store.drift import LabelWindows, label_windows
from triage.store.leads import (
    LeadRecord,
    overdue_hot_leads,
    undigested_hot_leads,
)
from triage.store.outbox import CapReport, cap_report, sent_with_template

DIGEST = "digest"
ALERT = "alert"
REVIEW_SHOWN = 20  # review items listed by name; the rest are counted
# Leads listed in full per section of a digest; the rest are counted, and reported all the same.
# A digest after a long weekend or an outage may report hundreds: listed in full, they would
# make a mail nobody reads, past the templates' output limit (the digest then failed, again
# and again, and reported none of them).
LEADS_SHOWN = 50
SNIPPET = 280  # characters of message text shown per lead
MAX_OUTPUT = 1_000_000  # characters per rendered part


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
    # The lead's page in the web console (`web.base_url`/leads/ID); "" without a base_url.
    url: str = ""


@dataclass(frozen=True, slots=True)
class ReviewView:
    """One message waiting for review, as the templates see it. `uncertainty` is 1 - (p_top -
    p_second), two decimals ("" when unknown): the queue is listed highest first."""

    id: int
    sender: str
    subject: str
    snippet: str
    guess: str
    confidence: str
    age: str
    uncertainty: str = ""


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
    # What the classifier decided in the last 7 days and the 4 weeks before (None: not read).
    drift: LabelWindows | None = None

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
        url=lead_url(lead.id, settings),
    )


def lead_url(lead_id: int, settings: Settings) -> str:
    """The address of a lead's page in the web console, or "" when `web.base_url` is not set."""
    base = settings.web.base_url
    return f"{base}/leads/{lead_id}" if base else ""


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
        uncertainty="" if item.uncertainty is None else f"{item.uncertainty:.2f}",
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
        drift=label_windows(c, now),
    )


# --- rendering -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """The rendered parts of a digest or alert."""

    subject: str
    text: str
    html: str


def common_context(settings: Settings, now: datetime) -> dict[str, Any]:
    """The variables every digest and alert template has."""
    return {
        "company_name": settings.replies.company_name,
        "generated_at": local_time(now, settings),
        "timezone": settings.digest.timezone,
        "response_target_hours": f"{settings.leads.response_target_hours:g}",
    }


def drift_alert(content: DigestContent, settings: Settings) -> str:
    """The digest's drift line ("Drift: sales share 12% -> 31% …"), or "" when nothing drifted
    past `classifier.drift_share_threshold` / `drift_confidence_threshold` (or too few messages
    were decided to tell)."""
    if content.drift is None:
        return ""
    found = verdict(
        content.drift,
        settings.classifier.drift_share_threshold,
        settings.classifier.drift_confidence_threshold,
    )
    return alert_line(found)


def digest_context(content: DigestContent, settings: Settings) -> dict[str, Any]:
    """The variables of the digest templates (documented in `docs/leads.md`)."""
    now = content.now
    return {
        **common_context(settings, now),
        "subject": subject_line(settings, content.counts()),
        "since": local_time(content.since, settings),
        "new_leads": [lead_view(lead, now, settings) for lead in content.new_leads[:LEADS_SHOWN]],
        "new_total": len(content.new_leads),
        "new_more": max(0, len(content.new_leads) - LEADS_SHOWN),
        "overdue_leads": [
            lead_view(lead, now, settings) for lead in content.overdue_leads[:LEADS_SHOWN]
        ],
        "overdue_more": max(0, len(content.overdue_leads) - LEADS_SHOWN),
        "overdue_total": content.overdue_total,
        "overdue_new": content.overdue_total - len(content.overdue_leads),
        "review_items": [review_view(item, now) for item in content.review],
        "review_count": content.review_count,
        "review_more": max(0, content.review_count - len(content.review)),
        "marketing_sent": content.marketing_sent,
        "caps": content.caps,
        "drift_alert": drift_alert(content, settings),
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
