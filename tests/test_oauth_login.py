"""The IMAP and SMTP logins with an access token, against the harness's real Dovecot and
Postfix checking tokens of the local OAuth2 server: XOAUTH2 and OAUTHBEARER, one retry with a
fresh token after a refusal, and refusals that never show the token."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from devtools.mailharness import MailHarness
from devtools.oauthserver import OAuthServer
from triage.act.smtp import connect
from triage.core.errors import AuthenticationError, ReauthorisationNeeded
from triage.core.settings import ImapAccount, OAuth2Settings, SmtpSettings
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.oauth.tokens import AccessToken

pytestmark = pytest.mark.mail


@dataclass
class Tokens:
    """A token provider handing out the given tokens in turn (the last one again once used up):
    the login code's view of a provider, without the grant bookkeeping."""

    tokens: list[str]
    asked: list[bool] = field(default_factory=list)
    name: str = "hello"
    provider: str = "generic"
    needs_reauth: ReauthorisationNeeded | None = None

    def access_token(self, *, force: bool = False) -> AccessToken:
        self.asked.append(force)
        token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
        return AccessToken(token, datetime.now(UTC) + timedelta(seconds=30))


def account(
    harness: MailHarness, mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
) -> ImapAccount:
    cfg = harness.config
    return ImapAccount(
        name="hello",
        host=cfg.host,
        port=cfg.imaps_port,
        security="tls",
        ca_file=harness.ca_file,
        username="hello",
        auth="oauth2",
        oauth2=OAuth2Settings(
            provider="generic",
            token_url="http://127.0.0.1:1/token",
            client_id="c",
            mechanism=mechanism,
        ),
    )


def smtp_settings(harness: MailHarness) -> SmtpSettings:
    cfg = harness.config
    return SmtpSettings(
        host=cfg.host,
        port=cfg.submission_port,
        security="starttls",
        ca_file=harness.ca_file,
        username="hello",
        auth="oauth2",
        oauth2_account="hello",
    )


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_imap_signs_in_with_a_token_and_knows_when_its_session_expires(
    mail_harness: MailHarness, oauth: OAuthServer, mechanism: Literal["xoauth2", "oauthbearer"]
) -> None:
    """A valid token opens the mailbox with either mechanism; the session reports how long its
    token lasts (the daemon renews it before then). Dovecot checked the token by introspection."""
    tokens = Tokens([oauth.issue_access_token("hello")])
    seen = len(oauth.introspections())
    mailbox = ImapMailbox(account(mail_harness, mechanism), tokens)
    mailbox.connect()
    try:
        assert mailbox.select("INBOX").uidvalidity > 0
        left = mailbox.session_expires_in()
        assert left is not None and 20 < left <= 30
        assert mailbox.session_lifetime is not None
    finally:
        mailbox.close()
    assert mailbox.session_expires_in() is None
    assert tokens.asked == [False]
    assert oauth.introspections()[seen:] == [("hello", True)]


def test_imap_asks_for_a_fresh_token_once_after_a_refusal(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """A token the server refuses (expired, revoked) is replaced by a forced fresh one and the
    login tried once more: it succeeds without the caller noticing."""
    stale = oauth.issue_access_token("hello", ttl=0)
    tokens = Tokens([stale, oauth.issue_access_token("hello")])
    mailbox = ImapMailbox(account(mail_harness), tokens)
    mailbox.connect()
    mailbox.close()
    assert tokens.asked == [False, True]


def test_imap_refusing_every_token_is_an_authentication_error_without_the_token(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """Two refusals in a row: AuthenticationError (transient: the account backs off), whose
    text names the account but not the token."""
    bad = oauth.issue_access_token("hello", ttl=0)
    tokens = Tokens([bad])
    mailbox = ImapMailbox(account(mail_harness), tokens)
    with pytest.raises(AuthenticationError) as caught:
        mailbox.connect()
    assert "hello" in str(caught.value)
    assert bad not in str(caught.value)
    assert tokens.asked == [False, True]


def test_smtp_sends_with_xoauth2_and_retries_once_with_a_fresh_token(
    mail_harness: MailHarness, clean_mail: None, oauth: OAuthServer
) -> None:
    """AUTH XOAUTH2 on the submission port: a refused token gets the server's error challenge
    answered with an empty line (RFC 7628), then one more try with a forced fresh token, which
    sends the mail."""
    tokens = Tokens([oauth.issue_access_token("hello", ttl=0), oauth.issue_access_token("hello")])
    connection = connect(smtp_settings(mail_harness), tokens=tokens)
    try:
        raw = b"From: hello@example.test\r\nTo: alice@example.test\r\nSubject: t\r\n\r\nHi\r\n"
        assert connection.begin("hello@example.test", ["alice@example.test"], raw) == []
        connection.commit()
    finally:
        connection.close()
    assert tokens.asked == [False, True]
    mail_harness.wait_for_messages("alice", count=1, timeout=20)


def test_smtp_refusing_the_token_is_an_authentication_error_without_it(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """Every token refused: AuthenticationError with the server's code, never the token."""
    bad = oauth.issue_access_token("hello", ttl=0)
    with pytest.raises(AuthenticationError) as caught:
        connect(smtp_settings(mail_harness), tokens=Tokens([bad]))
    assert "535" in str(caught.value)
    assert bad not in str(caught.value)


@dataclass
class ShortSession:
    """A provider whose first token is about to expire (as a cached token is when
    `refresh_margin` is below the daemon's renewal lead): only a forced fetch gives a new one."""

    first: str
    fresh: str
    asked: list[bool] = field(default_factory=list)
    name: str = "hello"
    provider: str = "generic"
    needs_reauth: ReauthorisationNeeded | None = None

    def access_token(self, *, force: bool = False) -> AccessToken:
        self.asked.append(force)
        if force:
            return AccessToken(self.fresh, datetime.now(UTC) + timedelta(seconds=30))
        return AccessToken(self.first, datetime.now(UTC) + timedelta(seconds=1))


def test_a_renewed_session_signs_in_with_a_new_token_not_the_expiring_one(
    mail_harness: MailHarness, oauth: OAuthServer
) -> None:
    """The daemon renews an IMAP session shortly before its token expires. Signing in again
    with whatever the provider has cached may give the very token that is about to expire
    (with `refresh_margin` below the renewal lead), and the session is renewed again and again
    until it does: a renewal asks for a new token."""
    from triage.core.backoff import Backoff
    from triage.ops.daemon import AccountStatus, AccountWorker, Control

    tokens = ShortSession(oauth.issue_access_token("hello"), oauth.issue_access_token("hello"))
    acc = account(mail_harness)
    worker = AccountWorker(acc, lambda _a, _m: [], Control(), Backoff(), AccountStatus("hello"))
    mailbox = ImapMailbox(acc, tokens)
    try:
        worker.sync_once(mailbox)
        time.sleep(1.0)  # the session's token is now due for renewal
        worker.sync_once(mailbox)
        left = mailbox.session_expires_in()
    finally:
        mailbox.close()
    assert tokens.asked == [False, True]
    assert left is not None and left > 20


def test_smtp_signs_in_with_the_configured_oauthbearer(
    mail_harness: MailHarness, clean_mail: None, oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mechanism = "oauthbearer"` is documented for the mailbox logins, SMTP's included: the
    SMTP login uses it (a server may offer OAUTHBEARER alone), and the mail is sent."""
    import smtplib

    used: list[str] = []
    real_auth = smtplib.SMTP.auth

    def recording(self: smtplib.SMTP, mechanism: str, *args: Any, **kwargs: Any) -> Any:
        used.append(mechanism)
        return real_auth(self, mechanism, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "auth", recording)
    oauth2 = account(mail_harness, "oauthbearer").oauth2
    smtp = smtp_settings(mail_harness).model_copy(update={"oauth2_account": "", "oauth2": oauth2})
    connection = connect(smtp, tokens=Tokens([oauth.issue_access_token("hello")]))
    try:
        raw = b"From: hello@example.test\r\nTo: alice@example.test\r\nSubject: t\r\n\r\nHi\r\n"
        assert connection.begin("hello@example.test", ["alice@example.test"], raw) == []
        connection.commit()
    finally:
        connection.close()
    assert used == ["OAUTHBEARER"]
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
