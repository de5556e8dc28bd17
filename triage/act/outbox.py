"""The delivery queue: every outbound mail — replies, digests, alerts — is recorded before it is
attempted and sent by one function, `Delivery.send_batch`, over one two-phase SMTP session.

The states (`triage.store.outbox` runs them for the `replies` and the `digests` table alike):

    queued ──▶ sending ──▶ sent ──▶ (replies: filed — copy in Sent, original \\Answered)
       ▲  │        │
       └──┘        ├──▶ failed     (5xx from the server, or max_attempts transient failures)
    retry with     └──▶ uncertain  (the connection broke after the final dot, or triage died
    backoff                         between recording `sending` and recording `sent`)
    draft          (replies in mode "draft": the IMAP adapter APPENDs them to Drafts; never sent)
    dry-run        (replies in mode "dry-run": logged, never sent)
    expired        (replies held back by the caps for longer than `max_defer`)

One mail goes out like this (checkpoint names in brackets, where the crash tests kill triage):
MAIL FROM and RCPT TO accepted, DATA and the whole message sent but the final "." held back
[smtp_data_sent]; `sending` committed [smtp_sending]; the final "." and the server's 250
[smtp_accepted]; `sent` committed. Without the dot the server discards the message, so a crash
before `sending` is committed leaves the row `queued` and it is safely sent again; only a crash
between the commit and the server's answer to the dot leaves a mail that may or may not have
arrived. Such a row becomes `uncertain` (see `recover`) and is never resent automatically: a
person decides with `triage outbox resolve` (sent, resend or drop).

Replies are limited per hour, in all and per recipient domain (`SendLimits`). A reply that would
exceed a cap is not dropped: it stays `queued` with a later `next_attempt` (deferred), the
deferred ones go out in order of `priority` (authenticated senders' sales replies first) as the
caps allow, and only a reply deferred for longer than `max_defer` becomes `expired`, with its
reason. So a flood of forged inquiries delays a real prospect's reply; it cannot cancel it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar, get_args

from triage.act.compose import ComposedReply
from triage.act.smtp import (
    AmbiguousDeliveryError,
    ConnectionLostError,
    Refused,
    SmtpSession,
    connect,
)
from triage.core.backoff import delay
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import (
    PermanentError,
    ReauthorisationNeeded,
    SendError,
    StoreUnavailable,
    TransientError,
)
from triage.core.settings import RepliesSettings, SmtpSettings
from triage.decide.guards import canonical
from triage.store import digests as notices
from triage.store import outbox as queue
from triage.store.db import Database, Tx
from triage.store.outbox import (
    COUNTED_STATES,
    FILING_STATES,
    TABLES,
    UNVERIFIED,
    CapReport,
    Claim,
    OutboxItem,
    QueueEntry,
    Resolution,
    SentSince,
    Table,
    cap_report,
)

log = logging.getLogger(__name__)

Mode = Literal["live", "draft", "dry-run"]
_T = TypeVar("_T")
State = Literal["queued", "sending", "sent", "failed", "uncertain", "draft", "dry-run", "expired"]
Outcome = Literal["sent", "queued", "failed", "uncertain", "taken"]
MODES: tuple[Mode, ...] = get_args(Mode)
_INITIAL_STATE: dict[Mode, State] = {"live": "queued", "draft": "draft", "dry-run": "dry-run"}
# States a person looks at (`triage outbox list`): waiting, given up, or in doubt.
OPEN_STATES: tuple[State, ...] = ("queued", "sending", "failed", "uncertain")
RECOVERED = "triage stopped while sending: the mail may or may not have been delivered"

Connector = Callable[[], SmtpSession]
Clock = Callable[[], datetime]

__all__ = [
    "COUNTED_STATES",
    "FILING_STATES",
    "UNVERIFIED",
    "CapReport",
    "Delivery",
    "Outbox",
    "OutboxItem",
    "Outgoing",
    "QueueEntry",
    "SendLimits",
    "cap_domain",
    "cap_report",
    "entries",
    "recover",
    "resolve",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- one state machine and one send function for every outbound mail ---------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One queued mail as the send function sees it, whatever its kind."""

    table: Table
    id: int
    kind: str  # "reply", "digest" or "alert"
    envelope_from: str
    recipients: tuple[str, ...]
    raw: bytes
    attempts: int

    def __str__(self) -> str:
        return f"{self.kind} {self.id} to {', '.join(self.recipients)}"


# Called in the transaction that claims a mail, before the claim: False keeps it queued (a cap
# was reached meanwhile, say), and the half-sent message is then dropped without its dot.
Admit = Callable[[Tx, Outgoing, datetime], bool]


_SETTLE_FIRST_WAIT = 0.5  # seconds before the second try to record a claimed mail's outcome
_SETTLE_MAX_WAIT = 5.0


def _admit_all(_tx: Tx, _item: Outgoing, _now: datetime) -> bool:
    return True


class Delivery:
    """Sends queued mail of any kind in two phases and records each step (see the module)."""

    def __init__(
        self,
        db: Database,
        smtp: SmtpSettings,
        *,
        clock: Clock = _utcnow,
        jitter: Callable[[], float] = random.random,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.db = db
        self.smtp = smtp
        self._clock = clock
        self._jitter = jitter
        self._checkpoint = checkpoint

    def send_batch(
        self,
        items: Sequence[Outgoing],
        connector: Connector,
        *,
        may_send: Callable[[Outgoing], bool] = lambda _item: True,
        admit: Admit = _admit_all,
    ) -> dict[int, Outcome]:
        """Send `items` over one connection; returns id → outcome for those tried.

        `may_send` is asked right before each item (False: skip it, it stays queued). When the
        connection is lost or dropped, the rest of the batch is left due for the next call. Must
        not be called inside a transaction: each step commits on its own.
        """
        if self.db.in_transaction:
            raise RuntimeError("sending commits each step; call it outside a transaction")
        if not items:
            return {}
        try:
            session = connector()
        except TransientError as exc:
            log.error("cannot send %d queued mails: %s", len(items), exc)
            return {item.id: self._not_delivered(item, exc) for item in items}
        except ReauthorisationNeeded as exc:
            # Nothing was tried: the mails wait, attempts uncounted, until a person signs in
            # again (`triage auth login`); the provider asks the endpoint only after that.
            log.info("%d queued mails wait: %s", len(items), exc)
            return {}
        outcomes: dict[int, Outcome] = {}
        try:
            self._checkpoint("smtp_connected")
            for item in items:
                if not may_send(item):
                    continue
                outcome, usable = self._send(session, item, admit)
                outcomes[item.id] = outcome
                if not usable:
                    break
        finally:
            session.close()
        return outcomes

    def _send(self, session: SmtpSession, item: Outgoing, admit: Admit) -> tuple[Outcome, bool]:
        """One mail in two phases; returns its outcome and whether the session is still usable."""
        try:
            refused = session.begin(item.envelope_from, item.recipients, item.raw)
        except (SendError, PermanentError) as exc:
            return self._not_delivered(item, exc), not isinstance(exc, ConnectionLostError)
        self._checkpoint("smtp_data_sent")
        try:
            with self.db.transaction() as tx:
                # The time is read inside the transaction, after any wait for a connection or
                # a lock: a claim stamped before such a wait would look stale to a recovery.
                moment = self._clock()
                mine = None
                if admit(tx, item, moment):
                    by = None if self.db.guard is None else str(self.db.guard)
                    mine = queue.claim(tx, item.table, item.id, moment, item.attempts, by)
        except BaseException:
            # The lease was lost (fleet mode) or the store failed: no dot. QUIT in the middle of
            # DATA would wait for an answer that never comes.
            session.abort()
            raise
        if mine is None:
            # Another process sends it, or a cap was reached: without our dot the server drops
            # the message we handed over, and the connection with it.
            session.abort()
            return "taken", False
        if self.db.guard is not None and not self.db.guard.holds():
            # Fleet mode: the lease ran out (by this instance's own clock) since the claim; the
            # account's new holder may send it. Our claim is undone, without the dot.
            session.abort()

            def undo() -> None:
                with self.db.transaction(guarded=False) as tx:
                    queue.retry_later(
                        tx, item.table, item.id, mine.attempts - 1, "lease lost", moment, mine
                    )

            self._settle(item, undo)
            return "taken", False
        self._checkpoint("smtp_sending")
        try:
            session.commit()
        except AmbiguousDeliveryError as exc:
            # After the claim every record is of this claim only (the row's own compare and
            # set), so none is fenced: a lease lost meanwhile must not leave the server's answer
            # unrecorded.
            reason = str(exc)

            def uncertain() -> None:
                with self.db.transaction(guarded=False) as tx:
                    queue.mark_uncertain(tx, item.table, item.id, mine, reason)

            self._settle(item, uncertain)
            log.error(
                "%s may or may not have been delivered (%s); it will not be resent automatically "
                "(see triage outbox list)",
                item,
                exc,
            )
            return "uncertain", False
        except (SendError, PermanentError) as exc:
            failed = exc
            outcome = self._settle(item, lambda: self._not_delivered(item, failed, mine))
            return outcome, not isinstance(exc, ConnectionLostError)
        self._checkpoint("smtp_accepted")
        self._settle(item, lambda: self._record_sent(item, mine, refused))
        log.info("%s sent", item)
        return "sent", True

    def _settle(self, item: Outgoing, record: Callable[[], _T]) -> _T:
        """Run `record`, the store write of a claimed mail's outcome, and try again while the
        store is unreachable, for up to `smtp.timeout` seconds.

        The server has answered, so only this claim can record what it said (the write is the
        claim's own compare and set, safe to repeat). Without the retry a short database outage
        (a PostgreSQL restart, a fail-over) would leave a delivered mail `sending`, and the stale
        rule would later call it uncertain and ask a person. No try starts after `smtp.timeout`
        (so that, with the server's answer, the claim stays inside that rule's 2 x timeout +
        60 s), and the last failure is raised. A try already waiting for the store may end later;
        should the stale rule have marked the claim uncertain meanwhile, the record of this
        claim still applies (see `triage.store.outbox.mark_sent`): never a second send.
        """
        deadline = time.monotonic() + self.smtp.timeout
        attempt = 0
        while True:
            try:
                return record()
            except StoreUnavailable as exc:
                attempt += 1
                wait = delay(attempt, _SETTLE_FIRST_WAIT, _SETTLE_MAX_WAIT, self._jitter)
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("%s: recording the server's answer failed (%s); again soon", item, exc)
                time.sleep(wait)

    def _record_sent(self, item: Outgoing, mine: Claim, refused: Sequence[Refused]) -> None:
        """`sent`, and in the same transaction (so a crash keeps both or neither) a queued copy
        for the recipients the server refused for now and a failed one for those it refused
        for good: a digest is neither lost for nor sent twice to anyone."""
        later = [r for r in refused if not r.permanent]
        never = [r for r in refused if r.permanent]
        error = (
            f"refused by the server: {', '.join(r.recipient for r in refused)}" if refused else None
        )
        moment = self._clock()
        with self.db.transaction(guarded=False) as tx:  # this claim's own record: see `_send`
            if not queue.mark_sent(tx, item.table, item.id, mine, moment, error):
                if queue.sent_by(tx, item.table, item.id, mine):
                    # An earlier try of this record committed, unconfirmed: its copies for
                    # refused recipients exist already.
                    return
                log.warning("%s was sent, but its row had moved on meanwhile", item)
            if refused and item.table != "digests":
                # A reply has one recipient: refused, `begin` raises instead.
                raise RuntimeError(f"{item}: partial refusal of a single-recipient mail")
            if later:
                copy = notices.split_off(
                    tx,
                    item.id,
                    [r.recipient for r in later],
                    state="queued",
                    error="; ".join(str(r.error) for r in later),
                    next_attempt=moment + self.backoff(1),
                )
                log.warning(
                    "%s: %d recipients refused for now, queued again as %d", item, len(later), copy
                )
            if never:
                copy = notices.split_off(
                    tx,
                    item.id,
                    [r.recipient for r in never],
                    state="failed",
                    error="; ".join(str(r.error) for r in never),
                    next_attempt=moment,
                )
                log.warning("%s: %d recipients refused for good (row %d)", item, len(never), copy)

    def _not_delivered(
        self, item: Outgoing, exc: TransientError | PermanentError, mine: Claim | None = None
    ) -> Outcome:
        """Record a try that delivered nothing: retry with backoff, or give up (5xx, too many).

        `mine` is this sender's claim; without one (the try failed before the claim) only a row
        still queued as this sender read it is changed — never one another sender is sending."""
        attempts = item.attempts + 1  # also right after the claim, which counted this try
        moment = self._clock()
        if isinstance(exc, PermanentError) or attempts >= self.smtp.max_attempts:
            permanent = isinstance(exc, PermanentError)
            error = str(exc) if permanent else f"gave up after {attempts} attempts: {exc}"
            with self.db.transaction(guarded=mine is None) as tx:
                changed = queue.fail(tx, item.table, item.id, attempts, error, mine)
            if not changed:
                log.info("%s not sent by this process (%s); another one has it", item, exc)
                return "taken"
            log.warning("%s failed for good: %s", item, error)
            return "failed"
        wait = self.backoff(attempts)
        with self.db.transaction(guarded=mine is None) as tx:
            changed = queue.retry_later(
                tx, item.table, item.id, attempts, str(exc), moment + wait, mine
            )
        if not changed:
            log.info("%s not sent by this process (%s); another one has it", item, exc)
            return "taken"
        log.info("%s not sent yet (%s); next try in %.0f s", item, exc, wait.total_seconds())
        return "queued"

    def backoff(self, attempts: int) -> timedelta:
        """The wait after failed attempt number `attempts`: jittered exponential backoff from
        `smtp.retry_initial` up to `smtp.retry_max` (see `triage.core.backoff.delay`)."""
        seconds = delay(attempts, self.smtp.retry_initial, self.smtp.retry_max, self._jitter)
        return timedelta(seconds=seconds)


def recover(
    db: Database, claimed_before: datetime, tables: Sequence[Table] = TABLES
) -> list[tuple[Table, int]]:
    """The one recovery rule: a mail still `sending` that was claimed before `claimed_before`
    belongs to a process that died between recording `sending` and recording the server's
    answer; it becomes `uncertain` and is never resent automatically. Returns (table, id) of each.

    A live sender holds `sending` for at most one SMTP answer, so `claimed_before` is "now minus
    twice the SMTP timeout" while other processes may send, and "now" at the start of the
    process holding the store's lock (`triage run`/`once`) for `tables=("replies",)` only: no
    other process sends replies, but `triage digest --send` sends digests without the lock.
    """
    if not queue.any_sending(db.reads, claimed_before, tables):
        return []  # the usual case: no write transaction needed
    with db.transaction() as tx:
        found = queue.recover(tx, claimed_before, RECOVERED, tables)
    if found:
        log.warning(
            "%d mails were being sent when triage stopped and may or may not have been "
            "delivered; they are marked uncertain and will not be resent automatically (see "
            "triage outbox list): %s",
            len(found),
            ", ".join(f"{t}/{i}" for t, i in found),
        )
    return found


def stale_claims(smtp: SmtpSettings, now: datetime) -> datetime:
    """Claims older than this belong to a dead process: a live one waits at most for one answer."""
    return now - timedelta(seconds=2 * smtp.timeout + 60)


def resolve(
    db: Database, table: Table, row_id: int, resolution: Resolution, who: str, now: datetime
) -> bool:
    """A person's decision on an uncertain mail (see `triage.store.outbox.resolve`); False when
    it is not uncertain. Recorded with `who` and `now` in the row."""
    with db.transaction() as tx:
        done = queue.resolve(tx, table, row_id, resolution, who, now)
    if done:
        log.info("%s/%d resolved by %s: %s", table, row_id, who, resolution)
    return done


def entries(db: Database, states: Iterable[str] = OPEN_STATES) -> list[QueueEntry]:
    """Mails of every kind in `states`, oldest first (for `triage outbox list`)."""
    return queue.entries(db.reads, states)


# --- replies -------------------------------------------------------------------------------------


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

    @classmethod
    def of(cls, limits: SendLimits, moment: datetime, counts: SentSince) -> _Budget:
        """The budget left at `moment`, given what went to SMTP within the hour before it."""
        return cls(limits, moment, counts.count, counts.oldest, dict(counts.by_domain))

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


def _outgoing(item: OutboxItem) -> Outgoing:
    return Outgoing(
        "replies",
        item.id,
        "reply",
        item.envelope_from,
        (item.recipient,),
        item.raw,
        item.attempts,
    )


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
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.db = db
        self.smtp = smtp
        self._connect: Connector = connector or (lambda: connect(smtp))
        self._clock = clock
        self._batch_size = batch_size
        self.delivery = Delivery(db, smtp, clock=clock, jitter=jitter, checkpoint=checkpoint)
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
            with self.db.transaction() as tx:
                yield tx

    def enqueue(
        self,
        message_row: int,
        reply: ComposedReply,
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
        reply_id, raw = reply.message_id.strip(), reply.raw
        if not reply_id:
            raise ValueError("the reply has no Message-ID")
        key = self.limits.canonical(recipient)
        with self._write() as tx:
            existing = queue.reply_id_by_message_id(tx, reply_id)
            if existing is not None:
                log.debug("reply %s is already in the outbox (%s)", reply_id, existing[1])
                return existing[0]
            row_id = queue.insert_reply(
                tx,
                message_row=message_row,
                reply_message_id=reply_id,
                recipient=recipient.strip(),
                envelope_from=envelope_from.strip(),
                template=template,
                mode=mode,
                state=_INITIAL_STATE[mode],
                raw=raw,
                now=self._clock(),
                recipient_key=key,
                recipient_domain=cap_domain(key),
                priority=priority,
            )
        if mode == "dry-run":
            log.info(
                "dry run: would reply to %s with template %s (reply %d)",
                recipient,
                template,
                row_id,
            )
        return row_id

    def recover(self) -> list[tuple[Table, int]]:
        """At start-up of the process holding the store's lock: every reply left in `sending` by
        a crash becomes `uncertain` (see `recover`). Call once before delivering. Digests and
        alerts are left to the stale-claim rule (`stale_claims`): `triage digest --send` may be
        sending one right now."""
        return recover(self.db, self._clock(), ("replies",))

    def resolve(self, row_id: int, resolution: Resolution, who: str) -> bool:
        """A person's decision on an uncertain reply (see `resolve`)."""
        return resolve(self.db, "replies", row_id, resolution, who, self._clock())

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
        with self.db.transaction() as tx:
            return queue.claim_filing(tx, row_id, self._clock())

    def mark_filed(self, row_id: int) -> None:
        """Record that the copy of a sent reply (or a draft) was filed in the mailbox."""
        with self._write() as tx:
            queue.claim_filing(tx, row_id, self._clock())

    # --- sending ---------------------------------------------------------------------------------

    def deliver_due(
        self, now: datetime | None = None, account: str | None = None
    ) -> list[OutboxItem]:
        """Send every queued reply that is due (with `account`, those answering that IMAP
        account's messages), over one SMTP connection; return those sent.

        Transient failures (server down, 4xx) keep a row queued with its error and move
        `next_attempt` back with jittered exponential backoff; a 5xx or too many attempts mark it
        `failed`. Must not be called inside a transaction: each state change commits on its own.
        """
        if self.db.in_transaction:
            raise RuntimeError("deliver_due commits each step; call it outside a transaction")
        moment = now or self._clock()
        # An account's thread calls this after every pass: for an idle mailbox, one read and
        # no write transaction. What the caps held back too long is dropped first, as always.
        candidates = queue.due_replies(self.db.reads, moment, self._batch_size, account)
        if account is not None and not candidates:
            return []
        if self._expire(moment):
            candidates = queue.due_replies(self.db.reads, moment, self._batch_size, account)
        budget = self._budget(moment)
        due = [item for item in candidates if not self._deferred(item.id, item.recipient, budget)]

        def may_send(item: Outgoing) -> bool:
            # The budget was checked for the batch; spend it as replies go, so a batch larger
            # than what is left of the hour defers its tail.
            if self._deferred(item.id, item.recipients[0], budget, moment):
                return False
            budget.spend(self._domain(item.recipients[0]))
            return True

        outcomes = self.delivery.send_batch(
            [_outgoing(item) for item in due], self._connect, may_send=may_send, admit=self._admit
        )
        sent = [self.get(i) for i, outcome in outcomes.items() if outcome == "sent"]
        return [item for item in sent if item is not None]

    def _admit(self, tx: Tx, item: Outgoing, moment: datetime) -> bool:
        # The caps are checked again in the claiming transaction: other threads (each account's,
        # the housekeeping one) deliver too, and each pass's own budget knows only what it sent.
        budget = _Budget.of(self.limits, moment, queue.sent_since(tx, moment - timedelta(hours=1)))
        refusal = budget.refusal(self._domain(item.recipients[0]))
        if refusal is None:
            return True
        self._defer(tx, item.id, item.recipients[0], refusal, moment)
        return False

    # --- the caps --------------------------------------------------------------------------------

    def _domain(self, recipient: str) -> str:
        return cap_domain(self.limits.canonical(recipient))

    def _budget(self, moment: datetime) -> _Budget:
        counts = queue.sent_since(self.db.reads, moment - timedelta(hours=1))
        return _Budget.of(self.limits, moment, counts)

    def _deferred(
        self, row_id: int, recipient: str, budget: _Budget, moment: datetime | None = None
    ) -> bool:
        """Defer a reply when a cap is reached (recorded, with the reason); True if deferred."""
        refusal = budget.refusal(self._domain(recipient))
        if refusal is None:
            return False
        with self.db.transaction() as tx:
            self._defer(tx, row_id, recipient, refusal, moment or budget.moment)
        return True

    def _defer(
        self,
        tx: Tx,
        row_id: int,
        recipient: str,
        refusal: tuple[str, datetime, str],
        moment: datetime,
    ) -> None:
        cap, free_at, reason = refusal
        queue.defer(tx, row_id, max(free_at, moment), reason)
        log.info("reply %d to %s deferred: %s", row_id, recipient, reason)
        self._on_cap(cap)

    def _expire(self, moment: datetime) -> int:
        """Drop, with a reason, replies the caps have held back for longer than `max_defer`."""
        hours = self.limits.max_defer / timedelta(hours=1)
        reason = f"dropped: held back by the reply caps for more than {hours:g} h"
        with self.db.transaction() as tx:
            ids = queue.expire_deferred(tx, moment - self.limits.max_defer, reason)
        for row_id in ids:
            log.warning("reply %d dropped: held back by the reply caps for too long", row_id)
            self._on_cap("expired")
        return len(ids)

    def cap_report(self, since: datetime | None) -> CapReport:
        """How the caps bit on replies created since `since` (see `cap_report`)."""
        return cap_report(self.db.reads, since)

    def rekey(self) -> int:
        """Recompute every stored recipient key and cap domain with the current settings (after
        an upgrade, or when `dotless_domains` changed), so that the window still recognises a
        mailbox written to before; returns how many rows changed. Call once at start."""
        changes = []
        for row_id, recipient, old_key, old_domain in queue.recipient_keys(self.db.reads):
            key = self.limits.canonical(recipient)
            domain = cap_domain(key)
            if (key, domain) != (old_key, old_domain):
                changes.append((key, domain, row_id))
        if changes:
            with self._write() as tx:
                queue.set_recipient_keys(tx, changes)
        return len(changes)

    def backoff(self, attempts: int) -> timedelta:
        """The wait after failed attempt number `attempts` (see `Delivery.backoff`)."""
        return self.delivery.backoff(attempts)

    # --- reading ---------------------------------------------------------------------------------

    def get(self, row_id: int) -> OutboxItem | None:
        """One reply row, or None."""
        return queue.reply(self.db.reads, row_id)

    def in_state(self, state: State) -> list[OutboxItem]:
        """Every reply in `state`, oldest first (e.g. `in_state("uncertain")` for the review)."""
        return queue.replies_in_state(self.db.reads, state)

    def pending_filing(self) -> list[OutboxItem]:
        """Sent replies (file a copy in Sent, set \\Answered on the original) and drafts (APPEND
        to Drafts) whose copy is not yet in the mailbox; `item.state` says which."""
        return queue.pending_filing(self.db.reads)

    # --- the reply history for the etiquette rules ----------------------------------------------

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """True when a reply to the mailbox `address` reaches (its canonical form) was made or
        queued within `window`; counts every state that is or may become a reply (not failed,
        not expired, not dry-run). With `verified`, only replies to a verified sender count:
        a fixed-text reply to a message forged in someone's name does not use up their reply."""
        key = self.limits.canonical(address)
        # Inside a transaction (the one that queues the reply) the answer must hold until it
        # commits, or two instances could both answer one sender; outside one (the guards'
        # early look) it need not wait for anybody.
        return queue.replied_recently(
            self.db.reads,
            key,
            self._clock() - window,
            verified=verified,
            hold=self.db.in_transaction,
        )

    def recent_recipients(self, addresses: Iterable[str], window: timedelta) -> dict[str, bool]:
        """`replied_recently` for many addresses at once, outside any transaction: each of
        `addresses` whose mailbox got a counted reply within `window`, with whether one of those
        counts for a verified sender too; one query for a whole batch instead of one each.

        Never inside a transaction: the question asked there (before queueing a reply) must
        hold its answer until the reply is queued, which only `replied_recently` does."""
        if self.db.in_transaction:
            raise RuntimeError("recent_recipients is the guards' early look, not for a transaction")
        keys: dict[str, list[str]] = {}
        for address in addresses:
            keys.setdefault(self.limits.canonical(address), []).append(address)
        found = queue.recent_recipients(self.db.reads, list(keys), self._clock() - window)
        return {a: verified for key, verified in found.items() for a in keys[key]}


def cap_domain(address: str) -> str:
    """The domain the per-domain cap counts `address` under: its organisational domain
    (`s1.victim.example` and `s2.victim.example` are one victim), else its domain."""
    from triage.decide.sender_auth import organisational_domain

    domain = address.rpartition("@")[2].lower()
    return organisational_domain(domain) or domain
