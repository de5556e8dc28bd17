"""Emptying old message content (`leads.retention_days`): the SQL of `apply_retention`."""

from __future__ import annotations

from dataclasses import dataclass

from triage.store.db import Tx


@dataclass(frozen=True, slots=True)
class Emptied:
    """How many rows one retention run emptied, per table."""

    messages: int = 0
    corrections: int = 0
    digests: int = 0


def empty_before(c: Tx, cutoff: str) -> Emptied:
    """Within the caller's transaction: empty the content stored before `cutoff` (a stored
    timestamp): message body and raw, a correction's raw, and finished digests' raw message."""
    messages = c.execute(
        "UPDATE messages SET body = NULL, raw = NULL"
        " WHERE created_at < ? AND (body IS NOT NULL OR raw IS NOT NULL)",
        (cutoff,),
    ).rowcount
    corrections = c.execute(
        "UPDATE corrections SET raw = NULL WHERE created_at < ? AND raw IS NOT NULL",
        (cutoff,),
    ).rowcount
    digests = c.execute(
        "UPDATE digests SET raw = ? WHERE created_at < ? AND length(raw) > 0"
        " AND state IN ('sent', 'failed', 'uncertain')",
        (b"", cutoff),
    ).rowcount
    return Emptied(messages, corrections, digests)
