"""The console's front door: login, sessions, CSRF, roles, security headers, `triage users`.

The pages here are two probes (one for anybody logged in, one for admins) so that these checks
do not depend on any page of the console; the pages' own tests use the real ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.testclient import TestClient
from typer.testing import CliRunner

from devtools.demo import store_toml
from tests.test_leads import Store, make_settings
from tests.web_support import PASSWORD, login, token_of
from triage.cli.main import app as cli
from triage.store import users as user_store
from triage.web import accounts
from triage.web.app import SESSION_COOKIE, Console, Page, build_app, core_pages, user_of

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")


async def _probe(request: Request, console: Console) -> Response:
    session = request.scope["triage.session"]
    return HTMLResponse(
        f'<p>hello {user_of(request).name}</p><form method="post">'
        f'<input name="csrf_token" value="{session.csrf_token}"></form>'
    )


async def _changed(request: Request, console: Console) -> Response:
    return HTMLResponse(f"changed {request.state.form.get('what')}")


PROBES = [
    *core_pages(),
    Page("/leads", _probe),
    Page("/leads/change", _changed, methods=("POST",)),
    Page("/admin-only", _probe, admin=True),
    Page("/admin-only/change", _changed, methods=("POST",), admin=True),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_settings(tmp_path, web={"max_failed_logins": 3}))
    accounts.add(s.db, "sam", "sales", PASSWORD)
    accounts.add(s.db, "ada", "admin", PASSWORD)
    yield s
    s.close()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(build_app(store.settings, pages=PROBES), base_url="http://127.0.0.1") as c:
        yield c


def test_every_page_redirects_to_login_until_logged_in(client: TestClient) -> None:
    """A GET without a session lands on /login with the page to come back to; a POST is 401."""
    response = client.get("/leads?status=new", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fleads%3Fstatus%3Dnew"
    assert client.post("/leads/change", data={"what": "x"}).status_code == 401
    assert client.get("/login").status_code == 200


def test_login_with_the_right_password_opens_a_session(client: TestClient) -> None:
    """The session cookie is HttpOnly and SameSite=Lax, not Secure over plain http."""
    page = client.get("/login?next=/leads")
    response = client.post(
        "/login",
        data={
            "username": "sam",
            "password": PASSWORD,
            "csrf_token": token_of(page.text),
            "next": "/leads",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/leads"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert "hello sam" in client.get("/leads").text


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(client: TestClient) -> None:
    """Both 401 with one message: the form does not tell which names exist."""
    answers = []
    for name, password in (("sam", "wrong password!"), ("nobody", PASSWORD)):
        page = client.get("/login")
        response = client.post(
            "/login",
            data={"username": name, "password": password, "csrf_token": token_of(page.text)},
        )
        assert response.status_code == 401
        answers.append(re.search(r'role="alert">([^<]+)<', response.text).group(1))  # type: ignore[union-attr]
    assert answers == ["wrong user name or password"] * 2


def test_the_login_form_needs_its_csrf_token(client: TestClient) -> None:
    client.get("/login")
    response = client.post(
        "/login", data={"username": "sam", "password": PASSWORD, "csrf_token": "forged"}
    )
    assert response.status_code == 403


def test_after_too_many_failures_even_the_right_password_is_refused(
    client: TestClient, store: Store
) -> None:
    """Three failures (the configured limit) lock the name for the window."""
    for _ in range(3):
        page = client.get("/login")
        client.post(
            "/login",
            data={
                "username": "sam",
                "password": "not it at all",
                "csrf_token": token_of(page.text),
            },
        )
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"username": "sam", "password": PASSWORD, "csrf_token": token_of(page.text)},
    )
    assert response.status_code == 401
    assert "too many failed logins" in response.text
    # After the window, the right password works again.
    later = datetime.now(UTC) + timedelta(minutes=16)
    user = accounts.login(store.db, "sam", PASSWORD, "testclient", accounts.LoginPolicy(3), later)
    assert user.name == "sam"


def test_a_post_without_the_session_csrf_token_is_refused(client: TestClient) -> None:
    token = login(client, "sam")
    assert client.post("/leads/change", data={"what": "x"}).status_code == 403
    assert client.post("/leads/change", data={"what": "x", "csrf_token": "nope"}).status_code == 403
    ok = client.post("/leads/change", data={"what": "x", "csrf_token": token})
    assert ok.status_code == 200 and ok.text == "changed x"
    # HTMX sends the token as a header instead.
    htmx = client.post("/leads/change", data={"what": "y"}, headers={"X-CSRF-Token": token})
    assert htmx.text == "changed y"


def test_sales_users_get_403_on_admin_pages_and_posts(client: TestClient) -> None:
    token = login(client, "sam")
    assert client.get("/admin-only").status_code == 403
    response = client.post("/admin-only/change", data={"what": "x", "csrf_token": token})
    assert response.status_code == 403
    client.cookies.clear()
    token = login(client, "ada")
    assert client.get("/admin-only").status_code == 200
    assert client.post("/admin-only/change", data={"what": "x", "csrf_token": token}).text == (
        "changed x"
    )


def test_logout_ends_the_session_even_for_a_kept_cookie(client: TestClient) -> None:
    token = login(client, "sam")
    kept = client.cookies.get(SESSION_COOKIE)
    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, kept or "")
    assert client.get("/leads", follow_redirects=False).status_code == 303


def test_a_removed_user_or_changed_password_ends_their_sessions(
    client: TestClient, store: Store
) -> None:
    login(client, "sam")
    accounts.set_password(store.db, "sam", "another long password")
    assert client.get("/leads", follow_redirects=False).status_code == 303
    login(client, "sam", "another long password")
    accounts.remove(store.db, "sam")
    assert client.get("/leads", follow_redirects=False).status_code == 303


def test_an_expired_session_is_not_accepted(client: TestClient, store: Store) -> None:
    login(client, "sam")
    with store.db.transaction() as c:
        c.execute("UPDATE web_sessions SET expires_at = '2000-01-01T00:00:00.000000+00:00'")
    assert client.get("/leads", follow_redirects=False).status_code == 303


def test_a_forged_session_cookie_is_worth_nothing(client: TestClient, store: Store) -> None:
    login(client, "sam")
    [row] = store.db.reads.execute("SELECT id FROM web_sessions").fetchall()
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, row[0])  # the id itself, unsigned
    assert client.get("/leads", follow_redirects=False).status_code == 303


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for response in (client.get("/login"), client.get("/static/console.css")):
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"


def test_login_never_redirects_to_another_site(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"):
        page = client.get("/login")
        response = client.post(
            "/login",
            data={
                "username": "sam",
                "password": PASSWORD,
                "csrf_token": token_of(page.text),
                "next": target,
            },
            follow_redirects=False,
        )
        assert response.headers["location"] == "/", target
        client.cookies.clear()


def test_https_base_url_makes_the_session_cookie_secure(tmp_path: Path) -> None:
    s = Store(make_settings(tmp_path, web={"base_url": "https://triage.example.com"}))
    accounts.add(s.db, "sam", "sales", PASSWORD)
    with TestClient(build_app(s.settings, pages=PROBES), base_url="https://127.0.0.1") as c:
        page = c.get("/login")
        response = c.post(
            "/login",
            data={"username": "sam", "password": PASSWORD, "csrf_token": token_of(page.text)},
            follow_redirects=False,
        )
        assert "Secure" in response.headers["set-cookie"]
    s.close()


def test_passwords_are_stored_as_argon2id_hashes(store: Store) -> None:
    user = user_store.get_user(store.db.reads, "sam")
    assert user is not None and user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


def test_users_cli_adds_lists_changes_and_removes(store: Store, tmp_path: Path) -> None:
    """`triage users` with a password file; every change lands in the audit log."""
    config = tmp_path / "triage.toml"
    config.write_text(
        '[imap]\nusername = "hello"\npassword = "pw"\n' + store_toml(store.settings.store)
    )
    secret = tmp_path / "pw.txt"
    secret.write_text("a long enough password\n")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["--config", str(config), "users", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "added lee (admin)" in run(
        "add", "lee", "--role", "admin", "--password-file", str(secret)
    )
    assert re.search(r"^lee\s+admin", run("list"), re.MULTILINE)
    run("role", "lee", "sales")
    run("passwd", "lee", "--password-file", str(secret))
    run("remove", "lee")
    refused = runner.invoke(cli, ["--config", str(config), "users", "remove", "lee"])
    assert refused.exit_code == 2 and "no user lee" in refused.output
    short = tmp_path / "short.txt"
    short.write_text("short")
    weak = runner.invoke(
        cli, ["--config", str(config), "users", "add", "kim", "--password-file", str(short)]
    )
    assert weak.exit_code == 2 and "at least 10 characters" in weak.output
    actions = [
        r[0] for r in store.db.reads.execute("SELECT action FROM audit WHERE target = 'lee'")
    ]
    assert actions == ["user.add", "user.role", "user.password", "user.remove"]


def test_user_names_are_unique_whatever_their_case(store: Store) -> None:
    with pytest.raises(accounts.AccountError, match="user Sam exists already"):
        accounts.add(store.db, "Sam", "sales", PASSWORD)


def test_a_new_password_lets_a_locked_out_user_in_again(store: Store) -> None:
    """Guessers can lock a known name for the window; `triage users passwd` unlocks it."""
    policy = accounts.LoginPolicy(3)
    for _ in range(3):
        with pytest.raises(accounts.AccountError):
            accounts.login(store.db, "sam", "wrong guess!!", "198.51.100.7", policy)
    with pytest.raises(accounts.AccountError, match="too many failed logins"):
        accounts.login(store.db, "sam", PASSWORD, "203.0.113.9", policy)
    accounts.set_password(store.db, "sam", "a brand new password")
    assert accounts.login(store.db, "sam", "a brand new password", "203.0.113.9", policy).name == (
        "sam"
    )
