"""The admins' read-only pages: `/decisions`, `/decisions/{id}`, `/model`, `/health` — who may
open them, what they show of a store filled as the pipeline fills it, and that everything a
prospect wrote is shown as text."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import web_support
from tests.web_support import ConsoleFixture, make_console
from triage.sales import review as review_flow
from triage.store import outbox

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

ADMIN_PAGES = ("/decisions", "/decisions/1", "/model", "/health")
HOSTILE = (
    '<script>alert(1)</script> <img src=x onerror=alert(1)> <a href="javascript:alert(1)">x</a>'
)

# The `console` fixture: a client over a fresh store with users sam (sales) and ada (admin).
console = web_support.console


def _reply(fx: ConsoleFixture, row: int, state: str = "sent", raw: bytes | None = None) -> int:
    """A reply to ledger row `row`, queued, then moved on to `state` as the sender would."""
    now = datetime.now(UTC)
    with fx.store.db.transaction() as c:
        reply_id = outbox.insert_reply(
            c,
            message_row=row,
            reply_message_id=f"<r{row}-{state}@example.test>",
            recipient="jane@doe.example",
            envelope_from="hello@example.test",
            template="sales",
            mode="live",
            state="queued",
            raw=raw
            or b"Subject: Thanks\r\nContent-Type: text/plain\r\n\r\nThank you, we will call.\r\n",
            now=now,
            recipient_key="jane@doe.example",
            recipient_domain="doe.example",
            priority=0,
        )
        if state != "queued":
            mine = outbox.claim(c, "replies", reply_id, now, 0)
            assert mine is not None
            if state == "sent":
                outbox.mark_sent(c, "replies", reply_id, mine, now, None)
            elif state == "uncertain":
                outbox.mark_uncertain(c, "replies", reply_id, mine, "connection lost after DATA")
    return reply_id


# --- access --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_need_a_login(console: ConsoleFixture, path: str) -> None:
    response = console.client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_refuse_sales_users(console: ConsoleFixture, path: str) -> None:
    console.store.message("jane@doe.example")
    console.login("sam")
    response = console.client.get(path)
    assert response.status_code == 403
    assert "this page is for admins" in response.text


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_open_for_admins(console: ConsoleFixture, path: str) -> None:
    console.store.message("jane@doe.example")
    console.login("ada")
    response = console.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


# --- decisions -----------------------------------------------------------------------------------


def test_decisions_lists_newest_first_with_reply_state(console: ConsoleFixture) -> None:
    store = console.store
    now = datetime.now(UTC)
    old = store.message("old@x.example", "Older subject", at=now - timedelta(hours=5))
    new = store.message(
        "new@x.example",
        "Newer subject",
        decision="marketing",
        confidence=0.87,
        reasons=["unauthenticated: no DKIM"],
        at=now - timedelta(hours=1),
    )
    _reply(console, old)
    console.login("ada")
    page = console.client.get("/decisions").text
    assert page.index("Newer subject") < page.index("Older subject")
    assert f'href="/decisions/{new}"' in page and f'href="/decisions/{old}"' in page
    assert "0.87" in page and "unauthenticated: no DKIM" in page
    row_of_old = page[page.index("Older subject") :].split("</tr>")[0]
    assert ">sent<" in row_of_old
    row_of_new = page[page.index("Newer subject") :].split("</tr>")[0]
    assert ">none<" in row_of_new


def test_decisions_filter_by_decision(console: ConsoleFixture) -> None:
    console.store.message("a@x.example", "A sales one", decision="sales")
    console.store.message("b@x.example", "A review one", decision="review")
    console.login("ada")
    page = console.client.get("/decisions?decision=review").text
    assert "A review one" in page and "A sales one" not in page
    assert '<option value="review" selected>' in page
    assert console.client.get("/decisions?decision=bogus").status_code == 400
    assert console.client.get("/decisions?page=0").status_code == 400
    assert console.client.get("/decisions?page=x").status_code == 400


def test_decisions_are_paged_by_fifty(console: ConsoleFixture) -> None:
    now = datetime.now(UTC)
    for i in range(52):
        console.store.message(
            f"p{i}@x.example", f"Subject number {i:02d}", at=now - timedelta(minutes=i)
        )
    console.login("ada")
    first = console.client.get("/decisions").text
    assert first.count('href="/decisions/') == 50
    assert "Subject number 00" in first and "Subject number 50" not in first
    assert 'href="/decisions?page=2"' in first
    second = console.client.get("/decisions?page=2").text
    assert second.count('href="/decisions/') == 2
    assert "Subject number 51" in second and 'rel="next"' not in second
    assert 'href="/decisions?page=1"' in second


def test_hostile_text_is_escaped_on_decisions_and_a_decision(console: ConsoleFixture) -> None:
    row = console.store.message(
        f"x@evil.example {HOSTILE}",
        f"Offer {HOSTILE}",
        f"Body {HOSTILE}",
        explanation=("<b>quote</b>", HOSTILE),
        reasons=[f"identity: {HOSTILE}"],
    )
    _reply(
        console,
        row,
        raw=b"Subject: x\r\nContent-Type: text/plain\r\n\r\n"
        b"You wrote <script>alert(2)</script>\r\n",
    )
    console.login("ada")
    for path in ("/decisions", f"/decisions/{row}"):
        page = console.client.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert 'href="javascript:' not in page
        assert "<b>quote</b>" not in page
    assert (
        "You wrote &lt;script&gt;alert(2)&lt;/script&gt;"
        in console.client.get(f"/decisions/{row}").text
    )


def test_a_decision_shows_its_explanation_probabilities_text_and_reply(
    console: ConsoleFixture,
) -> None:
    store = console.store
    row = store.message(
        "jane@doe.example",
        "Quote for 40 pallets",
        "We need 40 pallets by May.",
        confidence=0.91,
        explanation=("pallets", "quote"),
        reasons=["unauthenticated: no SPF"],
    )
    with store.db.transaction() as c:
        c.execute(
            "UPDATE messages SET probabilities = ? WHERE id = ?",
            (json.dumps({"sales": 0.91, "marketing": 0.06, "other": 0.03}), row),
        )
    _reply(console, row)
    console.login("ada")
    page = console.client.get(f"/decisions/{row}").text
    assert "Quote for 40 pallets" in page and "jane@doe.example" in page
    assert "We need 40 pallets by May." in page
    assert ">pallets<" in page and ">quote<" in page
    assert "unauthenticated: no SPF" in page
    assert page.index("0.910") < page.index("0.060") < page.index("0.030")
    assert "Thank you, we will call." in page
    assert "No reply was recorded" not in page


def test_a_message_a_header_rule_decided_says_it_has_no_text(console: ConsoleFixture) -> None:
    row = console.store.message(
        "list@lists.example",
        "Weekly digest",
        "",
        decision="other",
        explanation=(),
        reasons=["list-header: mailing list header List-Id"],
    )
    console.login("ada")
    page = console.client.get(f"/decisions/{row}").text
    assert "a header rule decided this message" in page
    assert "No reply was recorded for this message." in page


def test_an_unknown_decision_is_404(console: ConsoleFixture) -> None:
    console.login("ada")
    assert console.client.get("/decisions/999").status_code == 404
    assert console.client.get("/decisions/abc").status_code == 404


# --- model ---------------------------------------------------------------------------------------


def test_model_page_shows_the_card_and_the_corrections(console: ConsoleFixture) -> None:
    from triage.decide.classify import read_card

    card = read_card(console.settings.classifier.model_path)
    row = console.store.message("a@x.example", f"Please label {HOSTILE}", decision="review")
    review_flow.label(console.store.db, row, "other", console.store.settings, by="ada")
    console.login("ada")
    page = console.client.get("/model").text
    assert card.version in page
    assert "Cross-validation" in page and "Precision" in page
    for label, size in card.training_size.items():
        assert f"{size:,}" in page and label in page
    for value in card.thresholds.values():
        assert f"{value:.2f}" in page
    assert "<strong>1</strong> corrections recorded since this model was trained" in page
    assert "review" in page and "sales → other" in page
    assert f'href="/decisions/{row}"' in page
    assert "&lt;script&gt;" in page and "<script>alert" not in page


def test_model_page_says_when_the_model_cannot_be_read(tmp_path: Path) -> None:
    fx = make_console(tmp_path, classifier={"model_path": str(tmp_path / "none" / "model.skops")})
    try:
        fx.login("ada")
        page = fx.client.get("/model")
        assert page.status_code == 200
        assert "model card" in page.text and "is missing" in page.text
        assert "No corrections yet." in page.text
    finally:
        fx.client.close()
        fx.store.close()


def test_thresholds_from_settings_override_the_card(tmp_path: Path) -> None:
    fx = make_console(tmp_path, classifier={"thresholds": {"sales": 0.42}})
    try:
        fx.login("ada")
        page = fx.client.get("/model").text
        assert "0.42" in page and "settings (classifier.thresholds)" in page
    finally:
        fx.client.close()
        fx.store.close()


# --- health --------------------------------------------------------------------------------------


class _Unhealthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"default: not connected; last error: <b>refused</b>\n"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def fake_daemon() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_shows_mailboxes_outbox_and_uncertain_replies(tmp_path: Path) -> None:
    fx = make_console(tmp_path, daemon={"health_port": _free_port()})
    try:
        fx.store.ledger.start_folder("default", "INBOX", 7, 0)
        fx.store.ledger.advance("default", "INBOX", 42)
        a = fx.store.message("a@x.example")
        b = fx.store.message("b@x.example")
        c = fx.store.message("c@x.example")
        _reply(fx, a, "queued")
        _reply(fx, b, "uncertain")
        _reply(fx, c, "sent")
        fx.login("ada")
        page = fx.client.get("/health").text
        assert "default" in page and "INBOX" in page and ">42<" in page
        assert "not reachable" in page
        replies_row = page[page.index('<th scope="row">replies</th>') :].split("</tr>")[0]
        # queued, sending, failed, uncertain, sent
        assert replies_row.count('class="num">1<') == 3
        assert "triage outbox resolve reply:" in page
        assert "connection lost after DATA" in page
    finally:
        fx.client.close()
        fx.store.close()


def test_health_shows_what_the_daemon_says_escaped(tmp_path: Path, fake_daemon: int) -> None:
    fx = make_console(tmp_path, daemon={"health_port": fake_daemon})
    try:
        fx.login("ada")
        page = fx.client.get("/health").text
        assert "unhealthy" in page
        assert "default: not connected; last error: &lt;b&gt;refused&lt;/b&gt;" in page
        assert "No mailbox has been synced yet." in page
        assert "None: every delivery is settled." in page
    finally:
        fx.client.close()
        fx.store.close()


def test_health_with_the_endpoint_switched_off(tmp_path: Path) -> None:
    fx = make_console(tmp_path, daemon={"health_port": 0})
    try:
        fx.login("ada")
        assert "switched off" in fx.client.get("/health").text
    finally:
        fx.client.close()
        fx.store.close()
