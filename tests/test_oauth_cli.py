"""`triage auth login/import/status` end to end: the command in a subprocess, a browser played
by the test (GET the printed address; the fake endpoint's /authorize redirects to the command's
loopback listener), the grant stored encrypted, and nothing secret printed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.oauth_fake import CLIENT_ID, CLIENT_SECRET, FakeTokenServer, running
from triage.ingest.oauth.grants import GrantStore

CONFIG = """
[store]
path = "{tmp}/triage.db"

[imap]
name = "main"
host = "127.0.0.1"
username = "hello@example.com"
auth = "oauth2"
[imap.oauth2]
provider = "generic"
token_url = "{url}/token"
authorize_url = "{url}/authorize"
client_id = "{client_id}"
client_secret_file = "{tmp}/client.secret"
scope = ["mail"]
client_secret_expires = "2099-01-31"
{extra}

[[imap.accounts]]
name = "plain"
host = "127.0.0.1"
username = "plain@example.com"
password = "pw"
"""


@pytest.fixture
def fake() -> Iterator[FakeTokenServer]:
    with running(FakeTokenServer()) as server:
        yield server


def config(tmp_path: Path, fake: FakeTokenServer, extra: str = "") -> Path:
    secret = tmp_path / "client.secret"
    secret.write_text(CLIENT_SECRET + "\n")
    secret.chmod(0o600)
    path = tmp_path / "triage.toml"
    path.write_text(CONFIG.format(tmp=tmp_path, url=fake.url, client_id=CLIENT_ID, extra=extra))
    return path


def start(path: Path, *args: str) -> subprocess.Popen[str]:
    # Logging at DEBUG: not even the HTTP libraries' debug lines may show a code or token.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "triage",
            "--config",
            str(path),
            "--log-level",
            "DEBUG",
            "auth",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )


def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(path), "auth", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def read_url(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError("the command printed no address")


def browse(url: str) -> str:
    """What a browser does with the printed address: follow the redirects, show the page."""
    with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - loopback URL
        return str(page.read().decode())


def grants(tmp_path: Path) -> GrantStore:
    return GrantStore(tmp_path / "triage.db", tmp_path / "oauth2.key")


def no_secrets(text: str, fake: FakeTokenServer) -> None:
    assert fake.issued_refresh or fake.issued_codes  # something to look for
    for secret in [CLIENT_SECRET, *fake.issued_refresh, *fake.issued_access, *fake.issued_codes]:
        assert secret not in text


def test_login_with_the_loopback_redirect_stores_the_grant(
    tmp_path: Path, fake: FakeTokenServer
) -> None:
    path = config(tmp_path, fake)
    proc = start(path, "login", "main", "--timeout", "30")
    url = read_url(proc, f"{fake.url}/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["mail"]
    assert urlsplit(query["redirect_uri"][0]).hostname == "127.0.0.1"
    # The "browser": /authorize redirects to the command's listener, which says we may close.
    assert "Signed in" in browse(url)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "main: signed in" in out
    stored = grants(tmp_path).read("main")
    assert stored is not None and stored.secret == fake.issued_refresh[-1]
    assert (tmp_path / "oauth2.key").stat().st_mode & 0o777 == 0o600
    exchange = fake.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and exchange["code_verifier"]
    no_secrets(url + out + err, fake)


def test_login_refuses_a_redirect_with_another_state(tmp_path: Path, fake: FakeTokenServer) -> None:
    path = config(tmp_path, fake)
    proc = start(path, "login", "main", "--timeout", "30")
    url = read_url(proc, f"{fake.url}/authorize?")
    redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    forged = redirect + "?" + urlencode({"code": "stolen-code", "state": "forged"})
    browse(forged)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        "triage: main: the redirect's state does not match this login; try again"
    ]
    assert "stolen-code" not in out + err
    assert grants(tmp_path).row("main") is None


def test_login_times_out_with_one_line(tmp_path: Path, fake: FakeTokenServer) -> None:
    result = run(config(tmp_path, fake), "login", "main", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == "triage: main: no sign-in within 1 s"


def test_device_flow_when_configured(tmp_path: Path, fake: FakeTokenServer) -> None:
    extra = f'device_authorization_url = "{fake.url}/device"'
    path = config(tmp_path, fake, extra)
    proc = start(path, "login", "main", "--timeout", "30")
    line = read_url(proc, "Open ")
    assert "ABCD-EFGH" in line
    fake.approve_devices()
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stored = grants(tmp_path).read("main")
    assert stored is not None and stored.secret == fake.issued_refresh[-1]


def test_login_clears_needs_reauth_and_a_running_provider_recovers(
    tmp_path: Path, fake: FakeTokenServer
) -> None:
    """The acceptance scenario in small: invalid_grant, then `triage auth login` in another
    process, and the same provider object gets tokens again without a restart."""
    from triage.core.errors import ReauthorisationNeeded
    from triage.core.settings import load_settings
    from triage.ingest.oauth.providers import build_providers

    path = config(tmp_path, fake)
    store = grants(tmp_path)
    store.store("main", "generic", "a-revoked-token")
    provider = build_providers(load_settings(path, environ={}), store)["main"]
    with pytest.raises(ReauthorisationNeeded):
        provider.access_token()
    proc = start(path, "login", "main", "--timeout", "30")
    browse(read_url(proc, f"{fake.url}/authorize?"))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert provider.access_token().token == fake.issued_access[-1]
    row = store.row("main")
    assert row is not None and row.state == "ok"


def test_import_refuses_a_file_open_to_others_and_status_reports(
    tmp_path: Path, fake: FakeTokenServer
) -> None:
    path = config(tmp_path, fake)
    token_file = tmp_path / "refresh.token"
    token_file.write_text("rt-imported-secret\n")
    token_file.chmod(0o644)
    refused = run(path, "import", "main", "--refresh-token-file", str(token_file))
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "open to other users" in refused.stderr
    token_file.chmod(0o600)
    done = run(path, "import", "main", "--refresh-token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    stored = grants(tmp_path).read("main")
    assert stored is not None and stored.secret == "rt-imported-secret"

    status = run(path, "status")
    assert status.returncode == 0, status.stderr
    assert "main: generic, ok" in status.stdout
    assert "client secret expires 2099-01-31" in status.stdout
    data = json.loads(run(path, "status", "--json").stdout)
    assert [d["name"] for d in data] == ["main"]
    assert data[0]["grant"] == "stored" and data[0]["client_secret_days_left"] > 10000
    for text in (status.stdout, status.stderr, json.dumps(data), done.stdout):
        assert "rt-imported-secret" not in text and CLIENT_SECRET not in text


def test_unknown_credential_is_one_line(tmp_path: Path, fake: FakeTokenServer) -> None:
    result = run(config(tmp_path, fake), "login", "plain")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "triage: no OAuth2 credential 'plain' (auth = 'oauth2' accounts: main)"
    )


def test_status_shows_needs_reauth_with_its_code(tmp_path: Path, fake: FakeTokenServer) -> None:
    path = config(tmp_path, fake)
    store = grants(tmp_path)
    store.store("main", "generic", "x")
    store.mark_needs_reauth("main", "generic", "invalid_grant")
    status = run(path, "status")
    assert "main: generic, needs-reauth, error invalid_grant since" in status.stdout
