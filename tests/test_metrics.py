"""The daemon's metrics: what each call counts, what the store-derived gauges read, isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.stores import open_store
from triage.ops.metrics import Metrics, rule_name
from triage.store.db import Tx, inserted_id, utcnow


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The current value of one sample of `metrics`."""
    return metrics.registry.get_sample_value(name, labels)


def test_observe_result_counts_the_decision_and_each_suppressing_rule_once() -> None:
    """A handled message counts under its decision; each distinct rule of its reasons counts once
    when no reply went out, and not at all when one did."""
    m = Metrics()
    m.observe_result(
        "sales",
        replied=False,
        reasons=["auto-submitted: auto-replied", "auto-submitted: again", "hourly-cap: 60"],
    )
    m.observe_result("sales", replied=True, reasons=["ignored: a reply went out"])
    m.observe_result("review", replied=False)

    assert value(m, "triage_messages_handled_total", decision="sales") == 2
    assert value(m, "triage_messages_handled_total", decision="review") == 1
    assert value(m, "triage_replies_suppressed_total", reason="auto-submitted") == 1
    assert value(m, "triage_replies_suppressed_total", reason="hourly-cap") == 1
    assert value(m, "triage_replies_suppressed_total", reason="ignored") is None


def test_rule_name_is_the_text_before_the_colon_reduced_to_a_safe_label() -> None:
    """The label is the rule name; free text without a colon cannot create arbitrary labels."""
    assert rule_name("list-header: List-Id present") == "list-header"
    assert rule_name("hourly-cap: 60 replies in the last hour") == "hourly-cap"
    assert rule_name("no sender address: no lead recorded") == "no-sender-address"
    assert rule_name("Weird   Reason!! (x)") == "weird-reason-x"
    assert rule_name(":") == "unknown"
    assert len(rule_name("x" * 500)) == 40


def test_latency_errors_sync_quarantine_sent_and_model_appear_in_the_exposition() -> None:
    """Every method the daemon calls shows up in the Prometheus text `/metrics` serves."""
    m = Metrics()
    m.observe_result("marketing", replied=True, seconds=0.2)
    m.observe_latency(3.0, count=3)  # a batch of three: three observations of 1 s
    m.observe_latency(1.0, count=0)  # an empty batch observes nothing
    m.reply_sent(2)
    m.quarantined()
    m.imap_error("default")
    m.imap_error("default")
    m.smtp_error()
    m.set_sync("default", "INBOX", 1_700_000_000.0)
    m.set_model_version("2024-05-01-abcdef012345")

    assert value(m, "triage_handling_seconds_count") == 4
    assert value(m, "triage_handling_seconds_sum") == pytest.approx(3.2)
    assert value(m, "triage_handling_seconds_bucket", le="1.0") == 4
    assert value(m, "triage_handling_seconds_bucket", le="0.1") == 0
    text = m.exposition().decode()
    assert "triage_replies_sent_total 2.0" in text
    assert "triage_quarantined_total 1.0" in text
    assert 'triage_imap_errors_total{account="default"} 2.0' in text
    assert "triage_smtp_errors_total 1.0" in text
    assert 'triage_last_sync_timestamp_seconds{account="default",folder="INBOX"} 1.7e+09' in text
    assert 'triage_model_info{version="2024-05-01-abcdef012345"} 1.0' in text
    assert 'triage_messages_handled_total{decision="marketing"} 1.0' in text


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two Metrics never share samples, and nothing lands in prometheus-client's global registry
    (which would make a second Metrics in one process raise 'Duplicated timeseries')."""
    from prometheus_client import REGISTRY

    a, b = Metrics(), Metrics()
    a.smtp_error()
    assert value(a, "triage_smtp_errors_total") == 1
    assert value(b, "triage_smtp_errors_total") == 0
    assert REGISTRY.get_sample_value("triage_smtp_errors_total") is None


def _message(c: Tx, uid: int, decision: str, reviewed: str | None = None) -> int:
    now = utcnow()
    cur = c.execute(
        "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, decision,"
        " reviewed_label, created_at, updated_at)"
        " VALUES ('default', 'INBOX', 1, ?, ?, ?, ?, ?, ?) RETURNING id",
        (uid, f"<m{uid}@example.test>", decision, reviewed, now, now),
    )
    return inserted_id(cur)


def _lead(c: Tx, kind: str, status: str, created: datetime) -> None:
    stamp = created.isoformat(timespec="microseconds")
    c.execute(
        "INSERT INTO leads (kind, status, email, label, created_at, updated_at)"
        " VALUES (?, ?, 'jane@doe.example', 'sales', ?, ?)",
        (kind, status, stamp, stamp),
    )


def _reply(c: Tx, row: int, state: str) -> None:
    now = utcnow()
    c.execute(
        "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from, template,"
        " mode, state, raw, next_attempt, created_at)"
        " VALUES (?, ?, 'jane@doe.example', '', 'sales', 'live', ?, ?, ?, ?)",
        (row, f"<r{row}-{state}@example.test>", state, b"\x00", now, now),
    )


@pytest.mark.usefixtures("store_backend")
def test_refresh_from_store_reads_review_queue_oldest_hot_lead_and_outbox(tmp_path: Path) -> None:
    """Review queue = unreviewed `review` decisions; oldest unclaimed hot lead = the oldest `new`
    hot lead's age; outbox depth = replies still `queued`. Other rows do not count."""
    db = open_store(tmp_path / "triage.db")
    try:
        with db.transaction() as c:
            _message(c, 1, "review")
            _message(c, 2, "review")
            _message(c, 3, "review", reviewed="sales")
            row = _message(c, 4, "sales")
            now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
            _lead(c, "hot", "new", now - timedelta(minutes=90))
            _lead(c, "hot", "new", now - timedelta(minutes=10))
            _lead(c, "hot", "claimed", now - timedelta(days=3))
            _lead(c, "nurture", "new", now - timedelta(days=5))
            _reply(c, row, "queued")
            _reply(c, row, "sent")
        m = Metrics()
        m.refresh_from_store(db, now=now.timestamp())
    finally:
        db.close()

    assert value(m, "triage_review_queue_size") == 2
    assert value(m, "triage_oldest_unclaimed_hot_lead_age_seconds") == pytest.approx(90 * 60)
    assert value(m, "triage_outbox_depth") == 1


@pytest.mark.usefixtures("store_backend")
def test_refresh_from_an_empty_store_reads_zero(tmp_path: Path) -> None:
    """With no rows every store-derived gauge is 0 (no hot lead waiting means age 0)."""
    db = open_store(tmp_path / "triage.db")
    try:
        m = Metrics()
        m.refresh_from_store(db)
    finally:
        db.close()
    assert value(m, "triage_review_queue_size") == 0
    assert value(m, "triage_oldest_unclaimed_hot_lead_age_seconds") == 0
    assert value(m, "triage_outbox_depth") == 0
