"""The console's acceptance in a real browser, over a store filled by real mail.

Inquiries go through the harness's Postfix into Dovecot; `triage once` (the daemon's pass)
records them, makes the leads and sends the replies through Postfix; `triage web` runs as a
real process over the same store; Debian's chromium, driven by Playwright, does what a person
would:
- sales logs in, sees the hot lead that just arrived, claims it, sets `contacted` with a note:
  the store holds it (with the audit trail) and the next digest shows it claimed;
- a review item labelled `sales` in the browser becomes a hot lead;
- an admin saves `sales.txt` with a syntax error: the error and its line are shown and nothing
  is saved; the fixed text is saved and the next real reply through Postfix carries it; rollback
  restores the old text;
- an inquiry whose subject, name and body carry `<script>`, `<img onerror>` and `javascript:`
  links is shown as text on every page: no dialog opens, no injected element exists;
- a keyboard is enough to open a lead and claim it.

With TRIAGE_SCREENSHOTS=1 these runs also write the console's pictures in docs/screenshots/.
"""

from __future__ import annotations

import email.policy
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, localtime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devtools.mailharness import MailHarness
from tests.browser import (
    ROOT,
    add_users,
    log_in,
    screenshot,
    start_web,
    tab_to,
)
from tests.mailtools import config_for, inquiry, replies_in, triage
from tests.web_support import PASSWORD
from triage.core.settings import load_settings

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Page

pytestmark = pytest.mark.mail

HELLO = "hello@example.test"
DIGEST = """
[digest]
recipients = ["sales@example.test"]
from_address = "noreply@example.test"
timezone = "UTC"

[web]
base_url = "http://127.0.0.1:8025"
"""
# Every decision below the model's confidence: each message waits for a person.
ALL_TO_REVIEW = """
[classifier]
thresholds = { sales = 0.99999, marketing = 0.99999, other = 0.99999 }
"""
DECISIONS = ("sales", "marketing", "other", "review")
COUNT = 20  # corpus messages for the dashboard
MARKER = "P.S. Our new price list comes with your quote."


@dataclass
class Live:
    """Mail servers, the daemon's config and store, and the console over that store."""

    harness: MailHarness
    base: Path
    config: Path
    templates: Path
    url: str
    delivered: int = 0

    def deliver(self, sender: str, raw: bytes) -> None:
        """One message to hello@ through Postfix, waited for in Dovecot, then the daemon's pass
        (which records it and sends any reply through Postfix)."""
        self.harness.send(raw, sender, HELLO)
        self.delivered += 1
        self.harness.wait_for_messages("hello", count=self.delivered, timeout=60)
        result = triage(self.config, "once")
        assert result.returncode == 0, result.stderr

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.base / "triage.db", timeout=30)
        conn.row_factory = sqlite3.Row
        return conn


def _live(harness: MailHarness, tmp_path: Path, extra: str = "") -> Iterator[Live]:
    base = tmp_path / "live"
    config = config_for(harness, base, DIGEST + extra)
    templates = base / "templates"
    shutil.copytree(ROOT / "templates", templates)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("[replies]\n", f'[replies]\ntemplates_dir = "{templates}"\n', 1),
        encoding="utf-8",
    )
    first = triage(config, "once")  # the first start records the (empty) baseline
    assert first.returncode == 0, first.stderr
    add_users(load_settings(config, environ={}))
    with start_web(config) as server:
        yield Live(harness, base, config, templates, server.url)


@pytest.fixture
def live(clean_mail: MailHarness, tmp_path: Path) -> Iterator[Live]:
    yield from _live(clean_mail, tmp_path)


@pytest.fixture
def live_review(clean_mail: MailHarness, tmp_path: Path) -> Iterator[Live]:
    yield from _live(clean_mail, tmp_path, ALL_TO_REVIEW)


def _lead(live: Live, email_address: str) -> sqlite3.Row:
    with live.db() as conn:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM leads WHERE email = ?", (email_address,)
        ).fetchone()
    assert row is not None, f"no lead for {email_address}"
    return row


def test_sales_claims_the_new_hot_lead_and_notes_the_call(live: Live, page: Page) -> None:
    live.deliver("alice@example.test", inquiry("alice@example.test", HELLO, 40, "Alice Moreau"))
    lead = _lead(live, "alice@example.test")
    assert (lead["kind"], lead["status"]) == ("hot", "new")

    log_in(page, live.url, "sam")
    page.goto(f"{live.url}/leads")
    row = page.locator("table.leads tbody tr", has_text="Alice Moreau")
    assert row.count() == 1
    assert "Quote request for 40 pallets" in row.inner_text()
    row.get_by_role("link", name="Alice Moreau").click()
    page.wait_for_url(f"{live.url}/leads/{lead['id']}")
    assert "we need a quote for 40 pallets" in page.locator("main").inner_text()
    screenshot(page, "lead")

    page.get_by_role("button", name="Claim this lead").click()
    page.wait_for_load_state()
    page.select_option("select[name=status]", "contacted")
    page.get_by_role("button", name="Set status").click()
    page.wait_for_load_state()
    page.fill("textarea[name=note]", "Called Alice: the quote goes out today.")
    page.get_by_role("button", name="Add note").click()
    page.wait_for_load_state()
    assert "Called Alice: the quote goes out today." in page.locator("main").inner_text()

    lead = _lead(live, "alice@example.test")
    assert (lead["status"], lead["owner"]) == ("contacted", "sam")
    with live.db() as conn:
        notes = [r["text"] for r in conn.execute("SELECT text FROM lead_notes")]
        trail = [
            (r["actor"], r["action"])
            for r in conn.execute("SELECT actor, action FROM audit WHERE target_kind = 'lead'")
        ]
    assert "Called Alice: the quote goes out today." in notes
    assert trail == [("sam", "lead.claim"), ("sam", "lead.status"), ("sam", "lead.note")]

    sent = triage(live.config, "digest", "--send")
    assert sent.returncode == 0, sent.stderr
    [digest] = _inbox(live.harness, "sales", 1)
    text = _text(digest)
    assert "Alice Moreau" in text
    assert "Owner:    sam (contacted)" in text


def test_a_review_item_labelled_sales_in_the_browser_becomes_a_hot_lead(
    live_review: Live, page: Page
) -> None:
    live = live_review
    live.deliver("carol@example.test", inquiry("carol@example.test", HELLO, 12, "Carol Buyer"))
    with live.db() as conn:
        assert [r[0] for r in conn.execute("SELECT decision FROM messages")] == ["review"]
        assert conn.execute("SELECT COUNT(*) FROM leads").fetchone()[0] == 0

    log_in(page, live.url, "sam")
    page.goto(f"{live.url}/review")
    assert "Quote request for 12 pallets" in page.locator("main").inner_text()
    page.get_by_role("button", name="Label sales").first.click()
    page.wait_for_load_state()
    assert "labelled sales" in page.locator("main").inner_text()

    lead = _lead(live, "carol@example.test")
    assert (lead["kind"], lead["status"], lead["label"]) == ("hot", "new", "sales")
    with live.db() as conn:
        assert conn.execute("SELECT COUNT(*) FROM lead_messages").fetchone()[0] == 1
        [correction] = conn.execute("SELECT new_label, source FROM corrections").fetchall()
        assert tuple(correction) == ("sales", "review")


def test_an_admin_edits_the_sales_reply_and_rolls_it_back(live: Live, page: Page) -> None:
    path = live.templates / "sales.txt"
    original = path.read_text(encoding="utf-8")
    log_in(page, live.url, "ada")
    page.goto(f"{live.url}/templates/edit?file=sales.txt")

    page.fill("textarea[name=text]", "Hello,\n\n{% if %}\nthanks\n")
    page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    problems = page.locator(".template-problems").inner_text()
    assert "sales.txt, line 3" in problems, problems
    assert path.read_text(encoding="utf-8") == original

    edited = original.rstrip("\n") + f"\n\n{MARKER}\n"
    page.goto(f"{live.url}/templates/edit?file=sales.txt")
    page.fill("textarea[name=text]", edited)
    page.get_by_role("button", name="Preview").click()
    page.locator("#template-preview", has_text=MARKER).wait_for()
    screenshot(page, "template-editor")
    page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    assert page.locator("p.error, .template-problems").count() == 0
    assert MARKER in path.read_text(encoding="utf-8")

    live.deliver(
        "carol@example.test",
        inquiry("carol@example.test", HELLO, 70, "Carol Buyer", authenticated=True),
    )
    [reply] = _inbox(live.harness, "carol", 1)
    assert MARKER in _text(reply)

    page.goto(f"{live.url}/templates/history?file=sales.txt")
    buttons = page.get_by_role("button", name="Roll back to version")
    assert buttons.count() >= 1
    buttons.last.click()  # the oldest version: the text before the first save
    page.wait_for_load_state()
    assert path.read_text(encoding="utf-8") == original
    with live.db() as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
    assert actions[-2:] == ["template.save", "template.rollback"]


HOSTILE_SUBJECT = "<script>alert(1)</script> Quote for <img src=x onerror=alert(2)> 40 pallets"
HOSTILE_BODY = (
    "Hello,\n\nwe need a quote for 40 pallets <script>alert(3)</script> delivered to Rotterdam"
    " before the end of next month. Our budget is approved; please call me about pricing.\n"
    '<img src=x onerror=alert(4)> <a href="javascript:alert(5)">our order form</a>\n'
    "javascript:alert(6)\n\nKind regards,\nBob <b onmouseover=alert(7)>Buyer</b>\n"
)


def _hostile() -> bytes:
    msg = EmailMessage()
    msg["From"] = '"<img src=x onerror=alert(8)>" <bob@example.test>'
    msg["To"] = HELLO
    msg["Subject"] = HOSTILE_SUBJECT
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = make_msgid("xss", domain="example.test")
    msg.set_content(HOSTILE_BODY)
    return msg.as_bytes(policy=email.policy.SMTP)


def test_what_a_prospect_wrote_is_shown_as_text_on_every_page(live: Live, page: Page) -> None:
    live.deliver("bob@example.test", _hostile())
    lead = _lead(live, "bob@example.test")
    with live.db() as conn:
        [row] = conn.execute("SELECT id FROM messages").fetchall()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    log_in(page, live.url, "ada")
    pages = [
        "/leads",
        f"/leads/{lead['id']}",
        "/dashboard",
        "/decisions",
        f"/decisions/{row['id']}",
        "/review",
        "/templates/edit?file=sales.txt",
    ]
    for path in pages:
        page.goto(f"{live.url}{path}")
        page.wait_for_load_state("load")
        _assert_nothing_injected(page, path)
    # The subject is there, as text, where the prospect's words are shown.
    for path in ("/leads", f"/leads/{lead['id']}", "/decisions", f"/decisions/{row['id']}"):
        page.goto(f"{live.url}{path}")
        assert "<script>alert(1)</script>" in page.locator("main").inner_text(), path
    page.goto(f"{live.url}/leads/{lead['id']}")
    assert "<script>alert(3)</script>" in page.locator("main").inner_text()
    # The template preview against the hostile message.
    page.goto(f"{live.url}/templates/edit?file=sales.txt")
    page.select_option("select[name=message]", str(row["id"]))
    page.get_by_role("button", name="Preview").click()
    page.locator("#template-preview").wait_for()
    page.wait_for_load_state("networkidle")
    _assert_nothing_injected(page, "preview")
    page.mouse.move(300, 300)
    assert dialogs == []


def _assert_nothing_injected(page: Page, where: str) -> None:
    """The page's only script is the console's htmx; no element carries an event handler or a
    javascript: link; no element the prospect's text names was created."""
    origin = "/".join(page.url.split("/", 3)[:3])
    scripts = page.eval_on_selector_all("script", "els => els.map(e => e.src)")
    assert scripts == [f"{origin}/static/htmx.min.js"], where
    assert page.locator("[onerror], [onmouseover], [onload]").count() == 0, where
    assert page.locator("a[href^='javascript:' i]").count() == 0, where
    assert page.locator("main img, main b").count() == 0, where


def test_a_keyboard_is_enough_to_open_a_lead_and_claim_it(live: Live, page: Page) -> None:
    live.deliver("alice@example.test", inquiry("alice@example.test", HELLO, 25, "Alice Moreau"))
    lead = _lead(live, "alice@example.test")
    page.goto(f"{live.url}/login")
    page.keyboard.type("sam")  # the user name field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.goto(f"{live.url}/leads")
    tab_to(page, f"table.leads a[href='/leads/{lead['id']}'] >> nth=0")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    tab_to(page, "button:has-text('Claim this lead')", max_presses=60)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    lead = _lead(live, "alice@example.test")
    assert (lead["status"], lead["owner"]) == ("claimed", "sam")


def _inbox(harness: MailHarness, user: str, count: int) -> list[EmailMessage]:
    harness.wait_for_messages(user, count=count, timeout=30)
    return replies_in(harness, user)


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def _readdressed(raw: bytes, number: int) -> tuple[str, bytes]:
    """(sender, a corpus message to hello@ with a fresh Message-ID and today's date). Replies
    to its sender, in another domain, are refused by the harness's Postfix (no relaying)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    sender = msg["From"].addresses[0].addr_spec
    for name in ("To", "Message-ID", "Date"):
        del msg[name]
    msg["To"] = HELLO
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = make_msgid(f"c{number}", domain="example.test")
    return sender, msg.as_bytes(policy=email.policy.SMTP)


def test_the_dashboard_draws_the_day_of_real_mail(live: Live, page: Page) -> None:
    """Twenty inquiries and other mail of the project's corpus through Postfix: the dashboard's
    decisions of today add up to what the store decided, as a chart and as figures."""
    corpus = ROOT / "classifiers" / "corpus" / "batch_a"
    for number, path in enumerate(sorted(corpus.glob("*.eml"))[:COUNT]):
        sender, raw = _readdressed(path.read_bytes(), number)
        live.harness.send(raw, sender, HELLO)
    live.harness.wait_for_messages("hello", count=COUNT, timeout=60)
    result = triage(live.config, "once")
    assert result.returncode == 0, result.stderr
    with live.db() as conn:
        decided = conn.execute("SELECT COUNT(*) FROM messages WHERE decision IS NOT NULL")
        total = int(decided.fetchone()[0])
    assert total == COUNT

    log_in(page, live.url, "sam")
    page.goto(f"{live.url}/dashboard")
    assert page.locator("main svg").count() >= 5
    caption = page.locator("#h-decisions ~ figure figcaption").inner_text()
    shown = dict(re.findall(r"(\w+) (\d+)", caption))
    with live.db() as conn:
        stored = {
            r[0]: r[1]
            for r in conn.execute("SELECT decision, COUNT(*) FROM messages GROUP BY decision")
        }
    assert {k: int(v) for k, v in shown.items() if int(v) and k in DECISIONS} == stored
    screenshot(page, "dashboard")
    page.goto(f"{live.url}/leads")
    with live.db() as conn:
        leads = int(conn.execute("SELECT COUNT(*) FROM leads").fetchone()[0])
    assert page.locator("table.leads tbody tr").count() == leads > 0
    screenshot(page, "leads")

    # The digest these leads make, as it reaches sales@ through Postfix, each lead linked to its
    # page in the console.
    sent = triage(live.config, "digest", "--send")
    assert sent.returncode == 0, sent.stderr
    [digest] = _inbox(live.harness, "sales", 1)
    html = digest.get_body(preferencelist=("html",))
    assert html is not None
    with live.db() as conn:
        hot = [int(r[0]) for r in conn.execute("SELECT id FROM leads WHERE kind = 'hot'")]
    content = str(html.get_content())
    for lead_id in hot:
        assert f'href="http://127.0.0.1:8025/leads/{lead_id}"' in content
    page.goto("about:blank")  # out of the console, whose CSP would refuse the mail's inline styles
    page.set_content(content)
    screenshot(page, "digest")
