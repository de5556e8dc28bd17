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

from triage.errors import PermanentError, SendError, TransientError
from triage.guards import canonical
from triage.settings import SmtpSettings
from triage.smtp import AmbiguousDeliveryError, ConnectionLostError, SmtpSession, connect
from triage.store.db import Database

log = logging.getLogger(__name__)

Mode = Literal["live", "draft", "dry-run"]
State = Literal["queued", "sending", "sent", "failed", "uncertain", "draft", "dry-run"]
MODES: tuple[Mode, ...] = get_args(Mode)
_INITIAL_STATE: dict[Mode, State] = {"live": "queued", "draft": "draft", "dry-run": "dry-run"}
# Rows that are, or may become, a reply the recipient sees: what the rate limits count.
COUNTED_STATES: tuple[State, ...] = ("queued", "sending", "sent", "uncertain", "draft")
FILING_STATES: tuple[State, ...] = ("sent", "draft")
_COLUMNS = (
    "id, message_row, reply_message_id, recipient, envelope_from, template, mode, state, raw,"
    " attempts, next_attempt, error, created_at, sent_at, filed_at"
)

# SQL pieces built once from the constants above; no value from outside is ever interpolated.
_SELECT = f"SELECT {_COLUMNS} FROM replies"  # noqa: S608
_COUNTED = "state IN ({})".format(", ".join(f"'{s}'" for s in COUNTED_STATES))
_FILING = "state IN ({})".format(", ".join(f"'{s}'" for s in FILING_STATES))
_RECENT_TO_DOMAIN = (
    "SELECT recipient FROM replies WHERE created_at >= ? AND "  # noqa: S608
    + _COUNTED
    + " AND lower(recipient) LIKE ? ESCAPE '\\'"
)
_COUNT_SINCE = "SELECT count(*) AS n FROM replies WHERE created_at >= ? AND " + _COUNTED  # noqa: S608

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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxItem:
        """Build from a row selected with all columns."""
        return cls(**dict(zip(row.keys(), tuple(row), strict=True)))


SentReply: TypeAlias = OutboxItem


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
    ) -> None:
        self.db = db
        self.smtp = smtp
        self._connect: Connector = connector or (lambda: connect(smtp))
        self._clock = clock
        self._batch_size = batch_size
        self._jitter = jitter

    # --- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # Join the caller's transaction (the pipeline records a message and queues its reply in
        # one), or make one of our own.
        if self.db.conn.in_transaction:
            yield self.db.conn
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
    ) -> int:
        """Store `reply` for sending (live), as a draft, or as a dry run; return its row id.

        Idempotent: a reply whose Message-ID is already stored is not stored again, and the
        existing row's id is returned. Joins the caller's transaction when there is one.
        """
        if mode not in MODES:
            raise ValueError(f"unknown reply mode {mode!r}")
        reply_id = str(reply.get("Message-ID", "")).strip()
        if not reply_id:
            raise ValueError("the reply has no Message-ID")
        raw = reply.as_bytes(policy=policy.SMTP)
        now = timestamp(self._clock())
        state = _INITIAL_STATE[mode]
        with self._write() as conn:
            existing = conn.execute(
                "SELECT id, state FROM replies WHERE reply_message_id = ?", (reply_id,)
            ).fetchone()
            if existing is not None:
                log.debug("reply %s is already in the outbox (%s)", reply_id, existing["state"])
                return int(existing["id"])
            cursor = conn.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        if self.db.conn.in_transaction:
            raise RuntimeError("deliver_due commits each step; call it outside a transaction")
        moment = now or self._clock()
        due = self._due(moment)
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
            session.reset()  # another process took it between our SELECT and now
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
            " ORDER BY next_attempt, id LIMIT ?",
            (timestamp(moment), self._batch_size),
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def _claim(self, item: OutboxItem) -> bool:
        # Committed before DATA: if we crash after this, the row says "maybe sent".
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE replies SET state = 'sending', attempts = attempts + 1"
                " WHERE id = ? AND state = 'queued'",
                (item.id,),
            )
        return cursor.rowcount == 1

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

    def replied_recently(self, address: str, window: timedelta) -> bool:
        """True when a reply to `address` (case and `+detail` ignored) was made or queued within
        `window`; counts every state that is or may become a reply (not failed, not dry-run)."""
        wanted = canonical(address)
        domain = wanted.rpartition("@")[2]
        since = timestamp(self._clock() - window)
        rows = self.db.conn.execute(
            _RECENT_TO_DOMAIN,
            (since, "%@" + _like_escape(domain)),
        ).fetchall()
        return any(canonical(r["recipient"]) == wanted for r in rows)

    def replies_last_hour(self) -> int:
        """How many replies were made or queued in the last hour (same states as above)."""
        since = timestamp(self._clock() - timedelta(hours=1))
        row = self.db.conn.execute(_COUNT_SINCE, (since,)).fetchone()
        return int(row["n"])


def raise_if_lost(exc: SendError) -> None:
    """Re-raise a lost connection so the batch stops; a plain 4xx lets the batch go on."""
    if isinstance(exc, ConnectionLostError):
        raise exc


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
