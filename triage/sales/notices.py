"""Preparing digests and alerts: render, compose and queue each in one transaction with the
leads it reports, so its content is frozen and a slot is prepared only once."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

from triage.act.compose import header_address
from triage.core.errors import ConfigError
from triage.core.settings import Settings
from triage.sales.content import (
    ALERT,
    DIGEST,
    DigestContent,
    Rendered,
    collect,
    common_context,
    digest_context,
    drift_alert,
    lead_view,
    render,
    sender,
)
from triage.store import digests as store
from triage.store.db import Database, Tx
from triage.store.leads import unalerted_hot_leads

log = logging.getLogger(__name__)

ALERT_MAX_AGE = timedelta(days=1)  # leads older than this get no alert (e.g. alerts just enabled)


# --- composing -----------------------------------------------------------------------------------


def notice_message_id(kind: str, slot: str, settings: Settings, instance: str = "") -> str:
    """The Message-ID of the digest or alert for `slot`: the same slot (of the same database)
    always gives the same id, so a resend is recognisable as the same message."""
    domain = sender(settings).rpartition("@")[2].lower()
    if not re.fullmatch(r"[a-z0-9.-]+", domain):
        domain = "triage.invalid"
    digest = hashlib.sha256(f"{instance}\0{kind}\0{slot}".encode()).hexdigest()[:24]
    return f"<triage-{kind}.{digest}@{domain}>"


def _cte(text: str) -> str | None:
    # Non-ASCII text as quoted-printable, not 8-bit: the server may not offer 8BITMIME.
    return None if text.isascii() else "quoted-printable"


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
    # 7-bit clean on the wire, like replies: no reliance on the server's 8BITMIME.
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte=_cte(rendered.text))
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte=_cte(rendered.html))
    for part in msg.iter_parts():
        del part["MIME-Version"]  # add_alternative copies it into the parts; it belongs on top
    return msg


# --- preparing (one transaction each) ------------------------------------------------------------


def queue_notice(
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
    """Queue `msg` (a digest or alert of `kind` for `slot`) in the delivery queue, due now;
    returns its row id, or 0 when another process queued that slot's notice meanwhile."""
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
    """Freeze the digest for `slot`: render it, queue it and mark its new leads as
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
        digest_id = queue_notice(c, DIGEST, slot, msg, recipients, settings, now, covers_until=now)
        if not digest_id:
            return None  # another process prepared the slot after we looked
        store.mark_digested(c, digest_id, (lead.id for lead in content.new_leads))
    log.info(
        "digest %d prepared: %d new hot leads, %d overdue, %d for review, %d marketing replies",
        digest_id,
        *content.counts().values(),
    )
    alert = drift_alert(content, settings)
    if alert:
        log.warning("digest %d: %s", digest_id, alert)
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
                context = {**common_context(settings, now), "lead": lead_view(lead, now, settings)}
                rendered = render(ALERT, context, settings)
                mid = notice_message_id(ALERT, slot, settings, store.instance(c))
                msg = compose(rendered, recipients, mid, settings, now)
                made = queue_notice(c, ALERT, slot, msg, recipients, settings, now, lead_id=lead.id)
                if made:  # else another process alerted this lead after we looked
                    prepared.append(made)
            store.mark_alerted(c, lead.id, now)
    return prepared
