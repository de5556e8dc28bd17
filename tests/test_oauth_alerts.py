"""Administrators' alerts about OAuth2 sign-ins: queued once per episode in the delivery queue
(a re-authorisation, then one reminder a day; a client secret 14 and 3 days before it expires;
a sign-in the provider ends after `grant_lifetime_days`), whatever how often the daemon looks."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.test_leads import make_settings
from triage.core.settings import Settings
from triage.ops.alerts import ADMIN, prepare_admin_alerts
from triage.store import oauth_grants
from triage.store.db import Database

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def oauth_settings(tmp_path: Path, **oauth2: Any) -> Settings:
    return make_settings(
        tmp_path,
        imap={
            "name": "hello",
            "username": "hello",
            "password": None,
            "auth": "oauth2",
            "oauth2": {
                "provider": "generic",
                "token_url": "https://login.example.com/token",
                "client_id": "c",
                **oauth2,
            },
        },
        daemon={"admin_recipients": ["it@example.test"]},
    )


def queued(db: Database) -> list[tuple[str, str, list[str]]]:
    """(slot, subject, recipients) of every administrators' alert queued, oldest first."""
    rows = db.reads.execute(
        "SELECT slot, raw, recipients FROM digests WHERE kind = ? ORDER BY id", (ADMIN,)
    )
    out = []
    for slot, raw, recipients in rows:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        out.append((slot, str(msg["Subject"]), eval(recipients)))  # noqa: S307 - a JSON list
    return out


def test_a_re_authorisation_is_alerted_once_then_reminded_daily(tmp_path: Path) -> None:
    """However often the daemon looks, one alert when the grant stops working, none more that
    day, one reminder on each following day; a new episode (after a sign-in) alerts again."""
    settings = oauth_settings(tmp_path)
    db = Database(settings.store)
    with db.transaction() as c:
        oauth_grants.set_needs_reauth(c, "hello", "generic", "invalid_grant", T0)
    for minutes in (0, 1, 5, 600):
        prepare_admin_alerts(settings, db, T0 + timedelta(minutes=minutes))
    [(slot, subject, recipients)] = queued(db)
    assert subject == "triage: hello needs re-authorisation (invalid_grant)"
    assert recipients == ["it@example.test"]
    raw = db.reads.execute("SELECT raw FROM digests WHERE slot = ?", (slot,)).fetchone()[0]
    text = email.message_from_bytes(raw, policy=email.policy.default)
    body = text.get_body(preferencelist=("plain",))
    assert body is not None
    content = body.get_content()
    assert "triage auth login hello" in content
    assert "the mailbox hello is not read" in content
    for hours in (24, 25, 47, 48):
        prepare_admin_alerts(settings, db, T0 + timedelta(hours=hours))
    assert [s for s, _, _ in queued(db)] == [
        slot,
        f"{slot}-day1",
        f"{slot}-day2",
    ]
    with db.transaction() as c:
        oauth_grants.store_grant(c, "hello", "generic", b"cipher", T0 + timedelta(days=3))
        oauth_grants.set_needs_reauth(
            c, "hello", "generic", "invalid_client", T0 + timedelta(days=4)
        )
    prepare_admin_alerts(settings, db, T0 + timedelta(days=4, minutes=1))
    assert queued(db)[-1][1] == "triage: hello needs re-authorisation (invalid_client)"
    assert len(queued(db)) == 4


def test_a_client_secret_is_warned_about_14_and_3_days_ahead(tmp_path: Path) -> None:
    """Two warnings per expiry date, each once: at 14 days and at 3 days before."""
    settings = oauth_settings(tmp_path, client_secret_expires=date(2026, 12, 31))
    db = Database(settings.store)
    for day in (1, 16, 17, 18, 20, 27, 28, 29):
        prepare_admin_alerts(settings, db, datetime(2026, 12, day, 8, tzinfo=UTC))
    subjects = [s for _, s, _ in queued(db)]
    assert subjects == [
        "triage: client secret of hello expires in 14 day(s) (2026-12-31)",
        "triage: client secret of hello expires in 3 day(s) (2026-12-31)",
    ]


def test_a_sign_in_with_a_limited_lifetime_is_warned_about_two_days_before_it_ends(
    tmp_path: Path,
) -> None:
    """`grant_lifetime_days = 7` (a Google app in Testing status): one warning from 2 days
    before the end of the sign-in, none before; a new sign-in starts a new count."""
    settings = oauth_settings(tmp_path, grant_lifetime_days=7)
    db = Database(settings.store)
    with db.transaction() as c:
        oauth_grants.store_grant(c, "hello", "generic", b"cipher", T0)
    prepare_admin_alerts(settings, db, T0 + timedelta(days=4))
    assert queued(db) == []
    for hours in (121, 122, 150):
        prepare_admin_alerts(settings, db, T0 + timedelta(hours=hours))
    [(_, subject, _)] = queued(db)
    assert subject == "triage: sign-in of hello ends 2026-12-08 09:00 UTC"


def test_nobody_to_tell_queues_nothing(tmp_path: Path) -> None:
    """No administrators and no digest recipients: nothing is queued (doctor says so)."""
    settings = oauth_settings(tmp_path).model_copy(
        update={
            "daemon": make_settings(tmp_path).daemon,
            "digest": make_settings(tmp_path, digest={"recipients": []}).digest,
        }
    )
    db = Database(settings.store)
    with db.transaction() as c:
        oauth_grants.set_needs_reauth(c, "hello", "generic", "invalid_grant", T0)
    assert prepare_admin_alerts(settings, db, T0) == []
    assert queued(db) == []
