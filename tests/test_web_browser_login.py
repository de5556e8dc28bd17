"""The console's front door in a real browser: Debian's chromium against `triage web` started as
a real process. The login page loads its script and styles from the console itself without one
console error or CSP violation; a wrong password is refused with the message, a right one opens
a session; logout ends it; a keyboard is enough to log in; nothing is requested from elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.browser import (
    ConsoleServer,
    csp_violations,
    focused,
    log_in,
    log_of,
    screenshot,
    tab_to,
)
from tests.web_support import PASSWORD
from triage.web.app import SESSION_COOKIE

if TYPE_CHECKING:
    from playwright.sync_api import Page


def _session_cookie(page: Page) -> dict[str, object] | None:
    for cookie in page.context.cookies():
        if cookie.get("name") == SESSION_COOKIE:
            return dict(cookie)
    return None


def test_the_login_page_loads_htmx_and_styles_without_errors_or_csp_violations(
    page: Page, web_server: ConsoleServer
) -> None:
    """Script and stylesheet come from /static, htmx 2 initialises under the strict CSP (no
    eval, no inline style), and the browser reports no error, warning or violation."""
    response = page.goto(f"{web_server.url}/login")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_load_state("load")
    version = page.evaluate("() => window.htmx ? window.htmx.version : null")
    assert isinstance(version, str) and version.startswith("2."), version
    # The stylesheet applied: console.css is loaded and has rules.
    sheets = page.evaluate(
        "() => Array.from(document.styleSheets).map(s => [s.href, s.cssRules.length])"
    )
    assert [href for href, rules in sheets if rules > 0] == [f"{web_server.url}/static/console.css"]
    assert page.locator("input[name=username]").is_visible()
    screenshot(page, "login")
    log = log_of(page)
    assert csp_violations(page) == []
    assert log.failed == []
    assert log.console_errors() == []
    assert log.errors == []


def test_a_wrong_password_shows_the_message_and_opens_no_session(
    page: Page, web_server: ConsoleServer
) -> None:
    log_in(page, web_server.url, "sam", "not the password at all")
    assert page.url == f"{web_server.url}/login"
    assert page.locator("p.error[role=alert]").inner_text() == "wrong user name or password"
    # The name typed stays, the password does not.
    assert page.input_value("input[name=username]") == "sam"
    assert page.input_value("input[name=password]") == ""
    assert _session_cookie(page) is None
    assert csp_violations(page) == []
    assert log_of(page).errors == []


def test_the_right_password_lands_on_the_leads_with_a_safe_session_cookie(
    page: Page, web_server: ConsoleServer
) -> None:
    log_in(page, web_server.url, "sam")
    assert page.url == f"{web_server.url}/leads"
    cookie = _session_cookie(page)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # plain http on loopback: no web.base_url
    # Scripts cannot read it.
    assert SESSION_COOKIE not in page.evaluate("() => document.cookie")


def test_no_request_leaves_the_console(page: Page, web_server: ConsoleServer) -> None:
    """Every URL the browser asks for, through a failed and a successful login, is the console's
    own (or inline data:): no CDN, no font service, no tracker."""
    log_in(page, web_server.url, "ada", "wrong password here")
    log_in(page, web_server.url, "ada")
    page.goto(f"{web_server.url}/login")
    requests = log_of(page).requests
    assert any(url.endswith("/static/htmx.min.js") for url in requests)
    assert any(url.endswith("/static/console.css") for url in requests)
    foreign = [
        url
        for url in requests
        if not (url.startswith(web_server.url + "/") or url.startswith("data:"))
    ]
    assert foreign == []


def test_logout_ends_the_session(page: Page, web_server: ConsoleServer) -> None:
    """The "Log out" button of the page header ends the session: back at the login page, and
    a page asked for afterwards sends to the login again. (Skipped in a build without the lead
    queue, the page "/" leads to.)"""
    log_in(page, web_server.url, "sam")
    page.goto(f"{web_server.url}/")
    button = page.get_by_role("button", name="Log out")
    if button.count() == 0:
        # The header with the button is on every page of a logged-in user; "/" leads to the
        # lead queue, which is not part of every build of the console.
        pytest.skip("the lead queue page, which shows the logout button, is not in this build")
    # The header of a logged-in page (the CSRF header for HTMX on <body>) violates nothing.
    assert csp_violations(page) == []
    assert log_of(page).errors == []
    with page.expect_navigation():
        button.click()
    assert page.url == f"{web_server.url}/login"
    assert _session_cookie(page) is None
    page.goto(f"{web_server.url}/leads")
    assert page.url.startswith(f"{web_server.url}/login?next=")


def test_keyboard_only_login(page: Page, web_server: ConsoleServer) -> None:
    """Tab to the name, type it, Tab to the password, type it, Enter: logged in."""
    page.goto(f"{web_server.url}/login")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    tab_to(page, "input[name=username]")
    page.keyboard.type("sam")
    page.keyboard.press("Tab")
    assert focused(page) == "input:password"
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == f"{web_server.url}/leads"
    assert _session_cookie(page) is not None
