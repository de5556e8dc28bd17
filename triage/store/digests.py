"""The SQL of digests and hot-lead alerts (table `digests`) beyond the delivery state machine,
which `triage.store.outbox` runs for them as for replies."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from triage.store.db import Tx, inserted_id, timestamp


def slot_taken(tx: Tx, kind: str, slot: str) -> bool:
    """Whether the digest or alert of `kind` for `slot` was prepared already."""
    row = tx.execute("SELECT 1 FROM digests WHERE kind = ? AND slot = ?", (kind, slot)).fetchone()
    return row is not None


def retry_after(tx: Tx, kind: str) -> datetime:
    """Until when preparing `kind` is paused after a template or settings error."""
    row = tx.execute("SELECT value FROM kv WHERE key = ?", (f"{kind}.retry_after",)).fetchone()
    return datetime.fromisoformat(row["value"]) if row else datetime.min.replace(tzinfo=UTC)


def pause(tx: Tx, kind: str, until: datetime) -> None:
    """Pause preparing `kind` until `until`."""
    tx.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (f"{kind}.retry_after", timestamp(until)),
    )


def previous_cutoff(tx: Tx, kind: str) -> datetime | None:
    """The end of the period the latest digest reported, or None before the first."""
    row = tx.execute(
        "SELECT covers_until FROM digests WHERE kind = ? AND covers_until IS NOT NULL"
        " ORDER BY id DESC LIMIT 1",
        (kind,),
    ).fetchone()
    return datetime.fromisoformat(row["covers_until"]) if row else None


def instance(tx: Tx) -> str:
    """A random token made once per database, inside the caller's write transaction.

    It goes into Message-IDs so that a staging copy, or a reinstall whose lead ids start at 1
    again, never produces the id of an earlier message (mail services drop such "duplicates").
    """
    row = tx.execute("SELECT value FROM kv WHERE key = 'triage.instance'").fetchone()
    if row is not None:
        return str(row["value"])
    # Another process may be making it right now: its token wins (the insert waits for its
    # commit, then does nothing), and both read the one that was stored.
    tx.execute(
        "INSERT INTO kv (key, value) VALUES ('triage.instance', ?) ON CONFLICT (key) DO NOTHING",
        (secrets.token_hex(8),),
    )
    row = tx.execute("SELECT value FROM kv WHERE key = 'triage.instance'").fetchone()
    return str(row["value"])


def insert(
    tx: Tx,
    *,
    kind: str,
    slot: str,
    message_id: str,
    raw: bytes,
    recipients: Sequence[str],
    envelope_from: str,
    now: datetime,
    lead_id: int | None = None,
    covers_until: datetime | None = None,
) -> int:
    """Queue one digest or alert, due now; returns its row id, or 0 when the notice of `kind`
    for `slot` exists already (another process prepared it meanwhile: it waited for that
    one's commit, then found it)."""
    at = timestamp(now)
    # No conflict target: the Message-ID is made from the kind, slot and instance, so its
    # unique index may be the one to meet the other process's row first; either means "taken".
    cur = tx.execute(
        "INSERT INTO digests (state, message_id, raw, created_at, kind, slot, lead_id,"
        " recipients, envelope_from, covers_until, attempts, next_attempt, updated_at)"
        " VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (
            message_id,
            raw,
            at,
            kind,
            slot,
            lead_id,
            json.dumps(list(recipients)),
            envelope_from,
            timestamp(covers_until) if covers_until else None,
            at,
            at,
        ),
    )
    return inserted_id(cur)


def mark_digested(tx: Tx, digest_id: int, lead_ids: Iterable[int]) -> None:
    """Record that digest `digest_id` reports the leads `lead_ids` as new."""
    tx.executemany(
        "UPDATE leads SET digested_in = ? WHERE id = ?", [(digest_id, i) for i in lead_ids]
    )


def mark_alerted(tx: Tx, lead_id: int, now: datetime) -> None:
    """Record that lead `lead_id` had its alert (or needs none)."""
    tx.execute("UPDATE leads SET alerted_at = ? WHERE id = ?", (timestamp(now), lead_id))


@dataclass(frozen=True, slots=True)
class Notice:
    """A queued digest or alert."""

    id: int
    kind: str
    message_id: str
    raw: bytes
    recipients: tuple[str, ...]
    envelope_from: str
    attempts: int


def due(tx: Tx, now: datetime) -> list[Notice]:
    """Queued digests and alerts due at `now`, oldest first."""
    rows = tx.execute(
        "SELECT id, kind, message_id, raw, recipients, envelope_from, attempts FROM digests"
        " WHERE state = 'queued' AND (next_attempt IS NULL OR next_attempt <= ?) ORDER BY id",
        (timestamp(now),),
    )
    return [
        Notice(
            id=int(r["id"]),
            kind=r["kind"],
            message_id=r["message_id"],
            raw=bytes(r["raw"]),
            recipients=tuple(json.loads(r["recipients"])),
            envelope_from=r["envelope_from"],
            attempts=int(r["attempts"]),
        )
        for r in rows
    ]


def waiting(tx: Tx, kind: str) -> tuple[int, str | None] | None:
    """(id, last error) of the oldest queued row of `kind`, or None."""
    row = tx.execute(
        "SELECT id, error FROM digests WHERE kind = ? AND state = 'queued' ORDER BY id LIMIT 1",
        (kind,),
    ).fetchone()
    return (int(row["id"]), row["error"]) if row else None


@dataclass(frozen=True, slots=True)
class NoticeStatus:
    """One digest or alert row, for `triage digest --status`."""

    id: int
    kind: str
    state: str
    message_id: str
    created_at: str
    sent_at: str | None
    attempts: int
    error: str | None


def status(tx: Tx, limit: int = 20) -> list[NoticeStatus]:
    """The most recent digests and alerts, newest first."""
    rows = tx.execute(
        "SELECT id, kind, state, message_id, created_at, sent_at, attempts, error FROM digests"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [NoticeStatus(**dict(zip(r.keys(), tuple(r), strict=True))) for r in rows]


def split_off(
    tx: Tx,
    row_id: int,
    recipients: Sequence[str],
    *,
    state: str,
    error: str,
    next_attempt: datetime,
) -> int:
    """A copy of digest or alert `row_id` (the same message) for `recipients` only, in `state`
    (`queued` to try those again, `failed` to record that they never get it); returns its id.

    For a mail the server took for some recipients and refused for others. Its slot and the
    Message-ID column name the row it came from (both are unique), it covers no period and
    reports no leads of its own: the original row did that when it was prepared.
    """
    suffix = f"#{row_id}.{state}"
    cur = tx.execute(
        "INSERT INTO digests (state, message_id, raw, created_at, kind, slot, lead_id,"
        " recipients, envelope_from, covers_until, attempts, next_attempt, updated_at, error)"
        " SELECT ?, message_id || ?, raw, created_at, kind, slot || ?, lead_id, ?,"
        " envelope_from, NULL, 0, ?, ?, ? FROM digests WHERE id = ? RETURNING id",
        (
            state,
            suffix,
            suffix,
            json.dumps(list(recipients)),
            timestamp(next_attempt),
            timestamp(next_attempt),
            error,
            row_id,
        ),
    )
    return inserted_id(cur)
