"""`triage auth …`: sign OAuth2 mailboxes in, import a refresh token, show every credential's state.

A credential is named like its IMAP account, or `smtp` for `[smtp.oauth2]`. Storing a grant
clears the credential's needs-reauth state; a running daemon picks the new grant up by itself.
Nothing printed here contains a token or secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from triage.cli.common import EXIT_USAGE, fail, load, user_errors

if TYPE_CHECKING:
    from triage.core.settings import Settings
    from triage.ingest.oauth.providers import Credential

app = typer.Typer(
    help="OAuth2 mailboxes: sign in (login), import a refresh token, show their state.",
    no_args_is_help=True,
)


def _credential(settings: Settings, name: str) -> Credential:
    from triage.ingest.oauth.providers import SMTP, credentials

    found = credentials(settings)
    if name in found:
        return found[name]
    if name == SMTP and settings.smtp.oauth2_account:
        fail(
            f"smtp signs in with account {settings.smtp.oauth2_account}'s credential: "
            f"run `triage auth login {settings.smtp.oauth2_account}`"
        )
    known = ", ".join(sorted(found)) or "none configured"
    fail(f"no OAuth2 credential {name!r} (auth = 'oauth2' accounts: {known})", EXIT_USAGE)


def _say(text: str) -> None:
    # Flushed at once: the person (or a test) acts on the address while we wait.
    print(text, flush=True)


@app.command("login")
def login_command(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="The IMAP account's name, or smtp.")],
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the sign-in in the browser.", min=1)
    ] = 300.0,
) -> None:
    """Sign a mailbox in and store its grant (encrypted); for microsoft-app and
    google-service-account, check that a token can be obtained."""
    settings = load(ctx)
    credential = _credential(settings, account)
    with user_errors():
        from triage.ingest.oauth.login import login
        from triage.ingest.oauth.providers import grant_store

        summary = login(
            credential.name,
            credential.settings,
            grant_store(settings),
            _say,
            username=credential.username,
            timeout=timeout,
        )
    print(summary)


@app.command("import")
def import_command(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="The IMAP account's name, or smtp.")],
    refresh_token_file: Annotated[
        Path,
        typer.Option(
            "--refresh-token-file",
            help="File holding the refresh token (mode 0600).",
            dir_okay=False,
        ),
    ],
) -> None:
    """Store a refresh token obtained elsewhere (encrypted)."""
    settings = load(ctx)
    credential = _credential(settings, account)
    with user_errors():
        from triage.core.settings import read_secret_file
        from triage.ingest.oauth.login import import_refresh_token
        from triage.ingest.oauth.providers import grant_store

        token = read_secret_file(refresh_token_file, "--refresh-token-file").get_secret_value()
        summary = import_refresh_token(
            credential.name, credential.settings, grant_store(settings), token
        )
    print(summary)


def _days(then: str | None, now: datetime) -> float | None:
    if not then:
        return None
    return round((now - datetime.fromisoformat(then)).total_seconds() / 86400, 1)


def status_rows(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """One dict per configured credential: provider, state, grant age, rotations, secret expiry
    (no secret, no token)."""
    from triage.ingest.oauth.login import NO_LOGIN_PROVIDERS
    from triage.ingest.oauth.providers import (
        SMTP,
        credentials,
        grant_store,
        smtp_credential_name,
    )

    stored = {}
    if settings.store.is_postgresql or settings.store.path.exists():
        stored = {row.name: row for row in grant_store(settings).rows()}
    smtp = smtp_credential_name(settings)
    rows = []
    for name, credential in sorted(credentials(settings).items()):
        s = credential.settings
        row = stored.get(name)
        expires = s.client_secret_expires
        used_by = [] if name == SMTP else ["imap"]
        if smtp == name:
            used_by.append("smtp")
        entry: dict[str, Any] = {
            "name": name,
            "used_by": used_by,
            "provider": s.provider,
            "state": row.state if row else "ok",
            "error_code": row.error_code if row else "",
            "error_at": row.error_at if row else None,
            "grant": (
                "not needed"
                if s.provider in NO_LOGIN_PROVIDERS
                else "stored"
                if row and row.blob is not None
                else "missing"
            ),
            "obtained_at": row.obtained_at if row else None,
            "grant_age_days": _days(row.obtained_at, now) if row else None,
            "rotated_at": row.rotated_at if row else None,
            "rotations": row.rotations if row else 0,
            "client_secret_expires": expires.isoformat() if expires else None,
            "client_secret_days_left": (expires - now.date()).days if expires else None,
        }
        rows.append(entry)
    return rows


@app.command("status")
def status_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of lines."),
) -> None:
    """Show each OAuth2 credential: provider, state, grant age, last rotation, secret expiry."""
    settings = load(ctx)
    with user_errors():
        rows = status_rows(settings, datetime.now(UTC))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no OAuth2 credentials configured (auth = 'oauth2')")
        return
    for r in rows:
        parts = [f"{r['name']}: {r['provider']}", r["state"]]
        if r["error_code"]:
            parts.append(f"error {r['error_code']} since {r['error_at'][:16]}")
        if r["grant"] == "missing":
            parts.append(f"no grant: run `triage auth login {r['name']}`")
        elif r["grant"] == "stored":
            parts.append(f"grant {r['grant_age_days']} days old")
            if r["rotated_at"]:
                parts.append(f"rotated {r['rotations']}x, last {r['rotated_at'][:16]}")
        if r["client_secret_expires"]:
            parts.append(
                f"client secret expires {r['client_secret_expires']} "
                f"({r['client_secret_days_left']} days left)"
            )
        print(", ".join(parts))
