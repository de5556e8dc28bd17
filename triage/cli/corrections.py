"""`triage corrections list`: the labels people gave, which `triage train --with-corrections`
learns from — from review, the mailbox (folder, keyword) and the lead workflow (won, lost,
not-a-lead, relabel), each with the weight it counts with."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Annotated

import typer

from triage.cli.common import load, user_errors
from triage.core.sanitize import strip_invisible

app = typer.Typer(
    help="Labels people gave to handled messages: training data for the model.",
    no_args_is_help=True,
)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("list")
def list_corrections(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="At most N, the newest.", min=1)
    ] = None,
) -> None:
    """Every correction, newest first: when, message, subject, old → new label, source, weight."""
    settings = load(ctx)
    with user_errors():
        from triage.store.corrections import list_corrections as read
        from triage.store.db import Database

        db = Database(settings.store)
        try:
            found = read(db.reads, limit)
        finally:
            db.close()
    if as_json:
        data = [
            {
                "id": r.id,
                "created": r.created_at.astimezone(UTC).isoformat(timespec="seconds"),
                "message_row": r.message_row,
                "message_id": r.message_id,
                "subject": strip_invisible(r.subject),
                "old_label": r.old_label,
                "new_label": r.new_label,
                "source": r.source,
                "weight": r.weight,
            }
            for r in found
        ]
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not found:
        print("no corrections")
        return
    headers = ["WHEN (UTC)", "MESSAGE-ID", "LABEL", "SOURCE", "WEIGHT", "SUBJECT"]
    rows = [
        [
            r.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            _cut(strip_invisible(r.message_id), 40),
            f"{r.old_label or '?'} -> {r.new_label}",
            r.source,
            f"{r.weight:g}",
            _cut(strip_invisible(r.subject), 50),
        ]
        for r in found
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
