"""Settings: TOML + TRIAGE_ environment + secret files, and `triage check-config`'s errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from triage.core.errors import ConfigError
from triage.core.settings import load_settings, masked

GOOD = """
[imap]
host = "127.0.0.1"
port = 10143
security = "plain"
username = "hello"
password_file = "{secret}"

[smtp]
host = "127.0.0.1"
port = 10025
security = "plain"
"""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "imap.pass"
    path.write_text("s3cret-pw\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def good_config(tmp_path: Path, secret: Path) -> Path:
    path = tmp_path / "triage.toml"
    path.write_text(GOOD.format(secret=secret))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage", *args],
        capture_output=True,
        text=True,
        env=env or {"PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_password_file_is_read_and_env_overrides_file(good_config: Path) -> None:
    """A password comes from password_file; TRIAGE_IMAP__PORT beats the TOML value."""
    settings = load_settings(good_config, environ={"TRIAGE_IMAP__PORT": "2143"})
    assert settings.imap.secret() == "s3cret-pw"
    assert settings.imap.port == 2143


def test_nested_env_sets_a_secret(tmp_path: Path) -> None:
    """Every setting can come from the environment alone, secrets included."""
    env = {
        "TRIAGE_IMAP__USERNAME": "hello",
        "TRIAGE_IMAP__PASSWORD": "from-env",
        "TRIAGE_IMAP__HOST": "127.0.0.1",
        "TRIAGE_STORE__PATH": str(tmp_path / "t.db"),
    }
    settings = load_settings(None, environ=env)
    assert settings.imap.secret() == "from-env"
    assert settings.store.path == tmp_path / "t.db"


def test_masked_hides_every_secret(good_config: Path) -> None:
    """The printable settings never contain a password."""
    settings = load_settings(good_config, environ={})
    text = repr(masked(settings))
    assert "s3cret-pw" not in text
    assert "********" in text


def test_plain_imap_to_a_remote_host_is_refused(tmp_path: Path, secret: Path) -> None:
    """Plain IMAP is allowed only to loopback unless explicitly allowed."""
    path = tmp_path / "t.toml"
    path.write_text(GOOD.format(secret=secret).replace('"127.0.0.1"', '"mail.example.com"', 1))
    with pytest.raises(ConfigError, match=r"imap: .*plain"):
        load_settings(path, environ={})


@pytest.mark.parametrize("host", ["127.attacker.example", "127.0.0.1.nip.io", "::1.example"])
def test_plain_to_a_name_that_only_looks_like_loopback_is_refused(
    tmp_path: Path, secret: Path, host: str
) -> None:
    """`127.attacker.example` is a name anyone can point anywhere: not loopback."""
    path = tmp_path / "t.toml"
    path.write_text(GOOD.format(secret=secret).replace('"127.0.0.1"', f'"{host}"', 1))
    with pytest.raises(ConfigError, match=r"imap: .*plain"):
        load_settings(path, environ={})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost", "LOCALHOST"])
def test_plain_to_loopback_is_allowed(tmp_path: Path, secret: Path, host: str) -> None:
    """Loopback addresses (127.0.0.0/8, ::1) and the name `localhost` need no allow_plain."""
    path = tmp_path / "t.toml"
    path.write_text(GOOD.format(secret=secret).replace('"127.0.0.1"', f'"{host}"', 1))
    assert load_settings(path, environ={}).imap.host == host


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620], ids=oct)
def test_a_password_file_open_to_other_users_is_refused(
    good_config: Path, secret: Path, mode: int
) -> None:
    """A password file group or others may read is a config error naming the file and the
    `chmod 600` that fixes it; `triage check-config` prints it as one line and exits 2."""
    secret.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_settings(good_config, environ={})
    assert f"run `chmod 600 {secret}`" in str(caught.value)
    assert str(caught.value).count("\n") == 0
    result = run_cli("--config", str(good_config), "check-config")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"triage: setting imap: password_file {secret} is open to other")
    assert f"chmod 600 {secret}" in line
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_a_password_file_of_mode_0400_is_accepted(good_config: Path, secret: Path) -> None:
    """Read-only for its owner is as private as 0600."""
    secret.chmod(0o400)
    assert load_settings(good_config, environ={}).imap.secret() == "s3cret-pw"


BROKEN = {
    "missing file": (None, "does not exist"),
    "bad toml": ("[imap\nhost = 1", "not valid TOML"),
    "unknown key": (
        GOOD + "\n[replies]\ncolour = 'red'\n",
        "setting replies.colour: unknown setting",
    ),
    "wrong type": (GOOD.replace("port = 10143", 'port = "many"'), "setting imap.port:"),
    "missing password": (
        GOOD.replace('password_file = "{secret}"', ""),
        "setting imap: password is missing",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_check_config_names_the_problem_and_exits_2(
    kind: str, tmp_path: Path, secret: Path
) -> None:
    """Each kind of config mistake prints one line naming the setting, exit 2, no traceback."""
    text, expected = BROKEN[kind]
    path = tmp_path / "triage.toml"
    if text is not None:
        path.write_text(text.replace("{secret}", str(secret)))
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert all(line.startswith("triage: ") for line in result.stderr.strip().splitlines())


def test_check_config_prints_effective_settings_masked(good_config: Path) -> None:
    """A valid config prints every section with the password masked, exit 0."""
    result = run_cli("--config", str(good_config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "[imap]" in result.stdout and "port = 10143" in result.stdout
    assert "s3cret-pw" not in result.stdout
    assert "configuration ok" in result.stdout


def test_example_config_is_valid(tmp_path: Path) -> None:
    """config/triage.example.toml loads once its password file exists."""
    example = Path(__file__).parents[1] / "config" / "triage.example.toml"
    text = example.read_text()
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o600)
    text = text.replace("/etc/triage/imap.password", str(secret)).replace(
        "/etc/triage/smtp.password", str(secret)
    )
    path = tmp_path / "t.toml"
    path.write_text(text)
    settings = load_settings(path, environ={})
    assert settings.imap.username


def test_form_senders_need_trusted_authserv_ids() -> None:
    """A form relay anyone could pose as would let strangers pick whom we write to."""
    from pydantic import ValidationError

    from triage.core.settings import RepliesSettings

    with pytest.raises(ValidationError, match="form_senders needs trusted_authserv_ids"):
        RepliesSettings(form_senders=("forms@webforms.example",))
    RepliesSettings(form_senders=("forms@webforms.example",), trusted_authserv_ids=("mx.x",))


def test_loading_leaves_the_process_environment_alone(
    good_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load_settings` reads the environment it is handed without writing to `os.environ`: no
    other thread ever sees the process environment cleared or replaced, even for a moment."""
    import os
    from collections.abc import Iterator, MutableMapping

    class Watched(MutableMapping[str, str]):
        """The process environment, recording every write."""

        def __init__(self, data: dict[str, str]) -> None:
            self.data = data
            self.writes: list[str] = []

        def __getitem__(self, key: str) -> str:
            return self.data[key]

        def __setitem__(self, key: str, value: str) -> None:
            self.writes.append(f"set {key}")
            self.data[key] = value

        def __delitem__(self, key: str) -> None:
            self.writes.append(f"del {key}")
            del self.data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    watched = Watched({**os.environ, "TRIAGE_IMAP__PORT": "1993"})
    before = dict(watched.data)
    monkeypatch.setattr(os, "environ", watched)
    settings = load_settings(good_config, environ={"TRIAGE_IMAP__PORT": "2143"})
    assert settings.imap.port == 2143  # the environment handed in, not the process's
    assert watched.writes == []
    assert watched.data == before
