"""The SQL of lead webhooks: endpoints, events and their deliveries (`triage.act.webhooks`).

An event is recorded in the transaction of the change it reports, with one delivery row per
endpoint that takes it; a rollback leaves neither. Which endpoints take which events is what the
daemon last started with (`sync_endpoints`), so the CLI and the console, which may run with no
daemon, queue exactly what the daemon will send.

Deliveries walk the delivery queue's states with its compare-and-set transitions
(`triage.store.outbox`: `claim`, `mark_sent`, `retry_later`, `fail` on table
`webhook_deliveries`), with one difference in recovery: a POST whose outcome is unknown (the
process died while sending) is queued again (`requeue_sending`), never left `uncertain`, because
the receiver de-duplicates by the event's id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from triage.store.db import Tx, inserted_id, timestamp
from triage.store.outbox import QueueTable

TABLE: Final[QueueTable] = "webhook_deliveries"
# The states a delivery may be in (a subset of the delivery queue's).
STATES = ("queued", "sending", "sent", "failed")


def _padded(events: Iterable[str]) -> str:
    # ' a b ': one LIKE '% a %' finds a subscription without a table per endpoint and event.
    return " " + " ".join(events) + " "


# --- endpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One endpoint as the store knows it, with its deliveries counted by state."""

    name: str
    url: str
    events: tuple[str, ...]
    configured: bool
    disabled_at: str | None
    disabled_reason: str | None
    failing_since: str | None
    counts: dict[str, int]
    last_error: str | None


def sync_endpoints(
    tx: Tx, endpoints: Sequence[tuple[str, str, Sequence[str]]], now: datetime
) -> None:
    """Record the configured endpoints (name, url, events); others become unconfigured (their
    queued deliveries wait). A new url clears a 410's disabling and the failure episode."""
    at = timestamp(now)
    for name, url, events in endpoints:
        tx.execute(
            "INSERT INTO webhook_endpoints (name, url, events, configured, updated_at)"
            " VALUES (?, ?, ?, 1, ?) ON CONFLICT (name) DO UPDATE SET"
            " events = excluded.events, configured = 1, updated_at = excluded.updated_at,"
            " disabled_at = CASE WHEN webhook_endpoints.url = excluded.url"
            "   THEN webhook_endpoints.disabled_at ELSE NULL END,"
            " disabled_reason = CASE WHEN webhook_endpoints.url = excluded.url"
            "   THEN webhook_endpoints.disabled_reason ELSE NULL END,"
            " failing_since = CASE WHEN webhook_endpoints.url = excluded.url"
            "   THEN webhook_endpoints.failing_since ELSE NULL END,"
            " alerted_at = CASE WHEN webhook_endpoints.url = excluded.url"
            "   THEN webhook_endpoints.alerted_at ELSE NULL END,"
            " url = excluded.url",
            (name, url, _padded(events), at),
        )
    names = [name for name, _url, _events in endpoints]
    if names:
        where, params = tx.dialect.in_list("name", names)
        tx.execute(
            f"UPDATE webhook_endpoints SET configured = 0 WHERE configured = 1 AND NOT {where}",  # noqa: S608
            tuple(params),
        )
    else:
        tx.execute("UPDATE webhook_endpoints SET configured = 0 WHERE configured = 1")


def subscribers(tx: Tx, event: str) -> list[str]:
    """The endpoints that take `event` now: configured, not disabled; by name."""
    rows = tx.execute(
        "SELECT name FROM webhook_endpoints WHERE configured = 1 AND disabled_at IS NULL"
        " AND events LIKE ? ORDER BY name",
        (f"% {event} %",),
    ).fetchall()
    return [str(r["name"]) for r in rows]


def takes_any(tx: Tx, events: Sequence[str]) -> bool:
    """True when some configured, enabled endpoint takes one of `events`: one read, for the
    per-message path to skip all event work when there are no webhooks."""
    where = " OR ".join("events LIKE ?" for _ in events)
    row = tx.execute(
        "SELECT 1 FROM webhook_endpoints WHERE configured = 1 AND disabled_at IS NULL"  # noqa: S608
        f" AND ({where}) LIMIT 1",
        tuple(f"% {event} %" for event in events),
    ).fetchone()
    return row is not None


def endpoint_states(tx: Tx) -> list[EndpointState]:
    """Every endpoint the store knows, configured ones first, with its deliveries' counts."""
    counts: dict[str, dict[str, int]] = {}
    for r in tx.execute(
        "SELECT endpoint, state, count(*) AS n FROM webhook_deliveries GROUP BY endpoint, state"
    ):
        counts.setdefault(str(r["endpoint"]), {})[str(r["state"])] = int(r["n"])
    found = []
    for r in tx.execute(
        "SELECT name, url, events, configured, disabled_at, disabled_reason, failing_since"
        " FROM webhook_endpoints ORDER BY configured DESC, name"
    ).fetchall():
        name = str(r["name"])
        last = tx.execute(
            "SELECT error FROM webhook_deliveries WHERE endpoint = ? AND error IS NOT NULL"
            " ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone()
        found.append(
            EndpointState(
                name=name,
                url=str(r["url"]),
                events=tuple(str(r["events"]).split()),
                configured=bool(r["configured"]),
                disabled_at=r["disabled_at"],
                disabled_reason=r["disabled_reason"],
                failing_since=r["failing_since"],
                counts=counts.get(name, {}),
                last_error=last["error"] if last else None,
            )
        )
    return found


def endpoint_disabled(tx: Tx, name: str) -> bool:
    """Whether a 410 (or a person) disabled the endpoint."""
    row = tx.execute("SELECT disabled_at FROM webhook_endpoints WHERE name = ?", (name,)).fetchone()
    return row is not None and row["disabled_at"] is not None


def disable_endpoint(tx: Tx, name: str, reason: str, now: datetime) -> list[int] | None:
    """The receiver said the endpoint is gone: disable it (unless it is already) and fail its
    queued deliveries with `reason`; returns their ids, None when it was disabled already."""
    cur = tx.execute(
        "UPDATE webhook_endpoints SET disabled_at = ?, disabled_reason = ?"
        " WHERE name = ? AND disabled_at IS NULL",
        (timestamp(now), reason, name),
    )
    if cur.rowcount != 1:
        return None
    rows = tx.execute(
        "UPDATE webhook_deliveries SET state = 'failed', error = ?"
        " WHERE endpoint = ? AND state = 'queued' RETURNING id",
        (f"endpoint disabled: {reason}", name),
    ).fetchall()
    return sorted(int(r["id"]) for r in rows)


def enable_endpoint(tx: Tx, name: str) -> bool:
    """A person enables a disabled endpoint again; False when it was not disabled."""
    cur = tx.execute(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,"
        " failing_since = NULL, alerted_at = NULL WHERE name = ? AND disabled_at IS NOT NULL",
        (name,),
    )
    return cur.rowcount == 1


def start_failing(tx: Tx, name: str, now: datetime) -> bool:
    """A delivery to `name` failed for good: True for the first since the endpoint last
    succeeded (the one that alerts the admin), False while the episode lasts."""
    cur = tx.execute(
        "UPDATE webhook_endpoints SET failing_since = ?, alerted_at = ?"
        " WHERE name = ? AND failing_since IS NULL",
        (timestamp(now), timestamp(now), name),
    )
    return cur.rowcount == 1


def failing_since(tx: Tx, name: str) -> str | None:
    """When the endpoint's current failure episode began (None: it is not failing)."""
    row = tx.execute(
        "SELECT failing_since FROM webhook_endpoints WHERE name = ?", (name,)
    ).fetchone()
    return row["failing_since"] if row else None


def end_failing(tx: Tx, name: str) -> None:
    """A delivery to `name` succeeded: the failure episode (if any) is over."""
    tx.execute(
        "UPDATE webhook_endpoints SET failing_since = NULL, alerted_at = NULL"
        " WHERE name = ? AND failing_since IS NOT NULL",
        (name,),
    )


# --- events and deliveries ---------------------------------------------------------------------


def record_event(
    tx: Tx,
    event_id: str,
    event: str,
    lead_id: int | None,
    data: dict[str, Any],
    now: datetime,
    endpoints: Sequence[str],
) -> int:
    """Within the caller's transaction: the event and one queued delivery, due now, for each
    of `endpoints`; returns the event's row id."""
    at = timestamp(now)
    row = inserted_id(
        tx.execute(
            "INSERT INTO webhook_events (event_id, type, lead_id, data, created_at)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (event_id, event, lead_id, json.dumps(data, ensure_ascii=False), at),
        )
    )
    tx.executemany(
        "INSERT INTO webhook_deliveries (event_row, endpoint, state, next_attempt, created_at)"
        " VALUES (?, ?, 'queued', ?, ?)",
        [(row, name, at, at) for name in endpoints],
    )
    return row


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery row with its event: what a sender needs to POST it."""

    id: int
    endpoint: str
    state: str
    attempts: int
    next_attempt: str
    error: str | None
    status_code: int | None
    event_id: str
    type: str
    data: dict[str, Any]
    event_created_at: datetime
    lead_id: int | None
    # When this delivery was queued (last): a replay starts its retry window afresh.
    queued_at: datetime | None = None


_DELIVERY = (
    "SELECT d.id, d.endpoint, d.state, d.attempts, d.next_attempt, d.error, d.status_code,"
    " e.event_id, e.type, e.data, e.created_at AS event_created_at, e.lead_id,"
    " d.created_at AS queued_at"
    " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_row"
)


def _deliveries(tx: Tx, where: str, params: tuple[object, ...]) -> list[Delivery]:
    rows = tx.execute(f"{_DELIVERY} WHERE {where}", params).fetchall()
    return [
        Delivery(
            id=int(r["id"]),
            endpoint=str(r["endpoint"]),
            state=str(r["state"]),
            attempts=int(r["attempts"]),
            next_attempt=str(r["next_attempt"]),
            error=r["error"],
            status_code=None if r["status_code"] is None else int(r["status_code"]),
            event_id=str(r["event_id"]),
            type=str(r["type"]),
            data=json.loads(r["data"]),
            event_created_at=datetime.fromisoformat(str(r["event_created_at"])),
            queued_at=datetime.fromisoformat(str(r["queued_at"])),
            lead_id=None if r["lead_id"] is None else int(r["lead_id"]),
        )
        for r in rows
    ]


def due(tx: Tx, endpoint: str, now: datetime, limit: int) -> list[Delivery]:
    """Queued deliveries to `endpoint` due at `now`, oldest event first."""
    return _deliveries(
        tx,
        "d.endpoint = ? AND d.state = 'queued' AND d.next_attempt <= ? ORDER BY d.id LIMIT ?",
        (endpoint, timestamp(now), limit),
    )


def next_due(tx: Tx, endpoint: str) -> str | None:
    """When the next queued delivery to `endpoint` is due (None: nothing queued)."""
    row = tx.execute(
        "SELECT min(next_attempt) AS at FROM webhook_deliveries"
        " WHERE endpoint = ? AND state = 'queued'",
        (endpoint,),
    ).fetchone()
    return row["at"] if row else None


def delivery(tx: Tx, row_id: int) -> Delivery | None:
    """One delivery with its event, or None."""
    found = _deliveries(tx, "d.id = ?", (row_id,))
    return found[0] if found else None


def deliveries_of(tx: Tx, event_id: str) -> list[Delivery]:
    """Every delivery of the event `event_id`, by endpoint."""
    return _deliveries(tx, "e.event_id = ? ORDER BY d.endpoint", (event_id,))


def recent(tx: Tx, states: Sequence[str], limit: int) -> list[Delivery]:
    """The latest deliveries in `states`, newest first."""
    where, params = tx.dialect.in_list("d.state", tuple(states))
    return _deliveries(tx, f"{where} ORDER BY d.id DESC LIMIT ?", (*params, limit))


def set_status_code(tx: Tx, row_id: int, status: int | None) -> None:
    """The HTTP status of the latest attempt (None: no answer)."""
    tx.execute("UPDATE webhook_deliveries SET status_code = ? WHERE id = ?", (status, row_id))


def any_sending(tx: Tx, claimed_before: datetime) -> bool:
    """Whether a delivery claimed before `claimed_before` is still `sending`."""
    row = tx.execute(
        "SELECT 1 FROM webhook_deliveries WHERE state = 'sending'"
        " AND (claimed_at IS NULL OR claimed_at <= ?) LIMIT 1",
        (timestamp(claimed_before),),
    ).fetchone()
    return row is not None


def requeue_sending(tx: Tx, claimed_before: datetime, error: str, now: datetime) -> list[int]:
    """Deliveries in `sending` claimed before `claimed_before` → queued, due `now` (the
    attempt stays counted); returns their ids."""
    rows = tx.execute(
        "UPDATE webhook_deliveries SET state = 'queued', next_attempt = ?, error = ?"
        " WHERE state = 'sending' AND (claimed_at IS NULL OR claimed_at <= ?) RETURNING id",
        (timestamp(now), error, timestamp(claimed_before)),
    ).fetchall()
    return sorted(int(r["id"]) for r in rows)


def event_exists(tx: Tx, event_id: str) -> bool:
    """Whether an event with that id is stored."""
    row = tx.execute("SELECT 1 FROM webhook_events WHERE event_id = ?", (event_id,)).fetchone()
    return row is not None


def event_type(tx: Tx, event_id: str) -> str:
    """The type of the event `event_id` ("" when there is none)."""
    row = tx.execute("SELECT type FROM webhook_events WHERE event_id = ?", (event_id,)).fetchone()
    return str(row["type"]) if row else ""


def replay(tx: Tx, event_id: str, endpoints: Sequence[str], who: str, now: datetime) -> list[str]:
    """Queue the event `event_id` again, due now with its attempts reset and its retry window
    starting now, for each of `endpoints` (adding the deliveries it never had); a delivery
    being sent right now is left alone. Returns the endpoints queued."""
    row = tx.execute("SELECT id FROM webhook_events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        return []
    at = timestamp(now)
    queued = []
    for name in endpoints:
        cur = tx.execute(
            "UPDATE webhook_deliveries SET state = 'queued', attempts = 0, next_attempt = ?,"
            " created_at = ?, error = 'replay requested by ' || ? || ' at ' || ?"
            " WHERE event_row = ? AND endpoint = ? AND state <> 'sending'",
            (at, at, who or "?", at, int(row["id"]), name),
        )
        if cur.rowcount == 0:
            cur = tx.execute(
                "INSERT INTO webhook_deliveries (event_row, endpoint, state, next_attempt,"
                " created_at) VALUES (?, ?, 'queued', ?, ?)"
                " ON CONFLICT (event_row, endpoint) DO NOTHING",
                (int(row["id"]), name, at, at),
            )
        if cur.rowcount == 1:
            queued.append(name)
    return queued


def empty_before(tx: Tx, cutoff: str) -> int:
    """Within the caller's transaction (retention): empty the data of events created before
    `cutoff` (a stored timestamp) that no delivery waits for any more; returns how many."""
    return tx.execute(
        "UPDATE webhook_events SET data = '{}' WHERE created_at < ? AND data <> '{}'"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_row = webhook_events.id"
        " AND d.state IN ('queued', 'sending'))",
        (cutoff,),
    ).rowcount


def queue_counts(tx: Tx) -> dict[tuple[str, str], int]:
    """Deliveries by (endpoint, state), for the metrics."""
    return {
        (str(r["endpoint"]), str(r["state"])): int(r["n"])
        for r in tx.execute(
            "SELECT endpoint, state, count(*) AS n FROM webhook_deliveries GROUP BY endpoint, state"
        )
    }
