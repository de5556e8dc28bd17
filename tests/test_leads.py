"""Leads: one lead per conversation, the status workflow, assignment, business-hours targets,
the CSV export, retention and labels given in review.

The helpers at the top build store state the way the pipeline does (ledger row + `record_lead` in
one transaction); the digest and CLI tests import them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.stores import store_section
from triage.core.errors import ConfigError
from triage.core.models import Contact, LeadKind
from triage.core.settings import LeadsSettings, Settings, load_settings
from triage.sales.leads import (
    LeadError,
    apply_retention,
    assign_owner,
    business_due,
    check_business_hours,
    claim,
    export_rows,
    list_leads,
    show,
    split_name,
    update,
    write_csv,
)
from triage.sales.review import ReviewError, label, pending, pending_count
from triage.store.db import Database, timestamp
from triage.store.leads import NewLead, get_lead, lead_messages, record_lead
from triage.store.ledger import Ledger, Outcome

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

ROOT = Path(__file__).resolve().parents[1]
BERLIN_MONDAY_10 = datetime(2024, 5, 13, 8, 0, tzinfo=UTC)  # Mon 13 May 2024, 10:00 in Berlin


# --- helpers (also used by test_digest, test_leads_cli, test_digest_mail) -------------------------


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a store under `tmp_path` (on the running test's backend, see tests.stores),
    the repository's templates, digest to sales@."""
    values: dict[str, dict[str, Any]] = {
        "imap": {"username": "hello", "password": "pw", "security": "plain"},
        "store": store_section(tmp_path / "triage.db"),
        "replies": {
            "templates_dir": str(ROOT / "templates"),
            "from_address": "hello@example.test",
            "company_name": "Example Ltd",
        },
        "digest": {
            "recipients": ["sales@example.test"],
            "timezone": "Europe/Berlin",
            "from_address": "triage@example.test",
        },
    }
    for name, section in sections.items():
        values[name] = {**values.get(name, {}), **section}
    return load_settings(environ={}, overrides=values)


class Store:
    """A test store that records messages and leads as the pipeline would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.store)
        self.ledger = Ledger(self.db)
        self._uid = 0

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def message(
        self,
        sender: str,
        subject: str = "Quote please",
        body: str = "We need a quote for 40 units.",
        *,
        decision: str = "sales",
        guess: str | None = None,
        confidence: float = 0.9,
        explanation: Sequence[str] = ("quote", "units"),
        message_id: str | None = None,
        at: datetime | None = None,
        reasons: Sequence[str] = (),
    ) -> int:
        """A ledger row as the pipeline leaves it (`classified`); returns its id."""
        self._uid += 1
        mid = message_id or f"<m{self._uid}@prospect.example>"
        self.ledger.record_seen("default", "INBOX", 1, [(self._uid, mid, False)])
        row = self.ledger.rows_for("default", "INBOX", 1, [self._uid])[self._uid].id
        with self.db.transaction() as c:
            self.ledger.record_outcome(
                c,
                Outcome(
                    row_id=row,
                    message_id=mid,
                    sender=sender,
                    subject=subject,
                    language="en",
                    body=body,
                    label=guess or (decision if decision != "review" else "sales"),
                    confidence=confidence,
                    decision=decision,
                    probabilities={},
                    explanation=explanation,
                    may_reply=decision in ("sales", "marketing"),
                    reasons=list(reasons),
                ),
            )
            if at is not None:
                c.execute("UPDATE messages SET created_at = ? WHERE id = ?", (timestamp(at), row))
        return row

    def inquiry(
        self,
        contact: Contact,
        subject: str = "Quote please",
        body: str = "We need a quote for 40 units.",
        *,
        decision: str = "sales",
        confidence: float = 0.9,
        explanation: Sequence[str] = ("quote", "units"),
        at: datetime | None = None,
        message_id: str | None = None,
        thread_ids: Sequence[str] = (),
    ) -> tuple[int, int]:
        """A message and its lead, recorded as the pipeline records them; (row id, lead id).

        `at` is when it arrived: the ledger row, the lead's creation and its due time use it.
        """
        row = self.message(
            contact.email,
            subject,
            body,
            decision=decision,
            confidence=confidence,
            explanation=explanation,
            message_id=message_id,
            at=at,
        )
        kind = LeadKind.HOT if decision == "sales" else LeadKind.NURTURE
        hot = kind is LeadKind.HOT
        arrived = at or datetime.now(UTC)
        settings = self.settings
        with self.db.transaction() as c:
            lead_id = record_lead(
                c,
                NewLead(
                    message_row=row,
                    kind=kind,
                    contact=contact,
                    label=decision,
                    confidence=confidence,
                    explanation=explanation,
                    due_at=business_due(arrived, settings.leads.response_target_hours, settings)
                    if hot
                    else None,
                    owner=assign_owner(c, settings.leads) if hot else "",
                    thread_ids=thread_ids,
                ),
            )
            if at is not None:
                c.execute(
                    "UPDATE leads SET created_at = ?, updated_at = ? WHERE id = ?"
                    " AND created_at > ?",
                    (timestamp(at), timestamp(at), lead_id, timestamp(at)),
                )
        return row, lead_id


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


JANE = Contact("Jane Doe", "jane@doe.example", "Doe Logistics GmbH", "+49 30 1234", "doe.example")


# --- one lead per conversation --------------------------------------------------------------------


def test_two_messages_from_one_prospect_make_one_lead(store: Store) -> None:
    """The second message joins the first one's lead; a contact field it reveals is filled in."""
    _, first = store.inquiry(Contact("", "jane@doe.example"), "Quote for 40 racks")
    _, second = store.inquiry(JANE, "Re: Quote for 40 racks")
    assert first == second
    lead = get_lead(store.db.reads, first)
    assert lead is not None
    assert lead.message_count == 2
    assert (lead.name, lead.company, lead.phone) == (
        "Jane Doe",
        "Doe Logistics GmbH",
        "+49 30 1234",
    )
    assert [m.subject for m in lead_messages(store.db.reads, first)] == [
        "Quote for 40 racks",
        "Re: Quote for 40 racks",
    ]


def test_a_reply_in_the_thread_joins_the_lead_from_another_address(store: Store) -> None:
    """A colleague answering in the thread (In-Reply-To/References) joins the same lead, also
    when the message referred to is our automatic reply."""
    first_row, lead_id = store.inquiry(JANE, message_id="<first@doe.example>")
    colleague = Contact("Sam Doe", "sam@doe.example")
    _, joined = store.inquiry(colleague, thread_ids=["<first@doe.example>"])
    assert joined == lead_id

    with store.db.transaction() as c:
        c.execute(
            "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
            " template, mode, state, raw, next_attempt, created_at)"
            " VALUES (?, '<triage.abc@example.test>', 'jane@doe.example', '', 'sales', 'live',"
            " 'sent', ?, '', '')",
            (first_row, b""),
        )
    other = Contact("", "pat@doe.example")
    _, via_reply = store.inquiry(other, thread_ids=["<unknown@x>", "<triage.abc@example.test>"])
    assert via_reply == lead_id
    lead = get_lead(store.db.reads, lead_id)
    assert lead is not None and lead.message_count == 3


def test_a_nurture_lead_that_turns_hot_is_upgraded(store: Store) -> None:
    """Marketing first, then a sales message: one hot lead with a due time, new to the digest."""
    _, nurture = store.inquiry(JANE, decision="marketing", explanation=("brochure",))
    with store.db.transaction() as c:
        c.execute("UPDATE leads SET digested_in = 99 WHERE id = ?", (nurture,))
    _, hot = store.inquiry(JANE, decision="sales", explanation=("quote",))
    assert hot == nurture
    lead = get_lead(store.db.reads, hot)
    assert lead is not None
    assert (lead.kind, lead.label, lead.explanation) == ("hot", "sales", ("quote",))
    assert lead.due_at is not None
    assert lead.digested_in is None


def test_a_closed_lead_is_not_reopened_by_a_new_message(store: Store) -> None:
    """After a lead is won, the prospect's next inquiry is a new lead."""
    _, first = store.inquiry(JANE)
    claim(store.db, first, "alice")
    update(store.db, first, status="contacted")
    update(store.db, first, status="won")
    _, second = store.inquiry(JANE)
    assert second != first


# --- the workflow -------------------------------------------------------------------------------


def test_status_flow_claim_contact_win(store: Store) -> None:
    """new → claimed (owner set) → contacted → won, with timestamps and a note."""
    _, lead_id = store.inquiry(JANE)
    lead = claim(store.db, lead_id, "alice")
    assert (lead.status, lead.owner) == ("claimed", "alice")
    assert lead.claimed_at is not None
    note = "Called, sending an offer"
    lead = update(store.db, lead_id, status="contacted", note=note, by="al").lead
    assert lead.status == "contacted" and lead.contacted_at is not None
    lead = update(store.db, lead_id, status="won").lead
    assert lead.status == "won" and lead.closed_at is not None
    notes = show(store.db, lead_id).notes
    assert [(n.author, n.text) for n in notes] == [("al", "Called, sending an offer")]


@pytest.mark.parametrize(
    ("path", "target", "message"),
    [
        ((), "contacted", "lead 1 is new; it can become claimed or dismissed, not contacted"),
        ((), "won", "claim it first"),
        (("claimed",), "won", "it can become contacted or dismissed, not won"),
        (("dismissed",), "claimed", "lead 1 is dismissed, which is final"),
        ((), "bogus", "unknown status 'bogus'"),
    ],
)
def test_invalid_status_changes_are_refused(
    store: Store, path: tuple[str, ...], target: str, message: str
) -> None:
    """Every change outside the workflow is refused with a message saying what is allowed."""
    _, lead_id = store.inquiry(JANE)
    for status in path:
        update(store.db, lead_id, status=status, by="alice")
    with pytest.raises(LeadError, match=message):
        update(store.db, lead_id, status=target)
    lead = get_lead(store.db.reads, lead_id)
    assert lead is not None and lead.status == (path[-1] if path else "new")


def test_claims_unknown_ids_and_empty_updates(store: Store) -> None:
    """Claiming again is harmless for the owner and refused for anyone else; unknown ids and
    empty updates are errors."""
    _, lead_id = store.inquiry(JANE)
    claim(store.db, lead_id, "alice")
    assert claim(store.db, lead_id, "alice").owner == "alice"
    with pytest.raises(LeadError, match="already claimed by alice"):
        claim(store.db, lead_id, "bob")
    with pytest.raises(LeadError, match="no lead 42"):
        claim(store.db, 42, "bob")
    with pytest.raises(LeadError, match="no lead 42"):
        show(store.db, 42)
    with pytest.raises(LeadError, match="nothing to update"):
        update(store.db, lead_id)
    _, unclaimed = store.inquiry(Contact("", "other@x.example"))
    with pytest.raises(LeadError, match="needs a name"):
        claim(store.db, unclaimed, "  ")
    with pytest.raises(LeadError, match="unknown kind"):
        list_leads(store.db, kind="warm")


def test_list_filters_by_status_and_kind(store: Store) -> None:
    """Open leads by default; --status and --kind narrow the list."""
    _, hot = store.inquiry(JANE)
    _, nurture = store.inquiry(Contact("", "info@agency.example"), decision="marketing")
    _, done = store.inquiry(Contact("", "x@y.example"))
    update(store.db, done, status="dismissed")
    assert [lead.id for lead in list_leads(store.db)] == [hot, nurture]
    assert [lead.id for lead in list_leads(store.db, kind="nurture")] == [nurture]
    assert [lead.id for lead in list_leads(store.db, ["dismissed"])] == [done]


# --- business hours -----------------------------------------------------------------------------


def _berlin(text: str) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin"))


@pytest.mark.parametrize(
    ("arrival", "hours", "due"),
    [
        ("2024-05-13 10:00", 4, "2024-05-13 14:00"),  # Monday morning: same afternoon
        ("2024-05-13 15:30", 4, "2024-05-14 11:30"),  # 1.5 h today, 2.5 h tomorrow
        ("2024-05-13 20:00", 4, "2024-05-14 13:00"),  # evening: counts from 9:00
        ("2024-05-13 06:00", 2, "2024-05-13 11:00"),  # early morning: counts from 9:00
        ("2024-05-17 16:00", 4, "2024-05-20 12:00"),  # Friday 16:00: Monday noon
        ("2024-05-18 11:00", 1, "2024-05-20 10:00"),  # Saturday: Monday
        ("2024-05-13 09:00", 20, "2024-05-15 13:00"),  # 8 + 8 + 4
        ("2024-05-13 17:00", 8, "2024-05-14 17:00"),  # closing time exactly: whole next day
        ("2024-03-29 16:00", 2, "2024-04-01 10:00"),  # over the DST change: still 10:00 local
    ],
)
def test_business_due(tmp_path: Path, arrival: str, hours: float, due: str) -> None:
    """Only business hours on business days count, in the digest's time zone."""
    s = make_settings(tmp_path)
    assert business_due(_berlin(arrival), hours, s) == _berlin(due).astimezone(UTC)


def test_business_due_other_calendars_and_fallbacks(tmp_path: Path) -> None:
    """A 24-hour Sunday-to-Thursday week; naive times are UTC; unusable hours fall back to plain
    hours instead of failing the pipeline."""
    s = make_settings(
        tmp_path,
        leads={"business_hours": (0, 24), "business_days": (6, 0, 1, 2, 3)},
        digest={"timezone": "UTC"},
    )
    friday = datetime(2024, 5, 17, 12, 0)  # naive: UTC
    assert business_due(friday, 5, s) == datetime(2024, 5, 19, 5, 0, tzinfo=UTC)
    broken = make_settings(tmp_path, leads={"business_hours": (17, 9)})
    start = datetime(2024, 5, 13, 8, 0, tzinfo=UTC)
    assert business_due(start, 3, broken) == start + timedelta(hours=3)
    with pytest.raises(ConfigError, match="business_hours"):
        check_business_hours(broken.leads)
    with pytest.raises(ConfigError, match="business_days"):
        check_business_hours(LeadsSettings(business_days=(7,)))


# --- assignment ---------------------------------------------------------------------------------


def test_no_assignment_without_staff_or_strategy(store: Store) -> None:
    """assignment = none, or no staff: nobody."""
    c = store.db.reads
    assert assign_owner(c, LeadsSettings(staff=("a", "b"))) == ""
    assert assign_owner(c, LeadsSettings(assignment="round-robin")) == ""


def test_round_robin_takes_turns_and_unused_calls_leave_no_trace(tmp_path: Path) -> None:
    """a, b, c, a, …; asking without recording a lead does not skip anyone."""
    s = make_settings(tmp_path, leads={"staff": ("a", "b", "c"), "assignment": "round-robin"})
    store = Store(s)
    owners = []
    for n in range(5):
        assert assign_owner(store.db.reads, s.leads) == assign_owner(store.db.reads, s.leads)
        _, lead_id = store.inquiry(Contact("", f"p{n}@x.example"))
        lead = get_lead(store.db.reads, lead_id)
        assert lead is not None
        owners.append(lead.owner)
    assert owners == ["a", "b", "c", "a", "b"]
    store.close()


def test_least_busy_counts_open_hot_leads(tmp_path: Path) -> None:
    """The owner with the fewest open hot leads gets the next one; closed leads don't count."""
    s = make_settings(tmp_path, leads={"staff": ("a", "b"), "assignment": "least-busy"})
    store = Store(s)
    ids = [store.inquiry(Contact("", f"p{n}@x.example"))[1] for n in range(4)]
    owners = [lead.owner for lead in list_leads(store.db)]
    assert owners == ["a", "b", "a", "b"]
    for lead_id in ids[:2]:  # a's first and b's first
        update(store.db, lead_id, status="dismissed")
    update(store.db, ids[3], status="dismissed")  # b has none open now, a has one
    assert assign_owner(store.db.reads, s.leads) == "b"
    store.close()


# --- export -------------------------------------------------------------------------------------


def test_export_round_trips_through_csv(store: Store) -> None:
    """Commas, quotes, newlines and non-ASCII in values survive a write/read with csv."""
    tricky = Contact('Doe, "Jane"', "jane@doe.example", "Müller & Söhne,\nGmbH", "+49 30", "")
    _, lead_id = store.inquiry(tricky, 'Quote, "urgent"', 'Line one,\r\nline "two"\nthree')
    claim(store.db, lead_id, "alice")
    update(store.db, lead_id, note='Call back, "Tue"\nafter 10', by="al")
    rows = export_rows(store.db)
    buffer = io.StringIO(newline="")
    assert write_csv(rows, buffer) == 1
    parsed = list(csv.DictReader(io.StringIO(buffer.getvalue(), newline="")))
    assert parsed == rows
    row = parsed[0]
    assert row["name"] == 'Doe, "Jane"'
    assert (row["first_name"], row["last_name"]) == ('"Jane"', "Doe")
    assert row["company"] == "Müller & Söhne,\nGmbH"
    assert row["first_message"] == 'Line one,\r\nline "two"\nthree'
    assert row["notes"] == 'al: Call back, "Tue"\nafter 10'
    assert row["status"] == "claimed" and row["owner"] == "alice"
    assert row["due"].endswith("+00:00") and row["created"].endswith("+00:00")


def test_excel_safe_export_defuses_formulas(store: Store) -> None:
    """With excel_safe a value that would run as a formula starts with a quote."""
    store.inquiry(Contact("=HYPERLINK(1)", "x@y.example", phone="+49 30 1"))
    buffer = io.StringIO(newline="")
    write_csv(export_rows(store.db), buffer, excel_safe=True)
    row = next(csv.DictReader(io.StringIO(buffer.getvalue(), newline="")))
    assert row["name"] == "'=HYPERLINK(1)"
    assert row["phone"] == "'+49 30 1"


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("Jane Doe", ("Jane", "Doe")),
        ("Jane van Doe", ("Jane van", "Doe")),
        ("Doe, Jane", ("Jane", "Doe")),
        ("Jane", ("Jane", "")),
        ("", ("", "")),
    ],
)
def test_split_name(name: str, parts: tuple[str, str]) -> None:
    """First and last name for a CRM."""
    assert split_name(name) == parts


# --- retention ----------------------------------------------------------------------------------


def test_retention_empties_old_bodies_and_keeps_leads(tmp_path: Path) -> None:
    """Bodies and raw messages older than retention_days go; leads, subjects and the text of
    corrections (training data) stay; retention_days = 0 keeps everything."""
    s = make_settings(tmp_path, leads={"retention_days": 30})
    store = Store(s)
    now = datetime.now(UTC)
    old_row, old_lead = store.inquiry(JANE, "Old", "old body", at=now - timedelta(days=40))
    new_row, _ = store.inquiry(Contact("", "new@x.example"), "New", "new body")
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET raw = ? WHERE id = ?", (b"\x00", old_row))
        c.execute(
            "INSERT INTO corrections (message_row, message_id, new_label, source, subject, body,"
            " raw, created_at) VALUES (?, 'x', 'sales', 'review', 'Old', 'old body', ?, ?)",
            (old_row, b"\x00", timestamp(now - timedelta(days=40))),
        )

    assert apply_retention(LeadsSettings(retention_days=0), store.db, now).messages == 0
    result = apply_retention(s.leads, store.db, now)
    assert (result.messages, result.corrections) == (1, 1)
    assert apply_retention(s.leads, store.db, now).messages == 0  # idempotent
    c = store.db.reads
    bodies = {r[0]: r[1] for r in c.execute("SELECT id, body FROM messages")}
    assert bodies == {old_row: None, new_row: "new body"}
    assert c.execute("SELECT raw FROM messages WHERE id = ?", (old_row,)).fetchone()[0] is None
    correction = c.execute("SELECT subject, body, raw FROM corrections").fetchone()
    assert tuple(correction) == ("Old", "old body", None)
    lead = get_lead(c, old_lead)
    assert lead is not None
    assert (lead.email, lead.first_subject, lead.last_body) == (JANE.email, "Old", "")
    store.close()


# --- review -------------------------------------------------------------------------------------


def test_review_label_sales_records_correction_and_hot_lead(tmp_path: Path) -> None:
    """Labelling a review decision sales: reviewed_label, a correction (source review) and a hot
    lead due from the message's arrival, assigned like any hot lead."""
    s = make_settings(tmp_path, leads={"staff": ("alice",), "assignment": "round-robin"})
    store = Store(s)
    arrived = BERLIN_MONDAY_10
    row = store.message(
        "kim@northwind.example",
        "Licences?",
        "Could you quote 25 licences?\n\nKim Park\nNorthwind Traders\nTel: +44 20 7946 0000",
        decision="review",
        guess="sales",
        confidence=0.41,
        explanation=("quote",),
        at=arrived,
    )
    assert [i.row_id for i in pending(store.db.reads)] == [row]
    done = label(store.db, row, "sales", s, by="ann")
    assert done.lead_id is not None
    c = store.db.reads
    assert tuple(c.execute("SELECT reviewed_label, reviewed_by FROM messages").fetchone()) == (
        "sales",
        "ann",
    )
    correction = c.execute("SELECT source, old_label, new_label, body FROM corrections").fetchone()
    assert tuple(correction)[:3] == ("review", "sales", "sales")
    assert "25 licences" in correction["body"]
    lead = get_lead(c, done.lead_id)
    assert lead is not None
    assert (lead.kind, lead.email, lead.owner, lead.confidence) == (
        "hot",
        "kim@northwind.example",
        "alice",
        1.0,
    )
    assert lead.explanation[0] == "labelled sales in review by ann"
    assert lead.due_at == business_due(arrived, s.leads.response_target_hours, s)
    assert pending_count(c) == 0
    store.close()


def test_review_label_marketing_other_and_mistakes(store: Store, settings: Settings) -> None:
    """marketing → nurture lead; other → no lead; unknown labels, ids, non-review messages and a
    second label are refused."""
    m = store.message("a@x.example", decision="review")
    o = store.message("b@x.example", decision="review")
    sales = store.message("c@x.example", decision="sales")
    marketing = label(store.db, m, "marketing", settings)
    assert marketing.lead_id is not None
    lead = get_lead(store.db.reads, marketing.lead_id)
    assert lead is not None and lead.kind == "nurture" and lead.due_at is None
    assert label(store.db, o, "other", settings).lead_id is None
    with pytest.raises(ReviewError, match="unknown label 'spam'"):
        label(store.db, o, "spam", settings)
    with pytest.raises(ReviewError, match="no message 999"):
        label(store.db, 999, "sales", settings)
    with pytest.raises(ReviewError, match="was not sent to review"):
        label(store.db, sales, "other", settings)
    with pytest.raises(ReviewError, match="already labelled other"):
        label(store.db, o, "sales", settings)
    sources = [r[0] for r in store.db.reads.execute("SELECT source FROM corrections")]
    assert sources == ["review", "review"]


def test_lead_json_is_serialisable(store: Store) -> None:
    """The --json form of a lead holds plain JSON values."""
    from triage.sales.leads import detail_as_dict

    _, lead_id = store.inquiry(JANE)
    data = detail_as_dict(show(store.db, lead_id), datetime.now(UTC))
    assert (
        json.loads(json.dumps(data))["conversation"][0]["body"] == "We need a quote for 40 units."
    )


def test_relabel_makes_the_lead_a_decided_message_lacks_and_never_a_second(
    store: Store, settings: Settings
) -> None:
    """A person's label given in the mailbox (`relabel`, as the correction scan calls it): an
    `other` message relabelled marketing becomes a nurture lead; a message that is already in a
    lead gets no second one; a label without a lead kind makes none. Each records a correction."""
    from triage.sales.review import relabel
    from triage.store.review import get_message

    other = store.message("a@x.example", decision="other")
    sales = store.message("c@x.example", decision="sales")
    with store.db.transaction() as c:
        existing = record_lead(
            c, NewLead(sales, LeadKind.HOT, Contact(email="c@x.example"), "sales", 0.9, ())
        )
    done = {}
    with store.db.transaction() as c:
        for row, new in ((other, "marketing"), (sales, "marketing"), (sales, "other")):
            message = get_message(c, row)
            assert message is not None
            done[(row, new)] = relabel(
                c,
                message,
                new,
                settings,
                old_label=message.current_label,
                source="keyword",
                by="mailbox keyword",
                reason=f"labelled {new} in the mailbox (keyword)",
            )
    made = done[(other, "marketing")]
    assert made.correction_added and made.lead_id is not None
    lead = get_lead(store.db.reads, made.lead_id)
    assert lead is not None
    assert (lead.kind, lead.email, lead.owner, lead.due_at) == ("nurture", "a@x.example", "", None)
    assert lead.explanation[0] == "labelled marketing in the mailbox (keyword)"
    assert done[(sales, "marketing")].lead_id is None
    assert done[(sales, "other")].lead_id is None
    leads = store.db.reads.execute("SELECT id FROM leads ORDER BY id").fetchall()
    assert [r["id"] for r in leads] == [existing, made.lead_id]
    assert store.db.reads.execute("SELECT COUNT(*) FROM corrections").fetchone()[0] == 3
