"""What the console's HTTP tests share: a store with users, a client, logging in, CSRF tokens.

`console` gives a Starlette TestClient over a fresh store (the repository's templates, the test
settings of test_leads) with two users: `sam` (sales) and `ada` (admin), both with PASSWORD.
`login(client, name)` logs in through the real form and returns the page's CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.test_leads import Store, make_settings
from triage.core.settings import Settings
from triage.web import accounts
from triage.web.app import build_app

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class ConsoleFixture:
    """A console over a test store: the client, the store, the settings."""

    client: TestClient
    store: Store
    settings: Settings

    def login(self, name: str, password: str = PASSWORD) -> str:
        """Log in as `name` through the login form; returns the CSRF token of the next page."""
        return login(self.client, name, password)

    def post(self, url: str, data: dict[str, Any], token: str, **kwargs: Any) -> Any:
        """POST a form with the CSRF token, not following redirects."""
        return self.client.post(
            url, data={**data, "csrf_token": token}, follow_redirects=False, **kwargs
        )


def token_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = _TOKEN.search(html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the CSRF token of the page it lands on."""
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token_of(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    landed = client.get("/leads")
    return token_of(landed.text) if landed.status_code == 200 else ""


def make_console(tmp_path: Path, **sections: dict[str, Any]) -> ConsoleFixture:
    """A console over a new store under `tmp_path` with users sam (sales) and ada (admin)."""
    settings = make_settings(tmp_path, **sections)
    store = Store(settings)
    accounts.add(store.db, "sam", "sales", PASSWORD, email="sam@example.test")
    accounts.add(store.db, "ada", "admin", PASSWORD, email="ada@example.test")
    client = TestClient(build_app(settings), base_url="http://127.0.0.1:8025")
    return ConsoleFixture(client, store, settings)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleFixture]:
    fixture = make_console(tmp_path)
    yield fixture
    fixture.client.close()
    fixture.store.close()
