"""The durable outbox: idempotent enqueue, at-most-once sending, backoff, modes, the reply history.

The first part drives the outbox with a scripted SMTP session to pin down every state change; the
tests marked `mail` send through the harness's real Postfix and read the result over IMAP.
"""

from __future__ import annotations

import email
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from triage.act.compose import ComposedReply, compose
from triage.act.outbox import Outbox, OutboxItem
from triage.act.replies import RenderedReply
from triage.act.smtp import AmbiguousDeliveryError, ConnectionLostError, Refused, SmtpSession
from triage.core.errors import PermanentError, SendError, StoreUnavailable
from triage.core.models import Address, InboundMessage
from triage.core.settings import RepliesSettings, SmtpSettings, StoreSettings
from triage.store.db import Database, inserted_id, timestamp

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REPLIES = RepliesSettings(
    from_address="hello@example.test",
    envelope_sender="noreply@example.test",
    message_id_domain="example.test",
)
SMTP = SmtpSettings(
    host="127.0.0.1", port=10025, security="plain", retry_initial=10, retry_max=300, max_attempts=4
)


class Clock:
    """A settable clock for the outbox."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class FakeSession:
    """A scripted two-phase SMTP session: records what was delivered (at the final dot);
    `fail` maps a step ("begin" or "commit", optionally ":recipient") to the error it raises."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    fail_for: dict[str, BaseException] = field(default_factory=dict)  # by recipient
    on_begin: Callable[[], None] | None = None
    on_commit: Callable[[], None] | None = None
    closed: bool = False
    aborted: int = 0
    _pending: tuple[str, bytes] | None = None

    def begin(self, sender: str, recipients: Sequence[str], raw: bytes) -> list[Refused]:
        [rcpt] = recipients
        if "begin" in self.fail:
            raise self.fail["begin"]
        if f"begin:{rcpt}" in self.fail_for:
            raise self.fail_for[f"begin:{rcpt}"]
        if self.on_begin is not None:
            self.on_begin()
        self._pending = (rcpt, raw)
        return []

    def commit(self) -> None:
        assert self._pending is not None, "the final dot without a message"
        rcpt, raw = self._pending
        self._pending = None
        if self.on_commit is not None:
            self.on_commit()
        if "commit" in self.fail:
            raise self.fail["commit"]
        if f"commit:{rcpt}" in self.fail_for:
            raise self.fail_for[f"commit:{rcpt}"]
        self.sent.append(("", rcpt, raw))

    def abort(self) -> None:
        self.aborted += 1
        self._pending = None

    def close(self) -> None:
        self.closed = True


@dataclass
class Connector:
    """Hands out the fake session, or raises like a server that is down."""

    session: FakeSession = field(default_factory=FakeSession)
    down: BaseException | None = None
    connects: int = 0

    def __call__(self) -> SmtpSession:
        self.connects += 1
        if self.down is not None:
            raise self.down
        return self.session


@pytest.fixture
def db(store: StoreSettings) -> Iterator[Database]:
    """The outbox's store, on SQLite and on PostgreSQL."""
    database = Database(store)
    yield database
    database.close()


def message_row(db: Database, n: int = 1) -> int:
    """A ledger row for the reply to point at (the replies table has a foreign key to it)."""
    with db.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, created_at,"
            " updated_at) VALUES ('a', 'INBOX', 1, ?, ?, '', '') RETURNING id",
            (n, f"<in-{n}@client.example>"),
        )
        return inserted_id(cur)


def make_reply(n: int = 1, to: str = "pat@client.example") -> ComposedReply:
    inbound = InboundMessage(message_id=f"<in-{n}@client.example>", subject=f"Inquiry {n}")
    rendered = RenderedReply("sales", "", inbound.subject, f"Thanks for inquiry {n}\n")
    return compose(inbound, Address("Pat", to), rendered, REPLIES, now=T0)


def enqueue(box: Outbox, n: int = 1, to: str = "pat@client.example", mode: str = "live") -> int:
    row = message_row(box.db, n)
    return box.enqueue(
        row,
        make_reply(n, to),
        recipient=to,
        envelope_from=REPLIES.envelope_sender,
        template="sales",
        mode=mode,  # type: ignore[arg-type]
    )


def outbox(db: Database, connector: Connector, clock: Clock, **kw: object) -> Outbox:
    return Outbox(db, SMTP, connector=connector, clock=clock, jitter=lambda: 0.5, **kw)  # type: ignore[arg-type]


def state(box: Outbox, row_id: int) -> OutboxItem:
    item = box.get(row_id)
    assert item is not None
    return item


# --- enqueue --------------------------------------------------------------------------------------


def test_enqueue_stores_the_reply_queued_and_due_now(db: Database) -> None:
    """A live reply is stored with its bytes, recipient and envelope, due immediately."""
    clock = Clock()
    box = outbox(db, Connector(), clock)
    row_id = enqueue(box)
    item = state(box, row_id)
    assert item.state == "queued"
    assert item.mode == "live"
    assert item.recipient == "pat@client.example"
    assert item.envelope_from == "noreply@example.test"
    assert item.reply_message_id.startswith("<triage.")
    assert b"Auto-Submitted: auto-replied\r\n" in item.raw
    assert item.attempts == 0
    assert datetime.fromisoformat(item.next_attempt) == T0


def test_enqueue_twice_is_a_no_op(db: Database) -> None:
    """The same reply (same Message-ID) enqueued again returns the existing row, adds none."""
    box = outbox(db, Connector(), Clock())
    row = message_row(db)
    reply = make_reply()
    to, sender = "pat@client.example", "x@example.test"
    first = box.enqueue(
        row, reply, recipient=to, envelope_from=sender, template="sales", mode="live"
    )
    second = box.enqueue(
        row, make_reply(), recipient=to, envelope_from=sender, template="sales", mode="live"
    )
    assert first == second
    assert db.reads.execute("SELECT count(*) FROM replies").fetchone()[0] == 1


def test_enqueue_joins_the_callers_transaction(db: Database) -> None:
    """The pipeline records a message and queues its reply atomically: a rollback drops both."""
    box = outbox(db, Connector(), Clock())
    row = message_row(db)
    with pytest.raises(RuntimeError), db.transaction():
        box.enqueue(
            row,
            make_reply(),
            recipient="pat@client.example",
            envelope_from="x@example.test",
            template="sales",
            mode="live",
        )
        raise RuntimeError("the rest of the record failed")
    assert db.reads.execute("SELECT count(*) FROM replies").fetchone()[0] == 0


def test_enqueue_rejects_unknown_modes_and_replies_without_id(db: Database) -> None:
    """Programming errors are loud."""
    box = outbox(db, Connector(), Clock())
    with pytest.raises(ValueError, match="mode"):
        enqueue(box, mode="loud")
    reply = replace(make_reply(), message_id="")
    with pytest.raises(ValueError, match="Message-ID"):
        box.enqueue(
            message_row(db, 2),
            reply,
            recipient="a@b.example",
            envelope_from="x@example.test",
            template="sales",
            mode="live",
        )


def test_draft_and_dry_run_are_never_sent(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """Draft waits for the IMAP adapter to file it in Drafts; a dry run is only logged."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    with caplog.at_level(logging.INFO, logger="triage.act.outbox"):
        draft = enqueue(box, 1, mode="draft")
        dry = enqueue(box, 2, mode="dry-run")
    assert state(box, draft).state == "draft"
    assert state(box, dry).state == "dry-run"
    assert any("dry run" in r.getMessage() for r in caplog.records)
    assert box.deliver_due() == []
    assert connector.connects == 0
    assert [i.id for i in box.pending_filing()] == [draft]


# --- sending --------------------------------------------------------------------------------------


def test_deliver_due_sends_over_one_connection_and_marks_sent(db: Database) -> None:
    """Every due reply goes out in one session; rows become `sent` with a time; filing follows."""
    connector = Connector()
    clock = Clock()
    box = outbox(db, connector, clock)
    ids = [enqueue(box, n, f"p{n}@client.example") for n in (1, 2, 3)]
    sent = box.deliver_due()
    assert [s.id for s in sent] == ids
    assert connector.connects == 1
    assert connector.session.closed
    assert [rcpt for _, rcpt, _ in connector.session.sent] == [
        f"p{n}@client.example" for n in (1, 2, 3)
    ]
    assert connector.session.sent[0][2] == state(box, ids[0]).raw
    for item in sent:
        assert item.state == "sent"
        assert item.sent_at is not None
        assert item.attempts == 1
    assert box.deliver_due() == []  # nothing is sent twice
    assert connector.connects == 1  # and no connection is opened for nothing
    assert [i.id for i in box.pending_filing()] == ids
    box.mark_filed(ids[0])
    assert [i.id for i in box.pending_filing()] == ids[1:]
    assert state(box, ids[0]).filed_at is not None


def test_row_is_committed_as_sending_only_between_content_and_final_dot(
    db: Database, store: StoreSettings
) -> None:
    """Crash safety: while the envelope and content go out the row is still `queued` (the server
    drops a message without its final dot); only right before the dot does another connection
    see it `sending`."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    seen: list[str] = []
    other = Database(store)

    def look() -> None:
        seen.append(
            other.reads.execute("SELECT state FROM replies WHERE id = ?", (row_id,)).fetchone()[0]
        )

    connector.session.on_begin = look
    connector.session.on_commit = look
    box.deliver_due()
    other.close()
    assert seen == ["queued", "sending"]
    assert state(box, row_id).state == "sent"


def test_crash_with_the_dot_held_back_sends_the_reply_again(db: Database) -> None:
    """Killed after the content went out but before `sending` was recorded: nothing was
    delivered (no final dot), the row is still queued, and the restart sends it once."""
    connector = Connector()

    def die(name: str) -> None:
        if name == "smtp_data_sent":
            raise KeyboardInterrupt  # the process dies here

    box = Outbox(db, SMTP, connector=connector, clock=Clock(), checkpoint=die)
    row_id = enqueue(box)
    with pytest.raises(KeyboardInterrupt):
        box.deliver_due()
    assert connector.session.sent == []
    assert state(box, row_id).state == "queued"
    restarted = outbox(db, connector, Clock())
    assert restarted.recover() == []
    assert [s.id for s in restarted.deliver_due()] == [row_id]
    assert len(connector.session.sent) == 1


def test_crash_during_send_is_never_resent(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """A row left in `sending` by a crash becomes `uncertain` at start-up and is not sent again."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    connector.session.fail["commit"] = KeyboardInterrupt()  # the process dies at the dot
    with pytest.raises(KeyboardInterrupt):
        box.deliver_due()
    assert state(box, row_id).state == "sending"

    restarted = outbox(db, Connector(), Clock())
    with caplog.at_level(logging.WARNING, logger="triage.act.outbox"):
        assert restarted.recover() == [("replies", row_id)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(row_id) in warnings[0].getMessage()
    assert state(restarted, row_id).state == "uncertain"
    assert restarted.deliver_due() == []
    assert [i.id for i in restarted.in_state("uncertain")] == [row_id]
    assert restarted.recover() == []  # nothing more to recover, no second warning


def test_connection_broken_during_data_is_uncertain(db: Database) -> None:
    """No reply to DATA: the server may have the message, so it is not retried."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    first, second = enqueue(box, 1), enqueue(box, 2, "q@client.example")
    connector.session.fail_for["commit:pat@client.example"] = AmbiguousDeliveryError("gone")
    assert box.deliver_due() == []
    assert state(box, first).state == "uncertain"
    assert state(box, first).error == "gone"
    assert state(box, second).state == "queued"  # untouched; the next call sends it
    assert state(box, second).attempts == 0


def store_down_after_the_dot(
    db: Database, connector: Connector, monkeypatch: pytest.MonkeyPatch, failures: int
) -> list[int]:
    """After the final dot, the store's next `failures` transactions raise StoreUnavailable (a
    database restarting); returns the list the failed tries are counted in."""
    real = db.transaction
    failed: list[int] = []

    def flaky(*args: object, **kwargs: object) -> object:
        if len(failed) < failures:
            failed.append(1)
            raise StoreUnavailable("the database is restarting")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    connector.session.on_commit = lambda: monkeypatch.setattr(db, "transaction", flaky)
    return failed


def test_a_store_outage_after_the_dot_still_records_the_reply_sent(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server accepted the reply while the store was briefly down: the outcome is recorded
    once the store answers again (within smtp.timeout), so a delivered reply is `sent`, not left
    `sending` for the stale rule to call uncertain."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    failed = store_down_after_the_dot(db, connector, monkeypatch, failures=2)
    [sent] = box.deliver_due()
    assert len(failed) == 2
    assert sent.id == row_id
    assert state(box, row_id).state == "sent"
    assert len(connector.session.sent) == 1


def test_a_store_outage_longer_than_the_smtp_timeout_leaves_the_claim_for_the_stale_rule(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage that outlasts smtp.timeout ends the retries with the store's error: the reply
    stays `sending` under its claim (the stale rule makes it uncertain); it is never resent."""
    connector = Connector()
    box = Outbox(
        db,
        SMTP.model_copy(update={"timeout": 0.3}),
        connector=connector,
        clock=Clock(),
        jitter=lambda: 0.5,
    )
    row_id = enqueue(box)
    store_down_after_the_dot(db, connector, monkeypatch, failures=1_000)
    with pytest.raises(StoreUnavailable):
        box.deliver_due()
    monkeypatch.undo()
    assert state(box, row_id).state == "sending"
    assert box.deliver_due() == []
    assert len(connector.session.sent) == 1


def test_a_sent_record_whose_commit_went_unconfirmed_is_not_recorded_twice(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store committed `sent` but the answer was lost (the connection dropped after the
    commit): the next try finds the row sent under its own claim and leaves it, without the
    warning for a row that moved on."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    real = db.transaction
    lost: list[int] = []

    @contextmanager
    def unconfirmed(*args: object, **kwargs: object) -> Iterator[object]:
        with real(*args, **kwargs) as tx:  # type: ignore[arg-type]
            yield tx
        if not lost:
            lost.append(1)
            raise StoreUnavailable("connection lost after the commit")

    connector.session.on_commit = lambda: monkeypatch.setattr(db, "transaction", unconfirmed)
    with caplog.at_level(logging.WARNING, logger="triage.act.outbox"):
        [sent] = box.deliver_due()
    monkeypatch.undo()
    assert lost == [1]
    assert sent.id == row_id
    assert state(box, row_id).state == "sent"
    assert "moved on" not in caplog.text
    assert len(connector.session.sent) == 1


def test_person_resolves_an_uncertain_reply(db: Database) -> None:
    """Delivered → sent (and filed later); resend → queued and sent on the next call; drop →
    failed. Only an uncertain reply can be resolved; who and when are recorded."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    a, b = enqueue(box, 1), enqueue(box, 2, "q@client.example")
    c = enqueue(box, 3, "r@client.example")
    connector.session.fail["commit"] = AmbiguousDeliveryError("gone")
    for _ in range(3):
        box.deliver_due()
    connector.session.fail.clear()
    assert box.resolve(a, "sent", "ops")
    assert box.resolve(b, "resend", "ops")
    assert box.resolve(c, "drop", "ops")
    assert not box.resolve(a, "resend", "ops")  # no longer uncertain
    assert state(box, a).state == "sent"
    assert [i.id for i in box.pending_filing()] == [a]
    assert state(box, c).state == "failed"
    assert [s.id for s in box.deliver_due()] == [b]
    row = db.reads.execute(
        "SELECT resolution, resolved_by, resolved_at FROM replies WHERE id = ?", (a,)
    ).fetchone()
    assert (row[0], row[1]) == ("sent", "ops")
    assert row[2] is not None


def test_server_down_keeps_replies_queued_with_backoff(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: every due reply stays queued with the error, next try moves back
    exponentially (10 s, 20 s, 40 s …); nothing is attempted before it is due."""
    connector = Connector(down=SendError("cannot connect to SMTP 127.0.0.1:10025: refused"))
    clock = Clock()
    box = outbox(db, connector, clock)
    ids = [enqueue(box, 1), enqueue(box, 2, "q@client.example")]
    with caplog.at_level(logging.ERROR, logger="triage.act.outbox"):
        assert box.deliver_due() == []
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    for row_id in ids:
        item = state(box, row_id)
        assert item.state == "queued"
        assert item.attempts == 1
        assert item.error is not None
        assert "refused" in item.error
        assert datetime.fromisoformat(item.next_attempt) == T0 + timedelta(seconds=10)
    assert box.deliver_due() == []
    assert connector.connects == 1  # not due yet: no new connection
    box.deliver_due(clock.advance(seconds=10))
    assert datetime.fromisoformat(state(box, ids[0]).next_attempt) == clock.now + timedelta(
        seconds=20
    )
    connector.down = None
    sent = box.deliver_due(clock.advance(seconds=20))
    assert [s.id for s in sent] == ids
    assert all(s.error is None for s in sent)
    assert len(connector.session.sent) == 2


def test_backoff_doubles_up_to_the_maximum() -> None:
    """retry_initial × 2^(n-1), capped at retry_max, jitter ±20 % (never above retry_max)."""
    box = Outbox(Database(":memory:"), SMTP, jitter=lambda: 0.5)
    assert [box.backoff(n).total_seconds() for n in (1, 2, 3, 5, 10)] == [10, 20, 40, 160, 300]
    low = Outbox(Database(":memory:"), SMTP, jitter=lambda: 0.0)
    assert low.backoff(1).total_seconds() == pytest.approx(8.0)
    high = Outbox(Database(":memory:"), SMTP, jitter=lambda: 0.999)
    assert high.backoff(10).total_seconds() == 300


def test_too_many_transient_failures_mark_failed(db: Database) -> None:
    """After max_attempts (4) the reply is given up, with the last error."""
    connector = Connector(down=SendError("refused"))
    clock = Clock()
    box = outbox(db, connector, clock)
    row_id = enqueue(box)
    for _ in range(4):
        box.deliver_due(clock.advance(hours=1))
    item = state(box, row_id)
    assert item.state == "failed"
    assert item.attempts == 4
    assert item.error == "gave up after 4 attempts: refused"


def test_permanent_refusals_fail_at_once(db: Database) -> None:
    """A 5xx on RCPT or DATA is final: `failed`, and the rest of the batch still goes out."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    bad_rcpt = enqueue(box, 1, "nobody@client.example")
    bad_data = enqueue(box, 2, "spam@client.example")
    good = enqueue(box, 3, "pat@client.example")
    connector.session.fail_for["begin:nobody@client.example"] = PermanentError(
        "SMTP RCPT TO refused: 550 5.1.1 unknown user"
    )
    connector.session.fail_for["commit:spam@client.example"] = PermanentError(
        "SMTP DATA refused: 554 rejected"
    )
    assert [s.id for s in box.deliver_due()] == [good]
    assert state(box, bad_rcpt).state == "failed"
    assert state(box, bad_rcpt).attempts == 1
    assert "550" in (state(box, bad_rcpt).error or "")
    assert state(box, bad_data).state == "failed"
    assert state(box, bad_data).attempts == 1


def test_temporary_refusal_retries_that_reply_only(db: Database) -> None:
    """A 4xx for one recipient queues that reply again; the others are sent."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    greylisted = enqueue(box, 1, "grey@client.example")
    good = enqueue(box, 2)
    connector.session.fail_for["begin:grey@client.example"] = SendError("451 greylisted")
    assert [s.id for s in box.deliver_due()] == [good]
    item = state(box, greylisted)
    assert (item.state, item.attempts, item.error) == ("queued", 1, "451 greylisted")


def test_lost_connection_stops_the_batch(db: Database) -> None:
    """When the connection drops before DATA the reply is retried later and the rest waits."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    first, second = enqueue(box, 1), enqueue(box, 2, "q@client.example")
    connector.session.fail["begin"] = ConnectionLostError("lost")
    assert box.deliver_due() == []
    assert state(box, first).state == "queued"
    assert state(box, first).attempts == 1
    assert state(box, second).attempts == 0
    assert connector.session.closed


def test_a_row_claimed_by_another_process_is_skipped(db: Database) -> None:
    """Two senders on one database: only the one that flips `queued` → `sending` sends; the
    other drops its connection before the final dot, so the server discards its copy."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)

    def steal() -> None:
        with db.transaction() as conn:
            conn.execute("UPDATE replies SET state = 'sending' WHERE id = ?", (row_id,))

    connector.session.on_begin = steal
    assert box.deliver_due() == []
    assert connector.session.sent == []
    assert connector.session.aborted == 1


def test_deliver_due_refuses_to_run_inside_a_transaction(db: Database) -> None:
    """Its commits are its crash safety; inside someone's transaction they would not happen."""
    box = outbox(db, Connector(), Clock())
    with pytest.raises(RuntimeError), db.transaction():
        box.deliver_due()


# --- the reply history ----------------------------------------------------------------------------


def test_replied_recently_counts_replies_that_are_or_may_become_real(db: Database) -> None:
    """queued/sending/sent/uncertain/draft count; failed and dry-run do not; case and +detail
    are ignored; only the window counts."""
    clock = Clock()
    box = outbox(db, Connector(), clock)
    week = timedelta(days=7)
    assert not box.replied_recently("pat@client.example", week)
    enqueue(box, 1, "Pat+Sales@Client.example")
    assert box.replied_recently("pat@client.example", week)
    assert box.replied_recently("PAT+other@client.EXAMPLE", week)
    assert not box.replied_recently("pat@other.example", week)
    assert not box.replied_recently("pa@client.example", week)
    clock.advance(days=8)
    assert not box.replied_recently("pat@client.example", week)
    enqueue(box, 2, "dry@client.example", mode="dry-run")
    assert not box.replied_recently("dry@client.example", week)
    enqueue(box, 3, "draft@client.example", mode="draft")
    assert box.replied_recently("draft@client.example", week)


def test_a_reply_to_an_unverified_sender_does_not_block_a_verified_one(db: Database) -> None:
    """A fixed-text reply to a message forged in Jane's name (priority of an unverified
    sender) does not count when Jane herself, authenticated, writes; it does for anyone else."""
    box = outbox(db, Connector(), Clock())
    week = timedelta(days=7)
    from triage.act.outbox import UNVERIFIED

    row = message_row(db)
    box.enqueue(
        row,
        make_reply(1, "jane@client.example"),
        recipient="jane@client.example",
        envelope_from="",
        template="sales",
        mode="live",
        priority=UNVERIFIED,
    )
    assert box.replied_recently("jane@client.example", week)
    assert not box.replied_recently("jane@client.example", week, verified=True)
    row2 = message_row(db, 2)
    box.enqueue(
        row2,
        make_reply(2, "jane@client.example"),
        recipient="jane@client.example",
        envelope_from="",
        template="sales",
        mode="live",
        priority=0,
    )
    assert box.replied_recently("jane@client.example", week, verified=True)


def test_recent_recipients_answers_as_replied_recently_does_for_each_address(
    db: Database,
) -> None:
    """The guards' early look over a batch asks for every destination at once: each answer,
    for a verified sender and for any, is what `replied_recently` says for that address (old,
    dry-run, drafted, unverified-only and unknown mailboxes; case and +detail ignored)."""
    from triage.act.outbox import UNVERIFIED

    clock = Clock()
    box = outbox(db, Connector(), clock)
    week = timedelta(days=7)
    enqueue(box, 1, "old@client.example")
    clock.advance(days=8)
    enqueue(box, 2, "Pat+Sales@Client.example")
    enqueue(box, 3, "dry@client.example", mode="dry-run")
    enqueue(box, 4, "draft@client.example", mode="draft")
    enqueue_prio(box, 5, "jane@client.example", UNVERIFIED)
    asked = [
        "pat@client.example",
        "PAT+other@client.EXAMPLE",
        "old@client.example",
        "dry@client.example",
        "draft@client.example",
        "jane@client.example",
        "nobody@client.example",
    ]
    found = box.recent_recipients(asked, week)
    assert set(found) == {
        "pat@client.example",
        "PAT+other@client.EXAMPLE",
        "draft@client.example",
        "jane@client.example",
    }
    assert found["jane@client.example"] is False  # only an unverified sender's reply
    with pytest.raises(RuntimeError), db.transaction():
        box.recent_recipients(asked, week)  # no `hold` there: the one-by-one question is for that
    for address in asked:
        for verified in (False, True):
            bulk = address in found and (found[address] or not verified)
            assert bulk == box.replied_recently(address, week, verified=verified), address


def test_replied_recently_ignores_failed_replies(db: Database) -> None:
    """A reply that never left does not use up the sender's one reply."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    enqueue(box, 1)
    connector.session.fail["begin"] = PermanentError("550 no")
    box.deliver_due()
    assert not box.replied_recently("pat@client.example", timedelta(days=7))


def test_like_wildcards_in_the_domain_are_literal(db: Database) -> None:
    """`_` and `%` in an address do not match other domains."""
    box = outbox(db, Connector(), Clock())
    enqueue(box, 1, "pat@client-example.test")
    assert not box.replied_recently("pat@client_example.test", timedelta(days=7))


def capped(db: Database, clock: Clock, connector: Connector, **limits: object) -> Outbox:
    """An outbox with send caps (`max_per_hour`, `max_per_domain_per_hour`, `max_defer`)."""
    from triage.act.outbox import SendLimits

    caps: list[str] = []
    box = Outbox(
        db,
        SMTP,
        connector=connector,
        clock=clock,
        jitter=lambda: 0.5,
        limits=SendLimits(**limits),  # type: ignore[arg-type]
        on_cap=caps.append,
    )
    box.caps = caps  # type: ignore[attr-defined]
    return box


def enqueue_prio(box: Outbox, n: int, to: str, priority: int) -> int:
    row = message_row(box.db, n)
    return box.enqueue(
        row,
        make_reply(n, to),
        recipient=to,
        envelope_from="noreply@example.test",
        template="sales",
        mode="live",
        priority=priority,
    )


def test_hourly_cap_defers_replies_instead_of_dropping_them(db: Database) -> None:
    """60 forged inquiries in an hour use up the cap; a real prospect's reply is deferred (not
    dropped), goes out first when the hour frees a slot, and the metric names the cap."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_hour=60)
    for n in range(1, 61):
        enqueue_prio(box, n, f"victim{n}@spam-target.example", priority=3)
        clock.advance(seconds=30)
    assert len(box.deliver_due()) == 60
    for n in range(61, 71):
        enqueue_prio(box, n, f"victim{n}@spam-target.example", priority=3)
    real = enqueue_prio(box, 100, "pat@client.example", priority=0)
    assert box.deliver_due() == []
    item = box.get(real)
    assert item is not None
    assert item.state == "queued"
    assert item.deferrals == 1
    assert (item.error or "").startswith("deferred: 60 replies in the last hour")
    assert "hourly" in box.caps  # type: ignore[attr-defined]
    # It waits until an hour after the first of the 60 went out; then the prospect goes first.
    assert datetime.fromisoformat(item.next_attempt) == T0 + timedelta(minutes=30, hours=1)
    clock.now = datetime.fromisoformat(item.next_attempt)
    sent = box.deliver_due()
    assert [s.recipient for s in sent][:1] == ["pat@client.example"]
    assert box.cap_report(T0).deferred == 11


def test_domain_cap_defers_replies_to_one_domain_only(db: Database) -> None:
    """A flood aimed at one domain is held at `max_per_domain_per_hour`; others still go."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_domain_per_hour=3)
    for n in range(1, 6):
        enqueue_prio(box, n, f"user{n}@victim.example", priority=2)
    enqueue_prio(box, 9, "pat@client.example", priority=2)
    sent = [s.recipient for s in box.deliver_due()]
    assert sorted(sent) == sorted(
        [
            "user1@victim.example",
            "user2@victim.example",
            "user3@victim.example",
            "pat@client.example",
        ]
    )
    assert box.caps.count("domain") == 2  # type: ignore[attr-defined]


def test_replies_deferred_too_long_are_dropped_with_a_reason(db: Database) -> None:
    """`max_defer` bounds the wait: then the reply is `expired`, which is on record."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_hour=0, max_defer=timedelta(hours=24))
    row = enqueue_prio(box, 1, "pat@client.example", priority=0)
    assert box.deliver_due() == []
    clock.advance(hours=25)
    assert box.deliver_due() == []
    item = box.get(row)
    assert item is not None
    assert item.state == "expired"
    assert "held back by the reply caps" in (item.error or "")
    assert box.caps == ["hourly", "expired"]  # type: ignore[attr-defined]
    assert connector.session.sent == []
    assert box.cap_report(T0 - timedelta(seconds=1)).expired == 1


def test_outbox_is_a_reply_history_for_the_guards(db: Database) -> None:
    """The guards' rate rules run against the outbox itself."""
    from triage.core.models import Contact
    from triage.decide.guards import GuardContext, check

    box = outbox(db, Connector(), Clock())
    ctx = GuardContext.from_settings(REPLIES, box)
    msg = InboundMessage(
        message_id="<in-9@client.example>",
        from_=Address("Pat", "pat@client.example"),
        to=(Address("", "hello@example.test"),),
        return_path="<pat@client.example>",
        contact=Contact(email="pat@client.example"),
    )
    assert check(msg, ctx).may_reply
    enqueue(box, 1)
    assert check(msg, ctx).reasons[0].startswith("already-replied:")


# --- against the harness's real Postfix -----------------------------------------------------------

if TYPE_CHECKING:
    from devtools.mailharness import MailHarness


def harness_smtp(harness: MailHarness, **changes: object) -> SmtpSettings:
    """SMTP settings for the harness Postfix: plain on loopback unless changed; with a login,
    its submission port (the inbound port offers no AUTH)."""
    cfg = harness.config
    data: dict[str, object] = {
        "host": cfg.host,
        "port": cfg.submission_port if "username" in changes else cfg.smtp_port,
        "security": "plain",
        "timeout": 10,
        "retry_initial": 30,
        "max_attempts": 5,
    } | changes
    return SmtpSettings.model_validate(data)


HARNESS_REPLIES = RepliesSettings(
    from_address="hello@example.test",
    from_name="Example Ltd",
    envelope_sender="noreply@example.test",
    message_id_domain="example.test",
)


def reply_to(harness: MailHarness, user: str, n: int) -> tuple[ComposedReply, InboundMessage]:
    """Our reply to an inquiry `n` from `user` (the inquiry itself is built, not delivered)."""
    inbound = InboundMessage(
        message_id=f"<inquiry-{n}-{user}@client.example>",
        subject=f"Quote for {n} units",
        references=("<root@client.example>",),
        from_=Address(user.title(), harness.address(user)),
    )
    rendered = RenderedReply("sales", "", inbound.subject, f"Thanks for inquiry {n}\n", "<p>Hi</p>")
    dest = Address(user.title(), harness.address(user))
    return compose(inbound, dest, rendered, HARNESS_REPLIES, trusted=True), inbound


def queue(box: Outbox, harness: MailHarness, user: str, n: int) -> int:
    reply, _ = reply_to(harness, user, n)
    return box.enqueue(
        message_row(box.db, n),
        reply,
        recipient=harness.address(user),
        envelope_from=HARNESS_REPLIES.envelope_sender,
        template="sales",
        mode="live",
    )


def inbox(harness: MailHarness, user: str) -> list[EmailMessage]:
    """Every message in the user's INBOX, parsed."""
    with harness.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
    out = []
    for uid in sorted(fetched):
        msg = email.message_from_bytes(fetched[uid][b"BODY[]"], policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def settle(harness: MailHarness, user: str, count: int) -> list[EmailMessage]:
    """Wait for `count` messages, then a little longer, so a duplicate would have arrived too."""
    harness.wait_for_messages(user, count=count)
    time.sleep(0.5)
    return inbox(harness, user)


@pytest.mark.mail
def test_reply_arrives_once_threaded_and_marked(clean_mail: MailHarness, db: Database) -> None:
    """A reply sent through the outbox lands in alice's mailbox exactly once, threaded under the
    inquiry, with Auto-Submitted and our envelope sender as Return-Path."""
    harness = clean_mail
    box = Outbox(db, harness_smtp(harness))
    row_id = queue(box, harness, "alice", 1)
    sent = box.deliver_due()
    assert [s.id for s in sent] == [row_id]
    assert box.deliver_due() == []
    [got] = settle(harness, "alice", 1)
    assert got["Message-ID"] == state(box, row_id).reply_message_id
    assert got["In-Reply-To"] == "<inquiry-1-alice@client.example>"
    assert got["References"] == "<root@client.example> <inquiry-1-alice@client.example>"
    assert got["Auto-Submitted"] == "auto-replied"
    assert got["Return-Path"] == "<noreply@example.test>"
    assert got["Subject"] == "Re: Quote for 1 units"
    assert got.get_content_type() == "multipart/alternative"
    assert [i.id for i in box.pending_filing()] == [row_id]


@pytest.mark.mail
def test_enqueue_twice_delivers_once(clean_mail: MailHarness, db: Database) -> None:
    """The same reply queued twice (a redone pipeline step) is delivered once."""
    harness = clean_mail
    box = Outbox(db, harness_smtp(harness))
    reply, _ = reply_to(harness, "bob", 2)
    row = message_row(db, 2)
    ids = {
        box.enqueue(
            row,
            reply,
            recipient=harness.address("bob"),
            envelope_from="noreply@example.test",
            template="sales",
            mode="live",
        )
        for _ in range(2)
    }
    assert len(ids) == 1
    assert len(box.deliver_due()) == 1
    assert box.deliver_due() == []
    assert len(settle(harness, "bob", 1)) == 1


@pytest.mark.mail
def test_replies_wait_while_postfix_is_down_then_go_out_once(
    clean_mail: MailHarness, db: Database
) -> None:
    """Postfix stopped: replies stay queued with the error and a later next attempt; after it is
    back each reply is delivered exactly once."""
    harness = clean_mail
    box = Outbox(db, harness_smtp(harness))
    harness.stop_postfix()
    try:
        ids = [queue(box, harness, "alice", 3), queue(box, harness, "bob", 4)]
        assert box.deliver_due() == []
        for row_id in ids:
            item = state(box, row_id)
            assert item.state == "queued"
            assert item.attempts == 1
            assert item.error is not None
            assert "cannot connect" in item.error
            assert datetime.fromisoformat(item.next_attempt) > datetime.now(UTC)
        assert box.deliver_due() == []  # not due yet
        assert state(box, ids[0]).attempts == 1
    finally:
        harness.start_postfix()
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert sorted(s.id for s in box.deliver_due(later)) == sorted(ids)
    assert box.deliver_due(later) == []
    assert len(settle(harness, "alice", 1)) == 1
    assert len(settle(harness, "bob", 1)) == 1


@pytest.mark.mail
def test_starttls_with_verified_certificate_and_auth(clean_mail: MailHarness, db: Database) -> None:
    """STARTTLS verified against the harness CA, then AUTH as hello: the reply is delivered."""
    harness = clean_mail
    settings = harness_smtp(
        harness,
        security="starttls",
        ca_file=harness.ca_file,
        username="hello",
        password=harness.password("hello"),
    )
    box = Outbox(db, settings)
    queue(box, harness, "carol", 5)
    assert len(box.deliver_due()) == 1
    assert len(settle(harness, "carol", 1)) == 1


@pytest.mark.mail
def test_unverifiable_certificate_is_not_trusted(clean_mail: MailHarness, db: Database) -> None:
    """Without the harness CA the self-signed certificate fails verification: nothing is sent,
    the reply waits with the reason."""
    harness = clean_mail
    box = Outbox(db, harness_smtp(harness, security="starttls"))
    row_id = queue(box, harness, "carol", 6)
    assert box.deliver_due() == []
    item = state(box, row_id)
    assert item.state == "queued"
    assert "certificate verification failed" in (item.error or "")


@pytest.mark.mail
@pytest.mark.slow  # Postfix and Dovecot slow down failed logins on purpose (~5 s, then ~4 s)
def test_wrong_password_keeps_replies_queued(clean_mail: MailHarness, db: Database) -> None:
    """A rejected login is an error the operator fixes; replies wait for it."""
    harness = clean_mail
    settings = harness_smtp(
        harness, security="starttls", ca_file=harness.ca_file, username="hello", password="wrong"
    )
    box = Outbox(db, settings)
    row_id = queue(box, harness, "carol", 7)
    assert box.deliver_due() == []
    item = state(box, row_id)
    assert item.state == "queued"
    assert "rejected the login" in (item.error or "")


@pytest.mark.mail
def test_relay_refusal_fails_the_reply_for_good(clean_mail: MailHarness, db: Database) -> None:
    """Postfix answers 5xx for a domain it does not serve: the reply is `failed` at once."""
    harness = clean_mail
    box = Outbox(db, harness_smtp(harness))
    reply, _ = reply_to(harness, "alice", 8)
    row_id = box.enqueue(
        message_row(db, 8),
        reply,
        recipient="someone@elsewhere.invalid",
        envelope_from="noreply@example.test",
        template="sales",
        mode="live",
    )
    good = queue(box, harness, "bob", 9)
    assert [s.id for s in box.deliver_due()] == [good]
    item = state(box, row_id)
    assert item.state == "failed"
    assert (item.error or "").startswith("SMTP RCPT TO <someone@elsewhere.invalid> refused: 5")


# --- against a scripted SMTP server on a real socket ----------------------------------------------


class ScriptedSmtpServer:
    """A minimal SMTP server in a thread: accepts every command, and can misbehave after DATA.

    `after_data` is "250" (accept), "451"/"554" (refuse with that code) or "drop" (close the
    connection without a reply: the client cannot know whether the message was taken).
    """

    def __init__(
        self,
        after_data: str = "250",
        tls: ssl.SSLContext | None = None,
        rcpt: dict[str, str] | None = None,
    ) -> None:
        self.after_data = after_data
        self.tls = tls
        self.rcpt = rcpt or {}  # address → the answer to its RCPT TO (default 250)
        self.messages: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._talk(conn)
        except OSError:  # the client hung up or refused our certificate: what some tests want
            return

    def _talk(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 scripted ESMTP\r\n")
            while line := reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-scripted\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    body = b"".join(iter(reader.readline, b".\r\n"))
                    if self.after_data == "drop":
                        return
                    if self.after_data == "250":
                        self.messages.append(body)
                    conn.sendall(self.after_data.encode() + b" done\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                elif verb == b"RCPT":
                    address = line.decode().partition("<")[2].partition(">")[0]
                    conn.sendall(self.rcpt.get(address, "250 ok").encode() + b"\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedSmtpServer]]:
    servers: list[ScriptedSmtpServer] = []

    def start(
        after_data: str = "250",
        tls: ssl.SSLContext | None = None,
        rcpt: dict[str, str] | None = None,
    ) -> ScriptedSmtpServer:
        servers.append(ScriptedSmtpServer(after_data, tls, rcpt))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def scripted_outbox(db: Database, server: ScriptedSmtpServer, **changes: object) -> Outbox:
    data: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "plain",
        "timeout": 5,
    } | changes
    return Outbox(db, SmtpSettings.model_validate(data))


def test_connection_dropped_after_data_is_uncertain_not_resent(
    db: Database, scripted: Callable[..., ScriptedSmtpServer]
) -> None:
    """The server hangs up after the message without answering: maybe delivered, so the reply is
    `uncertain` and is not sent again."""
    server = scripted("drop")
    box = scripted_outbox(db, server)
    row_id = enqueue(box)
    assert box.deliver_due() == []
    item = state(box, row_id)
    assert item.state == "uncertain"
    assert "broke after the message" in (item.error or "")
    assert box.deliver_due(T0 + timedelta(days=1)) == []


@pytest.mark.parametrize(("code", "expected"), [("451", "queued"), ("554", "failed")])
def test_refusal_after_data_is_definite(
    db: Database, scripted: Callable[..., ScriptedSmtpServer], code: str, expected: str
) -> None:
    """A 4xx/5xx answer to the message is a clear "not taken": retried later, or failed."""
    box = scripted_outbox(db, scripted(code))
    row_id = enqueue(box)
    assert box.deliver_due() == []
    item = state(box, row_id)
    assert item.state == expected
    assert (item.error or "").startswith(f"SMTP message refused: {code}")


def test_dot_stuffing_and_bytes_arrive_intact(
    db: Database, scripted: Callable[..., ScriptedSmtpServer]
) -> None:
    """The stored bytes are what the server receives (a body line starting with "." included)."""
    server = scripted("250")
    box = scripted_outbox(db, server)
    inbound = InboundMessage(message_id="<dots@client.example>", subject="Dots")
    reply = compose(
        inbound, Address("", "pat@client.example"), RenderedReply("s", "", "x", ".\n..x\n"), REPLIES
    )
    box.enqueue(
        message_row(db),
        reply,
        recipient="pat@client.example",
        envelope_from="noreply@example.test",
        template="sales",
        mode="live",
    )
    assert len(box.deliver_due()) == 1
    [received] = server.messages
    unstuffed = b"".join(
        line[1:] if line.startswith(b".") else line for line in received.splitlines(keepends=True)
    )
    assert unstuffed == reply.raw


@pytest.mark.mail
def test_implicit_tls_verified_against_the_ca(
    mail_harness: MailHarness, db: Database, scripted: Callable[..., ScriptedSmtpServer]
) -> None:
    """security = "tls" speaks TLS from the first byte and verifies the server certificate."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(mail_harness.tls_dir / "server.pem", mail_harness.tls_dir / "server.key")
    server = scripted("250", tls)
    box = scripted_outbox(db, server, security="tls", ca_file=mail_harness.ca_file)
    enqueue(box)
    assert len(box.deliver_due()) == 1
    assert len(server.messages) == 1
    untrusted = scripted("250", tls)
    box2 = scripted_outbox(db, untrusted, security="tls")
    row_id = enqueue(box2, 2)
    assert box2.deliver_due() == []
    assert "certificate verification failed" in (state(box2, row_id).error or "")


def test_caps_are_checked_again_when_a_reply_is_claimed(db: Database) -> None:
    """Another thread may send between this pass's budget and its claim: the claim's own write
    transaction recounts, so two passes together cannot exceed `max_per_hour`."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_hour=1)
    mine = enqueue_prio(box, 1, "pat@client.example", priority=0)

    def another_pass_sends() -> None:
        other = message_row(db, 2)
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at, claimed_at)"
                " VALUES (?, '<other@x>', 'q@other.example', '', 'sales', 'live', 'sent', ?,"
                " ?, ?, ?)",
                (other, b"", timestamp(clock.now), timestamp(clock.now), timestamp(clock.now)),
            )

    connector.session.on_begin = another_pass_sends
    assert box.deliver_due() == []
    item = box.get(mine)
    assert item is not None
    assert item.state == "queued"
    assert item.deferrals == 1
    assert connector.session.aborted == 1


def test_the_domain_cap_counts_subdomains_as_one_domain(db: Database) -> None:
    """`s1.victim.example` … `s5.victim.example` are one organisation: one cap."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_domain_per_hour=2)
    for n in range(1, 6):
        enqueue_prio(box, n, f"x@s{n}.victim.example", priority=2)
    assert len(box.deliver_due()) == 2


def test_deferred_replies_keep_their_place_in_line(db: Database) -> None:
    """Within one priority the oldest reply goes first, however often it was deferred."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_hour=1)
    first = enqueue_prio(box, 1, "a@one.example", priority=2)
    enqueue_prio(box, 2, "b@two.example", priority=2)
    assert [s.id for s in box.deliver_due()] == [first]
    clock.advance(minutes=1)
    enqueue_prio(box, 3, "c@three.example", priority=2)
    clock.advance(hours=1)
    assert [s.recipient for s in box.deliver_due()] == ["b@two.example"]


def test_rekey_recomputes_keys_after_an_upgrade(db: Database) -> None:
    """Rows migrated with a lower-cased key are recognised by the canonical form again."""
    from triage.decide.guards import canonical

    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector)
    enqueue_prio(box, 1, "Jane.Doe+web@gmail.com", priority=0)
    with db.transaction() as conn:
        conn.execute("UPDATE replies SET recipient_key = lower(recipient)")
    dotless = frozenset({"gmail.com"})
    from triage.act.outbox import SendLimits

    box.limits = SendLimits(canonical=lambda e: canonical(e, dotless))
    assert not box.replied_recently("janedoe@gmail.com", timedelta(days=7))
    assert box.rekey() == 1
    assert box.replied_recently("jane.doe@gmail.com", timedelta(days=7))
    assert box.rekey() == 0


def test_a_database_of_schema_3_keeps_its_queued_mail(tmp_path: Path) -> None:
    """Migration 4 loses nothing: a queued reply stays queued and is sent, a digest waiting as
    `prepared` becomes `queued` (the one state machine) and keeps its bytes and recipients."""
    import sqlite3

    from triage.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        old.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    old.execute(
        "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, created_at,"
        " updated_at) VALUES ('a', 'INBOX', 1, 1, '<in-1@client.example>', '', '')"
    )
    raw = make_reply(1).raw
    at = timestamp(T0)
    old.execute(
        "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from, template,"
        " mode, state, raw, next_attempt, created_at, recipient_key, recipient_domain)"
        " VALUES (1, '<r1@x>', 'pat@client.example', '', 'sales', 'live', 'queued', ?, ?, ?,"
        " 'pat@client.example', 'client.example')",
        (raw, at, at),
    )
    old.execute(
        "INSERT INTO digests (state, message_id, raw, created_at, kind, slot, recipients,"
        " envelope_from, updated_at) VALUES ('prepared', '<d1@x>', x'0102', ?, 'digest', 's1',"
        " '[\"sales@example.test\"]', 'hello@example.test', ?)",
        (at, at),
    )
    old.close()

    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    from triage.act.outbox import entries

    found = {(e.kind, e.state, e.recipients) for e in entries(db)}
    assert found == {
        ("reply", "queued", "pat@client.example"),
        ("digest", "queued", "sales@example.test"),
    }
    from triage.store.digests import due

    [notice] = due(db.reads, T0)
    assert (notice.raw, notice.recipients) == (b"\x01\x02", ("sales@example.test",))
    connector = Connector()
    box = outbox(db, connector, Clock())
    assert [s.id for s in box.deliver_due()] == [1]
    assert connector.session.sent[0][2] == raw
    db.close()


# --- several senders at once ----------------------------------------------------------------------


def _pass_of(db: Database, connector: Connector, row_id: int, attempts: int = 0) -> None:
    """Another sender's pass over a reply it read as queued (with `attempts`) before it was
    claimed elsewhere: it tries it now, over `connector`."""
    from triage.act.outbox import Outgoing

    box = outbox(db, connector, Clock())
    item = Outgoing(
        "replies", row_id, "reply", "x@example.test", ("pat@client.example",), b"x", attempts
    )
    box.delivery.send_batch([item], connector)


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("connect", ConnectionLostError("SMTP connect refused: 421 too many connections")),
        ("connect", SendError("cannot connect to SMTP 127.0.0.1:10025: refused")),
        ("begin", SendError("SMTP RCPT TO <pat@client.example> refused: 450 try later")),
        ("begin", PermanentError("SMTP MAIL FROM refused: 550 not today")),
    ],
)
def test_a_failure_before_its_claim_never_touches_another_senders_reply(
    db: Database, where: str, error: Exception
) -> None:
    """Replies are sent from several threads at once. While sender A holds the final dot of a
    reply it claimed, sender B — which read the reply as queued earlier — fails before claiming
    it (at connect, or at the envelope, 4xx or 5xx): B leaves the row alone, A records `sent`,
    and the reply goes out exactly once."""
    clock = Clock()
    a_conn = Connector()
    box = outbox(db, a_conn, clock)
    row_id = enqueue(box)
    b_conn = (
        Connector(down=error)
        if where == "connect"
        else Connector(FakeSession(fail={"begin": error}))
    )
    seen: list[str] = []

    def b_runs_now() -> None:
        _pass_of(db, b_conn, row_id)
        seen.append(state(box, row_id).state)

    a_conn.session.on_commit = b_runs_now
    assert [s.id for s in box.deliver_due()] == [row_id]
    assert seen == ["sending"]
    item = state(box, row_id)
    assert (item.state, item.attempts, item.error) == ("sent", 1, None)
    clock.advance(hours=1)
    assert box.deliver_due() == []
    assert len(a_conn.session.sent) == 1


def test_a_senders_transitions_change_only_its_own_claim(db: Database) -> None:
    """After its claim a sender's every transition names that claim: once the row was
    recovered, resent and claimed by another sender, the first one's late `sent`, retry,
    failure or `uncertain` changes nothing."""
    from triage.store import outbox as queue

    box = outbox(db, Connector(), Clock())
    row_id = enqueue(box)
    with db.transaction() as tx:
        first = queue.claim(tx, "replies", row_id, T0, 0)
    assert first is not None
    assert box.recover() == [("replies", row_id)]
    assert box.resolve(row_id, "resend", "ops")
    with db.transaction() as tx:
        second = queue.claim(tx, "replies", row_id, T0 + timedelta(minutes=5), 0)
        assert second is not None and second != first
        assert queue.claim(tx, "replies", row_id, T0 + timedelta(minutes=6), 0) is None
        assert not queue.mark_sent(tx, "replies", row_id, first, T0, None)
        assert not queue.retry_later(tx, "replies", row_id, 1, "late", T0, first)
        assert not queue.fail(tx, "replies", row_id, 1, "late", first)
        queue.mark_uncertain(tx, "replies", row_id, first, "late")
        # Nor does a sender that failed before claiming, having read the row as queued.
        assert not queue.retry_later(tx, "replies", row_id, 1, "late", T0, None)
    assert state(box, row_id).state == "sending"
    with db.transaction() as tx:
        assert queue.mark_sent(tx, "replies", row_id, second, T0 + timedelta(minutes=5), None)
    assert state(box, row_id).state == "sent"


def test_a_live_senders_answer_still_counts_after_a_recovery(db: Database) -> None:
    """A recovery marked a live sender's claim `uncertain` meanwhile: the server's 250 on that
    very claim still records `sent` — also for a reply a person had resent earlier."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    connector.session.fail["commit"] = AmbiguousDeliveryError("gone")
    assert box.deliver_due() == []
    connector.session.fail.clear()
    assert box.resolve(row_id, "resend", "ops")

    def recovery_meanwhile() -> None:
        assert box.recover() == [("replies", row_id)]

    connector.session.on_commit = recovery_meanwhile
    assert [s.id for s in box.deliver_due()] == [row_id]
    assert state(box, row_id).state == "sent"


def test_start_up_recovery_leaves_a_digest_being_sent_alone(db: Database) -> None:
    """`triage digest --send` sends digests without the store's lock: the daemon's start-up
    recovery marks replies left in `sending`, but a digest claimed a moment ago is left to the
    stale-claim rule and its sender records `sent`."""
    from triage.act.outbox import recover, stale_claims
    from triage.store import digests as notices
    from triage.store import outbox as queue

    box = outbox(db, Connector(), Clock())
    with db.transaction() as tx:
        digest_id = notices.insert(
            tx,
            kind="digest",
            slot="s1",
            message_id="<d1@example.test>",
            raw=b"Subject: digest\r\n\r\nhi\r\n",
            recipients=["sales@example.test"],
            envelope_from="hello@example.test",
            now=T0,
        )
        mine = queue.claim(tx, "digests", digest_id, T0, 0)
    assert mine is not None
    assert box.recover() == []
    with db.transaction() as tx:
        assert queue.mark_sent(tx, "digests", digest_id, mine, T0, None)
    # A digest whose sender died is still recovered, once its claim is stale.
    with db.transaction() as tx:
        db.reads.execute("UPDATE digests SET state = 'queued' WHERE id = ?", (digest_id,))
        assert queue.claim(tx, "digests", digest_id, T0, 1) is not None
    later = stale_claims(SMTP, T0 + timedelta(minutes=10))
    assert recover(db, later) == [("digests", digest_id)]


def test_resend_starts_the_reply_afresh(db: Database) -> None:
    """`resend` clears the decision (leaving a note of it), the attempts and the deferrals, and
    the caps' expiry counts from the resend: a reply deferred by a cap, then uncertain, then
    resent a day later goes out — it is not expired at once."""
    clock, connector = Clock(), Connector()
    box = capped(db, clock, connector, max_per_hour=1, max_defer=timedelta(hours=24))
    first = enqueue_prio(box, 1, "q@client.example", priority=0)
    assert [s.id for s in box.deliver_due()] == [first]
    row_id = enqueue_prio(box, 2, "pat@client.example", priority=0)
    assert box.deliver_due() == []  # the hourly cap defers it
    assert state(box, row_id).deferrals == 1
    clock.advance(hours=1)
    connector.session.fail["commit"] = AmbiguousDeliveryError("gone")
    assert box.deliver_due() == []
    connector.session.fail.clear()
    assert state(box, row_id).state == "uncertain"

    clock.advance(hours=30)
    assert box.resolve(row_id, "resend", "ops")
    item = state(box, row_id)
    assert (item.state, item.attempts, item.deferrals) == ("queued", 0, 0)
    assert "resend requested by ops" in (item.error or "")
    row = db.reads.execute(
        "SELECT resolution, resolved_by, resolved_at FROM replies WHERE id = ?", (row_id,)
    ).fetchone()
    assert tuple(row) == (None, None, None)
    assert [s.id for s in box.deliver_due()] == [row_id]
    assert (state(box, row_id).state, state(box, row_id).attempts) == ("sent", 1)
    assert "expired" not in box.caps  # type: ignore[attr-defined]


def test_smtp_session_reports_each_refused_recipient_and_refuses_no_recipients(
    scripted: Callable[..., ScriptedSmtpServer],
) -> None:
    """RCPT TO refused for some recipients: `begin` names each with its error (4xx: try later,
    5xx: never) and the message goes to the others; no recipient at all is a permanent error,
    not a crash."""
    from triage.act.smtp import connect

    server = scripted(rcpt={"b@x.test": "450 mailbox busy", "c@x.test": "550 no such user"})
    settings = SmtpSettings(host="127.0.0.1", port=server.port, security="plain", timeout=5)
    session = connect(settings)
    with pytest.raises(PermanentError, match="no recipients"):
        session.begin("a@x.test", [], b"Subject: x\r\n\r\nhi\r\n")
    refused = session.begin(
        "a@x.test", ["a@x.test", "b@x.test", "c@x.test"], b"Subject: x\r\n\r\nhi\r\n"
    )
    assert [(r.recipient, r.permanent) for r in refused] == [
        ("b@x.test", False),
        ("c@x.test", True),
    ]
    assert "450 mailbox busy" in str(refused[0].error)
    session.commit()
    session.close()
    assert len(server.messages) == 1


def test_an_accounts_delivery_sends_only_the_replies_to_its_own_messages(db: Database) -> None:
    """`deliver_due(account=...)`: an account's thread sends the replies to its own messages
    and leaves the others' for their threads (or the periodic work, which sends every one)."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    mine = enqueue(box, 1)  # its message is of account `a` (see `message_row`)
    theirs = enqueue(box, 2, "q@client.example")
    with db.transaction() as tx:
        tx.execute("UPDATE messages SET account = 'other' WHERE uid = 2")
    assert [item.id for item in box.deliver_due(account="a")] == [mine]
    assert state(box, theirs).state == "queued"
    assert [item.id for item in box.deliver_due()] == [theirs]
