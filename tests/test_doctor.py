"""`triage doctor` against the harness's real Dovecot and Postfix: all ok when everything is right,
and each problem named with its fix when something is wrong, without ever printing a password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from triage.core.settings import Settings, load_settings
from triage.ops.doctor import Finding, check_certificates, check_store, checks, run_checks

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
MODEL = ROOT / "classifiers" / "model.skops"


def write_config(
    harness: MailHarness,
    base: Path,
    *,
    imap_password: str | None = None,
    smtp_password: str | None = None,
    imap_port: int | None = None,
    templates: Path = TEMPLATES,
    model: Path = MODEL,
    sent_folder: str = "",
) -> Path:
    """A config for hello@ of the harness over IMAPS and SMTP+STARTTLS with login; passwords in
    files of mode 0600, as the operations guide says. Defaults are all correct."""
    base.mkdir(parents=True, exist_ok=True)
    cfg = harness.config
    for name, password in (("imap", imap_password), ("smtp", smtp_password)):
        secret = base / f"{name}.password"
        secret.write_text(password if password is not None else harness.password("hello"))
        secret.chmod(0o600)
    path = base / "triage.toml"
    path.write_text(
        f"""
[imap]
host = "{cfg.host}"
port = {imap_port or cfg.imaps_port}
security = "tls"
ca_file = "{harness.ca_file}"
username = "hello"
password_file = "{base / "imap.password"}"
timeout = 5

[smtp]
host = "{cfg.host}"
port = {cfg.submission_port}
security = "starttls"
ca_file = "{harness.ca_file}"
username = "hello"
password_file = "{base / "smtp.password"}"
timeout = 5

[store]
path = "{base / "state" / "triage.db"}"

[replies]
mode = "live"
sent_folder = "{sent_folder}"
templates_dir = "{templates}"
from_address = "hello@{cfg.domain}"
trusted_authserv_ids = ["mx.{cfg.domain}"]

[classifier]
model_path = "{model}"
"""
    )
    return path


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    """Run the real command (its own process: it configures logging for the whole process)."""
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "doctor"],
        capture_output=True,
        text=True,
        # Wide enough that rich does not fold the lines the assertions look for.
        env={**os.environ, "COLUMNS": "250"},
        timeout=120,
        check=False,
    )


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    """Findings by check name."""
    return {f.check: f for f in findings}


def settings_for(config: Path) -> Settings:
    """The settings the doctor would load (no environment besides the file)."""
    return load_settings(config, environ={})


@pytest.mark.mail
def test_every_check_but_the_model_passes_against_the_harness(
    mail_harness: MailHarness, tmp_path: Path
) -> None:
    """Store, IMAP login, IDLE and MOVE, INBOX, the special-use Sent and Drafts folders, SMTP
    STARTTLS and login, and the shipped templates are all ok (the model is checked below)."""
    findings = run_checks(settings_for(write_config(mail_harness, tmp_path)))
    checked = by_check(findings)
    assert set(checked) >= {
        "store",
        "imap default: login",
        "imap default: capabilities",
        "imap default: folder INBOX",
        "imap default: Sent folder",
        "imap default: Drafts folder",
        "smtp",
        "templates",
        "model",
    }
    not_ok = [f for f in findings if f.status != "ok" and f.check != "model"]
    assert not_ok == []
    assert checked["imap default: capabilities"].detail == "IDLE, MOVE"
    assert checked["imap default: Sent folder"].detail == "Sent (special-use \\Sent)"
    assert "logged in as hello" in checked["smtp"].detail
    assert "no mail sent" in checked["smtp"].detail
    assert (tmp_path / "state" / "triage.db").exists()


@pytest.mark.mail
def test_doctor_prints_all_ok_and_exits_0(mail_harness: MailHarness, tmp_path: Path) -> None:
    """With a correct configuration and a trained model the command reports every check ok."""
    if not MODEL.exists():
        pytest.skip(f"no trained model at {MODEL} (run `triage train`)")
    result = doctor(write_config(mail_harness, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "triage doctor: all checks passed" in result.stdout
    assert "problem" not in result.stdout
    assert mail_harness.password("hello") not in result.stdout + result.stderr


@pytest.mark.mail
def test_wrong_password_missing_templates_and_missing_model_are_each_named(
    mail_harness: MailHarness, tmp_path: Path
) -> None:
    """Three independent mistakes give three problems, each with its fix, and exit 1; neither
    the wrong nor the right password appears in the output."""
    wrong = "not-the-password-0123"
    config = write_config(
        mail_harness,
        tmp_path,
        imap_password=wrong,
        templates=tmp_path / "no-templates",
        model=tmp_path / "no-model.skops",
    )
    result = doctor(config)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "triage doctor: 3 problem(s)" in out
    assert "login rejected for hello at 127.0.0.1" in out
    assert "fix: wrong password for hello: check imap.password_file" in out
    assert f"templates directory {tmp_path / 'no-templates'} does not exist" in out
    assert "fix: set replies.templates_dir" in out
    assert "no-model" in out
    assert "triage train" in out
    assert wrong not in out + result.stderr
    assert mail_harness.password("hello") not in out + result.stderr

    checked = by_check(run_checks(settings_for(config)))
    assert checked["imap default: login"].status == "problem"
    assert checked["templates"].status == "problem"
    assert checked["model"].status == "problem"
    assert checked["smtp"].status == "ok"  # its own password file is right


@pytest.mark.mail
def test_wrong_smtp_password_is_named_with_its_setting(
    mail_harness: MailHarness, tmp_path: Path
) -> None:
    """A rejected SMTP login says which setting holds the password."""
    config = write_config(mail_harness, tmp_path, smtp_password="wrong-smtp-pw")
    smtp = by_check(run_checks(settings_for(config)))["smtp"]
    assert smtp.status == "problem"
    assert "rejected the login of hello" in smtp.detail
    assert smtp.fix.startswith("wrong password for hello: check smtp.password_file")
    assert "wrong-smtp-pw" not in smtp.detail + smtp.fix


@pytest.mark.mail
def test_unreachable_imap_port_and_missing_sent_folder(
    mail_harness: MailHarness, tmp_path: Path
) -> None:
    """Nothing listening on the IMAP port is a connect problem pointing at host/port/security; a
    configured Sent folder that does not exist is a problem in live mode."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = write_config(mail_harness, tmp_path / "a", imap_port=closed_port)
    down = by_check(run_checks(settings_for(config)))
    connect = down["imap default: connect"]
    assert connect.status == "problem"
    assert f"127.0.0.1:{closed_port}" in connect.detail
    assert "imap.port" in connect.fix

    config = write_config(mail_harness, tmp_path / "b", sent_folder="Nowhere")
    sent = by_check(run_checks(settings_for(config)))["imap default: Sent folder"]
    assert sent.status == "problem"
    assert "Nowhere" in sent.detail
    assert "replies.sent_folder" in sent.fix


def test_invalid_settings_are_a_problem_row_not_a_crash(tmp_path: Path) -> None:
    """A config the settings reject gives exit 1 and the validation message in the table."""
    config = tmp_path / "triage.toml"
    config.write_text('[imap]\nusername = "hello"\npassword_file = "/nonexistent/pw"\nbogus = 1\n')
    result = doctor(config)
    assert result.returncode == 1
    assert "settings" in result.stdout
    assert "imap.bogus: unknown setting" in result.stdout
    assert "triage doctor: " in result.stdout


def test_store_that_cannot_be_created_is_a_problem(tmp_path: Path) -> None:
    """A store path below a regular file cannot be created: a problem with the path and a fix."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = load_settings(
        None,
        environ={},
        overrides={
            "imap": {"username": "u", "password": "p"},
            "store": {"path": str(blocker / "triage.db")},
        },
    )
    (finding,) = check_store(settings)
    assert finding.status == "problem"
    assert str(blocker) in finding.detail
    assert "store.path" in finding.fix


def test_unverified_certificates_are_a_warning_naming_the_setting() -> None:
    """`verify_certificates = false` on an IMAP account or on SMTP is a warning row each, with
    the setting to change; verified connections (and plain ones, which have no certificate)
    add no row."""
    settings = load_settings(
        None,
        environ={},
        overrides={
            "imap": {
                "username": "u",
                "password": "p",
                "host": "imap.example.com",
                "accounts": [
                    {
                        "name": "other",
                        "username": "o",
                        "password": "p",
                        "host": "mail.example.org",
                        "verify_certificates": False,
                    }
                ],
            },
            "smtp": {"host": "smtp.example.com", "verify_certificates": False},
        },
    )
    assert "certificates" in dict(checks(settings))
    found = by_check(check_certificates(settings))
    assert set(found) == {"imap other: certificates", "smtp: certificates"}
    imap = found["imap other: certificates"]
    assert imap.status == "warning"
    assert "imap.accounts[0].verify_certificates = false" in imap.detail
    assert "mail.example.org" in imap.detail
    assert "imap.accounts[0].ca_file" in imap.fix
    assert found["smtp: certificates"].status == "warning"
    assert "smtp.ca_file" in found["smtp: certificates"].fix

    verified = load_settings(
        None,
        environ={},
        overrides={
            "imap": {"username": "u", "password": "p", "security": "plain"},
            "smtp": {"security": "plain", "verify_certificates": False},
        },
    )
    assert check_certificates(verified) == []


def test_no_trusted_authserv_id_is_a_warning_saying_what_replies_become() -> None:
    """Without `replies.trusted_authserv_ids` nobody is authenticated: doctor says so, what it
    means for the replies, and where to read how to set it; with one, nothing is said."""
    from triage.ops.doctor import check_sender_authentication

    base = {"imap": {"username": "u", "password": "p"}}
    bare = load_settings(None, environ={}, overrides=base)
    [finding] = check_sender_authentication(bare)
    assert finding.status == "warning"
    assert "fixed text only" in finding.detail
    assert "docs/security.md" in finding.fix
    silent = load_settings(
        None, environ={}, overrides=base | {"replies": {"unauthenticated": "none"}}
    )
    assert "no reply is sent" in check_sender_authentication(silent)[0].detail
    trusted = {"replies": {"trusted_authserv_ids": ["mx.example.com"]}}
    assert (
        check_sender_authentication(load_settings(None, environ={}, overrides=base | trusted)) == []
    )
