"""The console's sales pages: the lead queue, a lead page and its actions, over HTTP.

Every route is checked without a login, as sales and as admin, and without the CSRF token; each
action is checked by what the store holds afterwards (status, owner, notes, corrections, audit
entries); a refusal shows the same words as `triage leads …`; and what a prospect wrote is text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from tests import web_support
from tests.test_leads import JANE
from tests.web_support import ConsoleFixture
from triage.core.models import Contact
from triage.store import audit
from triage.store.leads import LeadRecord, get_lead
from triage.store.outbox import insert_reply

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

console = web_support.console  # the fixture
ACTIONS = {
    "claim": {},
    "assign": {"to": "ada"},
    "status": {"status": "dismissed"},
    "note": {"note": "called"},
    "not-a-lead": {},
    "relabel": {"label": "marketing"},
}
HOSTILE = Contact(
    "<script>alert(1)</script>",
    "evil@attacker.example",
    "<img src=x onerror=alert(1)>",
    "",
    "javascript:alert(1)",
)


def lead(console: ConsoleFixture, lead_id: int) -> LeadRecord:
    found = get_lead(console.store.db.reads, lead_id)
    assert found is not None
    return found


def actions_of(console: ConsoleFixture, lead_id: int) -> list[tuple[str, str]]:
    """(actor, action) of every audit entry about the lead, oldest first."""
    return [(e.actor, e.action) for e in audit.for_target(console.store.db.reads, "lead", lead_id)]


def corrections(console: ConsoleFixture) -> list[tuple[str, str]]:
    rows = console.store.db.reads.execute(
        "SELECT new_label, source FROM corrections ORDER BY id"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def login_as(console: ConsoleFixture, name: str) -> str:
    console.client.cookies.clear()
    return console.login(name)


# --- access --------------------------------------------------------------------------------------


def test_the_lead_pages_need_a_login(console: ConsoleFixture) -> None:
    """Without a session the pages redirect to /login (coming back after it) and every action
    is refused; nothing changes."""
    _, jane = console.store.inquiry(JANE)
    for url in ("/leads", f"/leads/{jane}", "/leads?status=all&q=x"):
        response = console.client.get(url, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=%2Fleads")
    for name, data in ACTIONS.items():
        response = console.client.post(f"/leads/{jane}/{name}", data=data, follow_redirects=False)
        assert response.status_code == 401
    assert lead(console, jane).status == "new"
    assert actions_of(console, jane) == []


@pytest.mark.parametrize("user", ["sam", "ada"])
def test_sales_and_admins_see_the_queue_and_a_lead(console: ConsoleFixture, user: str) -> None:
    """Both roles use the sales pages."""
    _, jane = console.store.inquiry(JANE)
    login_as(console, user)
    queue = console.client.get("/leads")
    assert queue.status_code == 200
    assert f'href="/leads/{jane}"' in queue.text and "Jane Doe" in queue.text
    page = console.client.get(f"/leads/{jane}")
    assert page.status_code == 200 and "Doe Logistics GmbH" in page.text


@pytest.mark.parametrize("name", list(ACTIONS))
def test_every_action_needs_the_csrf_token(console: ConsoleFixture, name: str) -> None:
    """A POST without the session's token (or with a wrong one) is refused with 403."""
    _, jane = console.store.inquiry(JANE)
    console.login("sam")
    data = ACTIONS[name]
    assert console.client.post(f"/leads/{jane}/{name}", data=data).status_code == 403
    forged = {**data, "csrf_token": "forged"}
    assert console.client.post(f"/leads/{jane}/{name}", data=forged).status_code == 403
    assert lead(console, jane).status == "new"
    assert actions_of(console, jane) == [] and corrections(console) == []


def test_an_unknown_lead_is_404(console: ConsoleFixture) -> None:
    token = console.login("sam")
    assert console.client.get("/leads/999").status_code == 404
    response = console.post("/leads/999/claim", {}, token)
    assert response.status_code == 404 and "no lead 999" in response.text


# --- the queue -----------------------------------------------------------------------------------


def test_the_queue_filters_searches_and_sorts(console: ConsoleFixture) -> None:
    """Open leads of both kinds by default, newest activity first; status, kind, owner, overdue
    and a search over name, address, company and subject narrow it; due first sorts by due."""
    old = datetime.now(UTC) - timedelta(days=10)
    _, late = console.store.inquiry(JANE, "Racks", at=old)  # long overdue
    _, fresh = console.store.inquiry(
        Contact("Kim Park", "kim@northwind.example", "Northwind", "", ""), "Pallet quote"
    )
    _, reader = console.store.inquiry(
        Contact("", "reader@agency.example"), "Brochure please", decision="marketing"
    )
    console.store.inquiry(Contact("Gone", "gone@x.example"), "Old")
    console.login("sam")
    console.post(f"/leads/{fresh}/claim", {}, console.login("sam"))
    with console.store.db.transaction() as c:
        c.execute("UPDATE leads SET status = 'won' WHERE email = 'gone@x.example'")

    def ids(query: str) -> list[int]:
        response = console.client.get("/leads" + query)
        assert response.status_code == 200, response.text
        return [int(part.split('"')[0]) for part in response.text.split('<a href="/leads/')[1::2]]

    assert ids("") == [fresh, reader, late]  # newest activity first; the won lead is closed
    assert ids("?sort=due") == [late, fresh, reader]  # no due time (nurture) last
    assert ids("?kind=nurture") == [reader]
    assert ids("?status=claimed") == [fresh]
    assert ids("?owner=sam") == [fresh]
    assert ids("?owner=-") == [reader, late]
    assert ids("?overdue=1") == [late]
    assert ids("?q=northwind") == [fresh]  # company
    assert ids("?q=READER%40agency") == [reader]  # address, any case
    assert ids("?q=brochure") == [reader]  # subject of a message
    assert ids("?q=100%25") == []  # % is a character, not a wildcard
    assert len(ids("?status=all")) == 4
    page = console.client.get("/leads")
    row = page.text.split(f'<a href="/leads/{late}">#{late}</a>')[1].split("</tr>")[0]
    assert "OVERDUE" in row
    refused = console.client.get("/leads?status=closed")
    assert refused.status_code == 400
    assert "unknown status &#39;closed&#39;; one of: new, claimed" in refused.text


def test_the_queue_pages_fifty_leads_at_a_time(console: ConsoleFixture) -> None:
    for n in range(51):
        console.store.inquiry(Contact(f"P{n}", f"p{n}@x.example"), f"Subject {n}")
    console.login("sam")
    first = console.client.get("/leads")
    assert "51 leads, page 1 of 2" in first.text
    assert first.text.count('<tr>\n      <td><a href="/leads/') == 50
    assert 'href="/leads?status=open&amp;sort=activity&amp;page=2"' in first.text
    second = console.client.get("/leads?status=open&sort=activity&page=2")
    assert second.text.count('<tr>\n      <td><a href="/leads/') == 1
    assert ">P0<" in second.text  # the oldest activity comes last


# --- a lead page ---------------------------------------------------------------------------------


def composed_reply(subject: str, text: str) -> bytes:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "hello@example.test"
    message["To"] = JANE.email
    message.set_content(text)
    message.add_alternative(f"<p>{text}</p><script>never()</script>", subtype="html")
    return message.as_bytes()


def test_a_lead_page_shows_contact_why_messages_reply_notes_and_timeline(
    console: ConsoleFixture,
) -> None:
    row, jane = console.store.inquiry(
        JANE, "Quote for 40 racks", "We need 40 racks.\nBy June.", explanation=("quote", "racks")
    )
    with console.store.db.transaction() as c:
        c.execute("UPDATE messages SET reasons = ? WHERE id = ?", ('["sender authenticated"]', row))
        insert_reply(
            c,
            message_row=row,
            reply_message_id="<reply1@example.test>",
            recipient=JANE.email,
            envelope_from="hello@example.test",
            template="sales",
            mode="live",
            state="sent",
            raw=composed_reply("Re: Quote for 40 racks", "Thank you, we answer within 4 hours."),
            now=datetime.now(UTC),
            recipient_key=JANE.email,
            recipient_domain="doe.example",
            priority=0,
        )
    token = console.login("sam")
    console.post(f"/leads/{jane}/claim", {}, token)
    console.post(f"/leads/{jane}/note", {"note": "Called, <b>keen</b>"}, token)
    page = console.client.get(f"/leads/{jane}").text
    for shown in (
        "Jane Doe",
        f'href="mailto:{JANE.email}"',
        "Doe Logistics GmbH",
        "+49 30 1234",
        'href="https://doe.example"',
        "Label <strong>sales</strong>, 90% confident",
        ">quote<",
        ">racks<",
        "sender authenticated",
        "We need 40 racks.\nBy June.",
        "Re: Quote for 40 racks",
        "Thank you, we answer within 4 hours.",
        "Template sales",
        "Called, &lt;b&gt;keen&lt;/b&gt;",
        "<strong>sam</strong> claimed it",
        "<strong>sam</strong> added a note",
        "hot lead created",
    ):
        assert shown in page, shown
    assert "never()" not in page  # the reply's text part, never its HTML


def test_every_action_button_is_a_real_button_in_a_form(console: ConsoleFixture) -> None:
    """Keyboard use: each action is a submit button inside a POST form with the CSRF token."""
    _, jane = console.store.inquiry(JANE)
    console.login("sam")
    page = console.client.get(f"/leads/{jane}").text
    for name, button in (
        ("claim", "Claim this lead"),
        ("status", "Set status"),
        ("assign", "Assign"),
        ("note", "Add note"),
        ("not-a-lead", "Not a lead"),
        ("relabel", "Wrong label → marketing"),
    ):
        form = page.split(f'action="/leads/{jane}/{name}"')[1].split("</form>")[0]
        assert 'name="csrf_token"' in form
        assert '<button type="submit"' in form and button in form, name


# --- actions -------------------------------------------------------------------------------------


def test_claim_then_another_claim_is_refused_with_the_cli_words(console: ConsoleFixture) -> None:
    _, jane = console.store.inquiry(JANE)
    token = console.login("sam")
    response = console.post(f"/leads/{jane}/claim", {}, token)
    assert response.status_code == 303
    assert response.headers["location"] == f"/leads/{jane}?done=claim"
    assert (lead(console, jane).status, lead(console, jane).owner) == ("claimed", "sam")
    assert actions_of(console, jane) == [("sam", "lead.claim")]
    assert "You claimed this lead." in console.client.get(response.headers["location"]).text

    token = login_as(console, "ada")
    refused = console.post(f"/leads/{jane}/claim", {}, token)
    assert refused.status_code == 409
    assert f"lead {jane} is already claimed by sam" in refused.text
    assert lead(console, jane).owner == "sam"
    assert actions_of(console, jane) == [("sam", "lead.claim")]


def test_assign_gives_the_lead_to_a_colleague(console: ConsoleFixture) -> None:
    """The select offers the console's users and `leads.staff`; the status stays."""
    _, jane = console.store.inquiry(JANE)
    token = console.login("sam")
    page = console.client.get(f"/leads/{jane}").text
    assert '<option value="ada">' in page and '<option value="sam">' in page
    response = console.post(f"/leads/{jane}/assign", {"to": "ada"}, token)
    assert response.status_code == 303
    assert (lead(console, jane).status, lead(console, jane).owner) == ("new", "ada")
    [entry] = audit.for_target(console.store.db.reads, "lead", jane)
    assert (entry.actor, entry.action, entry.detail["to"]) == ("sam", "lead.assign", "ada")
    refused = console.post(f"/leads/{jane}/assign", {"to": "mallory"}, token)
    assert refused.status_code == 409 and "unknown colleague &#39;mallory&#39;" in refused.text
    assert lead(console, jane).owner == "ada"


def test_status_follows_the_workflow_and_refuses_with_the_cli_words(
    console: ConsoleFixture,
) -> None:
    _, jane = console.store.inquiry(JANE)
    token = console.login("sam")
    refused = console.post(f"/leads/{jane}/status", {"status": "won"}, token)
    assert refused.status_code == 409
    assert (
        f"lead {jane} is new; it can become claimed or dismissed, not won; "
        f"claim it first: triage leads claim {jane} --by NAME" in refused.text
    )
    assert lead(console, jane).status == "new" and actions_of(console, jane) == []
    for status in ("claimed", "contacted", "won"):
        response = console.post(f"/leads/{jane}/status", {"status": status}, token)
        assert response.status_code == 303, response.text
    assert (lead(console, jane).status, lead(console, jane).owner) == ("won", "sam")
    assert actions_of(console, jane) == [("sam", "lead.status")] * 3
    assert corrections(console) == [("sales", "won")]
    final = console.post(f"/leads/{jane}/status", {"status": "lost"}, token)
    assert final.status_code == 409 and f"lead {jane} is won, which is final" in final.text


def test_a_note_is_added_by_the_user(console: ConsoleFixture) -> None:
    _, jane = console.store.inquiry(JANE)
    token = console.login("sam")
    assert (
        console.post(f"/leads/{jane}/note", {"note": " Left a voicemail "}, token).status_code
        == 303
    )
    rows = console.store.db.reads.execute(
        "SELECT author, text FROM lead_notes WHERE lead_id = ?", (jane,)
    ).fetchall()
    assert [tuple(r) for r in rows] == [("sam", "Left a voicemail")]
    assert actions_of(console, jane) == [("sam", "lead.note")]
    empty = console.post(f"/leads/{jane}/note", {"note": "  "}, token)
    assert empty.status_code == 409 and "nothing to update" in empty.text


def test_not_a_lead_dismisses_and_records_a_correction(console: ConsoleFixture) -> None:
    _, jane = console.store.inquiry(JANE)
    token = console.login("sam")
    assert console.post(f"/leads/{jane}/not-a-lead", {}, token).status_code == 303
    assert lead(console, jane).status == "dismissed"
    assert corrections(console) == [("other", "not-a-lead")]
    assert actions_of(console, jane) == [("sam", "lead.status"), ("sam", "lead.relabel")]


def test_wrong_label_records_the_right_one(console: ConsoleFixture) -> None:
    """The same store function as `triage review label` and `triage leads relabel` records it;
    the status stays; labelling it with its own label is refused."""
    _, jane = console.store.inquiry(JANE)
    token = console.login("ada")
    assert console.post(f"/leads/{jane}/relabel", {"label": "marketing"}, token).status_code == 303
    assert lead(console, jane).status == "new"
    assert corrections(console) == [("marketing", "relabel")]
    [entry] = audit.for_target(console.store.db.reads, "lead", jane)
    assert (entry.actor, entry.action, entry.detail["label"]) == (
        "ada",
        "lead.relabel",
        "marketing",
    )
    same = console.post(f"/leads/{jane}/relabel", {"label": "sales"}, token)
    assert same.status_code == 409 and f"lead {jane} is already labelled sales" in same.text


# --- what prospects wrote ------------------------------------------------------------------------


def test_hostile_prospect_text_is_shown_as_text(console: ConsoleFixture) -> None:
    _, evil = console.store.inquiry(
        HOSTILE,
        "<script>alert(1)</script> quote",
        'Click <a href="javascript:alert(1)">here</a> <img src=x onerror=alert(1)>',
        explanation=("<script>alert(2)</script>",),
    )
    console.login("sam")
    for url in ("/leads", f"/leads/{evil}", "/leads?q=%3Cscript%3E"):
        html = console.client.get(url).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
        assert "<script>alert" not in html and "<img src=x" not in html, url
        assert 'href="javascript:' not in html, url
    page = console.client.get(f"/leads/{evil}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "javascript:alert(1)" in page  # the website as text, not as a link


def test_a_lead_page_shows_a_bounded_number_of_messages(console: ConsoleFixture) -> None:
    """Anyone can send one address's lead any number of messages: its page shows the latest
    PAGE_MESSAGES (newest included, oldest left out) and says how many there are."""
    from triage.sales.leads import PAGE_MESSAGES

    lead_ids = {
        console.store.inquiry(JANE, f"Message number {n:03d}", f"Text of message {n:03d}.")[1]
        for n in range(PAGE_MESSAGES + 5)
    }
    [lead_id] = lead_ids
    console.login("sam")
    page = console.client.get(f"/leads/{lead_id}")
    assert page.status_code == 200
    assert f"Conversation ({PAGE_MESSAGES + 5})" in page.text
    assert f"The latest {PAGE_MESSAGES} of {PAGE_MESSAGES + 5} messages" in page.text
    assert page.text.count('<article class="card">') >= PAGE_MESSAGES
    assert f"Message number {PAGE_MESSAGES + 4:03d}" in page.text
    assert "Message number 004" not in page.text and "Message number 005" in page.text
