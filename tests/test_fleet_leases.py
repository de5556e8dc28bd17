"""Fleet mode's lease SQL (triage.store.leases) on both backends: acquisition, renewal, expiry by
the database's clock, release, fencing with the generation, heartbeats; and on PostgreSQL, that a
fencing transaction keeps a lease from changing hands until it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from triage.core.errors import LeaseLost, StoreError
from triage.core.settings import StoreSettings
from triage.store import leases
from triage.store.db import Database
from triage.store.leases import LEADER, Fence

ACCOUNTS = [f"acct{n:02d}" for n in range(12)]


@pytest.fixture
def db(store: StoreSettings) -> Iterator[Database]:
    database = Database(store)
    yield database
    database.close()


def test_lease_error_is_a_store_error() -> None:
    """LeaseLost is a StoreError (callers that shield messages from store faults shield them
    from it too), distinct from the transient kinds that are retried as they are."""
    assert issubclass(LeaseLost, StoreError)


def test_acquire_renew_release_and_generations(db: Database) -> None:
    """The first acquisition creates the row with generation 1; a held lease cannot be taken;
    renewal needs owner and generation; release frees it at once and the next acquisition
    raises the generation."""
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "a", 10.0) == 1
        assert leases.acquire(tx, "sales", "b", 10.0) is None
        assert leases.held(tx, "sales", "a", 1)
        assert not leases.held(tx, "sales", "b", 1)
        assert leases.renew(tx, "sales", "a", 1, 10.0)
        assert not leases.renew(tx, "sales", "a", 2, 10.0)
        assert not leases.renew(tx, "sales", "b", 1, 10.0)
        assert not leases.release(tx, "sales", "b", 1)
        assert leases.release(tx, "sales", "a", 1)
        assert not leases.held(tx, "sales", "a", 1)
        assert leases.acquire(tx, "sales", "b", 10.0) == 2
    rows = leases.fleet(db.reads)
    [row] = rows.leases
    assert (row.name, row.owner, row.generation) == ("sales", "b", 2)
    assert row.acquired_at is not None and row.acquired_at <= rows.now < row.expires_at
    assert row.expires_at == pytest.approx(row.acquired_at + 10.0)


def test_an_expired_lease_is_taken_with_a_higher_generation_and_fences_nothing(
    db: Database,
) -> None:
    """After its ttl (by the database's clock) a lease is not held, cannot be renewed, goes to
    the next taker with generation + 1, and a fence with the old generation raises LeaseLost."""
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "a", 0.3) == 1
        Fence("sales", "a", 1).check(tx)
    time.sleep(0.45)
    with db.transaction() as tx:
        assert not leases.held(tx, "sales", "a", 1)
        assert not leases.renew(tx, "sales", "a", 1, 10.0)
        with pytest.raises(LeaseLost, match="sales: lease generation 1 is no longer held by a"):
            leases.fence(tx, "sales", "a", 1)
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "b", 10.0) == 2
        leases.fence(tx, "sales", "b", 2)
        with pytest.raises(LeaseLost):
            leases.fence(tx, "sales", "a", 1)
        assert leases.owned(tx, "b") == {"sales": 2}
        assert leases.owned(tx, "a") == {}


def test_a_fence_failure_rolls_the_effect_back(db: Database) -> None:
    """The effect written in the fencing transaction does not land when the fence fails."""
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "a", 10.0) == 1
        assert leases.release(tx, "sales", "a", 1)
    with pytest.raises(LeaseLost), db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('effect', 'x')")
        leases.fence(tx, "sales", "a", 1)
    assert db.reads.execute("SELECT count(*) FROM kv WHERE key = 'effect'").fetchone()[0] == 0


def test_acquire_any_takes_free_and_expired_up_to_the_limit(db: Database) -> None:
    """Only free or expired rows, at most `limit`, in name order; renew_owned extends every
    unexpired lease of the owner and reports the generations."""
    with db.transaction() as tx:
        leases.ensure(tx, ACCOUNTS)
        leases.ensure(tx, ACCOUNTS)  # again: nothing changes
        assert leases.acquire_any(tx, ACCOUNTS, "a", 10.0, 3) == {
            "acct00": 1,
            "acct01": 1,
            "acct02": 1,
        }
        assert leases.acquire_any(tx, ACCOUNTS[:4], "b", 0.2, 5) == {"acct03": 1}
        assert leases.acquire_any(tx, ACCOUNTS, "c", 10.0, 0) == {}
        assert leases.acquire_any(tx, [], "c", 10.0, 3) == {}
    time.sleep(0.3)
    with db.transaction() as tx:
        assert leases.holders(tx, ACCOUNTS) == {"a": 3}
        assert leases.acquire_any(tx, ACCOUNTS[:5], "c", 10.0, 5) == {"acct03": 2, "acct04": 1}
        assert leases.renew_owned(tx, "a", 10.0) == {"acct00": 1, "acct01": 1, "acct02": 1}
        assert leases.renew_owned(tx, "b", 10.0) == {}
        assert leases.release_all(tx, "a") == ["acct00", "acct01", "acct02"]
        assert leases.holders(tx, ACCOUNTS) == {"c": 2}
    [row] = [r for r in leases.fleet(db.reads).leases if r.name == "acct00"]
    assert row.owner is None and row.generation == 1


def test_each_account_goes_to_exactly_one_of_many_concurrent_takers(
    store: StoreSettings,
) -> None:
    """Eight threads, each with its own handle, race to take all twelve accounts: every account
    ends with exactly one owner, generation 1, and no thread got an account another got."""
    with Database(store).transaction() as tx:
        leases.ensure(tx, ACCOUNTS)
    barrier = threading.Barrier(8)
    got: dict[str, dict[str, int]] = {}
    failures: list[BaseException] = []

    def take(owner: str) -> None:
        db = Database(store)
        try:
            barrier.wait(10)
            for _ in range(3):
                with db.transaction() as tx:
                    mine = leases.acquire_any(tx, ACCOUNTS, owner, 30.0, 2)
                got.setdefault(owner, {}).update(mine)
        except BaseException as exc:  # noqa: BLE001 - reported in the test's thread
            failures.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=take, args=(f"i{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    taken = [name for mine in got.values() for name in mine]
    assert sorted(taken) == ACCOUNTS
    assert {g for mine in got.values() for g in mine.values()} == {1}
    rows = leases.fleet(Database(store).reads).leases
    assert {r.name: r.owner for r in rows} == {
        name: owner for owner, mine in got.items() for name in mine
    }


def test_heartbeats_live_instances_and_stopping(db: Database) -> None:
    """An instance is live while its heartbeat is younger than the expiry and it is not
    stopping; the first beat registers it, later beats move only the heartbeat."""
    with db.transaction() as tx:
        leases.heartbeat(tx, "h1:1:aa", "h1", 1, "0.1.0")
        leases.heartbeat(tx, "h2:2:bb", "h2", 2, "0.1.0")
        assert leases.live_instances(tx, 10.0) == ["h1:1:aa", "h2:2:bb"]
    first = {i.id: i for i in leases.fleet(db.reads).instances}
    time.sleep(0.3)
    with db.transaction() as tx:
        leases.heartbeat(tx, "h1:1:aa", "other", 9, "9")
        assert leases.live_instances(tx, 0.2) == ["h1:1:aa"]
        leases.mark_stopping(tx, "h1:1:aa")
        assert leases.live_instances(tx, 10.0) == ["h2:2:bb"]
        assert leases.prune_instances(tx, 0.2) == 1
    [h1] = leases.fleet(db.reads).instances
    assert (h1.id, h1.host, h1.pid, h1.stopping) == ("h1:1:aa", "h1", 1, True)
    assert h1.started_at == first["h1:1:aa"].started_at < h1.heartbeat_at


def test_now_epoch_is_the_database_clock_in_epoch_seconds(db: Database) -> None:
    """The dialect's clock reads the current time (the test's host is the server's host),
    as a float that moves forward within one transaction."""
    before = time.time()
    with db.transaction() as tx:
        first = leases.database_now(tx)
        time.sleep(0.05)
        second = leases.database_now(tx)
    after = time.time()
    assert isinstance(first, float)
    assert before - 0.01 <= first < second <= after + 0.01
    assert second - first >= 0.04


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
def test_an_open_fence_keeps_an_expired_lease_from_changing_hands(store: StoreSettings) -> None:
    """PostgreSQL: while a transaction that passed the fence is open, a taker skips the lease
    (it does not wait either), even after it expired; once the fencing transaction ends, the
    taker gets it with the next generation and the old generation fences nothing."""
    db, other = Database(store), Database(store)
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "a", 0.3) == 1
    fenced = threading.Event()
    done = threading.Event()

    def fencing() -> None:
        with Database(store).transaction() as tx:
            leases.fence(tx, "sales", "a", 1)
            tx.execute("INSERT INTO kv (key, value) VALUES ('effect', 'a')")
            fenced.set()
            done.wait(10)

    thread = threading.Thread(target=fencing)
    thread.start()
    try:
        assert fenced.wait(10)
        time.sleep(0.4)  # expired by now
        started = time.monotonic()
        with other.transaction() as tx:
            assert leases.acquire(tx, "sales", "b", 10.0) is None
            assert leases.renew_owned(tx, "a", 10.0) == {}
        assert time.monotonic() - started < 1.0  # skipped, not waited for
    finally:
        done.set()
        thread.join(10)
    with other.transaction() as tx:
        assert leases.acquire(tx, "sales", "b", 10.0) == 2
        with pytest.raises(LeaseLost):
            leases.fence(tx, "sales", "a", 1)
    # The effect recorded under the fence landed: it was checked while the lease was held.
    assert db.reads.execute("SELECT value FROM kv WHERE key = 'effect'").fetchone()[0] == "a"


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
def test_a_fence_during_a_takeover_in_progress_fails(store: StoreSettings) -> None:
    """PostgreSQL: a takeover only takes an expired lease, so a fence with the old generation
    fails at once while the takeover is still uncommitted (it neither passes nor waits)."""
    db = Database(store)
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "a", 0.2) == 1
    time.sleep(0.3)
    with db.transaction() as tx:
        assert leases.acquire(tx, "sales", "b", 10.0) == 2
        started = time.monotonic()
        with pytest.raises(LeaseLost), Database(store).transaction() as old:
            leases.fence(old, "sales", "a", 1)
        assert time.monotonic() - started < 1.0


def test_the_leader_lease_is_one_more_lease(db: Database) -> None:
    """`leader` is taken and fenced like an account's lease."""
    with db.transaction() as tx:
        assert leases.acquire(tx, LEADER, "a", 10.0) == 1
        assert leases.acquire(tx, LEADER, "b", 10.0) is None
        Fence(LEADER, "a", 1).check(tx)
