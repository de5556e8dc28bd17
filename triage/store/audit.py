"""The audit log: every change a person made — who, when, what — from the console and the CLI.

Written in the same transaction as the change it describes, so a change without its entry (or
an entry for a change that was rolled back) cannot exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triage.store.db import Tx, inserted_id, timestamp


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change."""

    id: int
    at: str
    actor: str
    action: str
    target_kind: str
    target: str
    detail: Mapping[str, Any]


def record(
    c: Tx,
    actor: str,
    action: str,
    target_kind: str = "",
    target: str | int = "",
    detail: Mapping[str, Any] | None = None,
    *,
    now: datetime,
) -> int:
    """Append one entry inside the caller's transaction; returns its id."""
    cur = c.execute(
        "INSERT INTO audit (at, actor, action, target_kind, target, detail)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (
            timestamp(now),
            actor,
            action,
            target_kind,
            str(target),
            json.dumps(dict(detail or {}), ensure_ascii=False, default=str),
        ),
    )
    return inserted_id(cur)


def _entry(r: Any) -> AuditEntry:
    try:
        detail = json.loads(r["detail"] or "{}")
    except ValueError:
        detail = {}
    return AuditEntry(
        int(r["id"]),
        r["at"],
        r["actor"],
        r["action"],
        r["target_kind"],
        r["target"],
        detail if isinstance(detail, dict) else {},
    )


def for_target(c: Tx, target_kind: str, target: str | int) -> list[AuditEntry]:
    """Every entry about one thing (a lead, a template file, a user), oldest first."""
    rows = c.execute(
        "SELECT * FROM audit WHERE target_kind = ? AND target = ? ORDER BY at, id",
        (target_kind, str(target)),
    )
    return [_entry(r) for r in rows]


def recent(c: Tx, limit: int = 100, action_prefix: str = "") -> list[AuditEntry]:
    """The latest entries, newest first; only actions starting with `action_prefix` if given."""
    rows = c.execute(
        "SELECT * FROM audit WHERE action LIKE ? ESCAPE '\\' ORDER BY at DESC, id DESC LIMIT ?",
        (action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", limit),
    )
    return [_entry(r) for r in rows]
