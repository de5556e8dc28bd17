"""`triage once` and `triage run`: the service itself."""

from __future__ import annotations

import typer

from triage.commands.common import EXIT_FAILURE, load, options, user_errors


def once(ctx: typer.Context) -> None:
    """Handle every new message in every configured mailbox, then exit."""
    settings = load(ctx)
    with user_errors():
        from triage.runner import run_once_command

        if not run_once_command(settings):
            raise typer.Exit(EXIT_FAILURE)


def run(ctx: typer.Context) -> None:
    """Handle new mail forever: IDLE push, polling fallback. SIGTERM stops, SIGHUP reloads."""
    settings = load(ctx)
    with user_errors():
        from triage.runner import run_forever
        from triage.settings import load_settings

        config = options(ctx).config
        run_forever(settings, lambda: load_settings(config))
