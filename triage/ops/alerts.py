"""Alerts to the service's administrators: a mailbox whose OAuth2 sign-in stopped working, and
OAuth2 client secrets about to expire.

Each alert is frozen and queued in the delivery queue with the digests, under a slot that names
its episode, so it is prepared once and sent exactly once however often the daemon looks, across
restarts: one alert when a grant stops working, then one reminder a day while it lasts; one
warning 14 days and one 3 days before a configured client-secret expiry.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from triage.core.settings import Settings
from triage.sales.content import Rendered
from triage.sales.notices import compose, notice_message_id, queue_notice
from triage.store import digests as notices
from triage.store import oauth_grants as grants
from triage.store.db import Database, Tx

log = logging.getLogger(__name__)

ADMIN = "admin"
REMINDER_EVERY = timedelta(days=1)
#: Days before a client secret's expiry on which the administrators are warned.
SECRET_WARNINGS = (14, 3)


def admin_recipients(settings: Settings) -> tuple[str, ...]:
    """Who gets administrators' alerts: `daemon.admin_recipients`, else the digest's."""
    return settings.daemon.admin_recipients or settings.digest.recipients


def prepare_admin_alerts(settings: Settings, db: Database, now: datetime) -> list[int]:
    """Queue the alerts due now; returns the ids of the rows prepared."""
    recipients = admin_recipients(settings)
    if not recipients:
        return []
    due = (
        _reauth_due(db.reads, now)
        or _secret_warnings_due(db.reads, settings, now)
        or _grant_warnings_due(db.reads, settings, now)
    )
    if not due:
        return []  # read first: the daemon looks every few seconds
    prepared: list[int] = []
    with db.transaction() as c:
        for row in grants.list_grants(c):
            if row.state == grants.NEEDS_REAUTH and row.error_at:
                made = _reauth_alert(c, row, settings, recipients, now)
                if made is not None:
                    prepared.append(made)
        for name, expires in _secret_expiries(settings):
            made = _secret_alert(c, name, expires, settings, recipients, now)
            if made is not None:
                prepared.append(made)
        for name, ends in _grant_ends(c, settings):
            made = _grant_alert(c, name, ends, settings, recipients, now)
            if made is not None:
                prepared.append(made)
    return prepared


#: Days before a sign-in's end (`grant_lifetime_days`) on which the administrators are warned.
GRANT_WARNING = timedelta(days=2)


def _lifetimes(settings: Settings) -> dict[str, int]:
    found = {}
    for account in settings.imap.all_accounts():
        if account.oauth2 is not None and account.oauth2.grant_lifetime_days:
            found[account.name] = account.oauth2.grant_lifetime_days
    smtp = settings.smtp.oauth2
    if settings.smtp.auth == "oauth2" and smtp is not None and smtp.grant_lifetime_days:
        found["smtp"] = smtp.grant_lifetime_days
    return found


def grant_ends(obtained_at: str | None, lifetime_days: int | None) -> datetime | None:
    """When a sign-in stored at `obtained_at` ends, for a provider that ends it after
    `lifetime_days` (None: it does not)."""
    if not obtained_at or not lifetime_days:
        return None
    return datetime.fromisoformat(obtained_at) + timedelta(days=lifetime_days)


def _grant_ends(tx: Tx, settings: Settings) -> list[tuple[str, datetime]]:
    lifetimes = _lifetimes(settings)
    if not lifetimes:
        return []
    found = []
    for row in grants.list_grants(tx):
        ends = grant_ends(row.obtained_at, lifetimes.get(row.name))
        if ends is not None and row.state == grants.OK:
            found.append((row.name, ends))
    return found


def _grant_warnings_due(tx: Tx, settings: Settings, now: datetime) -> bool:
    return any(
        now >= ends - GRANT_WARNING and not notices.slot_taken(tx, ADMIN, _grant_slot(name, ends))
        for name, ends in _grant_ends(tx, settings)
    )


def _grant_slot(name: str, ends: datetime) -> str:
    return f"grant-ends-{name}-{ends.isoformat()}"


def _grant_alert(
    c: Tx,
    name: str,
    ends: datetime,
    settings: Settings,
    recipients: Sequence[str],
    now: datetime,
) -> int | None:
    slot = _grant_slot(name, ends)
    if now < ends - GRANT_WARNING or notices.slot_taken(c, ADMIN, slot):
        return None
    subject = f"triage: sign-in of {name} ends {ends:%Y-%m-%d %H:%M} UTC"
    lines = [
        f"The provider ends the sign-in of {name} {_lifetime_text(settings, name)} after it"
        f" was made, on {ends:%Y-%m-%d %H:%M} UTC.",
        "",
        "Sign in again before then, as the service user:",
        "",
        f"    triage auth login {name}",
        "",
        "(For a Google app in Testing status, publishing it as Internal ends this limit.)",
    ]
    made = _queue(c, slot, subject, lines, settings, recipients, now)
    if made is None:
        return None
    log.warning("alert %d queued: %s", made, subject)
    return made


def _lifetime_text(settings: Settings, name: str) -> str:
    days = _lifetimes(settings).get(name)
    return f"{days} days" if days else "some days"


def _reauth_slot(row: grants.StoredGrant, now: datetime) -> str:
    started = datetime.fromisoformat(str(row.error_at))
    day = int((now - started) / REMINDER_EVERY)
    return f"reauth-{row.name}-{row.error_at}" + (f"-day{day}" if day else "")


def _reauth_due(tx: Tx, now: datetime) -> bool:
    return any(
        not notices.slot_taken(tx, ADMIN, _reauth_slot(row, now))
        for row in grants.list_grants(tx)
        if row.state == grants.NEEDS_REAUTH and row.error_at
    )


def _reauth_alert(
    c: Tx, row: grants.StoredGrant, settings: Settings, recipients: Sequence[str], now: datetime
) -> int | None:
    slot = _reauth_slot(row, now)
    if notices.slot_taken(c, ADMIN, slot):
        return None
    first = not slot.rpartition("-")[2].startswith("day")
    since = datetime.fromisoformat(str(row.error_at))
    lines = [
        f"The OAuth2 sign-in of {row.name} (provider {row.provider}) stopped working at"
        f" {since:%Y-%m-%d %H:%M} UTC: the token endpoint answered {row.error_code}.",
        "",
        f"Until someone signs in again, {_what(row.name, settings)}",
        "",
        "On the server that runs triage, as the service user, run:",
        "",
        f"    triage auth login {row.name}",
        "",
        "The daemon picks the new sign-in up by itself; no restart is needed.",
    ]
    if not first:
        days = int((now - since) / REMINDER_EVERY)
        lines += ["", f"This is a daily reminder: it has lasted {days} day(s)."]
    subject = f"triage: {row.name} needs re-authorisation ({row.error_code})"
    made = _queue(c, slot, subject, lines, settings, recipients, now)
    if made is None:
        return None
    if first:
        grants.mark_alerted(c, row.name, now)
    else:
        grants.mark_reminded(c, row.name, now)
    log.warning("alert %d queued: %s", made, subject)
    return made


def _what(name: str, settings: Settings) -> str:
    accounts = {a.name for a in settings.imap.all_accounts()}
    smtp_uses = settings.smtp.auth == "oauth2" and name in {"smtp", settings.smtp.oauth2_account}
    parts = []
    if name in accounts:
        parts.append(f"the mailbox {name} is not read and its inquiries are not answered")
    if smtp_uses:
        parts.append("no reply, digest or alert can be sent (this one waits as well)")
    return "; ".join(parts) + "." if parts else "it is not used."


def _secret_expiries(settings: Settings) -> list[tuple[str, date]]:
    found = []
    for account in settings.imap.all_accounts():
        if account.oauth2 is not None and account.oauth2.client_secret_expires is not None:
            found.append((account.name, account.oauth2.client_secret_expires))
    smtp = settings.smtp.oauth2
    if settings.smtp.auth == "oauth2" and smtp is not None and smtp.client_secret_expires:
        found.append(("smtp", smtp.client_secret_expires))
    return found


def _secret_slot(name: str, expires: date, now: datetime) -> str | None:
    left = (expires - now.date()).days
    warned = [d for d in SECRET_WARNINGS if left <= d]
    if not warned:
        return None
    return f"secret-{name}-{expires.isoformat()}-{min(warned)}"


def _secret_warnings_due(tx: Tx, settings: Settings, now: datetime) -> bool:
    for name, expires in _secret_expiries(settings):
        slot = _secret_slot(name, expires, now)
        if slot is not None and not notices.slot_taken(tx, ADMIN, slot):
            return True
    return False


def _secret_alert(
    c: Tx,
    name: str,
    expires: date,
    settings: Settings,
    recipients: Sequence[str],
    now: datetime,
) -> int | None:
    slot = _secret_slot(name, expires, now)
    if slot is None or notices.slot_taken(c, ADMIN, slot):
        return None
    left = (expires - now.date()).days
    when = "has expired" if left < 0 else f"expires in {left} day(s)"
    subject = f"triage: client secret of {name} {when} ({expires.isoformat()})"
    lines = [
        f"The client secret configured for {name} (client_secret_expires = {expires}) {when}.",
        "After that day the mailbox can no longer sign in.",
        "",
        "Create a new secret for the app registration, write it to the file named by",
        "client_secret_file, set client_secret_expires to its new date and reload triage",
        "(systemctl reload triage).",
    ]
    made = _queue(c, slot, subject, lines, settings, recipients, now)
    if made is None:
        return None
    log.warning("alert %d queued: %s", made, subject)
    return made


def _queue(
    c: Tx,
    slot: str,
    subject: str,
    lines: Sequence[str],
    settings: Settings,
    recipients: Sequence[str],
    now: datetime,
) -> int | None:
    """Queue the alert for `slot`; its row id, or None when another process queued it after
    the caller looked."""
    text = "\n".join(lines) + "\n"
    body = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())
    rendered = Rendered(
        subject=subject, text=text, html=f"<!doctype html><html><body>{body}</body></html>"
    )
    mid = notice_message_id(ADMIN, slot, settings, notices.instance(c))
    msg = compose(rendered, recipients, mid, settings, now)
    return queue_notice(c, ADMIN, slot, msg, recipients, settings, now) or None


def queue_admin_alert(
    c: Tx, slot: str, subject: str, lines: Sequence[str], settings: Settings, now: datetime
) -> int | None:
    """Within the caller's transaction: queue an administrators' alert under `slot` (once:
    None when the slot is taken, or when nobody is configured to receive alerts)."""
    recipients = admin_recipients(settings)
    if not recipients:
        log.warning("no admin recipients for the alert %r", subject)
        return None
    if notices.slot_taken(c, ADMIN, slot):
        return None
    made = _queue(c, slot, subject, lines, settings, recipients, now)
    if made is not None:
        log.warning("alert %d queued: %s", made, subject)
    return made
