"""Placeholder: replaced by the real commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check and preview reply templates.", no_args_is_help=True)


@app.command("check")
def check(ctx: typer.Context) -> None:
    """Render every template against sample data."""
