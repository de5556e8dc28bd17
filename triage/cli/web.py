"""`triage web` (the console) and `triage users …` (who may log in to it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triage.cli.common import EXIT_USAGE, current_user, fail, options, user_errors

if TYPE_CHECKING:
    from triage.core.settings import Settings
    from triage.store.db import Database

users_app = typer.Typer(help="Console users: add, list, change passwords, remove.")


# The console never logs in to a mail server. These stand in for the passwords of the mailbox and
# of SMTP (the environment wins over the settings file), so their files are never read: the
# console's systemd unit makes them inaccessible. Another mailbox of [[imap.accounts]] still
# has its password file read (docs/console.md).
NO_MAIL_PASSWORDS = {
    "TRIAGE_IMAP__PASSWORD": "unused-by-the-console",
    "TRIAGE_SMTP__PASSWORD": "unused-by-the-console",
}


def _settings(ctx: typer.Context) -> Settings:
    """Settings for the console: loaded like every command's, except that no mail password is
    read (the console never holds them, so there is nothing of theirs to redact)."""
    from triage.core.errors import ConfigError
    from triage.core.settings import load_settings
    from triage.ops.logs import setup_logging

    opts = options(ctx)
    try:
        settings = load_settings(opts.config, environ={**os.environ, **NO_MAIL_PASSWORDS})
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"triage: {line}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    setup_logging(
        opts.log_format or settings.daemon.log_format, opts.log_level or settings.daemon.log_level
    )
    return settings


def web(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (web.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (web.port).")] = None,
) -> None:
    """Serve the web console for sales staff and admins (127.0.0.1:8025 by default)."""
    settings = _settings(ctx)
    with user_errors():
        import uvicorn

        from triage.web.app import SecurityHeaders, build_app

        app = build_app(settings, config_path=options(ctx).config)
        listen_host = host or settings.web.host
        listen_port = settings.web.port if port is None else port
        print(f"triage web: serving on http://{listen_host}:{listen_port}/", file=sys.stderr)
        uvicorn.run(
            # Outside Starlette's own error middleware too: a server error's page carries the
            # security headers like every other response.
            SecurityHeaders(app),
            host=listen_host,
            port=listen_port,
            log_config=None,  # triage's own logging (text or JSON), already set up
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            server_header=False,
        )


@contextmanager
def _db(ctx: typer.Context) -> Iterator[Database]:
    settings = _settings(ctx)
    with user_errors():
        from triage.store.db import Database
        from triage.web.accounts import AccountError

        db = Database(settings.store)
        try:
            yield db
        except AccountError as exc:
            fail(str(exc), EXIT_USAGE)
        finally:
            db.close()


def _password(password_file: Path | None, *, confirm: bool) -> str:
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            fail(f"cannot read {password_file}: {exc.strerror}")
        except UnicodeDecodeError:
            fail(f"cannot read {password_file}: not UTF-8 text")
    if not sys.stdin.isatty():
        # A password piped in on stdin: the first line.
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            fail("the password on stdin is not UTF-8 text")
        return _text(line.rstrip("\r\n"), "the password on stdin")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return _text(value, "the password typed")


def _text(value: str, what: str) -> str:
    # Bytes that are not UTF-8 reach here as surrogates (stdin decodes with surrogateescape):
    # refused in one line rather than by the hasher's traceback.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{what} is not UTF-8 text")
    return value


PasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--password-file", help="Read the password from this file (else a prompt or stdin)."
    ),
]


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user name to log in with.")],
    role: Annotated[str, typer.Option(help="sales or admin.")] = "sales",
    email: Annotated[str, typer.Option(help="Where 'send a test to me' goes.")] = "",
    password_file: PasswordFile = None,
) -> None:
    """Add a console user (the password is hashed with Argon2id)."""
    with _db(ctx) as db:
        from triage.web import accounts

        password = _password(password_file, confirm=True)
        user = accounts.add(db, name, role, password, email=email, by=current_user())
        print(f"added {user.name} ({user.role})")


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List console users."""
    with _db(ctx) as db:
        from triage.web import accounts

        found = accounts.users(db)
        if not found:
            print("no users; add one with `triage users add NAME --role admin`")
        for u in found:
            print(f"{u.name:<24} {u.role:<6} {u.email or '-':<32} since {u.created_at[:10]}")


@users_app.command("passwd")
def users_passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose password to change.")],
    password_file: PasswordFile = None,
) -> None:
    """Set a new password for a console user; their sessions end."""
    with _db(ctx) as db:
        from triage.web import accounts

        password = _password(password_file, confirm=True)
        accounts.set_password(db, name, password, by=current_user())
        print(f"password of {name} changed")


@users_app.command("role")
def users_role(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose role to change.")],
    role: Annotated[str, typer.Argument(help="sales or admin.")],
) -> None:
    """Change a console user's role."""
    with _db(ctx) as db:
        from triage.web import accounts

        accounts.set_role(db, name, role, by=current_user())
        print(f"{name} is now {role}")


@users_app.command("remove")
def users_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user to remove.")],
) -> None:
    """Remove a console user; their sessions end at once."""
    with _db(ctx) as db:
        from triage.web import accounts

        accounts.remove(db, name, by=current_user())
        print(f"removed {name}")
