"""LeaseManager (triage.ops.fleet): one instance's leases. A single manager on both backends; the
fleet behaviour (fair shares, a joining instance, a paused one losing its leases to another, the
fence it then meets, release at shutdown, clocks that disagree) with several managers sharing one
PostgreSQL, each ticking as the daemon would. Short leases (1 s, renewed every 0.25 s) keep it
fast."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import pytest

from triage.core.errors import ConfigError, LeaseLost, StoreUnavailable
from triage.core.settings import StoreSettings
from triage.ops.fleet import LEADER, LeaseChanges, LeaseManager, fleet_status, new_instance_id
from triage.store import leases
from triage.store.db import Database, Tx

ACCOUNTS = [f"acct{n:02d}" for n in range(12)]
TTL = 1.0
RENEW = 0.25

on_postgresql = [
    pytest.mark.postgresql,
    pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True),
]


def manager(
    store: StoreSettings,
    name: str,
    accounts: list[str] = ACCOUNTS,
    clock: Callable[[], float] = time.monotonic,
) -> LeaseManager:
    return LeaseManager(
        lambda: Database(store), f"host:{name}", accounts, renew_every=RENEW, ttl=TTL, clock=clock
    )


def accounts_of(m: LeaseManager) -> set[str]:
    return set(m.current()) - {LEADER}


def tick_all(managers: list[LeaseManager], rounds: int) -> None:
    """`rounds` rounds of ticks, every manager once per round, RENEW apart."""
    for _ in range(rounds):
        for m in managers:
            m.tick()
        time.sleep(RENEW)


def settle(managers: list[LeaseManager], want: Callable[[], bool], seconds: float = 10.0) -> int:
    """Tick every manager until `want()` holds; how many rounds it took."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while not want():
        assert time.monotonic() < deadline, [sorted(accounts_of(m)) for m in managers]
        for m in managers:
            m.tick()
        rounds += 1
        time.sleep(RENEW / 5)
    return rounds


def database_view(store: StoreSettings) -> dict[str, str | None]:
    """{lease: owner} of the unexpired leases, from the database."""
    rows = leases.fleet(Database(store).reads)
    return {r.name: r.owner for r in rows.leases if r.owner and r.expires_at > rows.now}


@pytest.fixture
def managers(store: StoreSettings) -> Iterator[list[LeaseManager]]:
    """The managers a test makes; they give their leases up at its end."""
    made: list[LeaseManager] = []
    yield made
    for m in made:
        m.release_all()


# --- one manager ----------------------------------------------------------------------------------


def test_a_lone_manager_takes_every_account_and_the_leader_lease(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """The first tick gains all twelve accounts and `leader`, generation 1; later ticks renew
    them and report no change; `fence(name)` gives what a transaction checks."""
    a = manager(store, "a")
    managers.append(a)
    changes = a.tick()
    assert changes.gained == {**dict.fromkeys(ACCOUNTS, 1), LEADER: 1}
    assert (changes.lost, changes.released, changes.error) == ((), (), None)
    assert a.is_leader and accounts_of(a) == set(ACCOUNTS)
    first = {h.name: h.renewed_at for h in a.held()}
    time.sleep(0.05)
    assert not a.tick()
    assert all(h.renewed_at > first[h.name] for h in a.held())
    fence = a.fence("acct03")
    assert fence is not None and (fence.owner, fence.generation) == (a.instance_id, 1)
    assert a.fence("nobody's") is None
    with Database(store).transaction() as tx:
        fence.check(tx)
    assert database_view(store) == dict.fromkeys([*ACCOUNTS, LEADER], a.instance_id)


def test_release_all_frees_every_lease_at_once(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """At shutdown the leases are free at once (no waiting for expiry): another instance takes
    them all on its next tick, with generation 2; the stopped manager ticks no more."""
    a, b = manager(store, "a"), manager(store, "b")
    managers += [a, b]
    a.tick()
    assert a.release_all() == (*ACCOUNTS, LEADER)
    assert a.current() == {} and not a.is_leader
    assert database_view(store) == {}
    changes = b.tick()
    assert changes.gained == {**dict.fromkeys(ACCOUNTS, 2), LEADER: 2}
    assert not a.tick() and a.current() == {}
    status = fleet_status(Database(store), ttl=TTL)
    assert {i.instance.id: i.state for i in status.instances} == {
        "host:a": "stopping",
        "host:b": "live",
    }


def test_a_tick_without_the_database_keeps_leases_until_their_local_deadline(
    store: StoreSettings,
) -> None:
    """While the database is unreachable a tick renews nothing and says why; the leases count
    as held until the lease time has passed by the manager's clock since the last renewal, and
    are then reported lost."""
    now = [1000.0]
    down = threading.Event()
    real = Database(store)

    class Flaky:
        """The database, or an outage when `down` is set."""

        @contextmanager
        def transaction(self) -> Iterator[Tx]:
            if down.is_set():
                raise StoreUnavailable("postgresql://db: connection refused")
            with real.transaction() as tx:
                yield tx

        def close(self) -> None:
            """The real database stays open for the next tick."""

    a = LeaseManager(
        lambda: cast("Database", Flaky()), "host:a", ACCOUNTS[:3], RENEW, TTL, lambda: now[0]
    )
    assert set(a.tick().gained) == {*ACCOUNTS[:3], LEADER}
    down.set()
    now[0] += TTL - 0.01
    changes = a.tick()
    assert changes == LeaseChanges(error="postgresql://db: connection refused")
    assert set(a.current()) == {*ACCOUNTS[:3], LEADER}
    now[0] += 0.01
    assert set(a.current()) == set()  # past the deadline: not held, whatever the next tick says
    changes = a.tick()
    assert changes.lost == (*ACCOUNTS[:3], LEADER)
    assert changes.error is not None
    down.clear()
    time.sleep(TTL + 0.2)  # expired in the database too: taken again with the next generation
    assert a.tick().gained == {**dict.fromkeys(ACCOUNTS[:3], 2), LEADER: 2}
    assert a.release_all() == (*ACCOUNTS[:3], LEADER)
    real.close()


def test_accounts_dropped_by_a_reload_are_released_and_new_ones_taken(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """After `set_accounts`, the next tick releases the leases of accounts no longer listed
    and takes the new ones."""
    a = manager(store, "a", ACCOUNTS[:3])
    managers.append(a)
    a.tick()
    a.set_accounts([*ACCOUNTS[1:3], "new"])
    changes = a.tick()
    assert changes.released == (ACCOUNTS[0],)
    assert changes.gained == {"new": 1}
    assert accounts_of(a) == {*ACCOUNTS[1:3], "new"}
    assert ACCOUNTS[0] not in database_view(store)
    with pytest.raises(ConfigError):
        a.set_accounts(["x", LEADER])


def test_a_tick_releases_unlisted_accounts_and_its_surplus_together(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """A reload drops one of four accounts just as a second instance joined: the dropped
    account and the one beyond the new share (2 of 3) are released in the same tick."""
    a, b = manager(store, "a", ACCOUNTS[:4]), manager(store, "b", ACCOUNTS[:4])
    managers += [a, b]
    a.tick()
    assert not b.tick()
    a.set_accounts(ACCOUNTS[1:4])
    changes = a.tick()
    assert changes.released == (ACCOUNTS[0], ACCOUNTS[3])
    assert accounts_of(a) == set(ACCOUNTS[1:3])
    assert set(b.tick().gained) == {ACCOUNTS[0], ACCOUNTS[3]}


def test_an_account_named_leader_and_a_slow_renewal_are_refused(store: StoreSettings) -> None:
    """`leader` is the periodic work's lease, not an account name; a renewal interval longer
    than a third of the lease time would let leases lapse between ticks."""
    with pytest.raises(ConfigError, match="may not be named 'leader'"):
        manager(store, "a", ["sales", LEADER])
    with pytest.raises(ConfigError, match="at most a third"):
        LeaseManager(lambda: Database(store), "x", ACCOUNTS, renew_every=0.5, ttl=1.0)


def test_instance_ids_name_host_and_pid_and_are_unique() -> None:
    import os
    import socket

    first, second = new_instance_id(), new_instance_id()
    assert first != second
    host, pid, tail = first.rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and len(tail) == 8


# --- a fleet on PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
def test_two_managers_split_twelve_accounts_and_a_third_joining_gets_a_third(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """Two instances end with 6 and 6 within a few ticks, a third joining leads to 4/4/4; no
    account is ever held by two at once (in the managers' maps or the database), exactly one
    leads, and the balance then stays put. One manager's clock is an hour ahead: no matter."""
    a = manager(store, "a")
    b = manager(store, "b", clock=lambda: time.monotonic() + 3600)
    managers += [a, b]
    a.tick()
    assert len(accounts_of(a)) == 12
    rounds = settle([b, a], lambda: sorted(map(len, map(accounts_of, managers))) == [6, 6])
    assert rounds <= 3
    assert accounts_of(a) | accounts_of(b) == set(ACCOUNTS)
    assert not accounts_of(a) & accounts_of(b)

    c = manager(store, "c")
    managers.append(c)
    rounds = settle([c, a, b], lambda: sorted(map(len, map(accounts_of, managers))) == [4, 4, 4])
    assert rounds <= 3
    tick_all(managers, 4)
    held = [accounts_of(m) for m in managers]
    assert sorted(map(len, held)) == [4, 4, 4]
    assert set().union(*held) == set(ACCOUNTS)
    assert [m.is_leader for m in managers].count(True) == 1
    view = database_view(store)
    assert {n: o for n, o in view.items() if n != LEADER} == {
        n: m.instance_id for m in managers for n in accounts_of(m)
    }
    # No needless moves: every generation counts an acquisition, and there were 12 at first,
    # 6 to the second instance and 4 to the third.
    assert sum(g for m in managers for n, g in m.current().items() if n != LEADER) == 12 + 6 + 4


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
@pytest.mark.parametrize("offset", [0.0, 3600.0, -3600.0])
def test_a_paused_manager_loses_its_leases_and_its_old_generation_fences_nothing(
    store: StoreSettings, managers: list[LeaseManager], offset: float
) -> None:
    """An instance that stops ticking (SIGSTOP) keeps its leases for the lease time, by the
    database's clock (its own clock may be an hour off either way); then the other takes them
    with a higher generation. When the paused one wakes, its renewal fails, its tick reports
    them lost, and a fence with its old generation raises LeaseLost."""
    a = manager(store, "a", clock=lambda: time.monotonic() + offset)
    b = manager(store, "b")
    managers += [a, b]
    settle([a, b], lambda: sorted(map(len, map(accounts_of, managers))) == [6, 6])
    old = a.current()
    paused_at = time.monotonic()
    took: float | None = None
    while took is None:
        b.tick()
        if accounts_of(b) == set(ACCOUNTS):
            took = time.monotonic() - paused_at
        assert time.monotonic() - paused_at < 5 * TTL
        time.sleep(RENEW)
    assert TTL - RENEW <= took <= TTL + 4 * RENEW
    assert all(b.current()[n] == g + 1 for n, g in old.items())
    with Database(store).transaction() as tx:
        for name, generation in old.items():
            assert not leases.renew(tx, name, a.instance_id, generation, TTL)
    changes = a.tick()
    assert set(changes.lost) == set(old)
    assert not set(changes.gained) & set(ACCOUNTS)
    assert accounts_of(a) == set()
    name, generation = next((n, g) for n, g in old.items() if n != LEADER)
    with pytest.raises(LeaseLost), Database(store).transaction() as tx:
        leases.fence(tx, name, a.instance_id, generation)
    # The woken instance rejoins the balance: 6/6 again, the moved accounts at generation 3.
    settle([a, b], lambda: sorted(map(len, map(accounts_of, managers))) == [6, 6])


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
def test_an_open_fencing_transaction_blocks_the_takeover_of_its_account(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """A paused instance whose transaction passed the fence before the pause: the other
    instance takes every other account when the leases expire, but not that one while the
    transaction is open; it takes it on the first tick after the transaction ended."""
    a, b = manager(store, "a"), manager(store, "b")
    managers += [a, b]
    a.tick()
    fence = a.fence("acct05")
    assert fence is not None
    fenced, resume = threading.Event(), threading.Event()

    def paused_worker() -> None:
        with Database(store).transaction() as tx:
            fence.check(tx)
            fenced.set()
            resume.wait(10)

    worker = threading.Thread(target=paused_worker)
    worker.start()
    try:
        assert fenced.wait(10)
        deadline = time.monotonic() + TTL + 4 * RENEW
        while time.monotonic() < deadline:
            b.tick()
            time.sleep(RENEW)
        assert accounts_of(b) == set(ACCOUNTS) - {"acct05"}
    finally:
        resume.set()
        worker.join(10)
    assert b.tick().gained == {"acct05": 2}


@pytest.mark.postgresql
@pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True)
def test_the_leader_lease_moves_when_the_leader_leaves(
    store: StoreSettings, managers: list[LeaseManager]
) -> None:
    """One leader at a time; at its shutdown another instance leads from its next tick."""
    a, b = manager(store, "a"), manager(store, "b")
    managers += [a, b]
    tick_all([a, b], 2)
    assert (a.is_leader, b.is_leader) == (True, False)
    before = accounts_of(b)
    assert len(before) == 6
    a.release_all()
    changes = b.tick()
    assert changes.gained[LEADER] == 2 and b.is_leader
    assert set(changes.gained) == set(ACCOUNTS) - before | {LEADER}
    assert accounts_of(b) == set(ACCOUNTS)
