"""The console's front door under attack: concurrent password guessing, oversized bodies sent
without a length, what HTMX keeps in the browser, and `triage users` given bytes that are not
text. (The ordinary behaviour of the same code is in test_web_core.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient
from typer.testing import CliRunner

from devtools.demo import store_toml
from tests.test_leads import Store, make_settings
from tests.web_support import PASSWORD, login
from triage.cli.main import app as cli
from triage.core.errors import TriageError
from triage.store.db import Database
from triage.web import accounts
from triage.web.app import (
    MAX_FORM_BYTES,
    SESSION_COOKIE,
    SecurityHeaders,
    build_app,
    core_pages,
)

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

WRONG = "wrong user name or password"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_settings(tmp_path, web={"max_failed_logins": 3}))
    accounts.add(s.db, "sam", "sales", PASSWORD)
    accounts.add(s.db, "ada", "admin", PASSWORD)
    yield s
    s.close()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(
        build_app(store.settings, pages=core_pages()), base_url="http://127.0.0.1"
    ) as c:
        yield c


def test_concurrent_wrong_passwords_get_no_more_tries_than_the_limit(store: Store) -> None:
    """Guesses sent at once (one thread each, as the console's thread pool runs them) are
    counted before the slow hash check: at most `max_failures` of them are even checked, the
    rest are refused as locked."""
    policy = accounts.LoginPolicy(3)
    tries = 12
    start = threading.Barrier(tries)
    answers: list[str] = []

    def guess(i: int) -> None:
        db = Database(store.settings.store)
        try:
            start.wait()
            accounts.login(db, "sam", f"guess number {i}", f"192.0.2.{i}", policy)
        except accounts.AccountError as exc:
            answers.append(str(exc))
        finally:
            db.close()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(tries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == tries
    assert answers.count(WRONG) <= 3, answers


def test_a_successful_login_is_not_counted_against_its_address(store: Store) -> None:
    """The right password leaves no failure behind, for the name or for the address."""
    policy = accounts.LoginPolicy(3)
    for _ in range(5):
        assert accounts.login(store.db, "sam", PASSWORD, "192.0.2.1", policy).name == "sam"
    assert store.db.reads.execute("SELECT count(*) FROM login_failures").fetchone()[0] == 0
    # A failure still counts for both.
    with pytest.raises(accounts.AccountError, match=WRONG):
        accounts.login(store.db, "ada", "not her password", "192.0.2.1", policy)
    kinds = sorted(r[0] for r in store.db.reads.execute("SELECT kind FROM login_failures"))
    assert kinds == ["address", "user"]


def test_a_chunked_form_without_a_length_is_refused_above_the_limit(client: TestClient) -> None:
    """A body sent in chunks (no Content-Length) is cut off at MAX_FORM_BYTES with 413, not read
    into memory field by field (each field under the per-field limit)."""
    field = MAX_FORM_BYTES // 2 + 1

    def chunks() -> Iterator[bytes]:
        for i in range(3):
            yield (("&" if i else "") + f"f{i}=" + "x" * field).encode()

    response = client.post(
        "/login",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    # A small chunked form is read as usual (refused here for its missing CSRF token).
    small = client.post(
        "/login",
        content=iter([b"username=sam&", b"password=x"]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert small.status_code == 403


def test_htmx_keeps_no_copy_of_pages_in_local_storage(client: TestClient) -> None:
    """HTMX's history cache would keep pages (prospects' mail, the CSRF token) in localStorage
    after logout, despite `Cache-Control: no-store`: it is turned off."""
    page = client.get("/login").text
    assert '"historyCacheSize": 0' in page and '"refreshOnHistoryMiss": true' in page


def test_logging_in_again_ends_the_session_the_browser_had(
    client: TestClient, store: Store
) -> None:
    """A login from a browser that still holds a session (another user's, on a shared machine)
    ends that session rather than leaving it alive behind the new cookie."""
    login(client, "ada")
    kept = client.cookies.get(SESSION_COOKIE)
    login(client, "sam")
    rows = store.db.reads.execute(
        "SELECT u.name FROM web_sessions s JOIN users u ON u.id = s.user_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["sam"]
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, kept or "")
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_a_session_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """Like every password file: group or others may not read the secret that signs cookies."""
    secret = tmp_path / "session.secret"
    secret.write_text("s" * 48 + "\n")
    secret.chmod(0o644)
    settings = make_settings(tmp_path, web={"session_secret_file": str(secret)})
    with pytest.raises(TriageError, match=r"open to other users \(mode 0644\); run `chmod 600"):
        build_app(settings, pages=core_pages())
    secret.chmod(0o600)
    app = build_app(settings, pages=core_pages())
    assert app.state.console.signer.secret_keys == [("s" * 48).encode()]


def _config(store: Store, tmp_path: Path) -> Path:
    config = tmp_path / "triage.toml"
    config.write_text(
        '[imap]\nusername = "hello"\npassword = "pw"\n' + store_toml(store.settings.store)
    )
    return config


def test_users_cli_refuses_a_password_that_is_not_text_in_one_line(
    store: Store, tmp_path: Path
) -> None:
    """Bytes that are not UTF-8, from a file or from stdin: one line and exit 2, no traceback."""
    config = _config(store, tmp_path)
    binary = tmp_path / "pw.bin"
    binary.write_bytes(b"\xff\xfe not a text password\n")
    runner = CliRunner()
    from_file = runner.invoke(
        cli, ["--config", str(config), "users", "add", "kim", "--password-file", str(binary)]
    )
    assert from_file.exit_code == 2, from_file.output
    assert from_file.exception is None or isinstance(from_file.exception, SystemExit)
    assert "not UTF-8 text" in from_file.output
    from_stdin = runner.invoke(
        cli, ["--config", str(config), "users", "passwd", "sam"], input=binary.read_bytes()
    )
    assert from_stdin.exit_code == 2, from_stdin.output
    assert "not UTF-8 text" in from_stdin.output
    assert "Traceback" not in from_file.output + from_stdin.output


def test_a_server_error_page_carries_the_security_headers_too() -> None:
    """`triage web` serves the app wrapped once more in SecurityHeaders, outside Starlette's
    error middleware, whose 500 page would otherwise go out without them."""

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = SecurityHeaders(Starlette(routes=[Route("/", broken)]))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/")
    assert response.status_code == 500
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
