"""`triage doctor`: check settings, store, mailboxes, SMTP, templates and model; say how to fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from triage.cli.common import EXIT_FAILURE, options

if TYPE_CHECKING:
    from triage.ops.doctor import Finding

_STYLE = {"ok": "green", "warning": "yellow", "problem": "bold red"}


def doctor(ctx: typer.Context) -> None:
    """Check everything the daemon needs (settings, database, each IMAP account, SMTP, templates,
    model) without sending mail, and print how to fix each problem. Exits 1 on any problem."""
    # Imported here: `triage --help` must not pay for the mail, model and table libraries.
    from triage.core.errors import ConfigError
    from triage.core.settings import load_settings
    from triage.ops.doctor import run_checks, settings_findings
    from triage.ops.logs import redact_settings_secrets, setup_logging

    opts = options(ctx)
    # Quiet by default: the table is the output; --log-level DEBUG shows the details.
    setup_logging(opts.log_format or "text", opts.log_level or "WARNING")
    # Unlike the other commands, a settings error is a row of the report, not an early exit:
    # the doctor exists to explain what is wrong.
    try:
        settings = load_settings(opts.config)
    except ConfigError as exc:
        findings = settings_findings(exc, opts.config)
    else:
        redact_settings_secrets(settings)
        findings = [*settings_findings(None, opts.config), *run_checks(settings)]
    _print(findings)
    problems = sum(not f.ok for f in findings)
    if problems:
        print(f"triage doctor: {problems} problem(s)")
        raise typer.Exit(EXIT_FAILURE)
    print("triage doctor: all checks passed")


def _print(findings: Sequence[Finding]) -> None:
    """The findings as a table: check, status, detail with the fix below it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False, highlight=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail / fix", overflow="fold")
    for f in findings:
        # Text, not markup: details quote server replies and settings like `imap.accounts[0]`.
        detail = Text(f.detail)
        if f.fix:
            detail.append("\nfix: ", style="bold")
            detail.append(f.fix)
        table.add_row(Text(f.check), Text(f.status, style=_STYLE[f.status]), detail)
    Console(highlight=False).print(table)
