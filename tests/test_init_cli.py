"""`triage init` and what `triage check-config` says about the model and templates in use; the
shipped model and templates as defaults. (tests/test_wheel.py runs the same from an installed
wheel.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli.main import app
from triage.core.errors import ConfigError
from triage.core.settings import (
    SHIPPED_MODEL,
    SHIPPED_TEMPLATES,
    ClassifierSettings,
    RepliesSettings,
    load_settings,
)
from triage.decide.classify import is_installed_file, repo_root, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    """A runner in an empty working directory with no TRIAGE_* configuration; the root logger
    is restored afterwards (the commands set it up)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def fill_passwords(directory: Path) -> None:
    """What the operator does after `triage init`: a password in each (0600) file."""
    for name in ("imap.password", "smtp.password"):
        (directory / name).write_text("s3cret\n")


def test_defaults_are_the_shipped_model_and_templates() -> None:
    """Unset model_path and templates_dir mean the files shipped in the package; in the
    repository those are its classifiers/model.skops and templates/."""
    assert ClassifierSettings().model_path == SHIPPED_MODEL
    assert RepliesSettings().templates_dir == SHIPPED_TEMPLATES
    assert SHIPPED_MODEL.resolve() == (ROOT / "classifiers" / "model.skops").resolve()
    assert SHIPPED_TEMPLATES.resolve() == (ROOT / "templates").resolve()


def test_training_in_a_checkout_targets_the_repository_model() -> None:
    """The shipped default resolves to the repository's file (not the symlink in the package,
    which an atomic replace would turn into a copy), which is no file of an installation."""
    target = resolve_model_path(SHIPPED_MODEL)
    assert target == (repo_root() / "classifiers" / "model.skops").resolve()
    assert not target.is_symlink()
    assert not is_installed_file(target)
    assert is_installed_file(ROOT / "triage" / "cli" / "init.py")


def test_init_writes_config_templates_and_private_password_files(
    runner: CliRunner, tmp_path: Path
) -> None:
    """init creates the folder, a 0600 triage.toml, empty 0600 password files and a full copy of
    the shipped templates; the config is valid once the passwords are in."""
    target = tmp_path / "new" / "conf"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    config = target / "triage.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert target.stat().st_mode & 0o777 == 0o700
    for name in ("imap.password", "smtp.password"):
        assert (target / name).read_text() == ""
        assert (target / name).stat().st_mode & 0o777 == 0o600
    copied = sorted(p.relative_to(target / "templates") for p in (target / "templates").rglob("*"))
    shipped = sorted(p.relative_to(SHIPPED_TEMPLATES) for p in SHIPPED_TEMPLATES.rglob("*"))
    assert copied == shipped
    assert not any(p.is_symlink() for p in (target / "templates").rglob("*"))
    assert "# " in config.read_text()  # commented for the operator

    with pytest.raises(ConfigError, match=r"password_file .*imap\.password is empty"):
        load_settings(config, environ={})
    fill_passwords(target)
    settings = load_settings(config, environ={})
    assert settings.replies.templates_dir == target / "templates"
    assert settings.classifier.model_path == SHIPPED_MODEL
    assert settings.replies.mode == "dry-run"
    assert settings.store.path == target / "triage.db"


@pytest.mark.parametrize("existing", ["triage.toml", "templates", "smtp.password"])
def test_init_overwrites_nothing_and_writes_nothing_when_refusing(
    runner: CliRunner, tmp_path: Path, existing: str
) -> None:
    """Any target already there: one line on stderr, exit 2, and nothing else written."""
    target = tmp_path / "conf"
    target.mkdir()
    if existing == "templates":
        (target / existing).mkdir()
    else:
        (target / existing).write_text("x")
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"triage: {target / existing} already exists; not overwriting it "
        "(move it away, or pick another DIR)\n"
    )
    assert [p.name for p in target.iterdir()] == [existing]


def test_check_config_names_the_model_and_templates_in_use(
    runner: CliRunner, tmp_path: Path
) -> None:
    """check-config says "shipped with triage" for unset paths and shows a configured path,
    noting one that does not exist."""
    target = tmp_path / "conf"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    fill_passwords(target)
    config = target / "triage.toml"
    result = runner.invoke(app, ["--config", str(config), "check-config"])
    assert result.exit_code == 0, result.output
    assert f"model: shipped with triage ({SHIPPED_MODEL})" in result.stdout
    assert f"templates: {target / 'templates'} (replies.templates_dir)" in result.stdout

    own = tmp_path / "mine.skops"
    config.write_text(
        config.read_text().replace(
            '# model_path = "/var/lib/triage/model.skops"', f'model_path = "{own}"'
        )
    )
    result = runner.invoke(app, ["--config", str(config), "check-config"])
    assert result.exit_code == 0, result.output
    assert f"model: {own} (classifier.model_path, not found)" in result.stdout


def test_init_refuses_a_folder_name_with_control_characters(tmp_path: Path) -> None:
    """A newline in DIR would break the TOML written around the path: one line, nothing written."""
    target = tmp_path / "a\nb"
    result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 2
    assert "without control characters" in result.stderr
    assert not target.exists()


def test_init_that_fails_partway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write failing after the templates and password files were made removes them again, so
    the next attempt is not blocked by a half-written set."""
    from triage.cli import init as init_module

    real = init_module._write_new

    def failing(path: Path, text: str) -> None:
        if path.name == init_module.CONFIG_NAME:
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(init_module, "_write_new", failing)
    target = tmp_path / "cfg"
    result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert list(target.iterdir()) == []
