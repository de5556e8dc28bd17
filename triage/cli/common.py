"""What every command shares: the global options, settings loading, one-line errors."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from triage.core.settings import Settings
    from triage.store.db import Database

EXIT_USAGE = 2  # a user mistake: bad config, bad arguments
EXIT_FAILURE = 1  # the work itself failed


@dataclass
class GlobalOptions:
    """Options given before the subcommand (`triage --config F run`)."""

    config: Path | None = None
    log_format: str | None = None
    log_level: str | None = None


def options(ctx: typer.Context) -> GlobalOptions:
    """The global options of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit: how user mistakes end, without a traceback."""
    print(f"triage: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load(ctx: typer.Context) -> Settings:
    """Load and validate settings for this invocation, or exit 2 with one line per problem."""
    from triage.core.errors import ConfigError
    from triage.core.settings import load_settings

    opts = options(ctx)
    try:
        settings = load_settings(opts.config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"triage: {line}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    overrides = {}
    if opts.log_format:
        overrides["log_format"] = opts.log_format
    if opts.log_level:
        overrides["log_level"] = opts.log_level
    if overrides:
        daemon = settings.daemon.model_copy(update=overrides)
        settings = settings.model_copy(update={"daemon": daemon})
    from triage.ops.logs import redact_settings_secrets, setup_logging

    setup_logging(settings.daemon.log_format, settings.daemon.log_level)
    redact_settings_secrets(settings)
    return settings


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn triage's own errors into one line and an exit code instead of a traceback."""
    from triage.core.errors import ConfigError, TriageError

    try:
        yield
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except TriageError as exc:
        fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("interrupted", 130)


@contextmanager
def existing_store(ctx: typer.Context) -> Iterator[tuple[Settings, Database]]:
    """The settings and the configured store, for a command that reads or changes what is in
    it; closed afterwards. A SQLite `store.path` with no file is a one-line error: opening would
    create an empty store, and a wrong path must not look like an empty queue or a quiet fleet.
    (A server's database is never created.) Store errors become one line too."""
    settings = load(ctx)
    if not settings.store.is_postgresql and not settings.store.path.exists():
        fail(f"no store at {settings.store.path}: check store.path")
    with user_errors():
        from triage.store.db import Database

        db = Database(settings.store)
        try:
            yield settings, db
        finally:
            db.close()


def current_user() -> str:
    """Who runs the command (the login name), recorded as the author of a change; "" if unknown."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
