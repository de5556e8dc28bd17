"""`triage once` and `triage run`: the service itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from triage.cli.common import EXIT_FAILURE, EXIT_USAGE, fail, load, options, user_errors


@contextmanager
def _one_process_per_store() -> Iterator[None]:
    """A store locked by another triage is the operator's mistake: one line, exit 2 (which the
    systemd unit does not restart on)."""
    from triage.core.errors import StoreInUseError

    try:
        yield
    except StoreInUseError as exc:
        fail(str(exc), EXIT_USAGE)


def once(ctx: typer.Context) -> None:
    """Handle every new message in every configured mailbox, then exit."""
    settings = load(ctx)
    with user_errors(), _one_process_per_store():
        from triage.ops.runner import run_once_command

        if not run_once_command(settings):
            raise typer.Exit(EXIT_FAILURE)


def run(ctx: typer.Context) -> None:
    """Handle new mail forever: IDLE push, polling fallback. SIGTERM stops, SIGHUP reloads."""
    settings = load(ctx)
    with user_errors(), _one_process_per_store():
        from triage.core.settings import load_settings
        from triage.ops.runner import run_forever

        config = options(ctx).config
        if not run_forever(settings, lambda: load_settings(config)):
            # An account could not be served any more: exit non-zero, for systemd to restart.
            raise typer.Exit(EXIT_FAILURE)
