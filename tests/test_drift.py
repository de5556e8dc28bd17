"""Label drift: per label, the share of decided messages and their mean confidence over the last
7 days against the 4 weeks before, read from the store; the verdict that decides whether that is
alarming (thresholds, minimum counts); the digest's one alert line; the gauges on /metrics."""

from __future__ import annotations

import http.client
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.stores import Backend, open_store
from tests.test_digest import MONDAY_8
from tests.test_leads import make_settings
from triage.core.models import LABELS
from triage.core.settings import Settings
from triage.ops.health import start_health_server
from triage.ops.metrics import DRIFT_REFRESH_SECONDS, Metrics
from triage.sales import digest
from triage.sales.drift import LabelDrift, alert_line, describe, verdict
from triage.store.db import Database, timestamp
from triage.store.drift import LabelStats, LabelWindows, Window, label_windows

NOW = MONDAY_8
SPLIT = NOW - timedelta(days=7)
START = SPLIT - timedelta(days=28)


# --- helpers -------------------------------------------------------------------------------------


class Ledger:
    """Inserts ledger rows with just what the drift query reads."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.uid = 0

    def add(
        self,
        at: datetime,
        label: str | None,
        confidence: float | None = 0.9,
        *,
        decision: str | None = "",
        backfill: bool = False,
        count: int = 1,
    ) -> None:
        """`count` rows that arrived at `at`; the decision is the label unless given."""
        with self.db.transaction() as c:
            for _ in range(count):
                self.uid += 1
                c.execute(
                    "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, backfill,"
                    " label, confidence, decision, created_at, updated_at)"
                    " VALUES ('default', 'INBOX', 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.uid,
                        f"<m{self.uid}@example.test>",
                        int(backfill),
                        label,
                        confidence,
                        label if decision == "" else decision,
                        timestamp(at),
                        timestamp(at),
                    ),
                )

    def mix(self, at: datetime, counts: Mapping[str, int], confidence: float = 0.9) -> None:
        """So many messages of each label at `at`, all with `confidence`."""
        for label, n in counts.items():
            self.add(at, label, confidence, count=n)


@pytest.fixture
def db(store_backend: Backend, tmp_path: Path) -> Iterator[Database]:
    """The test's store, on SQLite and on PostgreSQL."""
    database = open_store(tmp_path / "triage.db")
    yield database
    database.close()


def window(name: str, counts: Mapping[str, int], means: Mapping[str, float]) -> Window:
    """A window with these label counts and mean confidences, as `label_windows` builds it."""
    total = sum(counts.values())
    return Window(
        name,
        START,
        NOW,
        total,
        {
            label: LabelStats(
                counts.get(label, 0),
                counts.get(label, 0) / total if total else 0.0,
                means.get(label) if counts.get(label) else None,
            )
            for label in LABELS
        },
    )


def windows(
    before: Mapping[str, int],
    now: Mapping[str, int],
    before_means: Mapping[str, float] | None = None,
    now_means: Mapping[str, float] | None = None,
) -> LabelWindows:
    flat: Mapping[str, float] = dict.fromkeys(LABELS, 0.9)
    return LabelWindows(
        recent=window("7d", now, now_means or flat),
        baseline=window("28d", before, before_means or flat),
    )


def labels_of(found: Sequence[LabelDrift] | None) -> list[str]:
    assert found is not None
    return [d.label for d in found]


# --- the store -----------------------------------------------------------------------------------


def test_label_windows_counts_shares_and_means_per_window(db: Database) -> None:
    """Each decided message counts in the window of its arrival: the last 7 days (from SPLIT,
    inclusive, to now, exclusive) or the 28 days before (from START, inclusive); review decisions
    count under their label; backfill, undecided rows, rows without a label and rows outside
    both windows do not. Shares are of the window's total; a label absent from a window has
    share 0 and no mean."""
    ledger = Ledger(db)
    ledger.add(SPLIT, "sales", 0.9)  # the first moment of the recent window
    ledger.add(NOW - timedelta(hours=1), "sales", 0.8)
    ledger.add(NOW - timedelta(days=2), "sales", 0.4, decision="review")
    ledger.add(NOW - timedelta(days=3), "marketing", 0.6)
    ledger.add(START, "other", 0.7)  # the first moment of the baseline window
    ledger.add(SPLIT - timedelta(microseconds=1), "other", 0.9)
    ledger.add(SPLIT - timedelta(days=10), "other", 0.8)
    ledger.add(SPLIT - timedelta(days=20), "sales", 0.5)
    # none of these count
    ledger.add(NOW, "sales", 0.1)  # not before now
    ledger.add(START - timedelta(microseconds=1), "marketing", 0.1)  # before both windows
    ledger.add(NOW - timedelta(days=1), "marketing", 0.1, backfill=True)
    ledger.add(NOW - timedelta(days=1), None, None, decision=None)  # seen, not decided
    ledger.add(NOW - timedelta(days=1), "junk", 0.1)  # not a label

    found = label_windows(db.reads, NOW)

    recent, baseline = found.recent, found.baseline
    assert (recent.name, recent.start, recent.end) == ("7d", SPLIT, NOW)
    assert (baseline.name, baseline.start, baseline.end) == ("28d", START, SPLIT)
    assert recent.total == 4 and baseline.total == 4
    assert recent.labels["sales"].count == 3
    assert recent.labels["sales"].share == pytest.approx(0.75)
    assert recent.labels["sales"].confidence_mean == pytest.approx(0.7)
    marketing = recent.labels["marketing"]
    assert (marketing.count, marketing.share) == (1, 0.25)
    assert marketing.confidence_mean == pytest.approx(0.6)
    assert recent.labels["other"] == LabelStats(0, 0.0, None)
    assert baseline.labels["other"].count == 3
    assert baseline.labels["other"].share == pytest.approx(0.75)
    assert baseline.labels["other"].confidence_mean == pytest.approx(0.8)
    sales = baseline.labels["sales"]
    assert (sales.count, sales.share) == (1, 0.25)
    assert sales.confidence_mean == pytest.approx(0.5)
    assert baseline.labels["marketing"] == LabelStats(0, 0.0, None)


def test_an_empty_store_gives_empty_windows(db: Database) -> None:
    """No messages: totals 0, every label share 0 and no mean."""
    found = label_windows(db.reads, NOW)
    for w in found.windows:
        assert w.total == 0
        assert set(w.labels) == set(LABELS)
        assert all(s == LabelStats(0, 0.0, None) for s in w.labels.values())


# --- the verdict ---------------------------------------------------------------------------------


def test_a_share_moved_beyond_the_threshold_is_alarming_worst_first() -> None:
    """sales 20% -> 38% (18 points) and marketing 50% -> 25% (25 points) moved more than 15;
    other 30% -> 37% did not. The one furthest past its threshold comes first."""
    found = verdict(
        windows(
            {"sales": 20, "marketing": 50, "other": 30}, {"sales": 38, "marketing": 25, "other": 37}
        ),
        0.15,
        0.10,
    )
    assert labels_of(found) == ["marketing", "sales"]
    assert found is not None
    assert found[1].share_before == pytest.approx(0.2)
    assert found[1].share_now == pytest.approx(0.38)
    assert found[0].severity == pytest.approx(0.25 / 0.15)
    assert found[1].severity == pytest.approx(0.18 / 0.15)


def test_a_move_of_exactly_the_threshold_is_not_alarming() -> None:
    """Exactly the threshold is not more than it, float error aside: 16% -> 31% is 15 points
    (0.15000000000000002 in floats)."""
    found = verdict(
        windows(
            {"sales": 16, "marketing": 44, "other": 40}, {"sales": 31, "marketing": 29, "other": 40}
        ),
        0.15,
        0.10,
    )
    assert found == ()


def test_the_thresholds_are_the_ones_given() -> None:
    """A 20-point move alarms under a 0.15 threshold, not under 0.25; equal severities keep the
    order of LABELS."""
    moved = windows({"sales": 20, "other": 80}, {"sales": 40, "other": 60})
    assert labels_of(verdict(moved, 0.15, 0.10)) == ["sales", "other"]
    assert verdict(moved, 0.25, 0.10) == ()


def test_a_fall_in_mean_confidence_beyond_the_threshold_is_alarming_a_rise_is_not() -> None:
    """Same shares; sales confidence 0.86 -> 0.71 fell by 0.15 (> 0.10), other rose 0.6 -> 0.9,
    marketing fell by only 0.05."""
    counts = {"sales": 40, "marketing": 40, "other": 40}
    found = verdict(
        windows(
            counts,
            counts,
            before_means={"sales": 0.86, "marketing": 0.80, "other": 0.6},
            now_means={"sales": 0.71, "marketing": 0.75, "other": 0.9},
        ),
        0.15,
        0.10,
    )
    assert found is not None
    assert labels_of(found) == ["sales"]
    assert (found[0].confidence_before, found[0].confidence_now) == (0.86, 0.71)
    assert found[0].severity == pytest.approx(1.5)
    assert verdict(windows(counts, counts, {"sales": 0.86}, {"sales": 0.71}), 0.15, 0.2) == ()


def test_too_few_messages_in_either_window_give_no_verdict() -> None:
    """Fewer than the minimum decided messages in the recent or the baseline window: None, however
    large the move; at the minimum a verdict is given."""
    assert verdict(windows({"sales": 29}, {"other": 40}), 0.15, 0.10) is None
    assert verdict(windows({"sales": 40}, {"other": 29}), 0.15, 0.10) is None
    assert labels_of(verdict(windows({"sales": 30}, {"other": 30}), 0.15, 0.10)) == [
        "sales",
        "other",
    ]
    assert verdict(windows({"sales": 30}, {"other": 30}), 0.15, 0.10, minimum=31) is None


def test_a_confidence_fall_counts_only_for_a_label_with_enough_messages_in_both_windows() -> None:
    """marketing's mean fell 0.9 -> 0.3, but it has 5 messages in the last 7 days: a mean of so
    few is noise, so only its share is judged (which did not move enough)."""
    before = {"sales": 90, "marketing": 10}
    now = {"sales": 45, "marketing": 5}
    means_before = {"sales": 0.9, "marketing": 0.9}
    means_now = {"sales": 0.9, "marketing": 0.3}
    assert verdict(windows(before, now, means_before, means_now), 0.15, 0.10) == ()
    enough = windows({"sales": 60, "marketing": 40}, {"sales": 60, "marketing": 40})
    low = windows(
        {"sales": 60, "marketing": 40}, {"sales": 60, "marketing": 40}, means_before, means_now
    )
    assert verdict(enough, 0.15, 0.10) == ()
    assert labels_of(verdict(low, 0.15, 0.10)) == ["marketing"]


def test_the_alert_line_names_the_worst_label_and_its_change() -> None:
    """One line: the label, its share and mean confidence before -> now; other drifting labels
    are named after it; nothing when there is no verdict or no drift."""
    sales = LabelDrift("sales", 0.12, 0.31, 0.86, 0.71, 1.5)
    marketing = LabelDrift("marketing", 0.5, 0.3, None, 0.8, 1.3)
    assert describe(sales) == (
        "sales share 12% -> 31% over the last 7 days; mean confidence 0.86 -> 0.71"
    )
    assert alert_line((sales,)) == (
        "Drift: sales share 12% -> 31% over the last 7 days; mean confidence 0.86 -> 0.71"
    )
    line = alert_line((sales, marketing))
    assert line.endswith("0.71 (also drifting: marketing)") and "\n" not in line
    assert describe(marketing).endswith("mean confidence none -> 0.80")
    assert alert_line(()) == "" and alert_line(None) == ""


# --- the digest ----------------------------------------------------------------------------------


def seed_drift(ledger: Ledger) -> None:
    """Four weeks of 12% sales at 0.86, then a week of 31% sales at 0.71."""
    ledger.mix(SPLIT - timedelta(days=5), {"sales": 12, "marketing": 48, "other": 40}, 0.86)
    ledger.mix(NOW - timedelta(days=2), {"sales": 31, "marketing": 29, "other": 40}, 0.86)
    with ledger.db.transaction() as c:
        c.execute(
            "UPDATE messages SET confidence = 0.71 WHERE label = 'sales' AND created_at >= ?",
            (timestamp(SPLIT),),
        )


def seed_steady(ledger: Ledger) -> None:
    """The same mix and confidence in both windows."""
    for at in (SPLIT - timedelta(days=5), NOW - timedelta(days=2)):
        ledger.mix(at, {"sales": 12, "marketing": 48, "other": 40}, 0.86)


LINE = "Drift: sales share 12% -&gt; 31% over the last 7 days; mean confidence 0.86 -&gt; 0.71"


@pytest.fixture
def settings(store_backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def test_the_digest_carries_the_drift_line_when_drift_is_alarming(
    settings: Settings, db: Database
) -> None:
    """Past the thresholds, the text part carries the line once and the HTML part carries it
    escaped ("->" as "-&gt;")."""
    seed_drift(Ledger(db))
    rendered = digest.preview(settings, db, NOW)
    assert rendered.text.count("Drift: ") == 1
    assert (
        "\n\nDrift: sales share 12% -> 31% over the last 7 days; mean confidence 0.86 -> 0.71"
        " (also drifting: marketing)\n\nNEW HOT LEADS" in rendered.text
    )
    assert rendered.html.count("Drift: ") == 1
    assert LINE + " (also drifting: marketing)</td>" in rendered.html
    assert "->" not in rendered.html


def test_the_digest_has_no_drift_line_when_nothing_drifted_or_too_little_was_decided(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    """A steady mix, an empty store, or thresholds above the change: no line in either part."""
    assert "Drift" not in digest.preview(settings, db, NOW).text
    seed_steady(Ledger(db))
    steady = digest.preview(settings, db, NOW)
    assert "Drift" not in steady.text and "Drift" not in steady.html

    drifted = open_store(tmp_path / "drifted.db")
    try:
        seed_drift(Ledger(drifted))
        lax = make_settings(
            tmp_path, classifier={"drift_share_threshold": 0.5, "drift_confidence_threshold": 0.5}
        )
        rendered = digest.preview(lax, drifted, NOW)
        assert "Drift" not in rendered.text and "Drift" not in rendered.html
        assert "Drift: sales" in digest.preview(settings, drifted, NOW).text
    finally:
        drifted.close()


# --- the metrics ---------------------------------------------------------------------------------


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_refresh_sets_the_label_gauges_of_both_windows(db: Database, tmp_path: Path) -> None:
    """Share, mean confidence and count per label and window; NaN for the mean of a label a
    window does not have; read again only after DRIFT_REFRESH_SECONDS."""
    ledger = Ledger(db)
    seed_drift(ledger)
    m = Metrics()
    m.refresh_from_store(db, now=NOW.timestamp())

    assert value(m, "triage_label_share", label="sales", window="28d") == pytest.approx(0.12)
    assert value(m, "triage_label_share", label="sales", window="7d") == pytest.approx(0.31)
    assert value(m, "triage_label_confidence_mean", label="sales", window="28d") == pytest.approx(
        0.86
    )
    assert value(m, "triage_label_confidence_mean", label="sales", window="7d") == pytest.approx(
        0.71
    )
    assert value(m, "triage_label_messages", label="other", window="7d") == 40

    ledger.add(NOW - timedelta(hours=1), "sales", 0.1, count=100)
    m.refresh_from_store(db, now=NOW.timestamp() + 1)
    assert value(m, "triage_label_messages", label="sales", window="7d") == 31
    m.refresh_from_store(db, now=NOW.timestamp() + DRIFT_REFRESH_SECONDS)
    assert value(m, "triage_label_messages", label="sales", window="7d") == 131

    empty = Metrics()
    nothing = open_store(tmp_path / "empty.db")
    try:
        empty.refresh_from_store(nothing, now=NOW.timestamp())
    finally:
        nothing.close()
    mean = value(empty, "triage_label_confidence_mean", label="sales", window="7d")
    assert mean is not None and math.isnan(mean)
    assert value(empty, "triage_label_share", label="sales", window="7d") == 0


def test_the_label_gauges_appear_on_metrics(db: Database) -> None:
    """`/metrics` serves the three label gauges for every label and both windows."""
    seed_drift(Ledger(db))
    m = Metrics()
    m.refresh_from_store(db, now=NOW.timestamp())
    with start_health_server("127.0.0.1", 0, list, m, 300) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read().decode()
        finally:
            conn.close()
    assert response.status == 200
    assert 'triage_label_share{label="sales",window="7d"} 0.31' in body
    assert 'triage_label_share{label="sales",window="28d"} 0.12' in body
    assert 'triage_label_confidence_mean{label="sales",window="7d"} 0.71' in body
    assert 'triage_label_messages{label="marketing",window="28d"} 48.0' in body
    for label in LABELS:
        for name in ("7d", "28d"):
            for metric in ("triage_label_share", "triage_label_confidence_mean"):
                assert f'{metric}{{label="{label}",window="{name}"}}' in body
