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

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from triage.act.compose import header_address
from triage.act.outbox import Delivery, Outcome, Outgoing, recover, stale_claims
from triage.act.smtp import SmtpSession, connect
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import ConfigError, SendError
from triage.core.settings import Settings, SmtpSettings
from triage.sales.content import ALERT, DIGEST, local_time, preview, sender, subject_line
from triage.sales.leads import check_business_hours, zone
from triage.sales.notices import notice_message_id, prepare_alerts, prepare_digest
from triage.sales.schedule import due, latest_slot, pause
from triage.store import digests as store
from triage.store.db import Database, timestamp

log = logging.getLogger(__name__)

Connector = Callable[[SmtpSettings], SmtpSession]
RETRY_BROKEN = timedelta(minutes=10)  # wait before preparing again after a template error

__all__ = [
    "DIGEST",
    "Run",
    "check_settings",
    "deliver",
    "due",
    "local_time",
    "notice_message_id",
    "prepare_digest",
    "preview",
    "run_digest_if_due",
    "send_now",
    "status",
]


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
    delivery = Delivery(db, settings.smtp, clock=running_from(moment), checkpoint=checkpoint)
    return delivery.send_batch(items, lambda: connector(settings.smtp))


def running_from(start: datetime) -> Callable[[], datetime]:
    """A clock that reads `start` plus the real time elapsed since this call: each step of a run
    (claim, sent, next try) gets the moment it happened — `claimed_at` and `sent_at` tell when
    each mail went out — while a run given an explicit `now` stays anchored to it."""
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


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
            pause(db, ALERT, moment + RETRY_BROKEN)
    try:
        if due(moment, db, settings):
            made = prepare_digest(settings, db, moment, timestamp(latest_slot(settings, moment)))
            if made is not None:
                prepared, counts = made[0], made[1].counts()
            checkpoint("prepared")
    except ConfigError as exc:
        log.error("cannot prepare the digest: %s; trying again in 10 minutes", exc)
        pause(db, DIGEST, moment + RETRY_BROKEN)
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
