"""Races that SQLite's single writer settles by itself and PostgreSQL's READ COMMITTED does not,
unless the store says what must not interleave (a lock, ON CONFLICT, FOR UPDATE, RETURNING).

Each race runs two transactions on two connections of one database, in two threads. The first
is held open once its block ran, just before it commits: its writes are made but not visible.
The second starts then. On PostgreSQL the first commits as soon as the second waits for a lock
(the fix at work) or has finished without waiting (the race the fix prevents). On SQLite the
second cannot begin its transaction before the first commits (BEGIN IMMEDIATE), so the same
test passes there by construction: it states what SQLite always guaranteed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
import pytest

from tests.test_leads import make_settings
from triage.act.compose import compose
from triage.act.outbox import Outbox
from triage.act.replies import RenderedReply
from triage.core.models import Address, Contact, InboundMessage, LeadKind
from triage.core.settings import RepliesSettings, Settings, SmtpSettings, StoreSettings
from triage.ops.alerts import ADMIN, prepare_admin_alerts
from triage.sales.content import ALERT
from triage.sales.notices import prepare_alerts, prepare_digest
from triage.store import oauth_grants
from triage.store import outbox as queue
from triage.store.corrections import insert_correction
from triage.store.db import STORE_ERRORS, Database, Tx, inserted_id
from triage.store.digests import instance
from triage.store.leads import NewLead, record_lead
from triage.store.ledger import Ledger
from triage.store.postgres import ddl
from triage.store.postgres.backend import run_migrations
from triage.store.schema import MIGRATIONS
from triage.web import accounts
from triage.web.accounts import AccountError

A = TypeVar("A")
B = TypeVar("B")

# Seconds any one step of a race may take before the test gives up (a hang is a failure).
WAIT = 30.0
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REPLIES = RepliesSettings(
    from_address="hello@example.test",
    envelope_sender="noreply@example.test",
    message_id_domain="example.test",
)
SMTP = SmtpSettings(host="127.0.0.1", port=10025, security="plain")


class Paused:
    """A `Database` whose first transaction, once its block ran, waits for `release` before
    it commits (`reached` is set then). Everything else is the wrapped database's."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.reached = threading.Event()
        self.release = threading.Event()
        self._paused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._db.transaction() as tx:
            yield tx
            if not self._paused:
                self._paused = True
                self.reached.set()
                if not self.release.wait(WAIT):
                    raise AssertionError("the paused transaction was never released")


def _waiting_for_lock(watcher: Database) -> bool:
    """Whether a session of this database waits for a lock (PostgreSQL)."""
    row = watcher.reads.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return bool(row[0])


def _blocked_or_done(store: StoreSettings, thread: threading.Thread) -> None:
    """Return once `thread` waits for a lock or has ended."""
    if not store.is_postgresql:
        # SQLite: the second transaction waits for the write lock until the first commits,
        # whatever the moment the first commits; a short head start is enough.
        thread.join(0.3)
        return
    watcher = Database(store)
    deadline = time.monotonic() + WAIT
    while thread.is_alive() and time.monotonic() < deadline:
        if _waiting_for_lock(watcher):
            return
        thread.join(0.01)


def race(
    store: StoreSettings, first: Callable[[Database], A], second: Callable[[Database], B]
) -> tuple[A, B]:
    """Run `first` (its first transaction held open before commit), then `second` from another
    thread and connection; return both results (re-raising what either raised)."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    started = threading.Event()
    paused: list[Paused] = []

    def run(name: str, body: Callable[[Database], object], pause: bool) -> None:
        db = Database(store)  # a connection of this thread's own (sqlite3 needs that)
        try:
            target: Database = db
            if pause:
                held = Paused(db)
                paused.append(held)
                target = cast(Database, held)
            started.set()
            results[name] = body(target)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread below
            errors[name] = exc
        finally:
            db.close()

    a = threading.Thread(target=run, args=("first", first, True), daemon=True)
    a.start()
    assert started.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not paused[0].reached.is_set() and a.is_alive() and time.monotonic() < deadline:
        paused[0].reached.wait(0.01)
    b = threading.Thread(target=run, args=("second", second, False), daemon=True)
    b.start()
    _blocked_or_done(store, b)
    paused[0].release.set()
    a.join(WAIT)
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive(), "a transaction of the race hangs"
    for name in ("first", "second"):
        if name in errors:
            raise AssertionError(f"the {name} transaction failed: {errors[name]!r}") from errors[
                name
            ]
    return results["first"], results["second"]


@pytest.fixture
def db(store: StoreSettings) -> Iterator[Database]:
    """The database of the race, migrated, for setting up and checking."""
    database = Database(store)
    yield database
    database.close()


def count(db: Database, sql: str, params: tuple[object, ...] = ()) -> int:
    return int(db.reads.execute(sql, params).fetchone()[0])


def message_row(db: Database, n: int) -> int:
    """A ledger row (leads and replies point at one)."""
    with db.transaction() as tx:
        cur = tx.execute(
            "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, created_at,"
            " updated_at) VALUES ('a', 'INBOX', 1, ?, ?, '', '') RETURNING id",
            (n, f"<in-{n}@client.example>"),
        )
        return inserted_id(cur)


# --- R1: one lead per prospect ---------------------------------------------------------------

JANE = Contact("Jane Doe", "jane@doe.example", "Doe Logistics GmbH", "", "")


def new_lead(row: int, contact: Contact = JANE, thread_ids: tuple[str, ...] = ()) -> NewLead:
    return NewLead(
        message_row=row,
        kind=LeadKind.HOT,
        contact=contact,
        label="sales",
        confidence=0.9,
        explanation=("quote",),
        thread_ids=thread_ids,
    )


def recording(lead: NewLead) -> Callable[[Database], int]:
    def record(db: Database) -> int:
        with db.transaction() as tx:
            return record_lead(tx, lead)

    return record


def test_r1_two_first_messages_of_one_prospect_make_one_lead(
    store: StoreSettings, db: Database
) -> None:
    """Two messages of a new prospect recorded at once (two mailboxes, two instances) give one
    lead with both messages, not two leads."""
    one, two = message_row(db, 1), message_row(db, 2)
    first, second = race(store, recording(new_lead(one)), recording(new_lead(two)))
    assert first == second
    assert count(db, "SELECT count(*) FROM leads") == 1
    assert count(db, "SELECT count(*) FROM lead_messages WHERE lead_id = ?", (first,)) == 2


def test_r1_a_reply_in_the_thread_joins_the_lead_recorded_at_the_same_time(
    store: StoreSettings, db: Database
) -> None:
    """A message that refers to another one recorded at the same moment (from another address)
    joins that message's lead."""
    one, two = message_row(db, 1), message_row(db, 2)
    colleague = Contact("Joe Doe", "joe@doe.example", "", "", "")
    first, second = race(
        store,
        recording(new_lead(one)),
        recording(new_lead(two, colleague, thread_ids=("<in-1@client.example>",))),
    )
    assert first == second
    assert count(db, "SELECT count(*) FROM leads") == 1


# --- R12: triage's note on a lead is added once ----------------------------------------------


def test_r12_a_note_added_by_two_messages_at_once_is_added_once(
    store: StoreSettings, db: Database
) -> None:
    """Two messages of one thread with an unusable address, recorded at once, leave one note
    about the address on the lead, not two."""
    one, two, three = message_row(db, 1), message_row(db, 2), message_row(db, 3)
    lead_id = recording(new_lead(one))(db)
    forged = Contact("Jane Doe", "jane@doe.example?bcc=x@evil.example", "", "", "")
    thread = ("<in-1@client.example>",)
    first, second = race(
        store,
        recording(new_lead(two, forged, thread_ids=thread)),
        recording(new_lead(three, forged, thread_ids=thread)),
    )
    assert first == second == lead_id
    assert count(db, "SELECT count(*) FROM lead_notes WHERE lead_id = ?", (lead_id,)) == 1


# --- R3: one reply per prospect within the window --------------------------------------------

WINDOW = timedelta(days=7)


def outbox(db: Database) -> Outbox:
    return Outbox(db, SMTP, clock=lambda: T0)


def queue_reply(row: int, to: str) -> Callable[[Database], int | None]:
    """What `Service._queue_reply` does in the recording transaction: check the window, then
    queue; the reply's row id, or None when the window refused it."""

    def record(db: Database) -> int | None:
        box = outbox(db)
        inbound = InboundMessage(message_id=f"<in-{row}@client.example>", subject="Inquiry")
        rendered = RenderedReply("sales", "", inbound.subject, "Thanks\n")
        reply = compose(inbound, Address("Pat", to), rendered, REPLIES, now=T0)
        with db.transaction():
            if box.replied_recently(to, WINDOW):
                return None
            return box.enqueue(
                row, reply, recipient=to, envelope_from="", template="sales", mode="live"
            )

    return record


def test_r3_two_messages_of_one_sender_recorded_at_once_get_one_reply(
    store: StoreSettings, db: Database
) -> None:
    """Two messages from one sender recorded at once (two mailboxes, two instances): the second
    sees the first's reply in the window and queues none."""
    one, two = message_row(db, 1), message_row(db, 2)
    first, second = race(
        store, queue_reply(one, "pat@client.example"), queue_reply(two, "Pat@Client.example")
    )
    assert first is not None
    assert second is None
    assert count(db, "SELECT count(*) FROM replies") == 1


def test_r3_two_senders_recorded_at_once_get_a_reply_each(
    store: StoreSettings, db: Database
) -> None:
    """The lock serialises, it refuses nothing: two senders recorded at once get a reply each."""
    one, two = message_row(db, 1), message_row(db, 2)
    first, second = race(
        store, queue_reply(one, "pat@client.example"), queue_reply(two, "sam@other.example")
    )
    assert first is not None and second is not None
    assert count(db, "SELECT count(*) FROM replies") == 2


def test_r1_r3_three_instances_recording_batches_answer_each_prospect_once(
    store: StoreSettings, db: Database
) -> None:
    """Three instances each record a batch of messages from the same eight prospects, in
    their own order and one transaction per batch (as the pipeline records a batch: a reply
    checked and queued, then the lead, message after message): every prospect ends up with
    exactly one reply and one lead, and no batch fails (no deadlock between batches)."""
    prospects = [f"p{n}@client{n}.example" for n in range(8)]
    rows = {(i, p): message_row(db, 100 * i + n) for i in range(3) for n, p in enumerate(prospects)}
    errors: list[BaseException] = []
    go = threading.Barrier(3)

    def instance(i: int) -> None:
        mine = Database(store)
        box = outbox(mine)
        order = prospects[i:] + prospects[:i]
        try:
            go.wait(WAIT)
            with mine.transaction() as tx:
                for p in order:
                    row = rows[(i, p)]
                    inbound = InboundMessage(message_id=f"<m{row}@client.example>", subject="Hi")
                    rendered = RenderedReply("sales", "", "Hi", "Thanks\n")
                    reply = compose(inbound, Address("", p), rendered, REPLIES, now=T0)
                    if not box.replied_recently(p, WINDOW):
                        box.enqueue(
                            row, reply, recipient=p, envelope_from="", template="sales", mode="live"
                        )
                    contact = Contact("", p, "", "", "")
                    record_lead(tx, new_lead(row, contact))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=instance, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors
    replies = db.reads.execute(
        "SELECT recipient_key, count(*) FROM replies GROUP BY recipient_key"
    ).fetchall()
    assert {r[0]: r[1] for r in replies} == dict.fromkeys(prospects, 1)
    leads = db.reads.execute("SELECT email, count(*) FROM leads GROUP BY email").fetchall()
    assert {r[0]: r[1] for r in leads} == dict.fromkeys(prospects, 1)


# --- R7: a digest or alert slot is prepared once ---------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings that render digests and alerts (the store comes from `store`, not these)."""
    return make_settings(
        tmp_path,
        leads={"alert_hot": True, "alert_recipients": ("bob@example.test",)},
        daemon={"admin_recipients": ["it@example.test"]},
    )


def known_instance(db: Database) -> None:
    """The database's instance token exists already (its own race is R8's)."""
    with db.transaction() as tx:
        instance(tx)


def review_queue_sql(store: StoreSettings, db: Database) -> None:
    """PostgreSQL: the JSON helper the review queue's SQL needs (the digest counts that queue),
    until a migration of its own creates it."""
    if store.is_postgresql and not count(
        db, "SELECT count(*) FROM pg_proc WHERE proname = 'triage_json_object'"
    ):
        with db.transaction() as tx:
            tx.execute(ddl.JSON_OBJECT_FUNCTION)


def test_r7_a_digest_slot_prepared_by_two_instances_at_once_is_prepared_once(
    store: StoreSettings, db: Database, settings: Settings
) -> None:
    """Two instances preparing the same slot at once: one digest; the other is told the slot
    was prepared (None), it does not fail."""
    known_instance(db)
    review_queue_sql(store, db)
    first, second = race(
        store,
        lambda mine: prepare_digest(settings, mine, T0, "slot-1"),
        lambda mine: prepare_digest(settings, mine, T0, "slot-1"),
    )
    assert first is not None
    assert second is None
    assert count(db, "SELECT count(*) FROM digests") == 1


def test_r7_a_hot_lead_alerted_by_two_instances_at_once_is_alerted_once(
    store: StoreSettings, db: Database, settings: Settings
) -> None:
    """Two instances preparing hot-lead alerts at once: one alert for the new lead."""
    known_instance(db)
    recording(new_lead(message_row(db, 1)))(db)
    now = datetime.now(UTC)
    first, second = race(
        store,
        lambda mine: prepare_alerts(settings, mine, now),
        lambda mine: prepare_alerts(settings, mine, now),
    )
    assert len(first) == 1
    assert second == []
    assert count(db, "SELECT count(*) FROM digests WHERE kind = ?", (ALERT,)) == 1


def test_r7_an_admin_alert_prepared_by_two_instances_at_once_is_queued_once(
    store: StoreSettings, db: Database, settings: Settings
) -> None:
    """Two instances noticing a credential that needs a sign-in: one alert to administrators."""
    known_instance(db)
    with db.transaction() as tx:
        oauth_grants.set_needs_reauth(tx, "hello", "generic", "invalid_grant", T0)
    first, second = race(
        store,
        lambda mine: prepare_admin_alerts(settings, mine, T0),
        lambda mine: prepare_admin_alerts(settings, mine, T0),
    )
    assert len(first) == 1
    assert second == []
    assert count(db, "SELECT count(*) FROM digests WHERE kind = ?", (ADMIN,)) == 1


# --- R8: the database's instance token is made once ------------------------------------------


def test_r8_the_instance_token_made_by_two_instances_at_once_is_one_token(
    store: StoreSettings, db: Database
) -> None:
    """The first two uses of the instance token at once (two instances preparing their first
    notices) agree on one token; neither fails."""

    def token(mine: Database) -> str:
        with mine.transaction() as tx:
            return instance(tx)

    first, second = race(store, token, token)
    assert first == second
    assert count(db, "SELECT count(*) FROM kv WHERE key = 'triage.instance'") == 1


# --- R9: one needs-reauth episode per credential ---------------------------------------------


def needs_reauth(code: str, at: datetime) -> Callable[[Database], bool]:
    def record(db: Database) -> bool:
        with db.transaction() as tx:
            return oauth_grants.set_needs_reauth(tx, "hello", "generic", code, at)

    return record


def grant_row(db: Database) -> tuple[str, str, int]:
    row = db.reads.execute(
        "SELECT state, error_at, generation FROM oauth_grants WHERE name = 'hello'"
    ).fetchone()
    return str(row["state"]), str(row["error_at"]), int(row["generation"])


def test_r9_a_first_failure_seen_by_two_processes_at_once_starts_one_episode(
    store: StoreSettings, db: Database
) -> None:
    """A credential without a row fails in two processes at once: one row, one episode (the
    first failure's time), and neither process fails."""
    later = T0 + timedelta(seconds=5)
    first, second = race(
        store, needs_reauth("invalid_grant", T0), needs_reauth("invalid_grant", later)
    )
    assert (first, second) == (True, False)
    assert grant_row(db) == ("needs-reauth", T0.isoformat(timespec="microseconds"), 1)


def test_r9_a_working_grant_failing_in_two_processes_at_once_changes_state_once(
    store: StoreSettings, db: Database
) -> None:
    """A stored grant that stops working in two processes at once: the state changes once
    (one generation, the first failure's time kept), so one alert follows."""
    with db.transaction() as tx:
        oauth_grants.store_grant(tx, "hello", "generic", b"grant", T0)
    later = T0 + timedelta(seconds=5)
    failed = T0 + timedelta(seconds=1)
    first, second = race(
        store, needs_reauth("invalid_grant", failed), needs_reauth("invalid_grant", later)
    )
    assert (first, second) == (True, False)
    assert grant_row(db) == ("needs-reauth", failed.isoformat(timespec="microseconds"), 2)


# --- R10: a correction given twice at once is recorded once ----------------------------------


def correcting(label: str, source: str) -> Callable[[Database], bool]:
    def record(db: Database) -> bool:
        with db.transaction() as tx:
            return insert_correction(
                tx,
                message_row=None,
                message_id="<in-1@client.example>",
                old_label="marketing",
                new_label=label,
                source=source,
                subject="Quote",
                body="We need a quote.",
                raw=None,
            )

    return record


def test_r10_one_correction_given_by_two_people_at_once_is_recorded_once(
    store: StoreSettings, db: Database
) -> None:
    """The same correction of one message made at once (a folder move seen by one account's
    thread, the console's review by a person): one row; the later one changes nothing and
    does not fail."""
    first, second = race(store, correcting("sales", "review"), correcting("sales", "folder"))
    assert (first, second) == (True, False)
    assert count(db, "SELECT count(*) FROM corrections") == 1


# --- R11: failures of one message recorded at once lose nothing ------------------------------


def failing_row(db: Database, state: str) -> int:
    """A ledger row in `state` with one attempt counted."""
    row = message_row(db, 1)
    with db.transaction() as tx:
        tx.execute("UPDATE messages SET state = ?, attempts = 1 WHERE id = ?", (state, row))
    return row


def test_r11_two_act_failures_recorded_at_once_both_stay_in_the_reasons(
    store: StoreSettings, db: Database
) -> None:
    """Two failures to act on one message recorded at once (an account's thread and a console
    action): both end up in its reasons; the later write does not drop the earlier one."""
    row = failing_row(db, "classified")
    first, second = race(
        store,
        lambda mine: Ledger(mine).record_act_failure(row, "smtp down", 1),
        lambda mine: Ledger(mine).record_act_failure(row, "template gone", 1),
    )
    assert (first, second) == (True, True)
    reasons = db.reads.execute("SELECT reasons FROM messages WHERE id = ?", (row,)).fetchone()[0]
    assert json.loads(reasons) == ["act-failed: smtp down", "act-failed: template gone"]


def test_r11_a_failure_recorded_while_another_counts_an_attempt_sees_that_attempt(
    store: StoreSettings, db: Database
) -> None:
    """A failure recorded while another transaction counts the message's last attempt reads
    the count after that one commits: both say the message is quarantined."""
    row = failing_row(db, "seen")
    first, second = race(
        store,
        lambda mine: Ledger(mine).record_failure(row, "crash", 2, None, count_attempt=True),
        lambda mine: Ledger(mine).record_failure(row, "parse error", 2, None),
    )
    assert (first, second) == (True, True)
    assert count(db, "SELECT attempts FROM messages WHERE id = ?", (row,)) == 2


# --- R16: what a sweep reports is what it changed --------------------------------------------


def stored_reply(db: Database) -> int:
    """A queued reply created at T0."""
    row = message_row(db, 1)
    with db.transaction() as tx:
        return queue.insert_reply(
            tx,
            message_row=row,
            reply_message_id="<reply-1@example.test>",
            recipient="pat@client.example",
            envelope_from="",
            template="sales",
            mode="live",
            state="queued",
            raw=b"Subject: Thanks\r\n\r\nThanks\r\n",
            now=T0,
            recipient_key="pat@client.example",
            recipient_domain="client.example",
            priority=0,
        )


def test_r16_a_recovery_reports_no_mail_another_process_finished_meanwhile(
    store: StoreSettings, db: Database
) -> None:
    """A recovery that runs while the sender of a mail records it sent reports only what it
    marked uncertain: not that mail, which stays sent."""
    reply_id = stored_reply(db)
    with db.transaction() as tx:
        mine = queue.claim(tx, "replies", reply_id, T0, 0)
    assert mine is not None

    def finish(db: Database) -> bool:
        with db.transaction() as tx:
            return queue.mark_sent(tx, "replies", reply_id, mine, T0, None)

    def sweep(db: Database) -> list[tuple[str, int]]:
        with db.transaction() as tx:
            return list(queue.recover(tx, T0 + timedelta(hours=1), "stopped", ("replies",)))

    first, second = race(store, finish, sweep)
    assert first is True
    assert second == []
    assert db.reads.execute("SELECT state FROM replies").fetchone()[0] == "sent"


def test_r16_an_expiry_reports_no_reply_another_process_claimed_meanwhile(
    store: StoreSettings, db: Database
) -> None:
    """An expiry of long-deferred replies that runs while a sender claims one reports only the
    replies it expired: not the claimed one, which stays sending."""
    reply_id = stored_reply(db)
    with db.transaction() as tx:
        queue.defer(tx, reply_id, T0, "hourly cap")

    def take(db: Database) -> bool:
        with db.transaction() as tx:
            return queue.claim(tx, "replies", reply_id, T0, 0) is not None

    def expire(db: Database) -> list[int]:
        with db.transaction() as tx:
            return queue.expire_deferred(tx, T0 + timedelta(days=1), "held back too long")

    first, second = race(store, take, expire)
    assert first is True
    assert second == []
    assert db.reads.execute("SELECT state FROM replies").fetchone()[0] == "sending"


# --- R13: user names are unique whatever their case ------------------------------------------


def adding(name: str) -> Callable[[Database], str]:
    def add(db: Database) -> str:
        try:
            return accounts.add(db, name, "admin", "correct horse battery staple").name
        except AccountError as exc:
            return str(exc)

    return add


def test_r13_two_users_whose_names_differ_in_case_added_at_once_are_one_user(
    store: StoreSettings, db: Database
) -> None:
    """`Sam` and `sam` added at once (the CLI and the console): one user; the other is told
    the name exists."""
    first, second = race(store, adding("Sam"), adding("sam"))
    assert first == "Sam"
    assert second == "user sam exists already"
    assert [u.name for u in accounts.users(db)] == ["Sam"]


def test_r13_the_migration_renames_the_later_of_two_names_that_differ_in_case(
    store: StoreSettings,
) -> None:
    """A database from before the check (or the race) holding `Sam` and `sam` upgrades: the
    later one becomes `sam-<id>`, and from then on the database refuses such twins itself."""
    number = next(n for n, m in enumerate(MIGRATIONS, start=1) if "users_name_ci" in m)
    twins = (
        "INSERT INTO users (id, name, role, password_hash, created_at, updated_at) VALUES"
        " (1, 'Sam', 'admin', 'x', '', ''), (2, 'sam', 'sales', 'x', '', ''),"
        " (3, 'bob', 'sales', 'x', '', '')"
    )
    if store.is_postgresql:
        assert store.url is not None
        with psycopg.connect(store.url, password=store.password(), autocommit=True) as conn:
            # The test's database comes migrated (a copy of the session's template): empty it.
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
            run_migrations(conn, "test", ddl.migrations()[: number - 1])  # type: ignore[arg-type]
            conn.execute(twins)
    else:
        with closing(sqlite3.connect(store.path)) as conn:
            for version, script in enumerate(MIGRATIONS[: number - 1], start=1):
                conn.executescript(f"{script}\nPRAGMA user_version = {version};")
            conn.execute(twins)
            conn.commit()
    db = Database(store)
    assert [u.name for u in accounts.users(db)] == ["Sam", "bob", "sam-2"]
    with pytest.raises(STORE_ERRORS), db.transaction() as tx:
        tx.execute(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at)"
            " VALUES ('BOB', 'sales', 'x', '', '')"
        )
    db.close()
