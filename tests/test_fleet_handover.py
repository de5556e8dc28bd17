"""What fleet mode's guard means for sending and for handing a lease over.

- A reply is claimed under the account's lease; once claimed, the server's answer is recorded
  whoever holds the lease then (the row names its own claim), so a lease lost in the middle of
  a send neither strands a delivered reply as `uncertain` nor an undelivered one.
- Right before the final dot the instance asks its own view of the lease: lost, there is no dot
  and the claim is undone, for the new holder to send.
- A lease lost at the claim itself ends the SMTP transaction without QUIT in the middle of DATA.
- A worker's fenced transactions never keep its own lease from being renewed (PostgreSQL).
- A lease given up to a joining instance is released only after its worker stopped: the pass
  in hand ends under the lease (no LeaseLost), and no two instances ever record for one
  account at once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fleet_support import FleetInstance, OfflineMailbox, Syncs
from tests.mailtools import wait_until
from tests.test_outbox import Clock, Connector, enqueue, outbox, state
from triage.act.outbox import Outbox
from triage.core.errors import LeaseLost, SendError
from triage.core.settings import ImapAccount, StoreSettings
from triage.ingest.sync import SyncResult
from triage.ops.fleet import LeaseGuard, LeaseManager
from triage.store.db import Database, Tx

pytestmark = pytest.mark.usefixtures("store_backend")


class Switch:
    """A guard whose database check and own view can be turned off, one at a time."""

    def __init__(self) -> None:
        self.check_fails = False
        self.held = True
        self.checks = 0

    def check(self, tx: Tx, /) -> None:
        self.checks += 1
        if self.check_fails:
            raise LeaseLost("hello: lease generation 1 is no longer held by test")

    def holds(self) -> bool:
        return self.held

    def lose(self) -> None:
        """The database no longer has the lease as this guard holds it."""
        self.check_fails = True

    def lapse(self) -> None:
        """This instance's own view: the lease ran out."""
        self.held = False

    def __str__(self) -> str:
        return "host:1:x hello#1"


@pytest.fixture
def db(store: StoreSettings) -> Iterator[Database]:
    database = Database(store)
    yield database
    database.close()


def leased_reply(db: Database) -> tuple[Connector, Outbox, int, Switch]:
    """A queued reply in an outbox whose store handle is fenced by a lease this test can take
    away (`Switch`): the fake SMTP connector, the outbox, the reply's row and the guard."""
    connector = Connector()
    box = outbox(db, connector, Clock())
    row_id = enqueue(box)
    guard = Switch()
    db.guard = guard
    return connector, box, row_id, guard


def test_a_claimed_reply_is_recorded_sent_even_when_the_lease_went_meanwhile(
    db: Database,
) -> None:
    """The lease goes between the claim and the server's 250: the reply is `sent`, not left
    `sending` for a recovery to call uncertain; the claim names the lease it was made under."""
    connector, box, row_id, guard = leased_reply(db)

    connector.session.on_commit = guard.lose
    box.deliver_due()
    assert len(connector.session.sent) == 1
    assert state(box, row_id).state == "sent"
    row = db.reads.execute("SELECT claimed_by FROM replies WHERE id = ?", (row_id,)).fetchone()
    assert row[0] == "host:1:x hello#1"


def test_a_refusal_after_the_lease_went_is_retried_not_stranded(db: Database) -> None:
    """The server answers 451 at the dot after the lease went: the reply is queued again with
    backoff (for whoever holds the account now), not stuck in `sending`."""
    connector, box, row_id, guard = leased_reply(db)
    connector.session.fail["commit"] = SendError("451 try again later")

    connector.session.on_commit = guard.lose
    box.deliver_due()
    item = state(box, row_id)
    assert item.state == "queued" and item.attempts == 1


def test_no_final_dot_once_the_instance_counts_its_lease_as_lost(db: Database) -> None:
    """Claimed under the lease, but by the time of the dot this instance's own view says the
    lease is gone: the message is dropped without its dot, and the reply is queued again with
    its attempt not counted, for the account's new holder."""
    connector, box, row_id, guard = leased_reply(db)

    connector.session.on_begin = guard.lapse
    box.deliver_due()
    assert connector.session.sent == []
    assert connector.session.aborted == 1
    item = state(box, row_id)
    assert item.state == "queued" and item.attempts == 0


def test_a_lease_lost_at_the_claim_ends_the_transaction_without_quit(db: Database) -> None:
    """LeaseLost from the claim's transaction: the half-sent message is aborted (RSET-like, no
    QUIT in the middle of DATA, which would wait for the server's timeout), nothing is
    claimed, and the error reaches the worker, which stops serving the account."""
    connector, box, row_id, guard = leased_reply(db)

    connector.session.on_begin = guard.lose
    with pytest.raises(LeaseLost):
        box.deliver_due()
    assert connector.session.aborted == 1
    assert connector.session.sent == []
    assert state(box, row_id).state == "queued"


# --- on PostgreSQL: renewals and hand-overs ----------------------------------------------------


@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
@pytest.mark.postgresql
def test_an_open_fenced_transaction_does_not_stop_the_renewal_of_its_lease(
    store: StoreSettings,
) -> None:
    """A worker keeps a transaction under its lease open for three lease times (a slow batch,
    a wait for a lock): the instance renews the lease all along and never loses it, and
    another instance cannot take it meanwhile."""
    me = LeaseManager(lambda: Database(store), "host:a", ["hello"], renew_every=0.25, ttl=1.0)
    other = LeaseManager(lambda: Database(store), "host:b", ["hello"], renew_every=0.25, ttl=1.0)
    me.tick()
    fence = me.fence("hello")
    assert fence is not None
    worker = Database(store)
    worker.guard = fence
    lost: list[str] = []
    with worker.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('slow', '1')")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            lost += me.tick().lost
            other.tick()
            time.sleep(0.25)
    assert lost == []
    assert me.fence("hello") == fence
    assert "hello" not in other.current()


class Recording(FleetInstance):
    """A fleet instance whose workers write one row per pass under their guard."""

    def __init__(self, store: StoreSettings, name: str, accounts: list[str], pass_seconds: float):
        self.pass_seconds = pass_seconds
        self.errors: list[str] = []
        super().__init__(store, name, accounts)

    def syncs(self, guard: LeaseGuard) -> Syncs:
        def make(account: ImapAccount, _mailbox: Any) -> list[Callable[[], SyncResult]]:
            db = Database(self.store)
            db.guard = guard

            def one_pass() -> SyncResult:
                started = time.time()
                try:
                    with db.transaction() as tx:
                        time.sleep(self.pass_seconds)  # the pass's work, under the lease
                        tx.execute(
                            "INSERT INTO kv (key, value) VALUES (?, ?)",
                            (f"{account.name}/{self.name}/{started}", f"{started} {time.time()}"),
                        )
                except LeaseLost as exc:
                    self.errors.append(str(exc))
                    raise
                return SyncResult()

            return [one_pass]

        return make


@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
@pytest.mark.postgresql
def test_a_joining_instance_gets_its_share_only_after_the_passes_in_hand_end(
    store: StoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One instance serves four accounts with passes that take 0.4 s each; a second joins and
    takes half. The accounts handed over finish the pass they had in hand under the old lease
    (no worker meets LeaseLost), and for every account the intervals in which each instance
    recorded never overlap."""

    monkeypatch.setattr("triage.ops.daemon.ImapMailbox", OfflineMailbox)
    accounts = ["hello", "other", "sales", "info"]
    a = Recording(store, "a", accounts, 0.4)
    a.start()
    b = None
    try:
        wait_until(lambda: len(a.daemon.statuses) == 4, 15)
        time.sleep(1.0)
        b = Recording(store, "b", accounts, 0.4)
        b.start()
        wait_until(lambda: len(a.daemon.statuses) == 2 and len(b.daemon.statuses) == 2, 15)
        time.sleep(1.5)
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert a.errors == [] and b is not None and b.errors == []
    rows = Database(store).reads.execute("SELECT key, value FROM kv WHERE key LIKE '%/%/%'")
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for key, value in rows.fetchall():
        account, instance, _ = str(key).split("/")
        begin, end = map(float, str(value).split())
        spans.setdefault(account, []).append((begin, end, instance))
    assert set(spans) == set(accounts)
    handed = 0
    for account, found in spans.items():
        found.sort()
        for (_b1, end1, who1), (begin2, _e2, who2) in itertools.pairwise(found):
            if who1 != who2:
                handed += 1
                assert end1 <= begin2, (account, who1, who2)
    assert handed == 2
