"""`triage check-config`: validate settings and show the effective values, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from triage.cli.common import load

if TYPE_CHECKING:
    from triage.core.settings import Settings


def check_config(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
) -> None:
    """Validate the configuration and print the effective settings with secrets masked, then
    which model and reply templates are in use."""
    settings = load(ctx)
    from triage.core.settings import masked

    data = masked(settings)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for section, values in data.items():
        print(f"[{section}]")
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"{key} = {json.dumps(value, default=str)}")
        print()
    for line in [*logins(settings), *in_use(settings)]:
        print(line)
    print("configuration ok")


def logins(settings: Settings) -> list[str]:
    """One line per mailbox login: how each IMAP account and SMTP sign in (no secret)."""

    def kind(auth: str, provider: str | None) -> str:
        return f"oauth2 ({provider})" if auth == "oauth2" and provider else auth

    lines = [
        f"imap account {a.name}: {kind(a.auth, a.oauth2.provider if a.oauth2 else None)}"
        for a in settings.imap.all_accounts()
    ]
    smtp = settings.smtp
    if smtp.auth == "oauth2" and smtp.oauth2_account:
        lines.append(f"smtp: oauth2 with account {smtp.oauth2_account}'s credential")
    elif smtp.auth == "oauth2":
        lines.append(f"smtp: {kind(smtp.auth, smtp.oauth2.provider if smtp.oauth2 else None)}")
    else:
        lines.append("smtp: password" if smtp.username else "smtp: no login")
    return lines


def in_use(settings: Settings) -> list[str]:
    """One line each for the model and the reply templates: shipped with triage, or the
    configured path (and whether it is there; `triage doctor` checks them in depth)."""
    from triage.core.settings import SHIPPED_MODEL, SHIPPED_TEMPLATES

    def describe(what: str, path: Path, shipped: Path, setting: str) -> str:
        if path == shipped:
            return f"{what}: shipped with triage ({path})"
        found = "" if path.exists() else ", not found"
        return f"{what}: {path} ({setting}{found})"

    return [
        describe("model", settings.classifier.model_path, SHIPPED_MODEL, "classifier.model_path"),
        describe(
            "templates", settings.replies.templates_dir, SHIPPED_TEMPLATES, "replies.templates_dir"
        ),
    ]
