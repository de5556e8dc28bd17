"""Every change a person makes to a lead or a review item is in the audit log: who, when, what,
written in the same transaction as the change (a refused change leaves no entry)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.test_leads import JANE, Store, make_settings
from triage.sales import leads, review
from triage.store import audit
from triage.store.review import get_message

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

NOW = datetime(2024, 5, 13, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_settings(tmp_path))
    yield s
    s.close()


def entries(store: Store, kind: str, target: int) -> list[tuple[str, str, dict[str, object]]]:
    return [
        (e.actor, e.action, dict(e.detail)) for e in audit.for_target(store.db.reads, kind, target)
    ]


def test_claim_status_note_and_relabel_are_audited(store: Store) -> None:
    _, lead = store.inquiry(JANE)
    leads.claim(store.db, lead, "sam", NOW)
    leads.claim(store.db, lead, "sam", NOW)  # again: no change, no entry
    leads.update(store.db, lead, status="contacted", note="called", by="sam", now=NOW)
    leads.relabel(store.db, lead, "marketing", by="ada", now=NOW)
    leads.update(store.db, lead, status="dismissed", not_a_lead=True, by="ada", now=NOW)
    assert entries(store, "lead", lead) == [
        ("sam", "lead.claim", {"from": "new", "to": "claimed", "owner": "sam", "was_owner": ""}),
        ("sam", "lead.status", {"from": "claimed", "to": "contacted"}),
        ("sam", "lead.note", {"note": 1}),
        ("ada", "lead.relabel", {"label": "marketing", "was": "sales", "source": "relabel"}),
        ("ada", "lead.status", {"from": "contacted", "to": "dismissed", "not_a_lead": True}),
        ("ada", "lead.relabel", {"label": "other", "was": "sales", "source": "not-a-lead"}),
    ]
    assert all(e.at == "2024-05-13T08:00:00.000000+00:00" for e in audit.recent(store.db.reads))


def test_a_refused_change_leaves_no_entry(store: Store) -> None:
    _, lead = store.inquiry(JANE)
    with pytest.raises(leads.LeadError, match="claim it first"):
        leads.update(store.db, lead, status="won", note="too early", by="sam")
    leads.claim(store.db, lead, "sam")
    with pytest.raises(leads.LeadError, match="already claimed by sam"):
        leads.claim(store.db, lead, "bob")
    with pytest.raises(leads.LeadError, match="already labelled sales"):
        leads.relabel(store.db, lead, "sales", by="bob")
    assert [action for _, action, _ in entries(store, "lead", lead)] == ["lead.claim"]


def test_assign_changes_the_owner_not_the_status(store: Store) -> None:
    _, lead = store.inquiry(JANE)
    assert leads.assign(store.db, lead, " bob ", "alice", NOW).owner == "bob"
    assert leads.assign(store.db, lead, "bob", "alice", NOW).status == "new"  # no change
    leads.claim(store.db, lead, "bob", NOW)
    moved = leads.assign(store.db, lead, "carol", "alice", NOW)
    assert (moved.status, moved.owner) == ("claimed", "carol")
    assert entries(store, "lead", lead)[0] == (
        "alice",
        "lead.assign",
        {"to": "bob", "was_owner": ""},
    )
    assert [a for _, a, _ in entries(store, "lead", lead)] == [
        "lead.assign",
        "lead.claim",
        "lead.assign",
    ]
    with pytest.raises(leads.LeadError, match="an assignment needs a name"):
        leads.assign(store.db, lead, " ", "alice")
    leads.update(store.db, lead, status="dismissed", by="carol")
    with pytest.raises(leads.LeadError, match=f"lead {lead} is dismissed, which is final"):
        leads.assign(store.db, lead, "bob", "alice")
    with pytest.raises(leads.LeadError, match="no lead 99"):
        leads.assign(store.db, 99, "bob", "alice")


def test_review_labels_and_mailbox_labels_are_audited(store: Store) -> None:
    row = store.message("kim@northwind.example", "Licences?", decision="review")
    done = review.label(store.db, row, "sales", store.settings, by="ann", now=NOW)
    assert entries(store, "message", row) == [
        (
            "ann",
            "review.label",
            {"label": "sales", "was": "sales", "source": "review", "lead": done.lead_id},
        )
    ]
    other = store.message("x@y.example", "Hi", decision="sales")
    message = get_message(store.db.reads, other)
    assert message is not None
    with store.db.transaction() as c:
        review.relabel(
            c,
            message,
            "other",
            store.settings,
            old_label="sales",
            source="folder",
            by="mailbox folder",
            reason="moved",
            now=NOW,
        )
    [(actor, action, detail)] = entries(store, "message", other)
    assert (actor, action, detail["label"], detail["source"]) == (
        "mailbox folder",
        "message.label",
        "other",
        "folder",
    )
