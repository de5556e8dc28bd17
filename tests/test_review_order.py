"""The review queue in the order a label teaches the model most: uncertainty = 1 - (p_top -
p_second) of the stored probabilities, highest first, ties oldest first; messages without
probabilities last. One store query gives the order to `triage review list` and the digest."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from tests.test_digest import MONDAY_8
from tests.test_leads import Store, make_settings
from tests.test_leads_cli import triage, write_config
from triage.core.settings import Settings, load_settings
from triage.sales import digest
from triage.sales.review import pending

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


def waiting(
    store: Store,
    sender: str,
    probabilities: Mapping[str, float] | str | None,
    *,
    days_ago: float,
    decision: str = "review",
) -> int:
    """A message sent to review `days_ago` days before MONDAY_8 with these stored probabilities
    (a string is stored as it is, to stand for a malformed value)."""
    row = store.message(
        sender, f"From {sender}", decision=decision, at=MONDAY_8 - timedelta(days=days_ago)
    )
    stored = probabilities if isinstance(probabilities, str) or probabilities is None else None
    if isinstance(probabilities, Mapping):
        stored = json.dumps(dict(probabilities))
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET probabilities = ? WHERE id = ?", (stored, row))
    return row


def seed(store: Store) -> dict[str, int]:
    """Review messages of known uncertainty (in brackets), inserted in no particular order."""
    return {
        "clear": waiting(store, "clear@x.example", {"sales": 0.7, "marketing": 0.2}, days_ago=5),
        # [0.5]
        "close": waiting(
            store, "close@x.example", {"sales": 0.5, "marketing": 0.45, "other": 0.05}, days_ago=1
        ),  # [0.95]
        "tie-new": waiting(
            store, "tie-new@x.example", {"other": 0.6, "sales": 0.3, "marketing": 0.1}, days_ago=2
        ),  # [0.7]
        "none": waiting(store, "none@x.example", None, days_ago=9),  # [unknown]
        "tie-old": waiting(
            store, "tie-old@x.example", {"marketing": 0.3, "sales": 0.6, "other": 0.0}, days_ago=3
        ),  # [0.7], older than tie-new though recorded after it
        "single": waiting(store, "single@x.example", {"sales": 0.8}, days_ago=4),  # [0.2]
        "broken": waiting(store, "broken@x.example", "not json", days_ago=8),  # [unknown]
        "empty": waiting(store, "empty@x.example", {}, days_ago=7),  # [unknown]
    }


ORDER = ["close", "tie-old", "tie-new", "clear", "single", "none", "broken", "empty"]


def test_the_most_uncertain_comes_first_ties_oldest_first_unknown_last(store: Store) -> None:
    """Highest 1 - (p_top - p_second) first; equal margins oldest first (by arrival, not by
    row); a single probability counts p_second as 0; no, empty or malformed probabilities come
    last, oldest first. Each item carries its uncertainty."""
    rows = seed(store)
    items = pending(store.db.reads)
    by_row = {row: name for name, row in rows.items()}
    assert [by_row[i.row_id] for i in items] == ORDER
    uncertainty = {by_row[i.row_id]: i.uncertainty for i in items}
    assert uncertainty["close"] == pytest.approx(0.95)
    assert uncertainty["tie-old"] == uncertainty["tie-new"] == pytest.approx(0.7)
    assert uncertainty["clear"] == pytest.approx(0.5)
    assert uncertainty["single"] == pytest.approx(0.2)
    assert uncertainty["empty"] is uncertainty["broken"] is uncertainty["none"] is None


def test_only_unreviewed_review_decisions_are_listed_and_a_limit_keeps_the_most_uncertain(
    store: Store,
) -> None:
    """A message already labelled, or decided without review, is not in the queue; `limit`
    keeps the head of the order, not the oldest."""
    rows = seed(store)
    waiting(store, "sure@x.example", {"sales": 0.5, "other": 0.5}, days_ago=1, decision="sales")
    labelled = waiting(store, "done@x.example", {"sales": 0.5, "other": 0.5}, days_ago=1)
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET reviewed_label = 'sales' WHERE id = ?", (labelled,))
    assert [i.row_id for i in pending(store.db.reads, 2)] == [rows["close"], rows["tie-old"]]
    assert len(pending(store.db.reads)) == len(ORDER)


def test_the_digest_lists_the_review_queue_in_that_order(store: Store, settings: Settings) -> None:
    """The digest's review section, text and HTML, lists the items most uncertain first and
    shows each one's uncertainty."""
    rows = seed(store)
    rendered = digest.preview(settings, store.db, MONDAY_8)
    section = rendered.text.split("WAITING FOR REVIEW: 8")[1]
    positions = [section.index(f"#{rows[name]} ") for name in ORDER]
    assert positions == sorted(positions)
    assert (
        "close@x.example: From close@x.example (sales? 90%, uncertainty 0.95, 24h ago)" in section
    )
    html = rendered.html.split("Waiting for review (8)")[1]
    html_positions = [html.index(f"#{rows[name]}\n") for name in ORDER]
    assert html_positions == sorted(html_positions)
    assert "uncertainty 0.70" in html


def test_review_list_shows_the_most_uncertain_first_with_its_uncertainty(tmp_path: Path) -> None:
    """`triage review list` prints the queue in that order with an UNCERTAINTY column ("-" when
    unknown); --json carries the value."""
    config = write_config(tmp_path)
    store = Store(load_settings(config, environ={}))
    try:
        rows = seed(store)
    finally:
        store.close()
    table = triage(config, "review", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "UNCERTAINTY", "AGE"]
    listed = [line.split() for line in lines[1 : 1 + len(ORDER)]]
    assert [int(cells[0]) for cells in listed] == [rows[name] for name in ORDER]
    assert listed[0][1] == "0.95" and listed[-1][1] == "-"
    items = json.loads(triage(config, "review", "list", "--json").stdout)
    assert [i["id"] for i in items] == [rows[name] for name in ORDER]
    assert items[0]["uncertainty"] == 0.95 and items[-1]["uncertainty"] is None
