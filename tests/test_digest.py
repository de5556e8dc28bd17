"""The sales digest and hot-lead alerts without a mail server: what they say, when they are due,
and how each send attempt moves a digest through prepared → sending → sent (or not).

A `FakeSession` stands in for SMTP; `test_digest_mail.py` checks the same against real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.test_leads import JANE, Store, make_settings
from triage.act.outbox import Delivery, Outgoing, recover, stale_claims
from triage.act.smtp import AmbiguousDeliveryError as AmbiguousError
from triage.act.smtp import Refused, dot_stuffed
from triage.core.errors import ConfigError, PermanentError, SendError, TriageError
from triage.core.models import Contact
from triage.core.settings import Settings, SmtpSettings
from triage.sales import digest
from triage.sales.digest import DIGEST, notice_message_id
from triage.sales.leads import claim, update
from triage.store.db import timestamp
from triage.store.digests import instance
from triage.store.leads import get_lead

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

# Mon 13 May 2024, Europe/Berlin (UTC+2): the default schedule "0 8 * * 1-5" fires at 06:00 UTC.
MONDAY_8 = datetime(2024, 5, 13, 6, 0, 30, tzinfo=UTC)
TUESDAY_8 = MONDAY_8 + timedelta(days=1)
FRIDAY_16 = datetime(2024, 5, 10, 14, 0, tzinfo=UTC)
SATURDAY = datetime(2024, 5, 18, 10, 0, tzinfo=UTC)  # no digest slot within 12 hours

KIM = Contact(
    "Kim Park", "kim@northwind.example", "Northwind Traders", "", "https://northwind.test"
)
MARCO = Contact("Marco Rossi", "marco@rossi.example", "Rossi Food S.p.A.", "+39 02 555 0101", "")


class FakeSession:
    """An SMTP session that records what it delivers, or fails at `fail_at` with `error`."""

    def __init__(
        self,
        delivered: list[bytes],
        fail_at: str = "",
        error: TriageError | None = None,
        refuse: Sequence[Refused] = (),
    ) -> None:
        self.delivered = delivered
        self.fail_at = fail_at
        self.error = error
        self.refuse = list(refuse)
        self.raw = b""
        self.recipients: list[str] = []
        self.delivered_to: list[list[str]] = []
        self.aborted = False

    def begin(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> list[Refused]:
        if self.fail_at == "begin" and self.error is not None:
            raise self.error
        self.raw = raw
        self.recipients = list(recipients)
        return self.refuse

    def commit(self) -> None:
        if self.fail_at == "commit" and self.error is not None:
            raise self.error
        self.delivered.append(self.raw)
        self.delivered_to.append(self.recipients)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass


class FakeSmtp:
    """A connector handing out FakeSessions; `failures` are used up one per connection."""

    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.failures: list[tuple[str, TriageError]] = []
        self.sessions: list[FakeSession] = []
        self.refuse: list[Refused] = []  # RCPT refusals of the next session

    def __call__(self, _settings: SmtpSettings) -> FakeSession:
        fail_at, error = self.failures.pop(0) if self.failures else ("", None)
        if fail_at == "connect" and error is not None:
            raise error
        session = FakeSession(self.delivered, fail_at, error, self.refuse)
        self.refuse = []
        self.sessions.append(session)
        return session

    def messages(self) -> list[EmailMessage]:
        out = []
        for raw in self.delivered:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out


def parts(msg: EmailMessage) -> tuple[str, str]:
    """The text and HTML parts of a digest."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return (
        str(text.get_content()).replace("\r\n", "\n"),
        str(html.get_content()).replace("\r\n", "\n"),
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


@pytest.fixture
def smtp() -> FakeSmtp:
    return FakeSmtp()


def seed_week(store: Store) -> list[int]:
    """Three sales inquiries and two marketing ones, on Friday and over the weekend."""
    leads = [
        store.inquiry(
            JANE,
            "Quote for 40 pallet racks",
            "We need a quote for 40 pallet racks, delivered before June. Budget is approved.",
            confidence=0.93,
            explanation=("quote", "budget", "delivered"),
            at=FRIDAY_16,
        )[1],
        store.inquiry(
            KIM,
            "Demo and 25 licences",
            "Could we get a demo and a price for 25 licences?",
            confidence=0.81,
            explanation=("price", "licences", "demo"),
            at=FRIDAY_16 + timedelta(hours=1),
        )[1],
        store.inquiry(
            MARCO,
            "Three cold rooms",
            "We need three cold rooms for our plant in Milan.",
            confidence=0.77,
            explanation=("need", "plant"),
            at=FRIDAY_16 + timedelta(days=1),
        )[1],
    ]
    for n in range(2):
        store.inquiry(
            Contact(f"Reader {n}", f"reader{n}@agency.example", "Agency"),
            "Your brochure",
            "Please send your brochure.",
            decision="marketing",
            explanation=("brochure",),
            at=FRIDAY_16,
        )
    return leads


# --- what the digest says -----------------------------------------------------------------------


def test_digest_lists_exactly_the_new_hot_leads_once(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """Monday's digest lists the three hot leads with contact, snippet, reasons, confidence and
    age in both parts, no nurture lead; Tuesday's lists none of them as new."""
    ids = seed_week(store)
    run = digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is not None
    assert run.delivered == {run.prepared: "sent"}
    assert run.counts == {"new": 3, "overdue": 0, "review": 0, "marketing": 0}
    [msg] = smtp.messages()
    assert msg["Subject"] == "triage digest: 3 new hot leads"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["To"] == "sales@example.test"
    slot = timestamp(datetime(2024, 5, 13, 6, 0, tzinfo=UTC))
    token = instance(store.db.reads)
    assert msg["Message-ID"] == notice_message_id(DIGEST, slot, settings, token)
    text, html = parts(msg)
    for part in (text, html):
        for contact in (JANE, KIM, MARCO):
            assert contact.name in part
            assert contact.email in part
            assert contact.company.replace("&", "&amp;") in part
        assert "+39 02 555 0101" in part
        assert "Budget is approved." in part
        assert "93%" in part and "budget" in part and "licences" in part
        assert "reader0@agency.example" not in part and "Reader 1" not in part
    assert "Age:      2d (received Fri 10 May 16:00" in text
    assert "(2d ago)" in html
    assert all(lead.digested_in == run.prepared for lead in map(_lead(store), ids))

    assert not digest.due(MONDAY_8 + timedelta(minutes=5), store.db, settings)
    again = digest.run_digest_if_due(settings, store.db, TUESDAY_8, connector=smtp)
    assert again.counts["new"] == 0
    text, html = parts(smtp.messages()[1])
    assert "NEW HOT LEADS: 0\nNo new hot leads since the last digest." in text
    assert "No new hot leads since the last digest." in html
    assert JANE.email not in html.split("Overdue, not yet contacted")[0]


def test_a_digest_of_hundreds_of_hot_leads_lists_fifty_and_counts_the_rest(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """300 new hot leads (a long weekend, or an outage): the digest goes out, lists 50 in
    full in both parts, says how many more there are, counts all 300 in the subject and marks
    all 300 reported. (Listed in full it passed the templates' output limit and failed, again
    and again, reporting none.)"""
    body = "We need a quote for pallet racks, delivered before June. Budget is approved. " * 8
    ids = [
        store.inquiry(
            Contact(f"Buyer {n}", f"buyer{n}@firm{n}.example", f"Firm {n} Ltd"),
            f"Quote request {n}",
            body,
            confidence=0.9,
            explanation=("quote", "budget"),
            at=FRIDAY_16 + timedelta(minutes=n),
        )[1]
        for n in range(300)
    ]
    run = digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    assert run.delivered == {run.prepared: "sent"}
    assert run.counts["new"] == 300
    [msg] = smtp.messages()
    assert msg["Subject"] == "triage digest: 300 new hot leads"
    text, html = parts(msg)
    assert "NEW HOT LEADS: 300" in text
    assert "... and 250 more new hot leads, not listed here" in text
    assert "and 250 more new hot leads, not listed here" in html
    for part in (text, html):
        listed = {n for n in range(300) if f"buyer{n}@firm{n}.example" in part}
        assert len(listed) == 50
    assert all(lead.digested_in == run.prepared for lead in map(_lead(store), ids))


def _lead(store: Store) -> Any:
    def get(lead_id: int) -> Any:
        lead = get_lead(store.db.reads, lead_id)
        assert lead is not None
        return lead

    return get


def test_leads_past_their_target_show_as_overdue(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """On Tuesday the unclaimed lead and the claimed-but-not-contacted one are overdue (due
    Monday 12:00 and 13:00); the contacted one is not."""
    jane, kim, marco = seed_week(store)
    digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    claim(store.db, kim, "alice")
    claim(store.db, marco, "bob")
    update(store.db, marco, status="contacted")
    run = digest.run_digest_if_due(settings, store.db, TUESDAY_8, connector=smtp)
    assert run.counts["overdue"] == 2
    text, html = parts(smtp.messages()[1])
    overdue = text.split("OVERDUE, NOT YET CONTACTED: 2")[1].split("WAITING FOR REVIEW")[0]
    assert f"#{jane}  Jane Doe, Doe Logistics GmbH: overdue by 20h, unassigned (new)" in overdue
    assert f"#{kim}  Kim Park, Northwind Traders: overdue by 19h, alice (claimed)" in overdue
    assert "Marco" not in overdue
    section = html.split("Overdue, not yet contacted")[1].split("Waiting for review")[0]
    assert "Jane Doe" in section and "Kim Park" in section and "Marco" not in section
    assert "20h over" in section


def test_review_marketing_and_new_overdue_sections(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """Decisions waiting for review are listed; marketing replies sent since the last digest are
    counted; a new lead already past its target is listed once, as new, marked overdue."""
    store.message("unsure@x.example", "Question", "Is it possible to…", decision="review")
    store.message("done@x.example", "Labelled", "…", decision="review")
    with store.db.transaction() as c:
        c.execute("UPDATE messages SET reviewed_label = 'other' WHERE sender = 'done@x.example'")
    row = store.message("reader@agency.example", decision="marketing")

    def reply(n: int, sent_at: datetime, template: str = "marketing", state: str = "sent") -> None:
        with store.db.transaction() as c:
            c.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at, sent_at)"
                " VALUES (?, ?, 'r@x', '', ?, 'live', ?, ?, '', '', ?)",
                (row, f"<r{n}@x>", template, state, b"", timestamp(sent_at)),
            )

    reply(1, MONDAY_8 - timedelta(days=3))
    digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    reply(2, MONDAY_8 + timedelta(hours=1))
    reply(3, MONDAY_8 + timedelta(hours=2))
    reply(4, MONDAY_8 + timedelta(hours=2), template="sales")
    reply(5, MONDAY_8 + timedelta(hours=2), state="failed")
    store.inquiry(JANE, at=MONDAY_8 - timedelta(days=4))  # due last Thursday
    run = digest.run_digest_if_due(settings, store.db, TUESDAY_8, connector=smtp)
    assert run.counts == {"new": 1, "overdue": 1, "review": 1, "marketing": 2}
    first, second = smtp.messages()
    assert "MARKETING REPLIES SENT: 1" in parts(first)[0]
    text, html = parts(second)
    assert "MARKETING REPLIES SENT: 2" in text
    assert "2 marketing replies sent since the last digest." in html
    assert "WAITING FOR REVIEW: 1\n#" in text and "unsure@x.example: Question" in text
    assert "done@x.example" not in text and "unsure@x.example" in html
    assert "Jane Doe, Doe Logistics GmbH  [OVERDUE by" in text
    assert text.count("Jane Doe") == 1
    assert "No others besides the 1 new lead marked above." in text
    assert "OVERDUE" in html


def test_digest_says_when_the_sending_caps_held_replies_back(
    store: Store, settings: Settings
) -> None:
    """Staff must notice a flood: replies deferred or dropped by the caps since the last digest
    get a line in both parts; without any, the line is absent."""
    quiet = digest.preview(settings, store.db, MONDAY_8)
    assert "HELD BACK" not in quiet.text and "held back" not in quiet.html
    row = store.message("reader@agency.example", decision="sales")
    with store.db.transaction() as c:
        for n, (state, deferrals) in enumerate([("queued", 2), ("expired", 5), ("sent", 1)]):
            c.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at, deferrals)"
                " VALUES (?, ?, 'r@x', '', 'sales', 'live', ?, ?, '', ?, ?)",
                (
                    row,
                    f"<cap{n}@x>",
                    state,
                    b"",
                    timestamp(MONDAY_8 - timedelta(hours=1)),
                    deferrals,
                ),
            )
    rendered = digest.preview(settings, store.db, MONDAY_8)
    assert (
        "REPLIES HELD BACK BY THE SENDING CAPS: 3 deferred (1 still waiting), 1 dropped"
        in rendered.text
    )
    assert "Replies held back by the sending caps: 3 deferred (1 still waiting)" in rendered.html


def test_preview_marks_nothing(store: Store, settings: Settings) -> None:
    """A preview shows the new leads and leaves them new."""
    ids = seed_week(store)
    rendered = digest.preview(settings, store.db, MONDAY_8)
    assert "NEW HOT LEADS: 3" in rendered.text and "Jane Doe" in rendered.html
    assert all(lead.digested_in is None for lead in map(_lead(store), ids))
    assert store.db.reads.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == 0


def test_html_escapes_what_prospects_wrote(store: Store, settings: Settings) -> None:
    """Names, subjects and bodies come from strangers: escaped in HTML, and only http(s)
    websites become links."""
    evil = Contact("<script>alert(1)</script>", "x@evil.example", 'A "B" & C', "", "javascript:x")
    store.inquiry(evil, "<b>hi</b>", "<img src=x onerror=alert(1)>")
    store.inquiry(Contact("Ok", "ok@fine.example", "", "", "www.fine.example"))
    html = digest.preview(settings, store.db, MONDAY_8).html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "A &#34;B&#34; &amp; C" in html
    assert 'href="javascript' not in html and "javascript:x" in html
    assert 'href="https://www.fine.example"' in html


def test_leads_link_to_their_console_page_when_base_url_is_set(
    tmp_path: Path, smtp: FakeSmtp
) -> None:
    """With `web.base_url` each lead of the digest (new and overdue) and of an alert links to
    `{base_url}/leads/{id}` in both parts, escaped in HTML; without it there is no link."""
    base = "https://triage.example.com/sales&co"
    s = make_settings(
        tmp_path,
        web={"base_url": base + "/"},
        leads={"alert_hot": True, "alert_recipients": ("bob@example.test",)},
    )
    store = Store(s)
    old = store.inquiry(JANE, at=MONDAY_8 - timedelta(days=4))[1]  # overdue by Tuesday
    digest.run_digest_if_due(s, store.db, MONDAY_8, connector=smtp)
    _, kim = store.inquiry(KIM, at=MONDAY_8 + timedelta(hours=1))
    digest.run_digest_if_due(s, store.db, MONDAY_8 + timedelta(hours=1, minutes=1), connector=smtp)
    rendered = digest.preview(s, store.db, TUESDAY_8)
    new_part, overdue_part = rendered.text.split("OVERDUE, NOT YET CONTACTED")
    assert f"  Open:     {base}/leads/{kim}\n" in new_part
    assert f"{base}/leads/{old}" in overdue_part.split("WAITING FOR REVIEW")[0]
    escaped = "https://triage.example.com/sales&amp;co"
    assert f'href="{escaped}/leads/{kim}"' in rendered.html
    assert f'href="{escaped}/leads/{old}"' in rendered.html
    assert f'href="{base}' not in rendered.html
    alert = next(m for m in smtp.messages() if m["To"] == "bob@example.test")
    text, html = parts(alert)
    assert f"  Open:     {base}/leads/{kim}" in text
    assert f'href="{escaped}/leads/{kim}"' in html
    store.close()

    plain = make_settings(tmp_path / "plain")
    (tmp_path / "plain").mkdir()
    other = Store(plain)
    other.inquiry(JANE, at=MONDAY_8 - timedelta(hours=1))
    unlinked = digest.preview(plain, other.db, MONDAY_8)
    assert "/leads/" not in unlinked.text and "/leads/" not in unlinked.html
    assert "Open:" not in unlinked.text
    other.close()


# --- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (MONDAY_8, True),
        (MONDAY_8 - timedelta(minutes=1), False),  # Friday's slot is 70 hours old
        (MONDAY_8 + timedelta(hours=11), True),  # still within the 12 hours of grace
        (MONDAY_8 + timedelta(hours=13), False),  # too late: wait for Tuesday
        (datetime(2024, 5, 18, 6, 0, 30, tzinfo=UTC), False),  # Saturday
    ],
)
def test_due_follows_the_schedule_in_the_digest_time_zone(
    store: Store, settings: Settings, now: datetime, expected: bool
) -> None:
    """`0 8 * * 1-5` in Europe/Berlin: due from 08:00 local on weekdays, for up to 12 hours."""
    assert digest.due(now, store.db, settings) is expected


def test_not_due_without_recipients(tmp_path: Path) -> None:
    """No recipients: no digest."""
    s = make_settings(tmp_path, digest={"recipients": ()})
    store = Store(s)
    assert not digest.due(MONDAY_8, store.db, s)
    with pytest.raises(ConfigError, match="recipients is empty"):
        digest.send_now(s, store.db, MONDAY_8)
    store.close()


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("digest", {"schedule": "every morning"}, "not a cron expression"),
        ("digest", {"timezone": "Mars/Olympus"}, "not a known time zone"),
        ("digest", {"subject": "{news} leads"}, "digest.subject"),
        ("digest", {"recipients": ("not an address",)}, "not an address"),
        ("leads", {"business_hours": (9, 25)}, "business_hours"),
    ],
)
def test_check_settings_names_the_bad_setting(
    tmp_path: Path, section: str, values: dict[str, Any], message: str
) -> None:
    """A start-up check that stops a typo before the first digest."""
    with pytest.raises(ConfigError, match=message):
        digest.check_settings(make_settings(tmp_path, **{section: values}))


def test_check_settings_accepts_the_defaults(settings: Settings) -> None:
    digest.check_settings(settings)


# --- exactly once -------------------------------------------------------------------------------


def _state(store: Store, row_id: int) -> tuple[str, int]:
    r = store.db.reads.execute("SELECT state, attempts FROM digests WHERE id = ?", (row_id,))
    state, attempts = r.fetchone()
    return state, attempts


def test_a_refused_send_is_retried_with_the_same_message(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """Server down, then 4xx on the message: the digest stays queued with a jittered backoff,
    the retry sends the very same bytes, and no lead is reported new in a second digest."""
    seed_week(store)
    smtp.failures = [
        ("connect", SendError("connection refused")),
        ("commit", SendError("SMTP message refused: 451 try later")),
    ]
    run = digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is not None
    assert run.delivered == {run.prepared: "queued"}
    assert _state(store, run.prepared) == ("queued", 1)
    # Not before its next attempt (5 s ± 20 % after the first failure).
    assert digest.deliver(settings, store.db, MONDAY_8 + timedelta(seconds=1), connector=smtp) == {}
    later = MONDAY_8 + timedelta(seconds=6)
    assert digest.deliver(settings, store.db, later, connector=smtp) == {run.prepared: "queued"}
    assert _state(store, run.prepared) == ("queued", 2)
    later += timedelta(seconds=13)  # 10 s ± 20 %
    assert digest.deliver(settings, store.db, later, connector=smtp) == {run.prepared: "sent"}
    assert _state(store, run.prepared) == ("sent", 3)
    raw = store.db.reads.execute("SELECT raw FROM digests").fetchone()[0]
    assert smtp.delivered == [raw]
    digest.run_digest_if_due(settings, store.db, TUESDAY_8, connector=smtp)
    assert "NEW HOT LEADS: 0" in parts(smtp.messages()[1])[0]


def test_permanent_refusal_fails_and_ambiguity_is_not_resent(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """5xx: failed. A connection lost after the final dot: uncertain, never sent again."""
    smtp.failures = [("begin", PermanentError("SMTP RCPT TO refused: 550 no such user"))]
    run = digest.send_now(settings, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is not None
    assert _state(store, run.prepared) == ("failed", 1)

    smtp.failures = [("commit", AmbiguousError("connection reset"))]
    run = digest.send_now(settings, store.db, MONDAY_8 + timedelta(hours=1), connector=smtp)
    assert run.prepared is not None
    assert run.delivered[run.prepared] == "uncertain"
    assert digest.deliver(settings, store.db, TUESDAY_8, connector=smtp) == {}
    assert smtp.delivered == []
    assert [s.state for s in digest.status(store.db)] == ["uncertain", "failed"]


def test_a_digest_another_process_claimed_is_not_finished_twice(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """If another sender committed `sending` first, this one drops its connection before the
    final dot (the server discards that copy)."""

    def steal(name: str) -> None:
        if name == "smtp_data_sent":
            with store.db.transaction() as c:
                c.execute("UPDATE digests SET state = 'sending'")

    run = digest.send_now(settings, store.db, MONDAY_8, connector=smtp, checkpoint=steal)
    assert run.prepared is not None
    assert run.delivered == {run.prepared: "taken"}
    assert smtp.sessions[0].aborted
    assert smtp.delivered == []


def test_a_second_sender_failing_before_its_claim_leaves_a_digest_in_flight_alone(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """`triage digest --send` and the daemon send digests at once. While one holds the final
    dot, the other — which read the digest as queued — cannot connect (or is refused with a
    5xx): it leaves the row alone, the first records `sent`, and the digest goes out once."""
    made = digest.prepare_digest(settings, store.db, MONDAY_8, "s1")
    assert made is not None
    other = FakeSmtp()
    seen: list[str] = []

    def other_sender_fails(name: str) -> None:
        if name == "smtp_sending":
            other.failures = [("connect", SendError("connection refused"))]
            items = [
                Outgoing(
                    "digests", made[0], "digest", "t@example.test", ("s@example.test",), b"x", 0
                )
            ]
            Delivery(store.db, settings.smtp).send_batch(items, lambda: other(settings.smtp))
            other.failures = [("begin", PermanentError("SMTP MAIL FROM refused: 550 no"))]
            Delivery(store.db, settings.smtp).send_batch(items, lambda: other(settings.smtp))
            seen.append(_state(store, made[0])[0])

    sent = digest.deliver(
        settings, store.db, MONDAY_8, connector=smtp, checkpoint=other_sender_fails
    )
    assert sent == {made[0]: "sent"}
    assert seen == ["sending"]
    assert _state(store, made[0]) == ("sent", 1)
    assert digest.deliver(settings, store.db, TUESDAY_8, connector=smtp) == {}
    assert len(smtp.delivered) == 1


def test_recover_marks_a_dead_senders_digest_uncertain(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A row left in `sending` by a dead process becomes uncertain once it is older than any
    live send could be (the recovery rule of every outbound mail); logged, not resent."""
    made = digest.prepare_digest(settings, store.db, MONDAY_8, "slot")
    assert made is not None
    with store.db.transaction() as c:
        c.execute("UPDATE digests SET state = 'sending', claimed_at = ?", (timestamp(MONDAY_8),))
    stale = partial(stale_claims, settings.smtp)
    assert recover(store.db, stale(MONDAY_8 + timedelta(seconds=30))) == []
    with caplog.at_level(logging.WARNING, logger="triage.act.outbox"):
        found = recover(store.db, stale(MONDAY_8 + timedelta(minutes=3)))
    assert found == [("digests", made[0])]
    assert "may or may not have been delivered" in caplog.text
    assert _state(store, made[0])[0] == "uncertain"


def test_recipients_refused_at_rcpt_are_retried_or_recorded_failed(tmp_path: Path) -> None:
    """The server accepts one recipient, refuses one for now (4xx) and one for good (5xx): the
    digest is sent to the first, queued again for the second alone — sent to it on the next
    try, never again to the first — and recorded failed for the third (in the outbox list)."""
    from triage.act.outbox import entries

    settings = make_settings(
        tmp_path,
        digest={"recipients": ["sales@example.test", "busy@example.test", "gone@example.test"]},
    )
    store = Store(settings)
    smtp = FakeSmtp()
    smtp.refuse = [
        Refused("busy@example.test", SendError("SMTP RCPT TO <busy> refused: 450 mailbox busy")),
        Refused("gone@example.test", PermanentError("SMTP RCPT TO <gone> refused: 550 no user")),
    ]
    run = digest.send_now(settings, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is not None
    assert run.delivered == {run.prepared: "sent"}
    rows = store.db.reads.execute(
        "SELECT id, state, recipients, error, raw FROM digests ORDER BY id"
    ).fetchall()
    assert [(r["state"], r["recipients"]) for r in rows] == [
        ("sent", '["sales@example.test", "busy@example.test", "gone@example.test"]'),
        ("queued", '["busy@example.test"]'),
        ("failed", '["gone@example.test"]'),
    ]
    assert "450 mailbox busy" in rows[1]["error"] and "550 no user" in rows[2]["error"]
    assert rows[1]["raw"] == rows[0]["raw"]  # the same message, Message-ID and all
    listed = {(e.recipients, e.state) for e in entries(store.db)}
    assert listed == {("busy@example.test", "queued"), ("gone@example.test", "failed")}

    again = digest.deliver(settings, store.db, MONDAY_8 + timedelta(minutes=5), connector=smtp)
    assert again == {rows[1]["id"]: "sent"}
    sent_to = [rcpts for session in smtp.sessions for rcpts in session.delivered_to]
    assert sent_to == [
        ["sales@example.test", "busy@example.test", "gone@example.test"],
        ["busy@example.test"],
    ]
    assert digest.deliver(settings, store.db, TUESDAY_8, connector=smtp) == {}
    store.close()


def test_each_send_records_its_own_time(store: Store, settings: Settings, smtp: FakeSmtp) -> None:
    """Claim and sent times are taken per step, not frozen at the run's start: two alerts and a
    digest sent in one run have distinct claim times, each sent no earlier than claimed."""
    seed_week(store)
    digest.prepare_digest(settings, store.db, MONDAY_8, "s1")
    digest.prepare_digest(settings, store.db, MONDAY_8, "s2")
    sent = digest.deliver(settings, store.db, MONDAY_8, connector=smtp)
    assert set(sent.values()) == {"sent"} and len(sent) == 2
    rows = store.db.reads.execute("SELECT claimed_at, sent_at FROM digests ORDER BY id").fetchall()
    claims = [datetime.fromisoformat(r["claimed_at"]) for r in rows]
    sents = [datetime.fromisoformat(r["sent_at"]) for r in rows]
    assert MONDAY_8 < claims[0] <= sents[0] < claims[1] <= sents[1]


def test_non_ascii_digests_are_seven_bit_on_the_wire(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """A digest with non-ASCII text (a lead's name) goes out 7-bit clean (quoted-printable),
    like replies, so a server without 8BITMIME delivers it intact."""
    store.inquiry(
        Contact("Zoë Müller", "zoe@mueller.example", "Müller Gärten GmbH", "", ""),
        "Angebot für 40 Regale",
        "Wir brauchen ein Angebot für 40 Regale.",
        confidence=0.93,
        at=FRIDAY_16,
    )
    run = digest.send_now(settings, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is not None
    [raw] = smtp.delivered
    assert raw.isascii()
    assert "Zoë Müller" in parts(smtp.messages()[0])[0]


def test_a_slot_is_prepared_only_once(store: Store, settings: Settings, tmp_path: Path) -> None:
    """Preparing the same slot again does nothing (the slot is unique); another database (a
    staging copy, a reinstall) gives the same slot another Message-ID."""
    assert digest.prepare_digest(settings, store.db, MONDAY_8, "s1") is not None
    assert digest.prepare_digest(settings, store.db, MONDAY_8, "s1") is None
    other = Store(make_settings(tmp_path / "other"))
    assert digest.prepare_digest(other.settings, other.db, MONDAY_8, "s1") is not None
    ids = [
        s.db.reads.execute("SELECT message_id FROM digests").fetchone()[0] for s in (store, other)
    ]
    assert ids[0] != ids[1]
    other.close()


def test_send_now_refuses_while_an_earlier_digest_waits(
    store: Store, settings: Settings, smtp: FakeSmtp
) -> None:
    """A manual digest is not prepared while a scheduled one is still waiting to be sent."""
    smtp.failures = [("connect", SendError("connection refused"))]
    digest.run_digest_if_due(settings, store.db, MONDAY_8, connector=smtp)
    smtp.failures = [("connect", SendError("still down"))]
    with pytest.raises(SendError, match="still waiting to be sent"):
        digest.send_now(settings, store.db, MONDAY_8 + timedelta(minutes=1), connector=smtp)
    assert store.db.reads.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == 1


def test_a_broken_template_is_logged_and_retried_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, smtp: FakeSmtp
) -> None:
    """The daemon's loop goes on: nothing is marked, the error is logged, and the digest is
    tried again ten minutes later."""
    templates = tmp_path / "templates"
    (templates / "digest").mkdir(parents=True)
    source = Path(__file__).resolve().parents[1] / "templates" / "digest"
    for f in source.iterdir():
        (templates / "digest" / f.name).write_text(f.read_text())
    (templates / "digest" / "digest.txt").write_text("{{ no_such_variable }}")
    s = make_settings(tmp_path, replies={"templates_dir": str(templates)})
    store = Store(s)
    [lead, *_] = seed_week(store)
    with caplog.at_level(logging.ERROR, logger="triage.sales.digest"):
        run = digest.run_digest_if_due(s, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is None
    assert "digest.txt" in caplog.text and "no_such_variable" in caplog.text
    assert _lead(store)(lead).digested_in is None
    assert not digest.due(MONDAY_8 + timedelta(minutes=5), store.db, s)
    (templates / "digest" / "digest.txt").write_text("fixed {{ subject }}")
    run = digest.run_digest_if_due(s, store.db, MONDAY_8 + timedelta(minutes=11), connector=smtp)
    assert run.prepared is not None and smtp.delivered
    store.close()


# --- alerts -------------------------------------------------------------------------------------


def test_each_hot_lead_is_alerted_once(tmp_path: Path, smtp: FakeSmtp) -> None:
    """With alert_hot, every new hot lead gets one alert to alert_recipients; nurture leads and
    a second run get none."""
    s = make_settings(
        tmp_path, leads={"alert_hot": True, "alert_recipients": ("bob@example.test",)}
    )
    store = Store(s)
    now = SATURDAY
    _, jane = store.inquiry(JANE, "Quote", "We need 40 racks.", at=now - timedelta(minutes=5))
    store.inquiry(Contact("", "r@agency.example"), decision="marketing", at=now)
    run = digest.run_digest_if_due(s, store.db, now, connector=smtp)
    assert run.prepared is None
    assert list(run.delivered.values()) == ["sent"]
    [alert] = smtp.messages()
    assert alert["To"] == "bob@example.test"
    assert alert["Subject"] == f"Hot lead #{jane}: Jane Doe (Doe Logistics GmbH)"
    assert alert["Auto-Submitted"] == "auto-generated"
    text, html = parts(alert)
    assert "We need 40 racks." in text and "jane@doe.example" in html
    assert _lead(store)(jane).alerted_at is not None
    assert (
        digest.run_digest_if_due(s, store.db, now + timedelta(minutes=1), connector=smtp).delivered
        == {}
    )
    assert len(smtp.delivered) == 1
    store.close()


def test_no_alerts_unless_enabled(store: Store, settings: Settings, smtp: FakeSmtp) -> None:
    store.inquiry(JANE, at=SATURDAY - timedelta(hours=1))
    run = digest.run_digest_if_due(settings, store.db, SATURDAY, connector=smtp)
    assert run.delivered == {}


# --- SMTP details -------------------------------------------------------------------------------


def test_dot_stuffing() -> None:
    """CRLF line ends, a leading dot doubled, a final CRLF — but no final dot."""
    assert dot_stuffed(b"a\n.b\r\n..c\rd") == b"a\r\n..b\r\n...c\r\nd\r\n"
    assert dot_stuffed(b"x\r\n") == b"x\r\n"


def test_a_bad_schedule_does_not_stop_the_daemon_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, smtp: FakeSmtp
) -> None:
    """A schedule croniter cannot read is logged (and check_settings names it); the step
    returns instead of raising into the daemon's loop."""
    s = make_settings(tmp_path, digest={"schedule": "0 8 * * mon-xyz"})
    store = Store(s)
    with caplog.at_level(logging.ERROR, logger="triage.sales.digest"):
        run = digest.run_digest_if_due(s, store.db, MONDAY_8, connector=smtp)
    assert run.prepared is None and smtp.delivered == []
    assert "digest.schedule" in caplog.text
    store.close()
