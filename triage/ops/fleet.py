"""Fleet mode's leases from one instance's side: which accounts it serves, and the leader lease.

`LeaseManager.tick()` is called every `renew_every` seconds by one thread of the instance. In one
transaction it beats the instance's heartbeat, renews the leases it holds, and balances the
accounts between the live instances: each takes free or expired leases up to its fair share
(ceil(accounts / live instances)) and gives up what it holds beyond it while another live
instance has less than its share and nothing is free for it. It also takes the leader lease
(periodic work) whenever nobody holds it. The tick returns what changed — leases gained (with
their generations), lost (a renewal that failed: another instance may already serve the account)
and released — for the daemon to start and stop account workers. `release_all()` gives every
lease up at once at shutdown, so that the others take them over on their next tick.

Every expiry is judged by the database server's clock; the manager's own `clock` (monotonic)
only tells it when a lease it could not renew (the database unreachable) must be taken as lost
locally, conservatively before the database would let another instance take it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from triage import __version__
from triage.core.errors import ConfigError, StoreConflict, StoreUnavailable
from triage.store import leases
from triage.store.db import Database, Tx
from triage.store.leases import LEADER, Fence, FleetRows, InstanceRow, LeaseRow

__all__ = [
    "DEFAULT_RENEW_EVERY",
    "DEFAULT_TTL",
    "LEADER",
    "FleetStatus",
    "HeldLease",
    "InstanceStatus",
    "LeaseChanges",
    "LeaseGuard",
    "LeaseManager",
    "fleet_status",
    "new_instance_id",
]

log = logging.getLogger(__name__)

# Ticks a lease handed over drains at most: released at the latest on the second tick, even
# though something still works under it (a stuck SMTP answer, say): the fence keeps that from
# recording anything afterwards.
_MAX_DRAIN_TICKS = 2
DEFAULT_RENEW_EVERY = 5.0
DEFAULT_TTL = 20.0
# Instances silent for this long are forgotten (`triage fleet status` shows the others).
FORGET_INSTANCES_AFTER = 7 * 86400.0


def new_instance_id() -> str:
    """A fresh instance id, host:pid:random: unique even when a pid is reused or a host runs
    several instances, and telling an operator where the process runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease this instance holds: its generation, and when (by the manager's clock) it was
    acquired and last renewed."""

    name: str
    generation: int
    acquired_at: float
    renewed_at: float


@dataclass(frozen=True, slots=True)
class LeaseChanges:
    """What one tick changed. `gained` and `lost` may both name a lease (lost with its old
    generation, gained again with a new one): stop the old worker, then start a new one.
    `error` is the store's complaint when the tick could not reach the database."""

    gained: dict[str, int] = field(default_factory=dict)
    lost: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    error: str | None = None
    # Leases being handed over: still held (and renewed) until their worker has stopped, no
    # longer in `current()`.
    draining: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost or self.released)


@dataclass(frozen=True, slots=True)
class LeaseGuard:
    """A store handle's guard in fleet mode: the lease's fence in every transaction, and the
    manager's own view (renewed within the lease time, same generation) for `holds()`."""

    fence: Fence
    manager: LeaseManager

    @property
    def generation(self) -> int:
        """The generation of the lease this guard records under."""
        return self.fence.generation

    def check(self, tx: Tx, /) -> None:
        """Raise LeaseLost unless the database still has the lease as it was acquired."""
        self.fence.check(tx)

    def holds(self) -> bool:
        """Whether this instance still counts the lease as held with this generation."""
        return self.manager.current().get(self.fence.name) == self.fence.generation

    def __str__(self) -> str:
        return str(self.fence)


class LeaseManager:
    """The leases of one instance: the accounts it serves and whether it leads.

    `db_factory()` returns a new `Database`; the manager opens one for each tick and closes it.
    `accounts` are the IMAP account names every instance serves; `ttl` is how long a lease
    lasts after its last renewal, `renew_every` how often the daemon should call `tick()` (at
    least three renewals per ttl). `clock` is a monotonic clock in seconds.
    `tick()` and `release_all()` are for one thread; `current()`, `fence()`, `is_leader` and
    `held()` may be called from any thread.
    """

    def __init__(
        self,
        db_factory: Callable[[], Database],
        instance_id: str,
        accounts: Iterable[str],
        renew_every: float = DEFAULT_RENEW_EVERY,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        idle: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        names = self._check(accounts)
        if not 0 < renew_every * 3 <= ttl:
            raise ConfigError(
                f"lease renewal every {renew_every:g} s must be at most a third of the lease "
                f"time ({ttl:g} s)"
            )
        self.instance_id = instance_id
        self.accounts = names
        self.renew_every = renew_every
        self.ttl = ttl
        self._db_factory = db_factory
        self._clock = clock
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._ensured = False
        self._stopped = False
        # Serialises tick() and release_all(); `_state` guards `_held`, for readers in other
        # threads, and is never held while the database is busy.
        self._ticking = threading.Lock()
        self._state = threading.Lock()
        self._held: dict[str, HeldLease] = {}
        # Leases being handed over to another instance, by name: the ticks they have drained.
        self._draining: dict[str, int] = {}
        # Whether nothing of this instance works under an account's lease any more (the daemon
        # says; without one, nothing ever does): a lease handed over is released only then.
        self.idle = idle

    # -- what other threads read --------------------------------------------------------------

    def held(self) -> tuple[HeldLease, ...]:
        """The leases held now, by name (a lease past its local deadline is not held)."""
        now = self._clock()
        with self._state:
            return tuple(h for _, h in sorted(self._held.items()) if now < h.renewed_at + self.ttl)

    def current(self) -> dict[str, int]:
        """{name: generation} of the leases held now to work under (accounts, and `LEADER` when
        leading); not those being handed over."""
        with self._state:
            draining = set(self._draining)
        return {h.name: h.generation for h in self.held() if h.name not in draining}

    def fence(self, name: str) -> Fence | None:
        """The fence to record effects of `name` under (`Fence.check(tx)` in the transaction),
        or None when this instance does not hold the lease."""
        generation = self.current().get(name)
        return None if generation is None else Fence(name, self.instance_id, generation)

    def guard(self, name: str) -> LeaseGuard | None:
        """The guard of a store handle that records effects of `name` (`Database.guard`), or
        None when this instance does not hold the lease."""
        fence = self.fence(name)
        return None if fence is None else LeaseGuard(fence, self)

    @property
    def is_leader(self) -> bool:
        """Whether this instance holds the leader lease (runs the periodic work)."""
        return LEADER in self.current()

    # -- the work ---------------------------------------------------------------------------------

    def tick(self) -> LeaseChanges:
        """Heartbeat, renew, balance and lead (see the module's docstring); what changed.

        When the database is unavailable or the transaction lost a race, nothing is renewed:
        the leases whose local deadline passed are reported lost, the others kept for the next
        tick, and `error` says why. Other store errors propagate."""
        with self._ticking:
            started = self._clock()
            if self._stopped:
                return LeaseChanges()
            try:
                with self._transaction() as tx:
                    outcome = self._balance(tx)
                self._ensured = True
            except (StoreUnavailable, StoreConflict) as exc:
                lost = self._drop_overdue(started)
                if lost:
                    log.warning(
                        "leases lost (not renewed for %g s): %s: %s",
                        self.ttl,
                        ", ".join(lost),
                        exc,
                    )
                return LeaseChanges(lost=lost, error=str(exc))
            return self._apply(started, *outcome)

    def release_all(self) -> tuple[str, ...]:
        """Give every lease up at once and mark the instance as stopping (at SIGTERM, after the
        account workers stopped); the names released. Later ticks do nothing. When the database
        cannot be reached the leases expire by themselves within the lease time."""
        with self._ticking:
            self._stopped = True
            with self._state:
                names = tuple(sorted(self._held))
                self._held.clear()
            try:
                with self._transaction() as tx:
                    leases.mark_stopping(tx, self.instance_id)
                    released = tuple(leases.release_all(tx, self.instance_id))
            except (StoreUnavailable, StoreConflict) as exc:
                log.warning(
                    "cannot release the leases (they expire within %g s): %s", self.ttl, exc
                )
                return names
            return released

    def set_accounts(self, accounts: Iterable[str]) -> None:
        """Serve these accounts from the next tick on (after a reload of the settings): leases of
        accounts no longer listed are released then, new ones compete for as usual."""
        names = self._check(accounts)
        with self._ticking:
            self.accounts = names
            self._ensured = False

    # -- inside ----------------------------------------------------------------------------------

    @staticmethod
    def _check(accounts: Iterable[str]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(accounts))
        if LEADER in names:
            raise ConfigError(
                f"an IMAP account may not be named {LEADER!r} in fleet mode: "
                "that is the name of the lease for periodic work"
            )
        return names

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        # A handle per tick, not one kept per thread: ticks are seconds apart, a handle is cheap
        # (PostgreSQL: a view of the process's pool), and nothing is left to close from another
        # thread (a SQLite connection may only be closed by the thread that opened it).
        db = self._db_factory()
        try:
            with db.transaction() as tx:
                yield tx
        finally:
            db.close()

    def _balance(
        self, tx: Tx
    ) -> tuple[dict[str, int], dict[str, int], dict[str, int], tuple[str, ...], tuple[str, ...]]:
        """One tick's statements: (renewed, still held but not renewed, acquired, released,
        draining), each {name: generation} but the last two."""
        me = self.instance_id
        if not self._ensured:
            leases.ensure(tx, (*self.accounts, LEADER))
        leases.heartbeat(tx, me, self._host, self._pid, __version__)
        with self._state:
            known = {name: h.generation for name, h in self._held.items()}
        renewed = leases.renew_owned(tx, me, self.ttl)
        # A lease skipped because one of our transactions is fencing it is still ours until it
        # expires; one that is neither renewed nor owned any more is lost.
        kept: dict[str, int] = {}
        if any(renewed.get(name) != generation for name, generation in known.items()):
            owned = leases.owned(tx, me)
            kept = {
                name: generation
                for name, generation in known.items()
                if name not in renewed and owned.get(name) == generation
            }
        generations = {**kept, **renewed}
        # Leases of accounts no longer configured here (a reload dropped them) go back at once.
        unlisted = {n: g for n, g in generations.items() if n != LEADER and n not in self.accounts}
        released = tuple(leases.release_many(tx, me, unlisted))
        mine = {n for n in generations if n != LEADER and n not in unlisted}
        live = leases.live_instances(tx, self.ttl)
        share = math.ceil(len(self.accounts) / max(len(live), 1))
        acquired: dict[str, int] = {}
        give: list[str] = []
        if len(mine) < share:
            free = [a for a in self.accounts if a not in mine]
            acquired = leases.acquire_any(tx, free, me, self.ttl, share - len(mine))
        elif len(mine) > share:
            counts = leases.holders(tx, self.accounts)
            unheld = len(self.accounts) - sum(counts.values())
            wanting = sum(max(share - counts.get(other, 0), 0) for other in live if other != me)
            extra = min(len(mine) - share, max(wanting - unheld, 0))
            if extra:
                # The last by name: which ones matters less than that every instance agrees.
                give = sorted(mine)[-extra:]
        # A lease given up is handed over in two steps: first it drains (its worker is stopped
        # while the lease is still held, so whatever it has in hand ends under the lease), and
        # only once nothing works under it any more is it released for another instance.
        with self._state:
            was_draining = dict(self._draining)
        ready = {
            n: generations[n]
            for n in give
            if self.idle(n) or was_draining.get(n, 0) >= _MAX_DRAIN_TICKS - 1
        }
        draining = tuple(n for n in give if n not in ready)
        released += tuple(leases.release_many(tx, me, ready))
        if LEADER not in renewed and LEADER not in kept:
            acquired |= leases.acquire_any(tx, [LEADER], me, self.ttl, 1)
        if LEADER in acquired or LEADER in renewed:
            # A few rows at most: the leader forgets long-silent instances as it goes.
            leases.prune_instances(tx, FORGET_INSTANCES_AFTER)
        return renewed, kept, acquired, released, draining

    def _apply(
        self,
        started: float,
        renewed: dict[str, int],
        kept: dict[str, int],
        acquired: dict[str, int],
        released: tuple[str, ...],
        draining: tuple[str, ...],
    ) -> LeaseChanges:
        """Bring the held map up to date after a committed tick; what changed."""
        with self._state:
            self._draining = {n: self._draining.get(n, 0) + 1 for n in draining}
            before = dict(self._held)
            after: dict[str, HeldLease] = {}
            for name in kept:
                after[name] = before[name]
            for name, generation in renewed.items():
                old = before.get(name)
                if old is not None and old.generation == generation:
                    after[name] = HeldLease(name, generation, old.acquired_at, started)
                else:  # ours in the database but not known here: an acquisition whose
                    # commit we did not hear of; adopted
                    after[name] = HeldLease(name, generation, started, started)
            for name, generation in acquired.items():
                after[name] = HeldLease(name, generation, started, started)
            for name in released:
                after.pop(name, None)
            self._held = after
        lost = tuple(
            sorted(
                name
                for name, old in before.items()
                if name not in released
                and (name not in after or after[name].generation != old.generation)
            )
        )
        gained = {
            name: h.generation
            for name, h in sorted(after.items())
            if name not in before or before[name].generation != h.generation
        }
        if lost:
            log.warning("leases lost (another instance may serve them now): %s", ", ".join(lost))
        if gained or released:
            log.info(
                "leases: gained %s; released %s",
                ", ".join(f"{n} (generation {g})" for n, g in gained.items()) or "none",
                ", ".join(released) or "none",
            )
        if draining:
            log.info("leases being handed over: %s", ", ".join(draining))
        return LeaseChanges(gained=gained, lost=lost, released=released, draining=draining)

    def _drop_overdue(self, now: float) -> tuple[str, ...]:
        """Forget the leases not renewed within the lease time by the local clock; their names.
        The local deadline comes first: it starts before the transaction that renewed them."""
        with self._state:
            overdue = sorted(n for n, h in self._held.items() if now >= h.renewed_at + self.ttl)
            for name in overdue:
                del self._held[name]
        return tuple(overdue)


# --- `triage fleet status` ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One instance as `triage fleet status` shows it: its row, its state and its leases."""

    instance: InstanceRow
    state: str  # live, stopping, stopped, or silent (no heartbeat within the lease time)
    heartbeat_age: float
    leases: tuple[LeaseRow, ...]


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The fleet as the database sees it: instances with their leases, then the leases that
    nobody holds (never taken, released, or expired), all at the database's time `now`."""

    now: float
    instances: tuple[InstanceStatus, ...]
    unheld: tuple[LeaseRow, ...]

    def holders(self, *, accounts_only: bool = False) -> dict[str, str]:
        """{lease: instance id} of the leases live instances hold (without the leader lease
        when `accounts_only`)."""
        return {
            lease.name: instance.instance.id
            for instance in self.instances
            if instance.state == "live"
            for lease in instance.leases
            if not (accounts_only and lease.name == LEADER)
        }


def fleet_status(db: Database, ttl: float = DEFAULT_TTL) -> FleetStatus:
    """Every instance and lease from the database; an instance is live while its heartbeat is
    younger than `ttl` seconds and it is not stopping."""
    rows: FleetRows = leases.fleet(db.reads)
    current = [lease for lease in rows.leases if lease.owner and lease.expires_at > rows.now]
    instances = []
    for instance in rows.instances:
        age = max(rows.now - instance.heartbeat_at, 0.0)
        if instance.stopping:
            state = "stopping" if age < ttl else "stopped"
        else:
            state = "live" if age < ttl else "silent"
        mine = tuple(lease for lease in current if lease.owner == instance.id)
        instances.append(InstanceStatus(instance, state, age, mine))
    known = {instance.id for instance in rows.instances}
    # A lease of an instance already forgotten still shows, as unheld would be a lie.
    orphans = [
        InstanceStatus(
            InstanceRow(owner, "", 0, "", 0.0, 0.0, False),
            "unknown",
            math.inf,
            tuple(lease for lease in current if lease.owner == owner),
        )
        for owner in sorted({str(lease.owner) for lease in current} - known)
    ]
    unheld = tuple(lease for lease in rows.leases if lease not in current)
    return FleetStatus(rows.now, (*instances, *orphans), unheld)
