"""The delivery queue's SQL: replies (table `replies`) and digests and alerts (table `digests`).

Both tables walk one state machine, whose transitions are the functions of the first part:

    queued ──▶ sending ──▶ sent
       ▲  │        ├──▶ queued     (refused with 4xx at the dot: retry with backoff)
       └──┘        ├──▶ failed     (5xx, or too many transient failures)
    retry later    └──▶ uncertain  (the connection broke after the dot, or the process died)
                           └──▶ sent | queued | dropped   (a person's decision, recorded)

Several senders work at once (each account's thread, housekeeping, `triage digest --send`), so
no transition trusts what a sender read earlier: before its claim a sender may only record a
failure on a row still `queued` with the attempts it read, and after it every transition names
its `Claim`. A sender therefore never moves a row another one is sending.

The second part is what only replies have: the reply history, the caps, filing. Digests' own
queries (slots, leads reported) are in `triage.store.digests`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from triage.store.db import Tx, inserted_id, timestamp
from triage.store.leads import lock_prospects

Table = Literal["replies", "digests"]
TABLES: tuple[Table, ...] = get_args(Table)
# Webhook deliveries walk the same states (`triage.store.webhooks`); the transitions below take
# their table too, while the listing, recovery and resolution of mail above stay for mail only.
QueueTable = Literal["replies", "digests", "webhook_deliveries"]
QUEUE_TABLES: tuple[QueueTable, ...] = get_args(QueueTable)
Resolution = Literal["sent", "resend", "drop"]
RESOLUTIONS: tuple[Resolution, ...] = get_args(Resolution)
# Replies that are, or may become, a reply the recipient sees: what the rate limits count.
COUNTED_STATES = ("queued", "sending", "sent", "uncertain", "draft")
FILING_STATES = ("sent", "draft")
# Priorities from here on are replies to senders nobody authenticated (see `ops.service`).
UNVERIFIED = 2

_REPLY_COLUMNS = (
    "id, message_row, reply_message_id, recipient, envelope_from, template, mode, state, raw,"
    " attempts, next_attempt, error, created_at, sent_at, filed_at, recipient_key, priority,"
    " deferrals, recipient_domain"
)
# SQL pieces built once from the constants above; no value from outside is ever interpolated.
_SELECT = f"SELECT {_REPLY_COLUMNS} FROM replies"  # noqa: S608
_COUNTED = "state IN ({})".format(", ".join(f"'{s}'" for s in COUNTED_STATES))
_FILING = "state IN ({})".format(", ".join(f"'{s}'" for s in FILING_STATES))
_RECENT_TO = f"SELECT 1 FROM replies WHERE recipient_key = ? AND created_at >= ? AND {_COUNTED}"  # noqa: S608
_CLAIMED = "claimed_at > ? AND state IN ('sending', 'sent', 'uncertain')"


def _table(table: QueueTable) -> str:
    # The table name is interpolated into SQL: only the literal names ever pass.
    if table not in QUEUE_TABLES:
        raise ValueError(f"no delivery table {table!r}")
    return table


# --- the state machine, for both tables --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One sender's claim on a row: when it claimed it and the attempt count it set. Every
    transition after the claim names it, so a sender only ever changes the row it claimed — never
    one that another sender claimed meanwhile, nor one a person resolved or a recovery marked."""

    at: str
    attempts: int


def claim(
    tx: Tx, table: QueueTable, row_id: int, now: datetime, attempts: int, by: str | None = None
) -> Claim | None:
    """queued → sending, counting the attempt; `attempts` is the count the sender read with the
    row, `by` who claims it (fleet mode: the instance and its lease). None when the row is not
    queued (any more) or another try was counted meanwhile."""
    at = timestamp(now)
    cur = tx.execute(
        f"UPDATE {_table(table)} SET state = 'sending', attempts = attempts + 1,"  # noqa: S608
        " claimed_at = ?, claimed_by = ? WHERE id = ? AND state = 'queued' AND attempts = ?",
        (at, by, row_id, attempts),
    )
    return Claim(at, attempts + 1) if cur.rowcount == 1 else None


# The row is still the one `claim` took: in `sending` (or, for `mark_sent`, marked uncertain by
# a start-up's recovery meanwhile — a person's decision would have moved it out of `uncertain`,
# and a resend followed by a new claim changes `claimed_at`).
_MINE = "id = ? AND claimed_at = ? AND attempts = ?"


def mark_sent(
    tx: Tx, table: QueueTable, row_id: int, mine: Claim, now: datetime, error: str | None
) -> bool:
    """The server acknowledged the final dot of this sender's claim: → sent. Also from
    `uncertain`, when a recovery marked this very claim meanwhile. False when the row moved on."""
    cur = tx.execute(
        f"UPDATE {_table(table)} SET state = 'sent', sent_at = ?, error = ?"  # noqa: S608
        f" WHERE {_MINE} AND state IN ('sending', 'uncertain')",
        (timestamp(now), error, row_id, mine.at, mine.attempts),
    )
    return cur.rowcount == 1


def sent_by(tx: Tx, table: QueueTable, row_id: int, mine: Claim) -> bool:
    """True when the row is `sent` under this sender's claim: its `mark_sent` committed."""
    row = tx.execute(
        f"SELECT 1 FROM {_table(table)} WHERE {_MINE} AND state = 'sent'",  # noqa: S608
        (row_id, mine.at, mine.attempts),
    ).fetchone()
    return row is not None


def mark_uncertain(tx: Tx, table: QueueTable, row_id: int, mine: Claim, error: str) -> None:
    """sending → uncertain (this sender's claim only): maybe delivered, never resent
    automatically."""
    tx.execute(
        f"UPDATE {_table(table)} SET state = 'uncertain', error = ?"  # noqa: S608
        f" WHERE {_MINE} AND state = 'sending'",
        (error, row_id, mine.at, mine.attempts),
    )


def _unsent(mine: Claim | None, attempts: int) -> tuple[str, tuple[object, ...]]:
    # Before its claim a sender may only touch a row still queued with the attempts it read (so
    # never a row another sender is sending right now); after it, only its own claim — also
    # when a recovery took the sender for dead and marked that very claim uncertain meanwhile
    # (a person's decision moves the row out of `uncertain`; a resend changes `claimed_at`).
    if mine is None:
        return "state = 'queued' AND attempts = ?", (attempts - 1,)
    return (
        "state IN ('sending', 'uncertain') AND claimed_at = ? AND attempts = ?",
        (mine.at, mine.attempts),
    )


def retry_later(
    tx: Tx,
    table: QueueTable,
    row_id: int,
    attempts: int,
    error: str,
    at: datetime,
    mine: Claim | None = None,
) -> bool:
    """Not delivered, try again at `at`: → queued with `attempts` counted. `mine` is the
    sender's claim, None when it failed before claiming (then `attempts` is one more than it
    read). False when the row is not the sender's to change."""
    where, params = _unsent(mine, attempts)
    cur = tx.execute(
        f"UPDATE {_table(table)} SET state = 'queued', error = ?, attempts = ?,"  # noqa: S608
        f" next_attempt = ? WHERE id = ? AND {where}",
        (error, attempts, timestamp(at), row_id, *params),
    )
    return cur.rowcount == 1


def fail(
    tx: Tx, table: QueueTable, row_id: int, attempts: int, error: str, mine: Claim | None = None
) -> bool:
    """Not delivered, and never will be: → failed (same rule as `retry_later`)."""
    where, params = _unsent(mine, attempts)
    cur = tx.execute(
        f"UPDATE {_table(table)} SET state = 'failed', error = ?, attempts = ?"  # noqa: S608
        f" WHERE id = ? AND {where}",
        (error, attempts, row_id, *params),
    )
    return cur.rowcount == 1


def any_sending(tx: Tx, claimed_before: datetime, tables: Iterable[Table] = TABLES) -> bool:
    """Whether a row of `tables` is in `sending`, claimed before `claimed_before`."""
    return any(
        tx.execute(
            f"SELECT 1 FROM {_table(table)} WHERE state = 'sending'"  # noqa: S608
            " AND (claimed_at IS NULL OR claimed_at <= ?) LIMIT 1",
            (timestamp(claimed_before),),
        ).fetchone()
        for table in tables
    )


def recover(
    tx: Tx, claimed_before: datetime, error: str, tables: Iterable[Table] = TABLES
) -> list[tuple[Table, int]]:
    """Rows of `tables` in `sending` claimed before `claimed_before` → uncertain."""
    found: list[tuple[Table, int]] = []
    for table in tables:
        # One UPDATE … RETURNING: a row another process moves out of `sending` meanwhile is
        # re-checked once its lock is released, and neither changed nor reported.
        ids = sorted(
            int(r["id"])
            for r in tx.execute(
                f"UPDATE {_table(table)} SET state = 'uncertain', error = ?"  # noqa: S608
                " WHERE state = 'sending' AND (claimed_at IS NULL OR claimed_at <= ?)"
                " RETURNING id",
                (error, timestamp(claimed_before)),
            ).fetchall()
        )
        found.extend((table, i) for i in ids)
    return found


def resolve(
    tx: Tx, table: Table, row_id: int, resolution: Resolution, who: str, now: datetime
) -> bool:
    """A person's decision on an uncertain row, recorded with who and when: `sent` (it arrived),
    `resend` (queue it again, due now) or `drop` (give up). False unless the row is uncertain.

    A resend starts the mail afresh: no decision recorded (it is in the queue again, and a later
    `uncertain` needs a new one), no attempts or deferrals counted, and a reply's time in the
    queue — what the caps' expiry measures — counted from now. The decision stays readable in
    `error` until the next try overwrites it.
    """
    at = timestamp(now)
    if resolution == "resend":
        again = ", deferrals = 0, created_at = ?" if table == "replies" else ""
        cur = tx.execute(
            f"UPDATE {_table(table)} SET state = 'queued', attempts = 0, next_attempt = ?,"  # noqa: S608
            " resolution = NULL, resolved_by = NULL, resolved_at = NULL,"
            f" error = 'resend requested by ' || ? || ' at ' || ?{again}"
            " WHERE id = ? AND state = 'uncertain'",
            (at, who or "?", at, *((at,) if again else ()), row_id),
        )
        return cur.rowcount == 1
    state, extra = {
        "sent": ("sent", ", sent_at = ?, error = NULL"),
        "drop": ("failed", ", error = 'dropped by ' || ?"),
    }[resolution]
    value = who if resolution == "drop" else at
    cur = tx.execute(
        f"UPDATE {_table(table)} SET state = ?, resolution = ?, resolved_by = ?,"  # noqa: S608
        f" resolved_at = ?{extra} WHERE id = ? AND state = 'uncertain'",
        (state, resolution, who, at, value, row_id),
    )
    return cur.rowcount == 1


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One row of either table as the operator sees it (`triage outbox list`)."""

    table: Table
    id: int
    kind: str
    recipients: str
    state: str
    attempts: int
    error: str | None
    created_at: str
    next_attempt: str | None
    resolution: str | None
    resolved_by: str | None


def _recipients(table: str, stored: str) -> str:
    # A digest stores its recipients as a JSON list, a reply its one address.
    return ", ".join(json.loads(stored)) if table == "digests" else stored


_ENTRY_COLUMNS = (
    "SELECT 'replies' AS tbl, id, 'reply' AS kind, recipient AS recipients, state, attempts,"
    " error, created_at, next_attempt, resolution, resolved_by FROM replies WHERE {where}"
    " UNION ALL SELECT 'digests', id, kind, recipients, state, attempts, error, created_at,"
    " next_attempt, resolution, resolved_by FROM digests WHERE {where}"
)


def _entries(tx: Tx, where: str, params: tuple[object, ...]) -> list[QueueEntry]:
    rows = tx.execute(
        _ENTRY_COLUMNS.format(where=where) + " ORDER BY created_at, tbl, id", (*params, *params)
    ).fetchall()
    return [
        QueueEntry(
            table=r["tbl"],
            id=int(r["id"]),
            kind=str(r["kind"]),
            recipients=_recipients(r["tbl"], str(r["recipients"])),
            state=str(r["state"]),
            attempts=int(r["attempts"]),
            error=r["error"],
            created_at=str(r["created_at"]),
            next_attempt=r["next_attempt"],
            resolution=r["resolution"],
            resolved_by=r["resolved_by"],
        )
        for r in rows
    ]


def entries(tx: Tx, states: Iterable[str]) -> list[QueueEntry]:
    """Rows of both tables in `states`, oldest first."""
    where, params = tx.dialect.in_list("state", tuple(states))
    return _entries(tx, where, tuple(params))


def entry(tx: Tx, table: Table, row_id: int) -> QueueEntry | None:
    """One row of `table` as the operator sees it, or None."""
    found = [e for e in _entries(tx, "id = ?", (row_id,)) if e.table == table]
    return found[0] if found else None


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One row of the `replies` table."""

    id: int
    message_row: int
    reply_message_id: str
    recipient: str
    envelope_from: str
    template: str
    mode: str
    state: str
    raw: bytes
    attempts: int
    next_attempt: str
    error: str | None
    created_at: str
    sent_at: str | None
    filed_at: str | None
    recipient_key: str = ""
    priority: int = 0
    deferrals: int = 0
    recipient_domain: str = ""


def _items(tx: Tx, where: str, params: tuple[object, ...] = ()) -> list[OutboxItem]:
    rows = tx.execute(f"{_SELECT} WHERE {where}", params).fetchall()
    return [OutboxItem(**dict(zip(r.keys(), tuple(r), strict=True))) for r in rows]


def reply_id_by_message_id(tx: Tx, reply_message_id: str) -> tuple[int, str] | None:
    """(row id, state) of the reply with that Message-ID, or None."""
    row = tx.execute(
        "SELECT id, state FROM replies WHERE reply_message_id = ?", (reply_message_id,)
    ).fetchone()
    return (int(row["id"]), str(row["state"])) if row else None


def insert_reply(
    tx: Tx,
    *,
    message_row: int,
    reply_message_id: str,
    recipient: str,
    envelope_from: str,
    template: str,
    mode: str,
    state: str,
    raw: bytes,
    now: datetime,
    recipient_key: str,
    recipient_domain: str,
    priority: int,
) -> int:
    """Store one reply (due now); returns its row id."""
    at = timestamp(now)
    cur = tx.execute(
        "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
        " template, mode, state, raw, next_attempt, created_at, recipient_key,"
        " recipient_domain, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (
            message_row,
            reply_message_id,
            recipient,
            envelope_from,
            template,
            mode,
            state,
            raw,
            at,
            at,
            recipient_key,
            recipient_domain,
            priority,
        ),
    )
    return inserted_id(cur)


def reply(tx: Tx, row_id: int) -> OutboxItem | None:
    """One reply row, or None."""
    found = _items(tx, "id = ?", (row_id,))
    return found[0] if found else None


def replies_in_state(tx: Tx, state: str) -> list[OutboxItem]:
    """Every reply in `state`, oldest first."""
    return _items(tx, "state = ? ORDER BY id", (state,))


def due_replies(tx: Tx, now: datetime, limit: int, account: str | None = None) -> list[OutboxItem]:
    """Queued replies due at `now`, in the order the caps let them out; with `account`, only
    replies to messages of that IMAP account."""
    if account is None:
        return _items(
            tx,
            "state = 'queued' AND next_attempt <= ? ORDER BY priority, created_at, id LIMIT ?",
            (timestamp(now), limit),
        )
    return _items(
        tx,
        "state = 'queued' AND next_attempt <= ?"
        " AND message_row IN (SELECT id FROM messages WHERE account = ?)"
        " ORDER BY priority, created_at, id LIMIT ?",
        (timestamp(now), account, limit),
    )


def pending_filing(tx: Tx) -> list[OutboxItem]:
    """Sent replies and drafts whose copy is not yet in the mailbox."""
    return _items(tx, f"{_FILING} AND filed_at IS NULL ORDER BY id")


def claim_filing(tx: Tx, row_id: int, now: datetime) -> bool:
    """Set `filed_at` unless it is set: True for the one caller that set it."""
    cur = tx.execute(
        "UPDATE replies SET filed_at = ? WHERE id = ? AND filed_at IS NULL",
        (timestamp(now), row_id),
    )
    return cur.rowcount == 1


def replied_recently(
    tx: Tx, key: str, since: datetime, *, verified: bool, hold: bool = False
) -> bool:
    """True when a counted reply to the mailbox `key` was created since `since` (with
    `verified`, only one to a sender someone authenticated).

    With `hold` (in the transaction that queues the reply if the answer is no), the answer
    stays true until that transaction ends: a concurrent one that records prospects waits for
    it (`lock_prospects`), then sees its reply.
    """
    if hold:
        lock_prospects(tx)
    extra = f" AND priority < {UNVERIFIED}" if verified else ""
    row = tx.execute(f"{_RECENT_TO}{extra} LIMIT 1", (key, timestamp(since))).fetchone()
    return row is not None


def recent_recipients(tx: Tx, keys: Sequence[str], since: datetime) -> dict[str, bool]:
    """Of the mailboxes `keys`, each that got a counted reply created since `since`, with
    whether one of those replies counts for a verified sender too: `replied_recently` for many
    keys at once, one query per 500 (the early look of the guards over a batch; never `hold`)."""
    out: dict[str, bool] = {}
    at = timestamp(since)
    for start in range(0, len(keys), 500):
        wanted, params = tx.dialect.in_list("recipient_key", list(keys[start : start + 500]))
        rows = tx.execute(
            f"SELECT recipient_key, MIN(priority) FROM replies"  # noqa: S608
            f" WHERE {wanted} AND created_at >= ? AND {_COUNTED} GROUP BY recipient_key",
            (*params, at),
        )
        out.update((key, priority < UNVERIFIED) for key, priority in rows)
    return out


@dataclass(frozen=True, slots=True)
class SentSince:
    """Replies handed to SMTP since a moment: how many, and the oldest claim, in all and per
    recipient domain (what the caps count)."""

    count: int
    oldest: datetime | None
    by_domain: dict[str, tuple[int, datetime | None]]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def sent_since(tx: Tx, since: datetime) -> SentSince:
    """What the caps count: replies claimed for SMTP after `since` (a `failed` one was refused)."""
    at = timestamp(since)
    row = tx.execute(
        f"SELECT count(*) AS n, min(claimed_at) AS oldest FROM replies WHERE {_CLAIMED}",  # noqa: S608
        (at,),
    ).fetchone()
    by_domain = {
        str(r["domain"]): (int(r["n"]), _time(r["oldest"]))
        for r in tx.execute(
            "SELECT recipient_domain AS domain, count(*) AS n, min(claimed_at) AS oldest"  # noqa: S608
            f" FROM replies WHERE {_CLAIMED} GROUP BY recipient_domain",
            (at,),
        )
    }
    return SentSince(int(row["n"]), _time(row["oldest"]), by_domain)


def defer(tx: Tx, row_id: int, until: datetime, reason: str) -> None:
    """A cap holds a queued reply back until `until`, with the reason."""
    tx.execute(
        "UPDATE replies SET next_attempt = ?, deferrals = deferrals + 1, error = ?"
        " WHERE id = ? AND state = 'queued'",
        (timestamp(until), f"deferred: {reason}", row_id),
    )


def expire_deferred(tx: Tx, created_before: datetime, reason: str) -> list[int]:
    """Queued replies deferred at least once and created before `created_before` → expired."""
    # One UPDATE … RETURNING: a reply another process claims meanwhile is re-checked once its
    # lock is released, and neither expired nor reported.
    return sorted(
        int(r["id"])
        for r in tx.execute(
            "UPDATE replies SET state = 'expired', error = ?"
            " WHERE state = 'queued' AND deferrals > 0 AND created_at < ? RETURNING id",
            (reason, timestamp(created_before)),
        ).fetchall()
    )


def recipient_keys(tx: Tx) -> list[tuple[int, str, str, str]]:
    """(id, recipient, recipient_key, recipient_domain) of every reply."""
    rows = tx.execute("SELECT id, recipient, recipient_key, recipient_domain FROM replies")
    return [
        (int(r["id"]), str(r["recipient"]), str(r["recipient_key"]), str(r["recipient_domain"]))
        for r in rows
    ]


def set_recipient_keys(tx: Tx, changes: Iterable[tuple[str, str, int]]) -> None:
    """Store (recipient_key, recipient_domain, id) for each reply in `changes`."""
    tx.executemany(
        "UPDATE replies SET recipient_key = ?, recipient_domain = ? WHERE id = ?", list(changes)
    )


@dataclass(frozen=True, slots=True)
class CapReport:
    """Replies the caps held back: deferred at least once, still waiting, dropped."""

    deferred: int = 0
    waiting: int = 0
    expired: int = 0


def cap_report(tx: Tx, since: datetime | None) -> CapReport:
    """How the reply caps bit on the replies created after `since` (all, when None): what the
    digest reports so that staff notice a flood."""
    row = tx.execute(
        "SELECT count(*) FILTER (WHERE deferrals > 0) AS deferred,"
        " count(*) FILTER (WHERE deferrals > 0 AND state = 'queued') AS waiting,"
        " count(*) FILTER (WHERE state = 'expired') AS expired"
        " FROM replies WHERE created_at > ?",
        (timestamp(since) if since else "",),
    ).fetchone()
    return CapReport(
        deferred=int(row["deferred"] or 0),
        waiting=int(row["waiting"] or 0),
        expired=int(row["expired"] or 0),
    )


def sent_with_template(tx: Tx, template: str, after: datetime | None, until: datetime) -> int:
    """How many replies with `template` were sent after `after` (ever, when None) until `until`."""
    row = tx.execute(
        "SELECT COUNT(*) FROM replies WHERE state = 'sent' AND template = ?"
        " AND sent_at > ? AND sent_at <= ?",
        (template, timestamp(after) if after else "", timestamp(until)),
    ).fetchone()
    return int(row[0])
