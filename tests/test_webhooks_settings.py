"""`[[webhooks]]` settings: a whsec_ secret in a private file (several for rotation), known
events, https (http only to this machine unless allowed), unique names; every mistake is one
line naming the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.webhook_receiver import new_secret, secret_file
from triage.core.errors import ConfigError
from triage.core.settings import WEBHOOK_EVENTS, Settings, load_settings, masked

IMAP = '[imap]\nusername = "hello"\npassword = "pw"\n'


def load(tmp_path: Path, hooks: str) -> Settings:
    path = tmp_path / "triage.toml"
    path.write_text(IMAP + hooks)
    return load_settings(path, environ={})


def hook(url: str, secret: Path, extra: str = "", name: str = "crm") -> str:
    return f'\n[[webhooks]]\nname = "{name}"\nurl = "{url}"\nsecret_file = "{secret}"\n{extra}'


def test_an_endpoint_with_a_private_secret_loads_with_every_event(tmp_path: Path) -> None:
    """Defaults: all four events, 10 s timeout, 72 h of retries; the secret is read once and
    never shown by `triage config show` (masked)."""
    value = new_secret()
    path = secret_file(tmp_path, value)
    settings = load(tmp_path, hook("https://crm.example/hook", path))
    [w] = settings.webhooks
    assert w.events == WEBHOOK_EVENTS and w.timeout == 10 and w.max_age_hours == 72
    assert w.secrets() == (value,)
    assert value not in json.dumps(masked(settings), default=str)


def test_rotation_reads_every_secret_file(tmp_path: Path) -> None:
    old, new = new_secret(), new_secret()
    first = secret_file(tmp_path, old, "old.secret")
    second = secret_file(tmp_path, new, "new.secret")
    settings = load(
        tmp_path, hook("https://crm.example/hook", first, f'secret_files = ["{second}"]\n')
    )
    assert settings.webhooks[0].secrets() == (old, new)


@pytest.mark.parametrize(
    ("url", "extra", "message"),
    [
        ("http://crm.example/hook", "", "url is http:// to another host"),
        ("ftp://crm.example/hook", "", "url must be an https:// address"),
        ("https://user:pw@crm.example/hook", "", "must not hold a user name or password"),
        ("https://crm.example/hook", 'events = ["lead.deleted"]\n', "unknown events lead.deleted"),
        ("https://crm.example/hook", "timeout = 0\n", "timeout"),
    ],
)
def test_mistakes_are_one_line_each(tmp_path: Path, url: str, extra: str, message: str) -> None:
    path = secret_file(tmp_path, new_secret())
    with pytest.raises(ConfigError, match=message) as caught:
        load(tmp_path, hook(url, path, extra))
    assert all(line.startswith("setting webhooks.0") for line in str(caught.value).splitlines())


def test_http_to_loopback_is_allowed_and_elsewhere_with_allow_http(tmp_path: Path) -> None:
    path = secret_file(tmp_path, new_secret())
    assert load(tmp_path, hook("http://127.0.0.1:8090/hook", path))
    assert load(tmp_path, hook("http://crm.lan/hook", path, "allow_http = true\n"))


def test_the_secret_file_must_be_private_and_hold_a_whsec_secret(tmp_path: Path) -> None:
    path = secret_file(tmp_path, new_secret())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="is open to other users"):
        load(tmp_path, hook("https://crm.example/hook", path))
    plain = secret_file(tmp_path, "hunter2", "plain.secret")
    with pytest.raises(ConfigError, match=r"does not hold a whsec_\.\.\. secret"):
        load(tmp_path, hook("https://crm.example/hook", plain))
    with pytest.raises(ConfigError, match=r"secret_file \(or secret_files\) is required"):
        load(tmp_path, '\n[[webhooks]]\nname = "crm"\nurl = "https://crm.example/hook"\n')


def test_names_are_unique(tmp_path: Path) -> None:
    path = secret_file(tmp_path, new_secret())
    twice = hook("https://a.example/", path) + hook("https://b.example/", path)
    with pytest.raises(ConfigError, match="webhook names must be unique"):
        load(tmp_path, twice)
