"""The admin template pages: list, editor with preview, save with history, rollback, test send.

Each test works on a copy of the repository's templates in its own directory, so nothing here
can change the repository's files.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from tests.test_digest import FakeSmtp
from tests.test_leads import ROOT
from tests.web_support import ConsoleFixture, make_console, token_of
from triage.act.replies import ReplyVariables, TemplateRenderer
from triage.core.models import Contact
from triage.sales import digest
from triage.store import audit
from triage.store import template_versions as versions
from triage.web import accounts

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

HOSTILE_SUBJECT = "<script>alert(1)</script> quote"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    return copy


@pytest.fixture
def console(tmp_path: Path, templates_dir: Path) -> Iterator[ConsoleFixture]:
    fixture = make_console(tmp_path, replies={"templates_dir": str(templates_dir)})
    yield fixture
    fixture.client.close()
    fixture.store.close()


def admin(console: ConsoleFixture, name: str = "ada") -> str:
    """Log in as an admin; the CSRF token of the template list."""
    console.login(name)
    page = console.client.get("/templates")
    assert page.status_code == 200, page.text
    return token_of(page.text)


def edit(console: ConsoleFixture, token: str, action: str, text: str, **extra: str) -> Any:
    response = console.post(
        f"/templates/{action}", {"file": "sales.txt", "text": text, **extra}, token
    )
    return response


def entries(console: ConsoleFixture, action: str) -> list[audit.AuditEntry]:
    return audit.recent(console.store.db.reads, action_prefix=action)


def test_the_list_shows_every_outcome_language_and_part(console: ConsoleFixture) -> None:
    admin(console)
    page = console.client.get("/templates").text
    for name in ("sales", "marketing"):
        for lang in ("", ".de", ".fr"):
            for part in ("subject", "txt", "html"):
                assert f"/templates/edit?file={name}{lang}.{part}" in page
    assert "never saved here" in page


def test_not_logged_in_is_sent_to_login(console: ConsoleFixture) -> None:
    response = console.client.get("/templates/edit?file=sales.txt", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
    assert console.client.post("/templates/save", data={"file": "sales.txt"}).status_code == 401


def test_sales_staff_get_403_on_every_template_route(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """Pages and POSTs alike, even with a valid CSRF token; nothing is written or queued."""
    console.login("sam")
    refused = console.client.get("/templates")
    assert refused.status_code == 403
    token = token_of(refused.text)
    before = (templates_dir / "sales.txt").read_text()
    for url in (
        "/templates",
        "/templates/edit?file=sales.txt",
        "/templates/history?file=sales.txt",
    ):
        assert console.client.get(url).status_code == 403, url
    for action in ("preview", "save", "test", "rollback"):
        response = edit(console, token, action, "changed", version="1")
        assert response.status_code == 403, action
    assert (templates_dir / "sales.txt").read_text() == before
    assert versions.history(console.store.db.reads, "sales.txt") == []


def test_a_post_without_the_csrf_token_is_refused(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    admin(console)
    before = (templates_dir / "sales.txt").read_text()
    for action in ("preview", "save", "test", "rollback"):
        response = console.client.post(
            f"/templates/{action}",
            data={"file": "sales.txt", "text": "changed", "version": "1"},
            follow_redirects=False,
        )
        assert response.status_code == 403, action
    assert (templates_dir / "sales.txt").read_text() == before


def test_a_syntax_error_is_shown_with_its_line_and_nothing_is_saved(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    token = admin(console)
    before = (templates_dir / "sales.txt").read_text()
    response = edit(console, token, "save", "Hello,\n\n{% if %}\nno end\n")
    assert response.status_code == 400
    page = response.text
    assert "Not saved" in page
    assert "sales.txt, line 3: syntax error: Expected an expression" in page
    assert "no end" in page  # the text stays in the editor to be fixed
    assert (templates_dir / "sales.txt").read_text() == before
    assert versions.history(console.store.db.reads, "sales.txt") == []
    assert entries(console, "template.") == []


def test_an_unknown_variable_is_shown_with_its_line_and_nothing_is_saved(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    token = admin(console)
    before = (templates_dir / "sales.txt").read_text()
    response = edit(console, token, "save", "Hello {{ contact.name }},\n{{ contact.nmae }}\n")
    assert response.status_code == 400
    assert "sales.txt, line 2: unknown variable &#39;contact.nmae&#39;" in response.text
    assert (templates_dir / "sales.txt").read_text() == before
    assert versions.history(console.store.db.reads, "sales.txt") == []


def test_a_template_that_fails_for_a_stranger_is_not_saved(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """The name is empty for an unauthenticated sender: indexing it fails, so no save."""
    token = admin(console)
    response = edit(console, token, "save", "Hello {{ contact.name[0] }}\n")
    assert response.status_code == 400
    assert "for an unauthenticated sender" in response.text
    assert "Hello {{ contact.name[0] }}" not in (templates_dir / "sales.txt").read_text()


def test_a_good_save_writes_the_file_and_records_a_version_and_an_audit_entry(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    path = templates_dir / "sales.txt"
    os.chmod(path, 0o640)
    original = path.read_text()
    token = admin(console)
    response = edit(console, token, "save", "Hello,\r\nthanks from {{ company_name }}.\r\n")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/templates/edit?file=sales.txt&saved=")
    assert path.read_text() == "Hello,\nthanks from {{ company_name }}.\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in templates_dir.iterdir() if p.name.endswith(".tmp")]
    history = versions.history(console.store.db.reads, "sales.txt")
    assert [v.saved_by for v in history] == ["ada", "(on disk)"]
    assert history[0].text == path.read_text()
    assert history[1].text == original  # what was there before, to roll back to
    saved = entries(console, "template.save")
    assert [(e.actor, e.target_kind, e.target) for e in saved] == [("ada", "template", "sales.txt")]
    assert saved[0].detail["version"] == history[0].id
    page = console.client.get(response.headers["location"]).text
    assert "Saved as version" in page
    listing = console.client.get("/templates").text
    assert "saved by ada" in listing


def test_history_shows_the_diff_and_rollback_restores_the_old_text(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    path = templates_dir / "sales.txt"
    original = path.read_text()
    token = admin(console)
    edit(console, token, "save", "Hello <b>{{ company_name }}</b>\n")
    edit(console, token, "save", "Hello again {{ company_name }}\n")
    page = console.client.get("/templates/history?file=sales.txt")
    assert page.status_code == 200
    html = page.text
    assert '<pre class="diff">' in html
    assert "-Hello &lt;b&gt;{{ company_name }}&lt;/b&gt;" in html  # escaped, in the diff
    assert "+Hello again {{ company_name }}" in html
    assert "Hello <b>" not in html
    first = versions.history(console.store.db.reads, "sales.txt")[-1]
    assert first.saved_by == "(on disk)"
    response = console.post(
        "/templates/rollback", {"file": "sales.txt", "version": str(first.id)}, token
    )
    assert response.status_code == 303
    assert path.read_text() == original
    latest = versions.history(console.store.db.reads, "sales.txt")[0]
    assert latest.text == original and latest.saved_by == "ada"
    assert "rollback to version" in latest.note
    rolled = entries(console, "template.rollback")
    assert [(e.actor, e.target) for e in rolled] == [("ada", "sales.txt")]
    assert "Rolled back" in console.client.get(response.headers["location"]).text


def test_rollback_to_a_version_of_another_file_is_refused(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    token = admin(console)
    edit(console, token, "save", "Hello {{ company_name }}\n")
    other = versions.history(console.store.db.reads, "sales.txt")[0]
    response = console.post(
        "/templates/rollback", {"file": "marketing.txt", "version": str(other.id)}, token
    )
    assert response.status_code == 400
    assert "Hello {{ company_name }}" not in (templates_dir / "marketing.txt").read_text()


@pytest.mark.parametrize(
    "name",
    [
        "../sales.txt",
        "/etc/passwd",
        "..%2Fsales.txt",
        "sub/sales.txt",
        "README.md",
        "nope.txt",
        "outside.txt",
    ],
)
def test_paths_links_and_other_names_are_refused(
    console: ConsoleFixture, templates_dir: Path, tmp_path: Path, name: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (templates_dir / "outside.txt").symlink_to(secret)
    (templates_dir / "sub").mkdir()
    (templates_dir / "sub" / "sales.txt").write_text("x\n")
    token = admin(console)
    for url in (f"/templates/edit?file={name}", f"/templates/history?file={name}"):
        response = console.client.get(url)
        assert response.status_code == 400, url
        assert "hunter2" not in response.text
    for action in ("preview", "save", "test"):
        response = console.post(f"/templates/{action}", {"file": name, "text": "x"}, token)
        assert response.status_code == 400, action
    assert secret.read_text() == "password=hunter2\n"
    assert (templates_dir / "sub" / "sales.txt").read_text() == "x\n"


def test_the_preview_renders_the_unsaved_text_with_sample_data(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    path = templates_dir / "sales.txt"
    before = path.read_text()
    token = admin(console)
    response = edit(
        console, token, "preview", "Dear {{ contact.name }} from {{ contact.company }}\n"
    )
    assert response.status_code == 200
    html = response.text
    assert "Dear Jane Doe from Doe Logistics GmbH" in html
    assert "Re: Quote for 40 units" in html  # the subject file, as the recipient gets it
    assert '<pre class="message-text preview-html">&lt;!DOCTYPE html&gt;' in html
    assert path.read_text() == before  # a preview writes nothing
    assert versions.history(console.store.db.reads, "sales.txt") == []


def test_the_preview_shows_problems_with_their_lines(console: ConsoleFixture) -> None:
    token = admin(console)
    response = edit(console, token, "preview", "ok\n{{ foo }}\n")
    assert "sales.txt, line 2: unknown variable &#39;foo&#39;" in response.text


def test_htmx_gets_only_the_preview_fragment(console: ConsoleFixture) -> None:
    token = admin(console)
    response = console.client.post(
        "/templates/preview",
        data={"file": "sales.txt", "text": "Hi {{ signature }}\n"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert response.status_code == 200
    assert "<html" not in response.text
    assert 'class="card template-preview"' in response.text


def test_the_preview_answers_a_real_message_and_escapes_what_its_sender_wrote(
    console: ConsoleFixture,
) -> None:
    row, _lead = console.store.inquiry(
        Contact(name=HOSTILE_NAME, email="mallory@prospect.example", company="Evil <b>Corp</b>"),
        subject=HOSTILE_SUBJECT,
        body="<script>alert(2)</script> [x](javascript:alert(3))",
    )
    token = admin(console)
    editor = console.client.get("/templates/edit?file=sales.html").text
    assert f'<option value="{row}"' in editor  # offered in the list of recent messages
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in editor
    text = (console.settings.replies.templates_dir / "sales.html").read_text()
    response = console.post(
        "/templates/preview", {"file": "sales.html", "text": text, "message": str(row)}, token
    )
    assert response.status_code == 200
    html = response.text
    assert f"Answering message {row}" in html
    assert "mallory@prospect.example" in html
    assert "&lt;script&gt;alert(1)" in html  # the subject, as text
    assert "onerror=alert(1)" in html  # the name, as text...
    assert "<script>alert" not in html  # ...never as markup of the page
    assert "<img src=x" not in html
    assert "<b>Corp" not in html


def test_an_unauthenticated_sender_is_previewed_with_fixed_text(console: ConsoleFixture) -> None:
    row = console.store.message(
        "stranger@prospect.example",
        subject="Buy now",
        reasons=["unauthenticated: no DMARC pass; the reply carries fixed text only"],
    )
    token = admin(console)
    text = (console.settings.replies.templates_dir / "sales.subject").read_text()
    response = console.post(
        "/templates/preview", {"file": "sales.subject", "text": text, "message": str(row)}, token
    )
    assert "unauthenticated sender" in response.text
    assert "Your inquiry to Example Ltd" in response.text
    assert "Buy now" not in response.text.split('<section class="card template-preview"')[1]


def test_send_a_test_queues_the_edited_reply_to_the_admins_address(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    before = (templates_dir / "sales.txt").read_text()
    token = admin(console)
    response = edit(console, token, "test", "Test body for {{ contact.name }}\n")
    assert response.status_code == 303
    rows = console.store.db.reads.execute(
        "SELECT kind, state, recipients, raw FROM digests"
    ).fetchall()
    assert len(rows) == 1
    assert rows[0]["kind"] == "template-test" and rows[0]["state"] == "queued"
    assert json.loads(rows[0]["recipients"]) == ["ada@example.test"]
    mail = email.message_from_bytes(bytes(rows[0]["raw"]), policy=policy.default)
    assert mail["To"] == "ada@example.test"
    assert mail["Subject"] == "Re: [test] Quote for 40 units"
    assert "Test body for Jane Doe" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (templates_dir / "sales.txt").read_text() == before  # nothing saved
    tested = entries(console, "template.test")
    assert [(e.actor, e.target, e.detail["to"]) for e in tested] == [
        ("ada", "sales.txt", "ada@example.test")
    ]
    assert "A test reply is queued" in console.client.get(response.headers["location"]).text
    # The daemon's housekeeping sends it like a digest: over SMTP, to the admin only.
    smtp = FakeSmtp()
    sent = digest.deliver(console.settings, console.store.db, connector=smtp)
    assert list(sent.values()) == ["sent"]
    assert smtp.sessions[0].recipients == ["ada@example.test"]
    assert b"Test body for Jane Doe" in smtp.delivered[0]


def test_send_a_test_is_refused_without_an_address_or_with_a_broken_text(
    console: ConsoleFixture,
) -> None:
    accounts.add(console.store.db, "eve", "admin", "correct horse battery")
    token = admin(console, "eve")
    response = edit(console, token, "test", "Hello\n")
    assert response.status_code == 400
    assert "user eve has no email address" in response.text
    console.client.post("/logout", data={"csrf_token": token})
    token = admin(console)
    response = edit(console, token, "test", "{% if %}\n")
    assert response.status_code == 400
    assert "line 1: syntax error" in response.text
    count = console.store.db.reads.execute("SELECT COUNT(*) FROM digests").fetchone()[0]
    assert count == 0


def test_a_renderer_that_is_already_running_uses_the_saved_text(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """The daemon keeps one renderer for its life: a save reaches its next reply."""
    renderer = TemplateRenderer(templates_dir)
    sample = ReplyVariables.sample(console.settings.replies)
    assert "short automatic confirmation" in renderer.render("sales", sample).text
    token = admin(console)
    assert edit(console, token, "save", "New text for {{ company_name }}\n").status_code == 303
    assert renderer.render("sales", sample).text == "New text for Example Ltd\n"


def test_a_partial_is_checked_through_the_files_that_include_it(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    (templates_dir / "_footer.txt").write_text("-- {{ signature }}\n")
    sales = templates_dir / "sales.txt"
    sales.write_text(sales.read_text() + '{% include "_footer.txt" %}')
    token = admin(console)
    assert "/templates/edit?file=_footer.txt" in console.client.get("/templates").text
    broken = console.post(
        "/templates/save", {"file": "_footer.txt", "text": "-- {{ signature[99] }}\n"}, token
    )
    assert broken.status_code == 400
    assert "sales.txt" in broken.text  # the file whose reply it would break
    assert (templates_dir / "_footer.txt").read_text() == "-- {{ signature }}\n"
    good = console.post(
        "/templates/save", {"file": "_footer.txt", "text": "Regards, {{ signature }}\n"}, token
    )
    assert good.status_code == 303
    assert (templates_dir / "_footer.txt").read_text() == "Regards, {{ signature }}\n"


def test_an_edit_made_on_disk_is_kept_in_the_history_before_the_next_save(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    token = admin(console)
    edit(console, token, "save", "First {{ company_name }}\n")
    (templates_dir / "sales.txt").write_text("Edited on the server {{ signature }}\n")
    edit(console, token, "save", "Third {{ company_name }}\n")
    history = versions.history(console.store.db.reads, "sales.txt")
    assert [(v.saved_by, v.text) for v in history[:3]] == [
        ("ada", "Third {{ company_name }}\n"),
        ("(on disk)", "Edited on the server {{ signature }}\n"),
        ("ada", "First {{ company_name }}\n"),
    ]
    assert history[1].note == "changed on disk"


def test_a_save_over_a_change_made_since_the_editor_opened_is_refused_once(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """Two admins edit the same file: the second save does not silently undo the first."""
    path = templates_dir / "sales.txt"
    token = admin(console)
    page = console.client.get("/templates/edit?file=sales.txt").text
    base = re.search(r'name="base" value="([0-9a-f]+)"', page)
    assert base is not None
    edit(console, token, "save", "Theirs {{ company_name }}\n", base=base.group(1))
    mine = edit(console, token, "save", "Mine {{ company_name }}\n", base=base.group(1))
    assert mine.status_code == 409
    assert "was changed since you opened it" in mine.text
    assert "Mine {{ company_name }}" in mine.text  # kept in the editor
    assert path.read_text() == "Theirs {{ company_name }}\n"
    fresh = re.search(r'name="base" value="([0-9a-f]+)"', mine.text)
    assert fresh is not None and fresh.group(1) != base.group(1)
    again = edit(console, token, "save", "Mine {{ company_name }}\n", base=fresh.group(1))
    assert again.status_code == 303
    assert path.read_text() == "Mine {{ company_name }}\n"
