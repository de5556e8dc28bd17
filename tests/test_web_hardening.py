"""Hostile or careless input to the console: numbers that are not plain ASCII digits or that no
SQLite integer can hold are a 400 or a 404, never a 500; two admins saving the same template at
once cannot silently undo each other's save."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.test_leads import ROOT
from tests.web_support import PASSWORD, ConsoleFixture, make_console
from triage.act import template_edits as edits
from triage.store import template_versions as versions
from triage.store.db import Database, Tx
from triage.web import accounts

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

HUGE = "99999999999999999999"  # more than SQLite's largest integer
SUPERSCRIPT = "²"  # str.isdigit() says yes, int() says no


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    return copy


@pytest.fixture
def console(tmp_path: Path, templates_dir: Path) -> Iterator[ConsoleFixture]:
    fixture = make_console(tmp_path, replies={"templates_dir": str(templates_dir)})
    # A server error is answered as one (500) instead of raised into the test.
    fixture.client = TestClient(
        fixture.client.app, base_url="http://127.0.0.1:8025", raise_server_exceptions=False
    )
    yield fixture
    fixture.client.close()
    fixture.store.close()


@pytest.mark.parametrize(
    ("url", "status"),
    [
        (f"/leads?page={SUPERSCRIPT}", 200),  # a page that is not a number is page 1
        (f"/leads/{HUGE}", 404),
        (f"/decisions/{HUGE}", 404),
        (f"/decisions/{SUPERSCRIPT}", 404),
        (f"/decisions?page={SUPERSCRIPT}", 400),
        (f"/review?labelled=1&label=sales&lead={SUPERSCRIPT}", 200),
    ],
)
def test_odd_numbers_in_a_url_are_not_a_server_error(
    console: ConsoleFixture, url: str, status: int
) -> None:
    console.login("ada")
    assert console.client.get(url, follow_redirects=False).status_code == status


@pytest.mark.parametrize(
    ("url", "data", "status"),
    [
        (f"/review/{HUGE}/label", {"label": "sales"}, 404),
        (f"/leads/{HUGE}/claim", {}, 404),
        ("/templates/rollback", {"file": "sales.txt", "version": HUGE}, 400),
        ("/templates/rollback", {"file": "sales.txt", "version": SUPERSCRIPT}, 400),
        ("/templates/preview", {"file": "sales.txt", "text": "x", "message": SUPERSCRIPT}, 400),
        ("/templates/preview", {"file": "sales.txt", "text": "x", "message": HUGE}, 400),
    ],
)
def test_odd_numbers_in_a_form_are_not_a_server_error(
    console: ConsoleFixture, url: str, data: dict[str, str], status: int
) -> None:
    token = console.login("ada")
    assert console.post(url, data, token).status_code == status


class Racing:
    """A store whose next write transaction first lets another admin's save go through: what
    happens when two saves of the same file overlap in the thread pool."""

    def __init__(self, db: Database, other: Any) -> None:
        self.db = db
        self.other = other

    @property
    def reads(self) -> Tx:
        return self.db.reads

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        if self.other is not None:
            other, self.other = self.other, None
            other()
        with self.db.transaction() as c:
            yield c


def test_two_admins_saving_at_once_cannot_undo_each_other(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    replies = console.settings.replies
    path = templates_dir / "sales.txt"
    base = edits.fingerprint(path.read_text())
    theirs = "Theirs {{ company_name }}\n"

    def their_save() -> None:
        edits.save(
            console.store.db, templates_dir, "sales.txt", theirs, replies, "bob", expected=base
        )

    racing: Any = Racing(console.store.db, their_save)
    with pytest.raises(edits.TemplateConflict):
        edits.save(
            racing,
            templates_dir,
            "sales.txt",
            "Mine {{ company_name }}\n",
            replies,
            "ada",
            expected=base,
        )
    assert path.read_text() == theirs
    history = versions.history(console.store.db.reads, "sales.txt")
    assert [v.saved_by for v in history] == ["bob", "(on disk)"]


@pytest.mark.parametrize(
    "address",
    [
        "eve@example.test\r\nBcc: victim@example.test",
        "eve@example.test, victim@example.test",
        "Victim <victim@example.test>",
    ],
)
def test_a_test_send_to_an_address_that_is_not_one_plain_address_is_refused_in_words(
    console: ConsoleFixture, address: str
) -> None:
    accounts.add(console.store.db, "eve", "admin", PASSWORD, email=address)
    token = console.login("eve")
    answer = console.post(
        "/templates/test", {"file": "sales.txt", "text": "Hi {{ company_name }}\n"}, token
    )
    assert answer.status_code == 400
    assert "not one plain address" in answer.text
    assert console.store.db.reads.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == 0


def test_a_partial_that_fails_for_a_stranger_is_not_saved(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """A partial is checked through the files that include it for both senders, as a file of
    its own is: the name is empty for an unauthenticated sender, so indexing it fails."""
    (templates_dir / "_footer.txt").write_text("-- {{ signature }}\n")
    sales = templates_dir / "sales.txt"
    sales.write_text(sales.read_text() + '{% include "_footer.txt" %}')
    token = console.login("ada")
    broken = console.post(
        "/templates/save", {"file": "_footer.txt", "text": "-- {{ contact.name[0] }}\n"}, token
    )
    assert broken.status_code == 400
    assert "for an unauthenticated sender" in broken.text
    assert (templates_dir / "_footer.txt").read_text() == "-- {{ signature }}\n"


def test_a_template_that_renders_an_empty_reply_is_not_saved(
    console: ConsoleFixture, templates_dir: Path
) -> None:
    """An empty `sales.txt` would send wordless replies to real people: refused, file kept."""
    path = templates_dir / "sales.txt"
    before = path.read_text(encoding="utf-8")
    token = console.login("ada")
    for text in ("", "  \n\n", "{% if false %}hello{% endif %}\n"):
        response = console.post("/templates/save", {"file": "sales.txt", "text": text}, token)
        assert response.status_code == 400, text
        assert "the reply&#39;s text is empty" in response.text
    assert path.read_text(encoding="utf-8") == before
