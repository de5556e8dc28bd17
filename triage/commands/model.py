"""Placeholder: replaced by the real commands."""

from __future__ import annotations

import typer


def train(ctx: typer.Context) -> None:
    """Train the model from the corpus."""


def evaluate(ctx: typer.Context) -> None:
    """Evaluate the model."""


def classify(ctx: typer.Context) -> None:
    """Classify messages."""
