"""`triage fleet …`: the instances that share the store, and the leases they hold.

Ages are by the database server's clock, the one that decides every expiry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from triage.cli.common import existing_store

if TYPE_CHECKING:
    from triage.ops.fleet import FleetStatus
    from triage.store.leases import LeaseRow

app = typer.Typer(
    help="Fleet mode: the triage instances sharing the store and the accounts each serves.",
    no_args_is_help=True,
)


def duration(seconds: float) -> str:
    """A short duration: "0.8s", "42s", "12m", "5h", "3d"; "-" when unknown."""
    if math.isinf(seconds) or math.isnan(seconds):
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def _lease_json(lease: LeaseRow, now: float) -> dict[str, Any]:
    return {
        "name": lease.name,
        "owner": lease.owner,
        "generation": lease.generation,
        "held_for": None if lease.acquired_at is None else round(now - lease.acquired_at, 3),
        "renewed_ago": None if lease.renewed_at is None else round(now - lease.renewed_at, 3),
        "expires_in": round(lease.expires_at - now, 3),
    }


def as_json(status: FleetStatus) -> dict[str, Any]:
    """The status as `--json` prints it: ages in seconds (by the database's clock)."""
    now = status.now
    return {
        "now": now,
        "instances": [
            {
                "id": i.instance.id,
                "host": i.instance.host,
                "pid": i.instance.pid,
                "version": i.instance.version,
                "state": i.state,
                "started_ago": round(now - i.instance.started_at, 3) if i.instance.host else None,
                "heartbeat_age": None if math.isinf(i.heartbeat_age) else round(i.heartbeat_age, 3),
                "leases": [_lease_json(lease, now) for lease in i.leases],
            }
            for i in status.instances
        ],
        "unheld": [_lease_json(lease, now) for lease in status.unheld],
    }


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (
            indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def as_text(status: FleetStatus) -> list[str]:
    """The status as lines: each instance, then the leases it holds; then the unheld ones."""
    now = status.now
    if not status.instances and not status.unheld:
        return ["no instance has registered yet (`triage run` registers itself in fleet mode)"]
    lines: list[str] = []
    for i in status.instances:
        lines.append(
            f"{i.instance.id}  {i.state}  heartbeat {duration(i.heartbeat_age)} ago"
            + (f"  version {i.instance.version}" if i.instance.version else "")
            + f"  {len(i.leases)} lease{'' if len(i.leases) == 1 else 's'}"
        )
        if i.leases:
            held: list[tuple[str, ...]] = [
                ("LEASE", "GENERATION", "HELD FOR", "RENEWED", "EXPIRES IN")
            ]
            held += [
                (
                    lease.name,
                    str(lease.generation),
                    duration(now - (lease.acquired_at or now)),
                    f"{duration(now - (lease.renewed_at or now))} ago",
                    duration(lease.expires_at - now),
                )
                for lease in i.leases
            ]
            lines += _table(held, "    ")
    if status.unheld:
        lines.append("not held by anyone:")
        rows: list[tuple[str, ...]] = [("LEASE", "GENERATION", "FREE FOR")]
        rows += [
            (lease.name, str(lease.generation), duration(now - lease.expires_at))
            for lease in status.unheld
        ]
        lines += _table(rows, "    ")
    return lines


@app.command("status")
def status_command(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="JSON instead of text."),
) -> None:
    """List the instances (state, last heartbeat) and the leases each holds (generation, age)."""
    with existing_store(ctx) as (_settings, db):
        from triage.ops.fleet import fleet_status

        status = fleet_status(db)
    if json_output:
        print(json.dumps(as_json(status), indent=2, ensure_ascii=False))
        return
    for line in as_text(status):
        print(line)
