"""`triage init DIR`: a starting configuration and a copy of the reply templates to edit.

Writes `DIR/triage.toml` (commented, mode 0600), empty password files for it to reference (mode
0600, so a password put in them is never readable by others), and `DIR/templates/`, a copy of the
templates shipped with triage. Nothing that exists is overwritten: the command checks every target
first and refuses with one line, so it either writes everything or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from triage.cli.common import EXIT_FAILURE, fail

CONFIG_NAME = "triage.toml"
TEMPLATES_NAME = "templates"
SECRET_NAMES = ("imap.password", "smtp.password")

CONFIG = """\
# triage configuration, written by `triage init`. Check it with
#   triage --config {config} check-config
# and test the connections with `triage --config {config} doctor`.
# config/triage.example.toml in the source (or the documentation) lists every setting; any value
# can also come from an environment variable TRIAGE_<SECTION>__<KEY>, e.g. TRIAGE_REPLIES__MODE.

[imap]
# The mailbox triage watches (hello@, info@, sales@ …).
host = "imap.example.com"
port = 993
security = "tls"                   # tls (port 993) | starttls (port 143) | plain (loopback only)
username = "hello@example.com"
# The password, alone in this file (triage refuses one that group or others may read).
password_file = {imap_password}
folders = ["INBOX"]

[smtp]
# The server replies and digests are sent through.
host = "smtp.example.com"
port = 587
security = "starttls"              # tls | starttls | plain (loopback only)
username = "hello@example.com"     # "" for no login (then remove password_file)
password_file = {smtp_password}

[store]
# The SQLite database: ledger, leads, outbox. Created 0600.
path = {store}

[replies]
# Start with dry-run (log what would be sent), then draft (save replies to Drafts for a
# person), then live (send).
mode = "dry-run"
# A copy of the shipped templates, yours to edit while triage runs; remove this line to use
# the shipped ones. Check edits with `triage --config {config} templates check`.
templates_dir = {templates}
from_address = "hello@example.com"
from_name = "Example Ltd"
envelope_sender = "no-reply@example.com"
our_addresses = ["hello@example.com"]
# The authserv-ids of your own receiving servers, whose Authentication-Results headers are
# believed (docs/security.md); empty: every sender gets the fixed, unauthenticated text.
trusted_authserv_ids = []
company_name = "Example Ltd"
signature = "The Example team"

[classifier]
# Default: the model shipped with triage. A model of your own (`triage train --output PATH`):
# model_path = "/var/lib/triage/model.skops"
# Spam-verdict headers YOUR receiving server adds (and strips from incoming mail): a message
# they mark as spam is `other` without asking the model (docs/security.md).
# trusted_spam_headers = ["X-Spam-Flag"]

[digest]
# recipients = ["sales@example.com"]
timezone = "UTC"
"""


def _toml_string(value: Path) -> str:
    """A TOML basic string: JSON's string escapes are valid TOML ones."""
    return json.dumps(str(value))


def _write_new(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start; fail if it appeared meanwhile."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        path.unlink(missing_ok=True)  # ours (O_EXCL): never leave a half-written file
        raise


def init(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Folder for triage.toml and templates/ (created if missing).", file_okay=False
        ),
    ],
) -> None:
    """Write a starting configuration (DIR/triage.toml, mode 0600) with empty password files,
    and a copy of the shipped reply templates (DIR/templates/) to edit. Overwrites nothing."""
    from triage.core.settings import SHIPPED_TEMPLATES

    base = directory.expanduser().absolute()
    text = str(base)
    if not text.isprintable() or "\x7f" in text:
        fail(f"{text!r}: pick a folder name without control characters")
    try:
        text.encode()
    except UnicodeError:
        fail(f"{text!r}: pick a folder name that is valid text (UTF-8)")
    config = base / CONFIG_NAME
    templates = base / TEMPLATES_NAME
    secrets = [base / name for name in SECRET_NAMES]
    made: list[Path] = []
    try:
        if base.exists() and not base.is_dir():
            fail(f"{base} exists and is not a folder")
        for target in (config, templates, *secrets):
            if target.exists() or target.is_symlink():
                fail(
                    f"{target} already exists; not overwriting it "
                    "(move it away, or pick another DIR)"
                )
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copytree(SHIPPED_TEMPLATES, templates)
        made.append(templates)
        for secret in secrets:
            _write_new(secret, "")
            made.append(secret)
        _write_new(
            config,
            CONFIG.format(
                config=config,
                imap_password=_toml_string(secrets[0]),
                smtp_password=_toml_string(secrets[1]),
                store=_toml_string(base / "triage.db"),
                templates=_toml_string(templates),
            ),
        )
    except OSError as exc:
        # Everything or nothing: a half-written set would block the next attempt.
        for path in reversed(made):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        fail(f"cannot write into {base}: {exc}", EXIT_FAILURE)
    count = sum(1 for path in templates.rglob("*") if path.is_file())
    print(f"wrote {config} (mode 0600)")
    print(f"wrote {templates}/ ({count} files, a copy of the shipped templates)")
    print(f"wrote {', '.join(str(s) for s in secrets)} (empty, mode 0600)")
    print(
        "next: put each password in its file, set the servers and addresses in "
        f"{config.name}, then run `triage --config {config} check-config` and `… doctor`"
    )
