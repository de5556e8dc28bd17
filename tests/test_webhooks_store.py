"""Webhook events are recorded in the transaction of the change they report: a rollback invents
none, a commit loses none; only endpoints that take the event (and are not disabled) get a
delivery; deliveries walk the delivery queue's compare-and-set states. On both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.test_leads import JANE, Store, make_settings
from tests.webhook_receiver import new_secret, secret_file
from triage.act.webhooks import recover, sync_endpoints
from triage.core.settings import Settings, load_settings
from triage.sales.leads import LeadError, claim, record_event, record_lead_event, update
from triage.store import outbox as queue
from triage.store import webhooks as store
from triage.store.db import Database

pytestmark = pytest.mark.usefixtures("store_backend")


def hook_settings(tmp_path: Path, hooks: list[dict[str, Any]], **extra: Any) -> Settings:
    """Settings for a test store with `hooks` as `[[webhooks]]` (each gets a secret file)."""
    base = make_settings(tmp_path)
    secret = secret_file(tmp_path, new_secret())
    values = base.model_dump(mode="python", exclude={"webhooks"})
    values["imap"]["password"] = "pw"
    values["webhooks"] = [{"secret_file": str(secret), **h} for h in hooks]
    values.update(extra)
    return load_settings(environ={}, overrides=values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return hook_settings(
        tmp_path,
        [
            {"name": "crm", "url": "https://crm.example/hook"},
            {
                "name": "status",
                "url": "https://status.example/hook",
                "events": ["lead.status_changed"],
            },
        ],
    )


@pytest.fixture
def hooks_store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    sync_endpoints(settings, s.db)
    yield s
    s.close()


def deliveries(db: Database) -> list[tuple[str, str, str]]:
    """(type, endpoint, state) of every delivery, in order."""
    rows = db.reads.execute(
        "SELECT e.type, d.endpoint, d.state FROM webhook_deliveries d"
        " JOIN webhook_events e ON e.id = d.event_row ORDER BY d.id"
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def test_a_new_lead_queues_lead_created_for_the_endpoints_that_take_it(hooks_store: Store) -> None:
    """The pipeline's transaction records lead.created with the lead as the CSV export has it,
    for `crm` (all events) only; a second message of the prospect is lead.updated."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    with s.db.transaction() as c:
        event_id = record_lead_event(c, lead_id, "message")
    assert event_id is not None and event_id.startswith("msg_")
    assert deliveries(s.db) == [("lead.created", "crm", "queued")]
    [d] = store.deliveries_of(s.db.reads, event_id)
    lead = d.data["lead"]
    assert lead["email"] == "jane@doe.example"
    assert lead["first_name"] == "Jane" and lead["last_name"] == "Doe"
    assert lead["company"] == "Doe Logistics GmbH"
    assert lead["kind"] == "hot" and lead["status"] == "new"
    assert lead["first_subject"] == "Quote please"
    assert lead["first_message"] == "We need a quote for 40 units."
    assert lead["subjects"] == ["Quote please"]
    assert d.data["cause"] == "message"

    _row2, again = s.inquiry(JANE, subject="Follow-up")
    assert again == lead_id
    with s.db.transaction() as c:
        record_lead_event(c, lead_id, "message")
    assert deliveries(s.db)[-1] == ("lead.updated", "crm", "queued")


def test_an_endpoint_taking_only_updates_gets_the_second_message_of_a_lead(
    tmp_path: Path,
) -> None:
    """The per-message check asks whether any endpoint takes lead.created *or* lead.updated: an
    endpoint that takes only updates gets none for the new lead and one when it is joined."""
    only = hook_settings(
        tmp_path,
        [{"name": "upd", "url": "https://crm.example/hook", "events": ["lead.updated"]}],
    )
    s = Store(only)
    try:
        sync_endpoints(only, s.db)
        _row, lead_id = s.inquiry(JANE)
        with s.db.transaction() as c:
            assert record_lead_event(c, lead_id, "message") is None
        s.inquiry(JANE, subject="Follow-up")
        with s.db.transaction() as c:
            assert record_lead_event(c, lead_id, "message") is not None
        assert deliveries(s.db) == [("lead.updated", "upd", "queued")]
    finally:
        s.close()


def test_a_rollback_records_no_event_and_a_commit_loses_none(hooks_store: Store) -> None:
    """The event lives and dies with the change's transaction."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), s.db.transaction() as c:
        record_event(c, "lead.updated", lead_id=lead_id)
        raise Boom
    assert deliveries(s.db) == []
    with s.db.transaction() as c:
        record_event(c, "lead.updated", lead_id=lead_id)
    assert deliveries(s.db) == [("lead.updated", "crm", "queued")]


def test_a_claim_is_a_status_change_for_both_endpoints_and_a_refused_one_is_none(
    hooks_store: Store,
) -> None:
    """`triage leads claim` queues lead.status_changed (from new to claimed, by whom); a claim
    the workflow refuses records nothing."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    claim(s.db, lead_id, "sam")
    assert deliveries(s.db) == [
        ("lead.status_changed", "crm", "queued"),
        ("lead.status_changed", "status", "queued"),
    ]
    [d, _] = store.recent(s.db.reads, ["queued"], 10)
    assert d.data["from"] == "new" and d.data["to"] == "claimed" and d.data["by"] == "sam"
    assert d.data["lead"]["owner"] == "sam" and d.data["lead"]["status"] == "claimed"
    with pytest.raises(LeadError):
        claim(s.db, lead_id, "kim")
    with pytest.raises(LeadError):
        update(s.db, lead_id, status="won", by="sam")
    assert len(deliveries(s.db)) == 2


def test_a_note_is_an_update_and_a_status_change_carries_its_note(hooks_store: Store) -> None:
    """A note alone queues lead.updated (change: note) with the note in the lead's row; a
    status change with a note queues one lead.status_changed whose lead already has the note;
    setting the status a lead has, without a note, queues nothing."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    update(s.db, lead_id, note="called back, wants a demo", by="sam")
    [d] = [x for x in store.recent(s.db.reads, ["queued"], 10) if x.endpoint == "crm"]
    assert d.type == "lead.updated" and d.data["change"] == "note"
    assert "wants a demo" in d.data["lead"]["notes"]
    claim(s.db, lead_id, "sam")
    update(s.db, lead_id, status="contacted", note="demo booked", by="sam")
    newest = next(x for x in store.recent(s.db.reads, ["queued"], 10) if x.endpoint == "crm")
    assert newest.type == "lead.status_changed" and newest.data["to"] == "contacted"
    assert "demo booked" in newest.data["lead"]["notes"]
    before = len(deliveries(s.db))
    update(s.db, lead_id, status="contacted", by="sam")
    assert len(deliveries(s.db)) == before


def test_no_endpoint_no_event(tmp_path: Path) -> None:
    """Without `[[webhooks]]` nothing is recorded for a change."""
    s = Store(make_settings(tmp_path))
    try:
        sync_endpoints(s.settings, s.db)
        _row, lead_id = s.inquiry(JANE)
        claim(s.db, lead_id, "sam")
        with s.db.transaction() as c:
            assert record_lead_event(c, lead_id, "message") is None
        assert s.db.reads.execute("SELECT count(*) FROM webhook_events").fetchone()[0] == 0
    finally:
        s.close()


def test_a_disabled_endpoint_gets_no_new_events_until_its_url_changes(
    hooks_store: Store, settings: Settings, tmp_path: Path
) -> None:
    """A 410 disables `crm` and fails what it had queued; new events skip it. Configured with
    another url, it takes events again."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    with s.db.transaction() as c:
        record_event(c, "lead.updated", lead_id=lead_id)
    now = datetime.now(UTC)
    with s.db.transaction() as c:
        failed = store.disable_endpoint(c, "crm", "HTTP 410 Gone", now)
        assert failed is not None and len(failed) == 1
        assert store.disable_endpoint(c, "crm", "again", now) is None
    assert deliveries(s.db) == [("lead.updated", "crm", "failed")]
    with s.db.transaction() as c:
        assert record_event(c, "lead.updated", lead_id=lead_id) is None
    moved = hook_settings(tmp_path, [{"name": "crm", "url": "https://new.crm.example/hook"}])
    sync_endpoints(moved, s.db)
    with s.db.transaction() as c:
        assert record_event(c, "lead.updated", lead_id=lead_id) is not None
    assert deliveries(s.db)[-1] == ("lead.updated", "crm", "queued")
    # `status` is no longer configured: it gets nothing.
    with s.db.transaction() as c:
        record_event(c, "lead.status_changed", lead_id=lead_id)
    assert [d for d in deliveries(s.db) if d[1] == "status"] == []


def test_claims_are_compare_and_set_and_a_dead_senders_post_is_queued_again(
    hooks_store: Store,
) -> None:
    """Two senders cannot both claim a delivery; one left `sending` by a dead process is queued
    again (not uncertain: the receiver de-duplicates by webhook-id)."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    with s.db.transaction() as c:
        record_event(c, "lead.updated", lead_id=lead_id)
    now = datetime.now(UTC)
    [d] = store.due(s.db.reads, "crm", now, 10)
    with s.db.transaction() as c:
        mine = queue.claim(c, store.TABLE, d.id, now, d.attempts)
        assert mine is not None
        assert queue.claim(c, store.TABLE, d.id, now, d.attempts) is None
    assert store.due(s.db.reads, "crm", now, 10) == []
    assert recover(s.db, now - timedelta(seconds=60), now) == []  # a live claim is left alone
    assert recover(s.db, now + timedelta(seconds=1), now) == [d.id]
    [again] = store.due(s.db.reads, "crm", now, 10)
    assert again.attempts == 1 and again.event_id == d.event_id
    with s.db.transaction() as c:
        # The dead sender's claim no longer moves the row.
        assert not queue.mark_sent(c, store.TABLE, d.id, mine, now, None)


def test_replay_queues_an_event_again_with_its_id(hooks_store: Store) -> None:
    """`replay` resets a delivered or failed delivery to queued (attempts 0), same event id."""
    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    with s.db.transaction() as c:
        event_id = record_event(c, "lead.updated", lead_id=lead_id)
    assert event_id is not None
    now = datetime.now(UTC)
    [d] = store.due(s.db.reads, "crm", now, 10)
    with s.db.transaction() as c:
        mine = queue.claim(c, store.TABLE, d.id, now, 0)
        assert mine is not None
        assert queue.fail(c, store.TABLE, d.id, 1, "HTTP 404", mine)
    with s.db.transaction() as c:
        assert store.replay(c, event_id, ["crm"], "sam", now) == ["crm"]
        assert store.replay(c, "msg_unknown", ["crm"], "sam", now) == []
    [again] = store.due(s.db.reads, "crm", now, 10)
    assert (again.id, again.attempts, again.event_id) == (d.id, 0, event_id)


def test_retention_empties_the_data_of_delivered_events_only(
    hooks_store: Store, settings: Settings
) -> None:
    """Past `retention_days`, an event every endpoint has had loses its data (the lead, its
    first message); one still queued keeps it, to be delivered as recorded."""
    from triage.core.settings import LeadsSettings
    from triage.sales.leads import apply_retention

    s = hooks_store
    _row, lead_id = s.inquiry(JANE)
    with s.db.transaction() as c:
        record_event(c, "lead.updated", lead_id=lead_id)
        record_event(c, "lead.updated", lead_id=lead_id)
    now = datetime.now(UTC)
    [first, _second] = store.due(s.db.reads, "crm", now, 10)
    with s.db.transaction() as c:
        mine = queue.claim(c, store.TABLE, first.id, now, 0)
        assert mine is not None and queue.mark_sent(c, store.TABLE, first.id, mine, now, None)
    later = now + timedelta(days=31)
    result = apply_retention(LeadsSettings(retention_days=30), s.db, later)
    assert result.webhook_events == 1
    data = [str(r[0]) for r in s.db.reads.execute("SELECT data FROM webhook_events ORDER BY id")]
    assert data[0] == "{}" and "jane@doe.example" in data[1]
