"""The durable send queue: replies are written to the `replies` table first, then sent over SMTP.

States of a reply row:

    queued ──▶ sending ──▶ sent ──▶ (filed: copy in Sent, original \\Answered)
       ▲  │        │
       └──┘        ├──▶ failed     (5xx from the server, or max_attempts transient failures)
    retry with     └──▶ uncertain  (found in `sending` at start-up, or the connection broke
    backoff                         during DATA: maybe delivered, never resent automatically)
    draft          (mode "draft": the IMAP adapter APPENDs it to Drafts; never sent)
    dry-run        (mode "dry-run": logged, never sent)

The row is set to `sending` in its own committed transaction right before DATA and to `sent` right
after the server's 250. A crash in between leaves `sending`, which `recover()` turns into
`uncertain` at the next start: delivery is at most once.

Sending is limited per hour, in all and per recipient domain (`SendLimits`). A reply that would
exceed a cap is not dropped: it stays `queued` with a later `next_attempt` (deferred), the
deferred ones go out in order of `priority` (authenticated senders' sales replies first) as the
caps allow, and only a reply deferred for longer than `max_defer` becomes `expired`, with its
reason. So a flood of forged inquiries delays a real prospect's reply; it cannot cancel it.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from typing import Literal, TypeAlias, get_args

from triage.act.smtp import AmbiguousDeliveryError, ConnectionLostError, SmtpSession, connect
from triage.core.errors import PermanentError, SendError, TransientError
from triage.core.settings import RepliesSettings, SmtpSettings
from triage.decide.guards import canonical
from triage.store.db import Database, Tx

log = logging.getLogger(__name__)

Mode = Literal["live", "draft", "dry-run"]
State = Literal["queued", "sending", "sent", "failed", "uncertain", "draft", "dry-run", "expired"]
MODES: tuple[Mode, ...] = get_args(Mode)
_INITIAL_STATE: dict[Mode, State] = {"live": "queued", "draft": "draft", "dry-run": "dry-run"}
# Rows that are, or may become, a reply the recipient sees: what the rate limits count.
COUNTED_STATES: tuple[State, ...] = ("queued", "sending", "sent", "uncertain", "draft")
FILING_STATES: tuple[State, ...] = ("sent", "draft")
_COLUMNS = (
    "id, message_row, reply_message_id, recipient, envelope_from, template, mode, state, raw,"
    " attempts, next_attempt, error, created_at, sent_at, filed_at, recipient_key, priority,"
    " deferrals, recipient_domain"
)

# SQL pieces built once from the constants above; no value from outside is ever interpolated.
_SELECT = f"SELECT {_COLUMNS} FROM replies"  # noqa: S608
_COUNTED = "state IN ({})".format(", ".join(f"'{s}'" for s in COUNTED_STATES))
_FILING = "state IN ({})".format(", ".join(f"'{s}'" for s in FILING_STATES))
# Priorities from here on are replies to senders nobody authenticated (see `service`).
UNVERIFIED = 2
_RECENT_TO = (
    "SELECT 1 FROM replies WHERE recipient_key = ? AND created_at >= ? AND "  # noqa: S608
    + _COUNTED
    + " LIMIT 1"
)
_RECENT_TO_VERIFIED = _RECENT_TO.replace(" LIMIT 1", f" AND priority < {UNVERIFIED} LIMIT 1")
# What the caps count: replies handed to SMTP within the hour (a `failed` one was refused there).
_CLAIMED = "claimed_at > ? AND state IN ('sending', 'sent', 'uncertain')"
_SENT_SINCE = f"SELECT count(*) AS n, min(claimed_at) AS oldest FROM replies WHERE {_CLAIMED}"  # noqa: S608
_SENT_SINCE_BY_DOMAIN = (
    "SELECT recipient_domain AS domain, count(*) AS n, min(claimed_at) AS oldest"  # noqa: S608
    f" FROM replies WHERE {_CLAIMED} GROUP BY recipient_domain"
)

Connector = Callable[[], SmtpSession]
Clock = Callable[[], datetime]


def timestamp(moment: datetime) -> str:
    """The stored form of a time: UTC ISO 8601 with microseconds (sorts as text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _utcnow() -> datetime:
    return datetime.now(UTC)


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxItem:
        """Build from a row selected with all columns."""
        return cls(**dict(zip(row.keys(), tuple(row), strict=True)))


SentReply: TypeAlias = OutboxItem


@dataclass(frozen=True, slots=True)
class SendLimits:
    """How many replies may go to SMTP per hour, in all and per recipient domain, and how long a
    reply may wait behind these caps before it is dropped. `canonical` maps an address to the
    mailbox it reaches (see `guards.canonical`): the key the per-recipient window compares."""

    max_per_hour: int | None = None
    max_per_domain_per_hour: int | None = None
    max_defer: timedelta = timedelta(hours=24)
    canonical: Callable[[str], str] = canonical

    @classmethod
    def from_settings(cls, replies: RepliesSettings, canonical: Callable[[str], str]) -> SendLimits:
        """The limits of `[replies]`."""
        return cls(
            max_per_hour=replies.max_per_hour,
            max_per_domain_per_hour=replies.max_per_domain_per_hour,
            max_defer=timedelta(hours=replies.max_defer_hours),
            canonical=canonical,
        )


@dataclass
class _Budget:
    """What the caps still allow during one delivery pass."""

    limits: SendLimits
    moment: datetime
    sent: int
    oldest: datetime | None
    by_domain: dict[str, tuple[int, datetime | None]]

    def refusal(self, domain: str) -> tuple[str, datetime, str] | None:
        """(cap, when a slot frees up, reason) when a reply to `domain` must wait, else None."""
        hour = timedelta(hours=1)
        cap = self.limits.max_per_hour
        if cap is not None and self.sent >= cap:
            free = (self.oldest + hour) if self.oldest and cap > 0 else self.moment + hour
            return "hourly", free, f"{self.sent} replies in the last hour reached the cap of {cap}"
        cap = self.limits.max_per_domain_per_hour
        count, oldest = self.by_domain.get(domain, (0, None))
        if cap is not None and count >= cap:
            free = (oldest + hour) if oldest and cap > 0 else self.moment + hour
            return "domain", free, f"{count} replies to {domain} in the last hour reached {cap}"
        return None

    def spend(self, domain: str) -> None:
        """Count one reply handed to SMTP now."""
        self.sent += 1
        count, oldest = self.by_domain.get(domain, (0, None))
        self.by_domain[domain] = (count + 1, oldest or self.moment)
        self.oldest = self.oldest or self.moment


class Outbox:
    """The reply queue over one database; also the reply history the etiquette rules consult."""

    def __init__(
        self,
        db: Database,
        smtp: SmtpSettings,
        *,
        connector: Connector | None = None,
        clock: Clock = _utcnow,
        batch_size: int = 100,
        jitter: Callable[[], float] = random.random,
        limits: SendLimits | None = None,
        on_cap: Callable[[str], None] = lambda _cap: None,
    ) -> None:
        self.db = db
        self.smtp = smtp
        self._connect: Connector = connector or (lambda: connect(smtp))
        self._clock = clock
        self._batch_size = batch_size
        self._jitter = jitter
        self.limits = limits or SendLimits()
        # Told "hourly" or "domain" for each reply a cap defers, "expired" for each it drops.
        self._on_cap = on_cap

    # --- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        # Join the caller's transaction (the pipeline records a message and queues its reply in
        # one), or make one of our own.
        if self.db.in_transaction:
            yield self.db.reads
        else:
            with self.db.transaction() as conn:
                yield conn

    def enqueue(
        self,
        message_row: int,
        reply: EmailMessage,
        *,
        recipient: str,
        envelope_from: str,
        template: str,
        mode: Mode,
        priority: int = 0,
    ) -> int:
        """Store `reply` for sending (live), as a draft, or as a dry run; return its row id.

        `priority` orders replies that the caps hold back (lower first). Idempotent: a reply
        whose Message-ID is already stored is not stored again, and the existing row's id is
        returned. Joins the caller's transaction when there is one.
        """
        if mode not in MODES:
            raise ValueError(f"unknown reply mode {mode!r}")
        reply_id = str(reply.get("Message-ID", "")).strip()
        if not reply_id:
            raise ValueError("the reply has no Message-ID")
        raw = reply.as_bytes(policy=policy.SMTP)
        now = timestamp(self._clock())
        state = _INITIAL_STATE[mode]
        key = self.limits.canonical(recipient)
        with self._write() as conn:
            existing = conn.execute(
                "SELECT id, state FROM replies WHERE reply_message_id = ?", (reply_id,)
            ).fetchone()
            if existing is not None:
                log.debug("reply %s is already in the outbox (%s)", reply_id, existing["state"])
                return int(existing["id"])
            cursor = conn.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at, recipient_key,"
                " recipient_domain, priority)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_row,
                    reply_id,
                    recipient.strip(),
                    envelope_from.strip(),
                    template,
                    mode,
                    state,
                    raw,
                    now,
                    now,
                    key,
                    cap_domain(key),
                    priority,
                ),
            )
            row_id = int(cursor.lastrowid or 0)
        if mode == "dry-run":
            log.info(
                "dry run: would reply to %s with template %s (reply %d)",
                recipient,
                template,
                row_id,
            )
        return row_id

    def recover(self) -> list[int]:
        """At start-up: turn rows left in `sending` by a crash into `uncertain`; return their ids.

        The server may have accepted such a message, so it is never resent automatically; a person
        decides with `resolve_uncertain`. Call once before delivering, not while another process
        is delivering from the same database.
        """
        with self._write() as conn:
            ids = [
                int(r["id"])
                for r in conn.execute("SELECT id FROM replies WHERE state = 'sending' ORDER BY id")
            ]
            if ids:
                conn.execute(
                    "UPDATE replies SET state = 'uncertain', error = ? WHERE state = 'sending'",
                    ("triage stopped while sending: the reply may or may not have been delivered",),
                )
        if ids:
            log.warning(
                "%d replies were being sent when triage stopped and may or may not have been "
                "delivered; they are marked uncertain and will not be resent automatically: %s",
                len(ids),
                ", ".join(map(str, ids)),
            )
        return ids

    def resolve_uncertain(self, row_id: int, *, delivered: bool) -> bool:
        """A person's decision on an uncertain reply: delivered (→ sent) or not (→ queued, now).

        Returns False when the row is not uncertain (any more).
        """
        now = timestamp(self._clock())
        with self._write() as conn:
            if delivered:
                cursor = conn.execute(
                    "UPDATE replies SET state = 'sent', sent_at = ?, error = NULL"
                    " WHERE id = ? AND state = 'uncertain'",
                    (now, row_id),
                )
            else:
                cursor = conn.execute(
                    "UPDATE replies SET state = 'queued', next_attempt = ?, error = NULL"
                    " WHERE id = ? AND state = 'uncertain'",
                    (now, row_id),
                )
        return cursor.rowcount == 1

    def claim_filing(self, row_id: int) -> bool:
        """Take the filing of a reply's copy (Sent or Drafts) before APPENDing it: True for the
        one caller that may append, False when it is filed or claimed already.

        Committed on its own, before the APPEND, so that neither a second process nor a restart
        after a crash appends the same copy again. The price: a crash between this claim and the
        APPEND leaves no copy in the mailbox (the reply itself is unaffected) — one missing copy
        rather than two, since the mailbox cannot tell us whether an interrupted APPEND landed.
        """
        if self.db.in_transaction:
            raise RuntimeError("claim_filing commits at once; call it outside a transaction")
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE replies SET filed_at = ? WHERE id = ? AND filed_at IS NULL",
                (timestamp(self._clock()), row_id),
            )
        return cursor.rowcount == 1

    def mark_filed(self, row_id: int) -> None:
        """Record that the copy of a sent reply (or a draft) was filed in the mailbox."""
        with self._write() as conn:
            conn.execute(
                "UPDATE replies SET filed_at = ? WHERE id = ? AND filed_at IS NULL",
                (timestamp(self._clock()), row_id),
            )

    # --- sending ---------------------------------------------------------------------------------

    def deliver_due(self, now: datetime | None = None) -> list[SentReply]:
        """Send every queued reply that is due, over one SMTP connection; return those sent.

        Transient failures (server down, 4xx) keep a row queued with its error and move
        `next_attempt` back exponentially; a 5xx or too many attempts mark it `failed`. Must not
        be called inside a transaction: each state change is committed on its own.
        """
        if self.db.in_transaction:
            raise RuntimeError("deliver_due commits each step; call it outside a transaction")
        moment = now or self._clock()
        self._expire(moment)
        due = self._due(moment)
        budget = self._budget(moment)
        due = [item for item in due if not self._deferred(item, budget)]
        if not due:
            return []
        try:
            session = self._connect()
        except TransientError as exc:
            log.error("cannot send %d queued replies: %s", len(due), exc)
            for item in due:
                self._retry(item, str(exc), moment)
            return []
        sent: list[SentReply] = []
        try:
            for item in due:
                # The budget was checked for the batch; spend it as replies go, so a batch
                # larger than what is left of the hour defers its tail.
                if self._deferred(item, budget, moment):
                    continue
                budget.spend(self._domain(item))
                try:
                    done = self._send_one(session, item, moment)
                except (ConnectionLostError, AmbiguousDeliveryError) as exc:
                    # The rest of the batch was not tried; it stays due for the next call.
                    log.error("SMTP connection lost, %s", exc)
                    break
                if done is not None:
                    sent.append(done)
        finally:
            session.close()
        return sent

    def _send_one(
        self, session: SmtpSession, item: OutboxItem, moment: datetime
    ) -> SentReply | None:
        try:
            session.envelope(item.envelope_from, item.recipient)
        except PermanentError as exc:
            self._fail(item, str(exc))
            return None
        except SendError as exc:
            self._retry(item, str(exc), moment)
            raise_if_lost(exc)
            return None
        if not self._claim(item):
            session.reset()  # another process took it, or a cap was reached meanwhile
            return None
        try:
            session.data(item.raw)
        except AmbiguousDeliveryError as exc:
            self._set_uncertain(item, str(exc))
            raise
        except PermanentError as exc:
            self._fail(item, str(exc))
            return None
        except SendError as exc:
            self._retry(item, str(exc), moment)
            raise_if_lost(exc)
            return None
        return self._mark_sent(item)

    def _due(self, moment: datetime) -> list[OutboxItem]:
        rows = self.db.conn.execute(
            _SELECT + " WHERE state = 'queued' AND next_attempt <= ?"
            " ORDER BY priority, created_at, id LIMIT ?",
            (timestamp(moment), self._batch_size),
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    # --- the caps --------------------------------------------------------------------------------

    def _domain(self, item: OutboxItem) -> str:
        return item.recipient_domain or cap_domain(
            item.recipient_key or self.limits.canonical(item.recipient)
        )

    def _budget(self, moment: datetime) -> _Budget:
        since = timestamp(moment - timedelta(hours=1))
        row = self.db.conn.execute(_SENT_SINCE, (since,)).fetchone()
        by_domain = {
            str(r["domain"]): (int(r["n"]), _parse_time(r["oldest"]))
            for r in self.db.conn.execute(_SENT_SINCE_BY_DOMAIN, (since,))
        }
        return _Budget(self.limits, moment, int(row["n"]), _parse_time(row["oldest"]), by_domain)

    def _deferred(self, item: OutboxItem, budget: _Budget, moment: datetime | None = None) -> bool:
        """Defer `item` when a cap is reached (recorded, with the reason); True if deferred."""
        refusal = budget.refusal(self._domain(item))
        if refusal is None:
            return False
        with self.db.transaction() as conn:
            self._defer(conn, item, refusal, moment or budget.moment)
        return True

    def _defer(
        self,
        conn: Tx,
        item: OutboxItem,
        refusal: tuple[str, datetime, str],
        moment: datetime,
    ) -> None:
        cap, free_at, reason = refusal
        conn.execute(
            "UPDATE replies SET next_attempt = ?, deferrals = deferrals + 1, error = ?"
            " WHERE id = ? AND state = 'queued'",
            (timestamp(max(free_at, moment)), f"deferred: {reason}", item.id),
        )
        log.info("reply %d to %s deferred: %s", item.id, item.recipient, reason)
        self._on_cap(cap)

    def _expire(self, moment: datetime) -> int:
        """Drop, with a reason, replies the caps have held back for longer than `max_defer`."""
        cutoff = timestamp(moment - self.limits.max_defer)
        hours = self.limits.max_defer / timedelta(hours=1)
        with self.db.transaction() as conn:
            ids = [
                int(r["id"])
                for r in conn.execute(
                    "SELECT id FROM replies WHERE state = 'queued' AND deferrals > 0"
                    " AND created_at < ?",
                    (cutoff,),
                )
            ]
            conn.executemany(
                "UPDATE replies SET state = 'expired', error = ? WHERE id = ? AND state = 'queued'",
                [
                    (f"dropped: held back by the reply caps for more than {hours:g} h", i)
                    for i in ids
                ],
            )
        for row_id in ids:
            log.warning("reply %d dropped: held back by the reply caps for too long", row_id)
            self._on_cap("expired")
        return len(ids)

    def cap_report(self, since: datetime | None) -> CapReport:
        """How the caps bit on replies created since `since` (see `cap_report`)."""
        return cap_report(self.db.reads, since)

    def _claim(self, item: OutboxItem) -> bool:
        # Committed before DATA: if we crash after this, the row says "maybe sent". The claim
        # time is what the caps count, and they are checked again in the same write transaction:
        # other threads (each account's, the housekeeping one) deliver too, and each pass's own
        # budget knows only what it sent itself.
        moment = self._clock()
        with self.db.transaction() as conn:
            refusal = self._budget(moment).refusal(self._domain(item))
            if refusal is not None:
                self._defer(conn, item, refusal, moment)
                return False
            cursor = conn.execute(
                "UPDATE replies SET state = 'sending', attempts = attempts + 1, claimed_at = ?"
                " WHERE id = ? AND state = 'queued'",
                (timestamp(moment), item.id),
            )
        return cursor.rowcount == 1

    def rekey(self) -> int:
        """Recompute every stored recipient key and cap domain with the current settings (after
        an upgrade, or when `dotless_domains` changed), so that the window still recognises a
        mailbox written to before; returns how many rows changed. Call once at start."""
        rows = self.db.conn.execute(
            "SELECT id, recipient, recipient_key, recipient_domain FROM replies"
        ).fetchall()
        changes = []
        for r in rows:
            key = self.limits.canonical(str(r["recipient"]))
            domain = cap_domain(key)
            if (key, domain) != (r["recipient_key"], r["recipient_domain"]):
                changes.append((key, domain, int(r["id"])))
        if changes:
            with self._write() as conn:
                conn.executemany(
                    "UPDATE replies SET recipient_key = ?, recipient_domain = ? WHERE id = ?",
                    changes,
                )
        return len(changes)

    def _mark_sent(self, item: OutboxItem) -> SentReply:
        sent_at = timestamp(self._clock())
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE replies SET state = 'sent', sent_at = ?, error = NULL WHERE id = ?",
                (sent_at, item.id),
            )
        log.info("reply %d (%s) sent to %s", item.id, item.template, item.recipient)
        return self._get(item.id)

    def _set_uncertain(self, item: OutboxItem, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE replies SET state = 'uncertain', error = ? WHERE id = ?",
                (error, item.id),
            )
        log.warning(
            "reply %d to %s may or may not have been delivered (%s); it will not be resent "
            "automatically",
            item.id,
            item.recipient,
            error,
        )

    def _fail(self, item: OutboxItem, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE replies SET state = 'failed', error = ?, attempts = ? WHERE id = ?",
                (error, self._attempts_after(item), item.id),
            )
        log.warning("reply %d to %s failed for good: %s", item.id, item.recipient, error)

    def _retry(self, item: OutboxItem, error: str, moment: datetime) -> None:
        attempts = self._attempts_after(item)
        if attempts >= self.smtp.max_attempts:
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE replies SET state = 'failed', error = ?, attempts = ? WHERE id = ?",
                    (f"gave up after {attempts} attempts: {error}", attempts, item.id),
                )
            log.warning(
                "reply %d to %s failed after %d attempts: %s",
                item.id,
                item.recipient,
                attempts,
                error,
            )
            return
        later = moment + self.backoff(attempts)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE replies SET state = 'queued', error = ?, attempts = ?, next_attempt = ?"
                " WHERE id = ?",
                (error, attempts, timestamp(later), item.id),
            )

    def _attempts_after(self, item: OutboxItem) -> int:
        # A claimed row already counted this attempt in `_claim`.
        row = self.db.conn.execute(
            "SELECT attempts, state FROM replies WHERE id = ?", (item.id,)
        ).fetchone()
        attempts = int(row["attempts"])
        return attempts if row["state"] == "sending" else attempts + 1

    def backoff(self, attempts: int) -> timedelta:
        """The wait before attempt `attempts + 1`: doubling from `retry_initial` up to
        `retry_max`, with ±10 % jitter so that many queued replies don't retry in lock-step."""
        base = min(self.smtp.retry_max, self.smtp.retry_initial * 2 ** max(attempts - 1, 0))
        factor = 0.9 + 0.2 * self._jitter()
        return timedelta(seconds=min(self.smtp.retry_max, base * factor))

    # --- reading ---------------------------------------------------------------------------------

    def _get(self, row_id: int) -> OutboxItem:
        row = self.db.conn.execute(
            _SELECT + " WHERE id = ?",
            (row_id,),
        ).fetchone()
        if row is None:
            raise KeyError(row_id)
        return OutboxItem.from_row(row)

    def get(self, row_id: int) -> OutboxItem | None:
        """One reply row, or None."""
        try:
            return self._get(row_id)
        except KeyError:
            return None

    def in_state(self, state: State) -> list[OutboxItem]:
        """Every reply in `state`, oldest first (e.g. `in_state("uncertain")` for the review)."""
        rows = self.db.conn.execute(_SELECT + " WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def pending_filing(self) -> list[OutboxItem]:
        """Sent replies (file a copy in Sent, set \\Answered on the original) and drafts (APPEND
        to Drafts) whose copy is not yet in the mailbox; `item.state` says which."""
        rows = self.db.conn.execute(
            _SELECT + " WHERE " + _FILING + " AND filed_at IS NULL ORDER BY id"
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def next_due(self) -> datetime | None:
        """When the next queued reply is due (for the daemon's sleep), or None."""
        row = self.db.conn.execute(
            "SELECT min(next_attempt) AS due FROM replies WHERE state = 'queued'"
        ).fetchone()
        return datetime.fromisoformat(row["due"]) if row["due"] else None

    # --- the reply history for the etiquette rules ----------------------------------------------

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """True when a reply to the mailbox `address` reaches (its canonical form) was made or
        queued within `window`; counts every state that is or may become a reply (not failed,
        not expired, not dry-run). With `verified`, only replies to a verified sender count:
        a fixed-text reply to a message forged in someone's name does not use up their reply."""
        since = timestamp(self._clock() - window)
        key = self.limits.canonical(address)
        query = _RECENT_TO_VERIFIED if verified else _RECENT_TO
        return self.db.conn.execute(query, (key, since)).fetchone() is not None


def raise_if_lost(exc: SendError) -> None:
    """Re-raise a lost connection so the batch stops; a plain 4xx lets the batch go on."""
    if isinstance(exc, ConnectionLostError):
        raise exc


def cap_domain(address: str) -> str:
    """The domain the per-domain cap counts `address` under: its organisational domain
    (`s1.victim.example` and `s2.victim.example` are one victim), else its domain."""
    from triage.decide.sender_auth import organisational_domain

    domain = address.rpartition("@")[2].lower()
    return organisational_domain(domain) or domain


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class CapReport:
    """Replies the caps held back: deferred at least once, still waiting, dropped."""

    deferred: int = 0
    waiting: int = 0
    expired: int = 0


def cap_report(conn: Tx, since: datetime | None) -> CapReport:
    """How the reply caps bit on the replies created after `since` (all, when None): what the
    digest reports so that staff notice a flood."""
    row = conn.execute(
        "SELECT sum(deferrals > 0) AS deferred,"
        " sum(deferrals > 0 AND state = 'queued') AS waiting,"
        " sum(state = 'expired') AS expired"
        " FROM replies WHERE created_at > ?",
        (timestamp(since) if since else "",),
    ).fetchone()
    return CapReport(
        deferred=int(row["deferred"] or 0),
        waiting=int(row["waiting"] or 0),
        expired=int(row["expired"] or 0),
    )
