"""Placeholder: replaced by the real commands."""

from __future__ import annotations

import typer


def once(ctx: typer.Context) -> None:
    """Handle every new message in every configured mailbox, then exit."""


def run(ctx: typer.Context) -> None:
    """Handle new mail forever (IDLE push, polling fallback)."""
