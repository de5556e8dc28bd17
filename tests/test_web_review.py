"""The console's review queue over HTTP: each item with its text, probabilities and explanation;
one button per label; a sales label makes the hot lead at once, as `triage review label` does."""

from __future__ import annotations

import json

import pytest

from tests import web_support
from tests.web_support import ConsoleFixture
from triage.store import audit

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

console = web_support.console  # the fixture


def review_item(
    console: ConsoleFixture,
    sender: str = "unsure@prospect.example",
    subject: str = "Question about pricing",
    body: str = "Could you tell me what 40 units would cost?",
) -> int:
    row = console.store.message(
        sender, subject, body, decision="review", guess="sales", confidence=0.52
    )
    with console.store.db.transaction() as c:
        c.execute(
            "UPDATE messages SET probabilities = ?, explanation = ? WHERE id = ?",
            (
                json.dumps({"sales": 0.52, "marketing": 0.41, "other": 0.07}),
                json.dumps(["cost", "units"]),
                row,
            ),
        )
    return row


def reviewed(console: ConsoleFixture, row: int) -> tuple[str | None, str | None]:
    found = console.store.db.reads.execute(
        "SELECT reviewed_label, reviewed_by FROM messages WHERE id = ?", (row,)
    ).fetchone()
    return found[0], found[1]


def test_the_review_page_needs_a_login(console: ConsoleFixture) -> None:
    row = review_item(console)
    response = console.client.get("/review", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=%2Freview"
    posted = console.client.post(f"/review/{row}/label", data={"label": "sales"})
    assert posted.status_code == 401
    assert reviewed(console, row) == (None, None)


@pytest.mark.parametrize("user", ["sam", "ada"])
def test_each_item_shows_text_probabilities_explanation_and_buttons(
    console: ConsoleFixture, user: str
) -> None:
    row = review_item(console)
    console.login(user)
    page = console.client.get("/review")
    assert page.status_code == 200
    html = page.text
    assert "Review (1)" in html
    assert "Question about pricing" in html and "unsure@prospect.example" in html
    assert "Could you tell me what 40 units would cost?" in html
    assert "sales 52%" in html and "marketing 41%" in html and "other 7%" in html
    assert ">cost<" in html and ">units<" in html
    for label in ("sales", "marketing", "other"):
        form = html.split(f'action="/review/{row}/label"')
        assert any(f'value="{label}"' in part.split("</form>")[0] for part in form[1:]), label
        assert '<button type="submit"' in html and f"Label {label}</button>" in html


def test_labelling_needs_the_csrf_token(console: ConsoleFixture) -> None:
    row = review_item(console)
    console.login("sam")
    assert console.client.post(f"/review/{row}/label", data={"label": "sales"}).status_code == 403
    assert reviewed(console, row) == (None, None)


def test_a_sales_label_makes_the_hot_lead_at_once(console: ConsoleFixture) -> None:
    row = review_item(console)
    token = console.login("sam")
    response = console.post(f"/review/{row}/label", {"label": "sales"}, token)
    assert response.status_code == 303
    assert reviewed(console, row) == ("sales", "sam")
    lead = console.store.db.reads.execute(
        "SELECT l.id, l.kind, l.status FROM leads l JOIN lead_messages lm ON lm.lead_id = l.id"
        " WHERE lm.message_row = ?",
        (row,),
    ).fetchone()
    assert (lead["kind"], lead["status"]) == ("hot", "new")
    assert response.headers["location"] == f"/review?labelled={row}&label=sales&lead={lead['id']}"
    correction = console.store.db.reads.execute(
        "SELECT new_label, source FROM corrections WHERE message_row = ?", (row,)
    ).fetchone()
    assert tuple(correction) == ("sales", "review")
    [entry] = audit.for_target(console.store.db.reads, "message", row)
    assert (entry.actor, entry.action, entry.detail["label"], entry.detail["lead"]) == (
        "sam",
        "review.label",
        "sales",
        lead["id"],
    )
    after = console.client.get(response.headers["location"]).text
    assert f"message {row} labelled sales; lead {lead['id']}" in after
    assert f'href="/leads/{lead["id"]}"' in after
    assert "Nothing waits for review." in after


def test_other_makes_no_lead_and_a_second_label_is_refused(console: ConsoleFixture) -> None:
    row = review_item(console)
    token = console.login("ada")
    response = console.post(f"/review/{row}/label", {"label": "other"}, token)
    assert response.headers["location"] == f"/review?labelled={row}&label=other"
    assert console.store.db.reads.execute("SELECT COUNT(*) FROM leads").fetchone()[0] == 0
    again = console.post(f"/review/{row}/label", {"label": "sales"}, token)
    assert again.status_code == 409
    assert f"message {row} is already labelled other by ada" in again.text
    unknown = console.post(f"/review/{row}/label", {"label": "spam"}, token)
    assert unknown.status_code == 409
    assert "unknown label &#39;spam&#39;; one of: sales, marketing, other" in unknown.text
    assert reviewed(console, row) == ("other", "ada")


def test_hostile_text_in_review_is_escaped(console: ConsoleFixture) -> None:
    review_item(
        console,
        sender="<script>alert(1)</script>@x.example",
        subject="<script>alert(1)</script>",
        body='<img src=x onerror=alert(1)> <a href="javascript:alert(1)">x</a>',
    )
    console.login("sam")
    html = console.client.get("/review").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert 'href="javascript:' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
