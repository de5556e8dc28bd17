"""OAuth2 mailboxes end to end: `triage run` signs in to the harness's real Dovecot (IMAP IDLE)
and Postfix (submission) with XOAUTH2 tokens of the local OAuth2 server (devtools.oauthserver),
which issues access tokens living 30 s and rotates the refresh token on every use."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from devtools.oauthserver import OAuthServer
from tests.mailtools import ROOT, DaemonStarter, inquiry, replies_in, triage, wait_until
from tests.test_service_run import get
from triage.ingest.oauth.grants import GrantStore

pytestmark = [pytest.mark.mail, pytest.mark.slow]

CLIENT, SECRET = "triage-e2e", "e2e-client-secret"

ACCOUNT = """
{table}
name = "{name}"
host = "127.0.0.1"
port = {imaps_port}
security = "tls"
ca_file = "{ca_file}"
username = "{name}"
auth = "oauth2"
idle = true
poll_interval = 60
[{table_oauth2}]
provider = "generic"
token_url = "{token_url}"
authorize_url = "{authorize_url}"
client_id = "{client}"
client_secret_file = "{base}/client.secret"
scope = ["imap", "smtp"]
"""

REST = """
[smtp]
host = "127.0.0.1"
port = {submission_port}
security = "starttls"
ca_file = "{ca_file}"
auth = "oauth2"
oauth2_account = "hello"

[store]
path = "{base}/triage.db"

[replies]
mode = "live"
from_address = "hello@example.test"
envelope_sender = "noreply@example.test"
our_addresses = ["hello@example.test", "other@example.test"]
company_name = "Example Furniture Ltd"

[daemon]
health_port = {health_port}
backoff_initial = 0.5
backoff_max = 2
admin_recipients = ["sales@example.test"]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def oauth_config(
    harness: MailHarness, oauth: OAuthServer, base: Path, accounts: tuple[str, ...]
) -> tuple[Path, int]:
    """Settings watching `accounts` (harness users) with OAuth2 sign-in, SMTP through the
    submission port on hello's grant, each grant imported the way an operator would
    (`triage auth import`); returns the config and its health port."""
    base.mkdir(parents=True, exist_ok=True)
    secret = base / "client.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg = harness.config
    values = {
        "imaps_port": cfg.imaps_port,
        "submission_port": cfg.submission_port,
        "ca_file": harness.ca_file,
        "token_url": oauth.token_url,
        "authorize_url": oauth.authorize_url,
        "client": CLIENT,
        "base": base,
    }
    text = ""
    for index, name in enumerate(accounts):
        table = "[imap]" if index == 0 else "[[imap.accounts]]"
        table_oauth2 = "imap.oauth2" if index == 0 else "imap.accounts.oauth2"
        text += ACCOUNT.format(table=table, table_oauth2=table_oauth2, name=name, **values)
    port = free_port()
    path = base / "triage.toml"
    path.write_text(text + REST.format(health_port=port, **values))
    oauth.register_client(CLIENT, SECRET)
    for name in accounts:
        token_file = base / f"{name}.refresh"
        token_file.write_text(oauth.grant(CLIENT, name, scope="imap smtp") + "\n")
        token_file.chmod(0o600)
        result = triage(path, "auth", "import", name, "--refresh-token-file", str(token_file))
        assert result.returncode == 0, result.stderr
        token_file.unlink()
    first = triage(path, "once")  # the baseline of the empty mailboxes, signed in by OAuth2
    assert first.returncode == 0, first.stderr
    return path, port


def stored_refresh_token(base: Path, name: str) -> str:
    grant = GrantStore(base / "triage.db", base / "oauth2.key").read(name)
    assert grant is not None
    return grant.secret


def send_inquiry(harness: MailHarness, prospect: str, to: str, n: int) -> None:
    sender = harness.address(prospect)
    harness.send(inquiry(sender, harness.address(to), n), sender, harness.address(to))


def healthz(port: int) -> tuple[int, str]:
    return get(f"http://127.0.0.1:{port}/healthz")


PROSPECTS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def test_three_minutes_of_30_second_tokens_keep_idle_and_replies_working_across_a_restart(
    mail_harness: MailHarness,
    clean_mail: None,
    oauth: OAuthServer,
    daemon_factory: DaemonStarter,
    tmp_path: Path,
) -> None:
    """For three minutes, with access tokens that live 30 s, an inquiry arrives every 18 s: each
    is pushed by IDLE and answered once through Postfix's submission port, both signed in with
    XOAUTH2, across every token rollover and across a restart of the daemon half-way (which
    resumes with the stored refresh token, no new sign-in). Throughout, the refresh token in
    the store is the latest one the server issued, although every refresh rotates it."""
    assert oauth.access_ttl == 30.0
    base = tmp_path / "triage"
    config, port = oauth_config(mail_harness, oauth, base, ("hello",))
    daemon = daemon_factory(config)
    wait_until(lambda: healthz(port)[0] == 200, 60)
    issued_at_start = len(oauth.refresh_tokens_issued("hello"))
    started = time.monotonic()
    answered_within: list[float] = []
    for n, prospect in enumerate(PROSPECTS):
        if n == len(PROSPECTS) // 2:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
            daemon = daemon_factory(config)
            wait_until(lambda: healthz(port)[0] == 200, 60)
        send_inquiry(mail_harness, prospect, "hello", n)
        sent = time.monotonic()
        wait_until(lambda p=prospect: len(replies_in(mail_harness, p)) == 1, 45, interval=0.5)
        answered_within.append(time.monotonic() - sent)
        # The store holds the newest refresh token (a rotation is saved as it arrives).
        wait_until(
            lambda: stored_refresh_token(base, "hello") == oauth.latest_refresh_token("hello"), 5
        )
        time.sleep(max(0.0, started + 18 * (n + 1) - time.monotonic()))
    assert time.monotonic() - started >= 180
    assert all(len(replies_in(mail_harness, p)) == 1 for p in PROSPECTS)  # answered once
    rollovers = len(oauth.refresh_tokens_issued("hello")) - issued_at_start
    assert rollovers >= 6, rollovers  # 30 s tokens over 3 minutes, for IMAP and SMTP
    assert stored_refresh_token(base, "hello") == oauth.latest_refresh_token("hello")
    assert max(answered_within) < 30, answered_within
    assert healthz(port)[0] == 200
    logs = "".join(p.read_text() for p in tmp_path.glob("daemon-*.log"))
    assert "renewing the session before its access token expires" in logs
    for token in oauth.refresh_tokens_issued("hello"):
        assert token not in logs


def sign_in(config: Path, oauth: OAuthServer, name: str) -> str:
    """`triage auth login NAME` as a person runs it: open the printed address in a browser
    (here: the server redirects at once, the user having consented) and wait."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage", "--config", str(config), "auth", "login", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        if line.startswith(oauth.authorize_url + "?"):
            url = line.strip()
            break
    assert url, "auth login printed no address"
    oauth.approve_next(name)
    with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - loopback
        assert page.status == 200
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_a_grant_answering_invalid_grant_stops_only_its_account_alerts_once_and_login_restores_it(
    mail_harness: MailHarness,
    clean_mail: None,
    oauth: OAuthServer,
    daemon_factory: DaemonStarter,
    tmp_path: Path,
) -> None:
    """Two OAuth2 mailboxes. The token endpoint starts answering `invalid_grant` for `other`:
    /healthz turns 503 naming `other`, the provider's error code and the command to run;
    exactly one alert reaches the administrators' real mailbox; `hello` keeps answering. Then
    `triage auth login other` (the generic provider's browser sign-in) restores `other` while
    the daemon runs: healthy again, and its mail is answered."""
    base = tmp_path / "triage"
    config, port = oauth_config(mail_harness, oauth, base, ("hello", "other"))
    daemon_factory(config)
    wait_until(lambda: healthz(port)[0] == 200, 60)

    oauth.fail_grants("other")
    # The next refresh of `other` (its session is renewed before the 30 s token expires).
    wait_until(lambda: "other: needs re-authorisation" in healthz(port)[1], 60, interval=0.5)
    status, body = healthz(port)
    assert status == 503
    assert body == (
        "other: needs re-authorisation (generic: invalid_grant): run `triage auth login other`\n"
    )
    mail_harness.wait_for_messages("sales", count=1, timeout=30)
    [alert] = replies_in(mail_harness, "sales")
    assert alert["Subject"] == "triage: other needs re-authorisation (invalid_grant)"
    part = alert.get_body(preferencelist=("plain",))
    assert part is not None and "triage auth login other" in part.get_content()

    send_inquiry(mail_harness, "alice", "hello", 1)  # the other account goes on
    wait_until(lambda: len(replies_in(mail_harness, "alice")) == 1, 45, interval=0.5)

    oauth.clear_failures()
    printed = sign_in(config, oauth, "other")
    assert "other: signed in" in printed
    wait_until(lambda: healthz(port)[0] == 200, 30, interval=0.5)
    send_inquiry(mail_harness, "bob", "other", 2)
    wait_until(lambda: len(replies_in(mail_harness, "bob")) == 1, 45, interval=0.5)
    assert len(replies_in(mail_harness, "sales")) == 1  # one alert, no reminder yet
    assert stored_refresh_token(base, "other") == oauth.latest_refresh_token("other")


def test_a_config_mixing_password_and_oauth2_logins_validates_and_passes_doctor(
    mail_harness: MailHarness, clean_mail: None, oauth: OAuthServer, tmp_path: Path
) -> None:
    """`hello` signs in with its password, `other` with OAuth2, SMTP with a password on the
    submission port: `check-config` names each login's kind, `doctor` signs in to all three
    and passes, and the daemon's one pass handles both mailboxes."""
    base = tmp_path / "triage"
    config, _port = oauth_config(mail_harness, oauth, base, ("hello", "other"))
    cfg = mail_harness.config
    for name in ("hello", "smtp"):
        secret = base / f"{name}.password"
        secret.write_text(mail_harness.password("hello") + "\n")
        secret.chmod(0o600)
    text = config.read_text()
    # The primary account back to its password, and SMTP with a password login.
    text = text.replace(
        'username = "hello"\nauth = "oauth2"',
        f'username = "hello"\npassword_file = "{base}/hello.password"',
        1,
    )
    head, _, rest = text.partition("[imap.oauth2]")
    rest = rest[rest.index("\n[[imap.accounts]]") :]
    text = head + rest
    text = text.replace(
        'auth = "oauth2"\noauth2_account = "hello"',
        f'username = "hello"\npassword_file = "{base}/smtp.password"',
    )
    config.write_text(text)
    checked = triage(config, "check-config")
    assert checked.returncode == 0, checked.stderr
    assert "password" in checked.stdout and "oauth2 (generic)" in checked.stdout
    doctor = triage(config, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for row in ("imap hello: login", "imap other: login", "oauth2 other", "smtp"):
        assert row in doctor.stdout
    assert f"{cfg.host}:{cfg.submission_port}" in doctor.stdout
    send_inquiry(mail_harness, "alice", "hello", 1)
    send_inquiry(mail_harness, "bob", "other", 2)
    once = triage(config, "once")
    assert once.returncode == 0, once.stderr
    wait_until(lambda: len(replies_in(mail_harness, "alice")) == 1, 30, interval=0.5)
    wait_until(lambda: len(replies_in(mail_harness, "bob")) == 1, 30, interval=0.5)


def test_doctor_reports_a_failing_grant_without_recording_it(
    mail_harness: MailHarness, clean_mail: None, oauth: OAuthServer, tmp_path: Path
) -> None:
    """`triage doctor` while the token endpoint answers `invalid_grant`: a problem naming the
    command to run, exit 1; but nothing recorded in the store, so no administrators' alert
    follows from a check (run perhaps as another user than the daemon)."""
    base = tmp_path / "triage"
    config, _port = oauth_config(mail_harness, oauth, base, ("hello",))
    oauth.fail_grants("hello")
    doctor = triage(config, "doctor")
    assert doctor.returncode == 1
    assert "triage auth login hello" in doctor.stdout
    grant = GrantStore(base / "triage.db", base / "oauth2.key").row("hello")
    assert grant is not None and grant.state == "ok"
