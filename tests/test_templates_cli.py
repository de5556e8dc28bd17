"""`triage templates check|preview`: useful without a config file, exit codes, file:line output."""

from __future__ import annotations

import email
import logging
import shutil
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from typer.testing import CliRunner

from triage.cli.main import app
from triage.core.settings import SHIPPED_TEMPLATES

REPO_TEMPLATES = Path(__file__).parents[1] / "templates"
INQUIRY = (
    b"From: =?utf-8?q?J=C3=BCrgen_Gro=C3=9F?= <juergen@client.example>\r\n"
    b"To: hello@example.com\r\n"
    b"Subject: Angebot f\xc3\xbcr 40 Einheiten\r\n"
    b"Message-ID: <inq-7@client.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Guten Tag, wir ben\xc3\xb6tigen ein Angebot f\xc3\xbcr 40 Einheiten bis Ende des Monats.\r\n"
)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    """A runner in an empty working directory with no TRIAGE_* configuration.

    The commands set up logging on the root logger; it is restored afterwards so that later tests
    do not log into this runner's closed streams.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def local_templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates as `./templates` of the working directory."""
    target = tmp_path / "templates"
    shutil.copytree(REPO_TEMPLATES, target)
    return target


def mime(output: str) -> EmailMessage:
    msg = email.message_from_string(output, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_check_passes_on_the_shipped_templates_without_config(
    runner: CliRunner, local_templates: Path
) -> None:
    """No config file: `./templates` is checked with default settings; exit 0 and a summary."""
    result = runner.invoke(app, ["templates", "check"])
    assert result.exit_code == 0, result.output
    assert "sales: default, de, fr" in result.stdout
    assert "marketing: default, de, fr" in result.stdout
    assert "templates ok" in result.stdout


def test_check_reports_problems_with_file_and_line_and_fails(
    runner: CliRunner, local_templates: Path
) -> None:
    """A syntax error and an unknown variable are printed as file:line and exit non-zero."""
    (local_templates / "sales.txt").write_text("Hello\n{% if contact.name %}\n", encoding="utf-8")
    (local_templates / "marketing.de.txt").write_text("Hallo {{ kunde }}\n", encoding="utf-8")
    result = runner.invoke(app, ["templates", "check"])
    assert result.exit_code == 1
    assert "templates/sales.txt:2: syntax error" in result.stdout
    assert "templates/marketing.de.txt:1: unknown variable 'kunde'" in result.stdout
    assert "2 problem(s)" in result.stderr


def test_check_with_templates_dir_option(runner: CliRunner, tmp_path: Path) -> None:
    """`--templates-dir` points anywhere; an empty directory is a problem."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["templates", "check", "--templates-dir", str(empty)])
    assert result.exit_code == 1
    assert "no template files found" in result.stdout
    ok = runner.invoke(app, ["templates", "check", "-d", str(REPO_TEMPLATES)])
    assert ok.exit_code == 0, ok.output


def test_check_of_a_missing_directory_is_one_line(runner: CliRunner) -> None:
    """A wrong path is a user error: one line, exit 2, no traceback."""
    result = runner.invoke(app, ["templates", "check", "-d", "templates"])
    assert result.exit_code == 2
    assert result.stderr.startswith("triage: cannot read templates directory templates")
    assert "Traceback" not in result.output


def test_check_without_local_templates_checks_the_shipped_ones(runner: CliRunner) -> None:
    """No config and no `./templates`: the templates shipped with triage are checked."""
    result = runner.invoke(app, ["templates", "check"])
    assert result.exit_code == 0, result.output
    assert f"templates ok ({SHIPPED_TEMPLATES})" in result.stdout


def test_check_uses_the_configured_directory(runner: CliRunner, tmp_path: Path) -> None:
    """With a config file, `replies.templates_dir` is used and the settings must be valid."""
    config = tmp_path / "triage.toml"
    config.write_text(
        '[imap]\nusername = "u"\npassword = "p"\n'
        f'[replies]\ntemplates_dir = "{REPO_TEMPLATES}"\ncompany_name = "Acme"\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["--config", str(config), "templates", "check"])
    assert result.exit_code == 0, result.output
    assert str(REPO_TEMPLATES) in result.stdout


def test_preview_prints_the_complete_mime_reply(runner: CliRunner, local_templates: Path) -> None:
    """The sample inquiry's reply: headers, threading, both parts."""
    result = runner.invoke(app, ["templates", "preview", "sales"])
    assert result.exit_code == 0, result.output
    reply = mime(result.stdout)
    assert reply["From"] == "Example Ltd <hello@example.com>"
    assert reply["To"] == "Jane Doe <jane@doe-logistics.example>"
    assert reply["Subject"] == "Re: Quote for 40 units"
    assert reply["In-Reply-To"] == "<sample-inquiry@doe-logistics.example>"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply.get_content_type() == "multipart/alternative"
    body = reply.get_body(("plain",))
    assert body is not None
    assert "Hello Jane Doe" in body.get_content()


def test_preview_in_another_language(runner: CliRunner, local_templates: Path) -> None:
    """`--lang fr` picks the French variant."""
    result = runner.invoke(app, ["templates", "preview", "marketing", "--lang", "fr"])
    assert result.exit_code == 0, result.output
    reply = mime(result.stdout)
    assert reply["Content-Language"] == "fr"
    body = reply.get_body(("plain",))
    assert body is not None
    assert "Bonjour Jane Doe" in body.get_content()


def test_preview_answers_a_message_file(
    runner: CliRunner, local_templates: Path, tmp_path: Path
) -> None:
    """`--message FILE.eml` answers that message: its sender, subject, thread and language."""
    path = tmp_path / "inquiry.eml"
    path.write_bytes(INQUIRY)
    result = runner.invoke(
        app, ["templates", "preview", "sales", "--trusted", "--message", str(path)]
    )
    assert result.exit_code == 0, result.output
    reply = mime(result.stdout)
    assert reply["To"].addresses[0].addr_spec == "juergen@client.example"
    assert reply["Subject"] == "Re: Angebot für 40 Einheiten"
    assert reply["In-Reply-To"] == "<inq-7@client.example>"
    assert reply["Content-Language"] == "de"


def test_preview_untrusted_shows_the_fixed_text_reply(
    runner: CliRunner, local_templates: Path, tmp_path: Path
) -> None:
    """A message file without a trusted Authentication-Results is answered with fixed text: the
    template's own subject and greeting, no display name in To."""
    path = tmp_path / "inquiry.eml"
    path.write_bytes(INQUIRY)
    result = runner.invoke(app, ["templates", "preview", "sales", "--message", str(path)])
    assert result.exit_code == 0, result.output
    reply = mime(result.stdout)
    assert str(reply["To"]) == "juergen@client.example"
    assert reply["Subject"] == "Re: Ihre Anfrage an Example Ltd"
    sample = mime(runner.invoke(app, ["templates", "preview", "sales", "--untrusted"]).stdout)
    body = sample.get_body(("plain",))
    assert body is not None
    assert "Jane" not in body.get_content()


def test_preview_of_an_unknown_outcome_fails_in_one_line(
    runner: CliRunner, local_templates: Path
) -> None:
    """A template that does not exist is a user error, not a traceback."""
    result = runner.invoke(app, ["templates", "preview", "offer"])
    assert result.exit_code == 2
    assert "no template offer.txt" in result.stderr


def test_preview_of_an_unreadable_message_fails_in_one_line(
    runner: CliRunner, local_templates: Path, tmp_path: Path
) -> None:
    """A missing --message file is reported in one line."""
    result = runner.invoke(
        app, ["templates", "preview", "sales", "--message", str(tmp_path / "nope.eml")]
    )
    assert result.exit_code == 2
    assert "cannot read" in result.stderr
