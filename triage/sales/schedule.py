"""When a digest is due: the latest slot of `digest.schedule` (cron, in `digest.timezone`), not
made up when missed by more than LATE_LIMIT, and paused after a template or settings error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from triage.core.errors import ConfigError
from triage.core.settings import Settings
from triage.sales.content import DIGEST
from triage.sales.leads import zone
from triage.store import digests as store
from triage.store.db import Database, timestamp

LATE_LIMIT = timedelta(hours=12)  # a slot missed by more (daemon down) is skipped, not sent late


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


def pause(db: Database, kind: str, until: datetime) -> None:
    """Pause preparing `kind` (a digest or alerts) until `until`, after an error."""
    with db.transaction() as tx:
        store.pause(tx, kind, until)
