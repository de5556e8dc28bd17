"""OAuth2 settings: auth = "oauth2" per IMAP account and SMTP, the provider tables, and the one
line per mistake that `check-config` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from triage.core.errors import ConfigError
from triage.core.settings import OAuth2Settings, load_settings, masked

BASE = """
[store]
path = "{tmp}/triage.db"

[imap]
name = "{primary}"
host = "127.0.0.1"
username = "hello@example.com"
{imap_auth}

[smtp]
host = "127.0.0.1"
{smtp}
"""

GENERIC = """auth = "oauth2"
[imap.oauth2]
provider = "generic"
token_url = "http://127.0.0.1:9/token"
client_id = "triage"
client_secret_file = "{tmp}/no-such-secret"
"""


def write(tmp_path: Path, imap_auth: str = GENERIC, smtp: str = "", extra: str = "") -> Path:
    path = tmp_path / "triage.toml"
    text = BASE.format(tmp=tmp_path, primary="main", imap_auth=imap_auth, smtp=smtp) + extra
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return str(caught.value).splitlines()


def test_an_oauth2_account_needs_no_password_and_reads_no_secret(tmp_path: Path) -> None:
    """The client secret file is read when a token is needed, not when settings load: a process
    that never logs in (the console) does not need it, and it may not exist yet."""
    settings = load_settings(write(tmp_path), environ={})
    (account,) = settings.imap.all_accounts()
    assert account.auth == "oauth2"
    assert account.oauth2 is not None and account.oauth2.provider == "generic"
    assert account.password is None
    with pytest.raises(ConfigError, match="cannot read client_secret_file"):
        account.oauth2.client_secret()


def test_client_secret_file_open_to_others_is_refused_when_read(tmp_path: Path) -> None:
    secret = tmp_path / "no-such-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    settings = load_settings(write(tmp_path), environ={})
    assert settings.imap.oauth2 is not None
    with pytest.raises(ConfigError, match="open to other users"):
        settings.imap.oauth2.client_secret()
    secret.chmod(0o600)
    assert settings.imap.oauth2.client_secret() == "s3cret"


def test_auth_oauth2_without_a_table_and_a_table_without_oauth2(tmp_path: Path) -> None:
    lines = problems(write(tmp_path, imap_auth='auth = "oauth2"'))
    assert any("imap: auth = 'oauth2' needs an oauth2 table" in line for line in lines)
    table_only = GENERIC.replace('auth = "oauth2"', 'password = "pw"')
    lines = problems(write(tmp_path, imap_auth=table_only))
    assert any("an oauth2 table needs auth = 'oauth2'" in line for line in lines)


def test_a_password_next_to_oauth2_is_refused(tmp_path: Path) -> None:
    """A password that would never be used is refused rather than kept as a false fallback."""
    lines = problems(write(tmp_path, imap_auth='password = "pw"\n' + GENERIC))
    assert any("password and password_file are not used" in line for line in lines)


@pytest.mark.parametrize(
    ("table", "missing"),
    [
        ('provider = "generic"', ["token_url", "client_id"]),
        ('provider = "microsoft-app"', ["tenant", "client_id", "client_secret_file or certif"]),
        ('provider = "microsoft-delegated"', ["tenant", "client_id"]),
        ('provider = "google"', ["client_id", "client_secret_file"]),
        ('provider = "google-service-account"', ["service_account_file"]),
    ],
)
def test_each_provider_names_every_missing_field_on_its_own_line(
    tmp_path: Path, table: str, missing: list[str]
) -> None:
    path = write(tmp_path, imap_auth=f'auth = "oauth2"\n[imap.oauth2]\n{table}\n')
    lines = problems(path)
    for field in missing:
        assert sum(field in line for line in lines) == 1, (field, lines)
    assert all(line.startswith("setting imap") for line in lines)


def test_token_urls_must_be_https_except_to_loopback() -> None:
    ok = {"provider": "generic", "client_id": "c"}
    OAuth2Settings.model_validate(ok | {"token_url": "https://idp.example/token"})
    OAuth2Settings.model_validate(ok | {"token_url": "http://127.0.0.1:8080/token"})
    OAuth2Settings.model_validate(ok | {"token_url": "http://localhost/token"})
    for bad in ("http://idp.example/token", "http://127.attacker.example/t", "ftp://x/y", "x"):
        with pytest.raises(ValueError, match="must be an https:// address"):
            OAuth2Settings.model_validate(ok | {"token_url": bad})
    with pytest.raises(ValueError, match="authority must be an https"):
        OAuth2Settings(
            provider="microsoft-app",
            tenant="t",
            client_id="c",
            client_secret_file=Path("/x"),
            authority="http://login.example/t",
        )


def test_provider_defaults() -> None:
    google = OAuth2Settings(provider="google", client_id="c", client_secret_file=Path("/x"))
    assert google.effective_token_url() == "https://oauth2.googleapis.com/token"
    assert google.effective_scope() == ("https://mail.google.com/",)
    app = OAuth2Settings(
        provider="microsoft-app", tenant="contoso", client_id="c", client_secret_file=Path("/x")
    )
    assert app.effective_authority() == "https://login.microsoftonline.com/contoso"
    assert app.effective_scope() == ("https://outlook.office365.com/.default",)
    assert app.refresh_margin == 300


def test_smtp_shares_an_imap_accounts_credential(tmp_path: Path) -> None:
    smtp = 'auth = "oauth2"\noauth2_account = "main"'
    settings = load_settings(write(tmp_path, smtp=smtp), environ={})
    assert settings.smtp.auth == "oauth2"
    assert settings.smtp_username() == "hello@example.com"


def test_smtp_oauth2_account_must_name_an_oauth2_imap_account(tmp_path: Path) -> None:
    smtp = 'auth = "oauth2"\noauth2_account = "other"'
    lines = problems(write(tmp_path, smtp=smtp))
    assert any("smtp.oauth2_account 'other' is not an IMAP account" in line for line in lines)
    password_imap = 'password = "pw"'
    smtp = 'auth = "oauth2"\noauth2_account = "main"'
    lines = problems(write(tmp_path, imap_auth=password_imap, smtp=smtp))
    assert any("does not use auth = 'oauth2'" in line for line in lines)
    lines = problems(write(tmp_path, smtp='oauth2_account = "main"'))
    assert any("oauth2_account needs auth = 'oauth2'" in line for line in lines)


def test_smtp_with_its_own_table(tmp_path: Path) -> None:
    smtp = (
        'auth = "oauth2"\nusername = "hello@example.com"\n[smtp.oauth2]\n'
        'provider = "google-service-account"\nservice_account_file = "/etc/triage/sa.json"\n'
    )
    settings = load_settings(write(tmp_path, smtp=smtp), environ={})
    assert settings.smtp.oauth2 is not None
    assert settings.smtp.oauth2.provider == "google-service-account"
    no_user = smtp.replace('username = "hello@example.com"\n', "")
    lines = problems(write(tmp_path, smtp=no_user))
    assert any("username is required" in line for line in lines)


def test_accounts_mix_password_and_oauth2(tmp_path: Path) -> None:
    """Each account chooses; all_accounts() keeps the primary's oauth2 table."""
    extra = """
[[imap.accounts]]
name = "sales"
host = "127.0.0.1"
username = "sales@example.com"
password = "pw"

[[imap.accounts]]
name = "ms"
host = "127.0.0.1"
username = "ms@example.com"
auth = "oauth2"
[imap.accounts.oauth2]
provider = "microsoft-delegated"
tenant = "contoso"
client_id = "abc"
"""
    settings = load_settings(write(tmp_path, extra=extra), environ={})
    kinds = {
        a.name: (a.auth, a.oauth2.provider if a.oauth2 else None)
        for a in settings.imap.all_accounts()
    }
    assert kinds == {
        "main": ("oauth2", "generic"),
        "sales": ("password", None),
        "ms": ("oauth2", "microsoft-delegated"),
    }


def test_key_file_defaults_next_to_the_store(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path), environ={})
    assert settings.oauth2_key_file() == tmp_path / "oauth2.key"
    env = {"TRIAGE_OAUTH2__KEY_FILE": str(tmp_path / "k")}
    assert load_settings(write(tmp_path), environ=env).oauth2_key_file() == tmp_path / "k"


def test_settings_env_can_select_oauth2(tmp_path: Path) -> None:
    env = {
        "TRIAGE_IMAP__USERNAME": "u",
        "TRIAGE_IMAP__AUTH": "oauth2",
        "TRIAGE_IMAP__OAUTH2__PROVIDER": "google",
        "TRIAGE_IMAP__OAUTH2__CLIENT_ID": "cid",
        "TRIAGE_IMAP__OAUTH2__CLIENT_SECRET_FILE": str(tmp_path / "s"),
    }
    settings = load_settings(None, environ=env)
    assert settings.imap.oauth2 is not None and settings.imap.oauth2.provider == "google"


def test_check_config_shows_auth_kinds_and_no_secret(tmp_path: Path) -> None:
    """check-config prints each login's kind and provider; no secret file's content."""
    secret = tmp_path / "no-such-secret"
    secret.write_text("very-secret-client-value\n")
    secret.chmod(0o600)
    smtp = 'auth = "oauth2"\noauth2_account = "main"'
    path = write(tmp_path, smtp=smtp)
    run = subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(path), "check-config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "imap account main: oauth2 (generic)" in run.stdout
    assert "smtp: oauth2 with account main's credential" in run.stdout
    assert "very-secret-client-value" not in run.stdout + run.stderr
    data = masked(load_settings(path, environ={}))
    assert "very-secret-client-value" not in json.dumps(data, default=str)


def test_mechanism_defaults_to_xoauth2_and_accepts_oauthbearer() -> None:
    table = {"provider": "generic", "token_url": "https://idp.example/t", "client_id": "c"}
    assert OAuth2Settings.model_validate(table).mechanism == "xoauth2"
    bearer = OAuth2Settings.model_validate(table | {"mechanism": "oauthbearer"})
    assert bearer.mechanism == "oauthbearer"
    with pytest.raises(ValueError, match="mechanism"):
        OAuth2Settings.model_validate(table | {"mechanism": "plain"})


def test_an_imap_account_named_smtp_clashes_with_smtp_oauth2(tmp_path: Path) -> None:
    """Credentials are named by IMAP account and `smtp`: the two may not share a name."""
    path = tmp_path / "t.toml"
    smtp = (
        'auth = "oauth2"\nusername = "u"\n[smtp.oauth2]\n'
        'provider = "google-service-account"\nservice_account_file = "/x"\n'
    )
    path = write(tmp_path, smtp=smtp)
    path.write_text(path.read_text().replace('name = "main"', 'name = "smtp"'))
    lines = problems(path)
    assert any("an IMAP account named 'smtp'" in line for line in lines)
