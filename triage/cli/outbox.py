"""`triage outbox …`: what waits in the delivery queue, and a person's decision on uncertain mail.

Every outbound mail — reply, digest, alert — has an id of the form KIND:N (`reply:12`,
`digest:3`, `alert:4`; a bare number is a reply). Mistakes (an unknown id, a mail that is not
uncertain) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from triage.cli.common import EXIT_USAGE, current_user, existing_store, fail

if TYPE_CHECKING:
    from triage.store.outbox import QueueEntry, Table

app = typer.Typer(
    help="The delivery queue of replies, digests and alerts: list it, settle uncertain mail.",
    no_args_is_help=True,
)

MAX_ID = 2**63 - 1  # the largest SQLite row id
STATES = ("queued", "sending", "sent", "failed", "uncertain", "draft", "dry-run", "expired")


def label(entry: QueueEntry) -> str:
    """The id a person types: KIND:N."""
    return f"{entry.kind}:{entry.id}"


def parse_id(text: str) -> tuple[Table, str, int]:
    """(table, kind, row id) of KIND:N (a bare N is a reply); exits 2 on anything else."""
    kind, _, number = text.strip().rpartition(":")
    kind = kind or "reply"
    # isdigit() alone accepts "²" and other digits int() rejects; SQLite ids are 64-bit.
    valid = number.isascii() and number.isdigit() and int(number) <= MAX_ID
    if kind not in ("reply", "digest", "alert") or not valid:
        fail(f"{text!r} is not a mail id: use reply:N, digest:N or alert:N", EXIT_USAGE)
    return ("replies" if kind == "reply" else "digests"), kind, int(number)


def _age(created_at: str, now: datetime) -> str:
    from triage.sales.leads import age

    return age(datetime.fromisoformat(created_at), now)


@app.command("list")
def list_command(
    ctx: typer.Context,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            help="Only this state (repeatable). Default: queued, sending, failed, uncertain.",
        ),
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
) -> None:
    """List outbound mail that is waiting, deferred, given up or uncertain, oldest first."""
    from triage.act.outbox import OPEN_STATES, entries

    unknown = sorted(set(state or ()) - set(STATES))
    if unknown:
        fail(f"unknown state {unknown[0]!r}: use one of {', '.join(STATES)}", EXIT_USAGE)
    with existing_store(ctx) as (_settings, db):
        found = entries(db, tuple(state or OPEN_STATES))
    now = datetime.now(UTC)
    if as_json:
        data = [{**asdict(e), "id": label(e), "age": _age(e.created_at, now)} for e in found]
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not found:
        print("nothing in the outbox")
        return
    rows = [
        (
            label(e),
            e.state,
            str(e.attempts),
            _age(e.created_at, now),
            e.recipients,
            " ".join((e.error or "").split())[:120],
        )
        for e in found
    ]
    headers = ("ID", "STATE", "TRIES", "AGE", "RECIPIENT", "LAST ERROR")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


@app.command("resolve")
def resolve_command(
    ctx: typer.Context,
    mail_id: Annotated[str, typer.Argument(metavar="ID", help="reply:N, digest:N or alert:N.")],
    action: Annotated[
        str,
        typer.Argument(
            metavar="sent|resend|drop",
            help="sent: it arrived (a reply is then filed as usual); resend: queue it again; "
            "drop: give up.",
        ),
    ],
    by: str = typer.Option("", "--by", help="Who decides (default: your user name)."),
) -> None:
    """Settle a mail that may or may not have arrived (state uncertain); recorded with who and
    when."""
    from triage.act.outbox import resolve
    from triage.store.outbox import RESOLUTIONS, entry

    resolution = next((r for r in RESOLUTIONS if r == action), None)
    if resolution is None:
        fail(f"unknown decision {action!r}: use sent, resend or drop", EXIT_USAGE)
    table, kind, row_id = parse_id(mail_id)
    with existing_store(ctx) as (_settings, db):
        found = entry(db.reads, table, row_id)
        if found is None or found.kind != kind:
            fail(f"no {kind} {row_id} in the outbox", EXIT_USAGE)
        if found.state != "uncertain":
            fail(f"{label(found)} is {found.state}, not uncertain: nothing to resolve", EXIT_USAGE)
        who = by or current_user()
        if not resolve(db, table, row_id, resolution, who, datetime.now(UTC)):
            fail(f"{label(found)} was settled meanwhile; see triage outbox list", EXIT_USAGE)
    print(f"{label(found)} resolved: {action}" + (f" (by {who})" if who else ""))
