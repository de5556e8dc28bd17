"""Fleet mode's SQL: instances and their heartbeats, leases and their fencing generations.

A lease (table `leases`) names an IMAP account, or `LEADER` for the periodic work (digest,
retention) that must run once across the fleet. At most one instance holds it until
`expires_at`; every acquisition adds one to `generation`, the fencing token. Every time is
computed in SQL by the database server's clock (`tx.dialect.now_epoch`), never passed in from
the instance: two hosts whose clocks disagree still agree on who holds a lease.

- `acquire` takes free or expired leases with `SELECT … FOR UPDATE SKIP LOCKED`: concurrent
  instances take different rows and never wait for each other, and a row that a fencing
  transaction holds is skipped until that transaction ends.
- `fence(tx, fence)` is what every transaction that records an effect under a lease calls: it
  raises `LeaseLost` unless the lease is still held with that owner and generation and has not
  expired, and keeps the row locked (FOR KEY SHARE on PostgreSQL) until the transaction ends, so
  the lease cannot change hands while the effect is being recorded (an acquisition locks FOR
  UPDATE, which waits for it), while the holder's own renewals (FOR NO KEY UPDATE) go on: a busy
  account, whose worker always has a transaction open, never misses one. On SQLite every write
  transaction holds the database's write lock, which does the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from triage.core.errors import LeaseLost
from triage.store.db import Tx

# The lease of the periodic work: one holder across the fleet.
LEADER = "leader"

_LEASE_COLUMNS = "name, owner, generation, acquired_at, renewed_at, expires_at"
_INSTANCE_COLUMNS = "id, host, pid, version, started_at, heartbeat_at, stopping"


@dataclass(frozen=True, slots=True)
class Fence:
    """What an effect is recorded under: a lease, its holder and the generation it holds.
    `check(tx)` is `fence(tx, …)` with these values."""

    name: str
    owner: str
    generation: int

    def check(self, tx: Tx, /) -> None:
        """Raise LeaseLost unless this lease is still held as it was acquired; hold it until
        `tx` ends (see `fence`)."""
        fence(tx, self.name, self.owner, self.generation)

    def holds(self) -> bool:
        """Always True: only the database knows (`check`); `triage.ops.fleet.LeaseGuard` adds
        the instance's own view of its lease."""
        return True

    def __str__(self) -> str:
        return f"{self.owner} {self.name}#{self.generation}"


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One instance as `instances` records it; times in epoch seconds by the database's clock."""

    id: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    stopping: bool


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as `leases` records it (owner None: released, or never taken)."""

    name: str
    owner: str | None
    generation: int
    acquired_at: float | None
    renewed_at: float | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class FleetRows:
    """Every instance and lease, and the database's time when they were read."""

    now: float
    instances: tuple[InstanceRow, ...]
    leases: tuple[LeaseRow, ...]


def database_now(tx: Tx) -> float:
    """The database server's current time, epoch seconds."""
    row = tx.execute(f"SELECT {tx.dialect.now_epoch}").fetchone()
    return float(row[0])


# --- instances ---------------------------------------------------------------------------------


def heartbeat(tx: Tx, instance_id: str, host: str, pid: int, version: str) -> None:
    """Record that `instance_id` is alive now (registering it on its first beat)."""
    now = tx.dialect.now_epoch
    tx.execute(
        "INSERT INTO instances (id, host, pid, version, started_at, heartbeat_at, stopping)"  # noqa: S608
        f" VALUES (?, ?, ?, ?, {now}, {now}, 0)"
        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        (instance_id, host, pid, version),
    )


def mark_stopping(tx: Tx, instance_id: str) -> None:
    """Record that `instance_id` is shutting down: it no longer counts as live."""
    tx.execute("UPDATE instances SET stopping = 1 WHERE id = ?", (instance_id,))


def live_instances(tx: Tx, expiry: float) -> list[str]:
    """The ids of the instances that beat within the last `expiry` seconds and are not
    stopping, in order."""
    rows = tx.execute(
        f"SELECT id FROM instances WHERE heartbeat_at > {tx.dialect.now_epoch} - ?"  # noqa: S608
        " AND stopping = 0 ORDER BY id",
        (float(expiry),),
    )
    return [str(r[0]) for r in rows]


def prune_instances(tx: Tx, older_than: float) -> int:
    """Forget the instances that have not beaten for `older_than` seconds; how many."""
    cur = tx.execute(
        f"DELETE FROM instances WHERE heartbeat_at < {tx.dialect.now_epoch} - ?",  # noqa: S608
        (float(older_than),),
    )
    return max(cur.rowcount, 0)


# --- leases ------------------------------------------------------------------------------------


def ensure(tx: Tx, names: Iterable[str]) -> None:
    """Create the lease rows of `names` that do not exist yet (free, generation 0)."""
    # In order, so that two instances inserting the same names wait for each other in the same
    # order and never deadlock.
    rows = [(name,) for name in sorted(set(names))]
    if rows:
        tx.executemany(
            "INSERT INTO leases (name, generation, expires_at) VALUES (?, 0, 0)"
            " ON CONFLICT (name) DO NOTHING",
            rows,
        )


def acquire_any(tx: Tx, names: Sequence[str], owner: str, ttl: float, limit: int) -> dict[str, int]:
    """Take up to `limit` of the leases of `names` that are free or expired (their rows must
    exist: `ensure`) for `owner` until `ttl` seconds from now, each with its generation plus
    one; {name: generation} of those taken. Rows another transaction holds are skipped."""
    if limit <= 0 or not names:
        return {}
    d = tx.dialect
    condition, params = d.in_many("name", list(names))
    rows = tx.execute(
        f"SELECT name FROM leases WHERE {condition}"  # noqa: S608
        f" AND (owner IS NULL OR expires_at <= {d.now_epoch})"
        f" ORDER BY name LIMIT ?{d.for_update(skip_locked=True)}",
        [*params, limit],
    ).fetchall()
    picked = [str(r[0]) for r in rows]
    if not picked:
        return {}
    condition, params = d.in_many("name", picked)
    now = d.now_epoch
    taken = tx.execute(
        f"UPDATE leases SET owner = ?, generation = leases.generation + 1,"  # noqa: S608
        f" acquired_at = {now}, renewed_at = {now}, expires_at = {now} + ?"
        f" WHERE {condition} RETURNING name, generation",
        [owner, float(ttl), *params],
    )
    return {str(r[0]): int(r[1]) for r in taken}


def acquire(tx: Tx, name: str, owner: str, ttl: float) -> int | None:
    """Take the lease `name` (creating its row if missing) for `owner` until `ttl` seconds from
    now if it is free or expired; its new generation, or None when another holds it."""
    ensure(tx, [name])
    return acquire_any(tx, [name], owner, ttl, 1).get(name)


def renew(tx: Tx, name: str, owner: str, generation: int, ttl: float) -> bool:
    """Extend the lease `name` to `ttl` seconds from now; False (and nothing changed) when it
    is no longer held by `owner` with `generation`, or has expired."""
    now = tx.dialect.now_epoch
    cur = tx.execute(
        f"UPDATE leases SET renewed_at = {now}, expires_at = {now} + ?"  # noqa: S608
        f" WHERE name = ? AND owner = ? AND generation = ? AND expires_at > {now}",
        (float(ttl), name, owner, generation),
    )
    return cur.rowcount == 1


def renew_owned(tx: Tx, owner: str, ttl: float) -> dict[str, int]:
    """Extend every unexpired lease of `owner` to `ttl` seconds from now; {name: generation} of
    those renewed. Transactions fencing a lease do not hold its renewal up (their lock keeps the
    key only); a row another transaction locks for update is skipped, not waited for."""
    d = tx.dialect
    now = d.now_epoch
    # Locked in name order, so that two transactions locking several leases never deadlock.
    rows = tx.execute(
        f"SELECT name FROM leases WHERE owner = ? AND expires_at > {now}"  # noqa: S608
        f" ORDER BY name{d.for_update(skip_locked=True, keep_key=True)}",
        (owner,),
    ).fetchall()
    if not rows:
        return {}
    condition, params = d.in_many("name", [str(r[0]) for r in rows])
    renewed = tx.execute(
        f"UPDATE leases SET renewed_at = {now}, expires_at = {now} + ?"  # noqa: S608
        f" WHERE {condition} RETURNING name, generation",
        [float(ttl), *params],
    )
    return {str(r[0]): int(r[1]) for r in renewed}


def owned(tx: Tx, owner: str) -> dict[str, int]:
    """{name: generation} of the unexpired leases of `owner` (no lock taken)."""
    rows = tx.execute(
        f"SELECT name, generation FROM leases WHERE owner = ?"  # noqa: S608
        f" AND expires_at > {tx.dialect.now_epoch}",
        (owner,),
    )
    return {str(r[0]): int(r[1]) for r in rows}


def holders(tx: Tx, names: Sequence[str]) -> dict[str, int]:
    """{owner: how many of the leases of `names` it holds unexpired}."""
    if not names:
        return {}
    condition, params = tx.dialect.in_many("name", list(names))
    rows = tx.execute(
        f"SELECT owner, count(*) FROM leases WHERE {condition}"  # noqa: S608
        f" AND owner IS NOT NULL AND expires_at > {tx.dialect.now_epoch} GROUP BY owner",
        params,
    )
    return {str(r[0]): int(r[1]) for r in rows}


def release(tx: Tx, name: str, owner: str, generation: int) -> bool:
    """Give the lease `name` up at once, if `owner` still holds it with `generation`; whether
    it did. Its generation stays: the next acquisition adds one."""
    cur = tx.execute(
        f"UPDATE leases SET owner = NULL, expires_at = {tx.dialect.now_epoch}"  # noqa: S608
        " WHERE name = ? AND owner = ? AND generation = ?",
        (name, owner, generation),
    )
    return cur.rowcount == 1


def release_many(tx: Tx, owner: str, held: Mapping[str, int]) -> list[str]:
    """`release` for each of `held` ({name: generation}), in name order; the names released."""
    return [name for name in sorted(held) if release(tx, name, owner, held[name])]


def release_all(tx: Tx, owner: str) -> list[str]:
    """Give up every lease of `owner` at once (at shutdown); the names, in order."""
    rows = tx.execute(
        f"UPDATE leases SET owner = NULL, expires_at = {tx.dialect.now_epoch}"  # noqa: S608
        " WHERE owner = ? RETURNING name",
        (owner,),
    )
    return sorted(str(r[0]) for r in rows)


def held(tx: Tx, name: str, owner: str, generation: int) -> bool:
    """Whether `owner` holds the lease `name` with `generation`, unexpired (no lock taken)."""
    row = tx.execute(
        "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND generation = ?"  # noqa: S608
        f" AND expires_at > {tx.dialect.now_epoch}",
        (name, owner, generation),
    ).fetchone()
    return row is not None


def fence(tx: Tx, name: str, owner: str, generation: int) -> None:
    """Raise LeaseLost unless `owner` holds the lease `name` with `generation`, unexpired; then
    keep the lease from changing hands until `tx` ends (a takeover skips the row meanwhile).

    Call it in every transaction that records an effect under the lease, before the effect's
    statements: the effect then lands only while the lease is held. A transaction left open
    by a paused process is ended by the server (idle_in_transaction_session_timeout), which
    releases the row."""
    d = tx.dialect
    row = tx.execute(
        "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND generation = ?"  # noqa: S608
        f" AND expires_at > {d.now_epoch}{d.for_share(key_only=True)}",
        (name, owner, generation),
    ).fetchone()
    if row is None:
        raise LeaseLost(f"{name}: lease generation {generation} is no longer held by {owner}")


# --- the whole picture ---------------------------------------------------------------------------


def fleet(tx: Tx) -> FleetRows:
    """Every instance (by id) and every lease (by name), read with the database's time."""
    now = database_now(tx)
    instances = tuple(
        InstanceRow(
            id=str(r[0]),
            host=str(r[1]),
            pid=int(r[2]),
            version=str(r[3]),
            started_at=float(r[4]),
            heartbeat_at=float(r[5]),
            stopping=bool(r[6]),
        )
        for r in tx.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY id")  # noqa: S608
    )
    leases = tuple(
        LeaseRow(
            name=str(r[0]),
            owner=None if r[1] is None else str(r[1]),
            generation=int(r[2]),
            acquired_at=None if r[3] is None else float(r[3]),
            renewed_at=None if r[4] is None else float(r[4]),
            expires_at=float(r[5]),
        )
        for r in tx.execute(f"SELECT {_LEASE_COLUMNS} FROM leases ORDER BY name")  # noqa: S608
    )
    return FleetRows(now=now, instances=instances, leases=leases)
