"""An OAuth2 login asks for its token before it connects: while a credential waits for
`triage auth login`, the daemon looks again every few seconds (and the senders at every
delivery pass), and none of those looks may open a connection to the mail server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from triage.act.smtp import open_client
from triage.core.errors import ReauthorisationNeeded
from triage.core.settings import ImapAccount, OAuth2Settings, SmtpSettings
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.oauth.tokens import AccessToken

OAUTH2 = OAuth2Settings(provider="generic", token_url="http://127.0.0.1:1/token", client_id="c")


@dataclass
class Stuck:
    """A provider waiting for a person: every call raises at once."""

    name: str = "main"
    provider: str = "generic"
    needs_reauth: ReauthorisationNeeded | None = None

    def access_token(self, *, force: bool = False) -> AccessToken:
        raise ReauthorisationNeeded(self.name, "invalid_grant")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A server socket that never greets: a connection made to it is left pending."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_imap_asks_for_the_token_before_connecting(listener: socket.socket) -> None:
    account = ImapAccount(
        name="main",
        host="127.0.0.1",
        port=listener.getsockname()[1],
        security="plain",
        username="main",
        timeout=1,
        auth="oauth2",
        oauth2=OAUTH2,
    )
    with pytest.raises(ReauthorisationNeeded):
        ImapMailbox(account, Stuck()).connect()
    assert _connections(listener) == 0


def test_smtp_asks_for_the_token_before_connecting(listener: socket.socket) -> None:
    smtp = SmtpSettings(
        host="127.0.0.1",
        port=listener.getsockname()[1],
        security="plain",
        username="main",
        timeout=1,
        auth="oauth2",
        oauth2=OAUTH2,
    )
    with pytest.raises(ReauthorisationNeeded):
        open_client(smtp, "triage.test", tokens=Stuck())
    assert _connections(listener) == 0
