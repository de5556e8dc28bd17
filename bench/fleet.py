"""Fleet mode: backlog throughput with 1, 2 and 3 `triage run` instances on PostgreSQL next to one
instance on SQLite, and push latency on both stores, in one run on private servers.

The backlog is bench.backlog's mix (its `backlog_messages`, `seed`, `move_all`), spread round-robin
over ACCOUNTS mailboxes (fleet00…), each message addressed to the mailbox it lands in: a mailbox is
only ever served by one instance, so a fleet can only share work that sits in several mailboxes.
Each row starts on a fresh store (a new SQLite file, or a new database of a private PostgreSQL
from devtools.pgharness, removed afterwards) and emptied mailboxes:

1. the messages are seeded into a staging folder of each mailbox (outside the clock);
2. the instances start with the same settings (every account listed; replies in dry-run mode);
   on PostgreSQL the run waits until every live instance holds its fair share of the accounts'
   leases (`triage.ops.fleet.fleet_status`) and each lease's holder has synced its mailbox since
   it took the lease, so nothing moves during the measurement;
3. every staging folder is moved into its INBOX at once (one thread per mailbox);
4. the clock runs from the first message recorded (`seen`) to the last one finished, from the
   store's own timestamps, read through `triage.store.db.Database` (so the same code reads both
   backends). CPU per message is that of every `triage run` process together and, on PostgreSQL,
   of the database server's processes (those alive at the end: the pools keep their sessions).
   On PostgreSQL the instances' sessions are sampled meanwhile (`pg_stat_activity`): how many are
   in a transaction and how many of those wait for a lock, on average, which tells a fleet held
   back by a lock from one held back by CPU or round trips.

Push latency is bench.latency's method (one inquiry at a time through Postfix, the clock until
the reply is in the sender's INBOX, live replies) with one instance watching hello@, first on
SQLite, then on PostgreSQL.

All instances run on this one machine: with 2 cores, 3 instances share those 2 cores with Dovecot,
Postfix and PostgreSQL. The rows show what the lease protocol and the shared database cost and
allow here, not what 3 machines would do.

    python -m bench.fleet --size 10000 --latency 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.backlog import DONE_TIMEOUT, STAGING, backlog_messages, move_all, readdress, seed
from bench.latency import MAX_GAP_S, SEED, LatencyResult, _one
from bench.memory import cpu_seconds, descendants
from bench.startup import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    ensure_model,
    first_sync_recorded,
    private_harness,
    prospects,
    triage_command,
)
from devtools.demo import accounts_toml, store_toml
from devtools.mailharness import MailHarness
from devtools.pgharness import PgHarness, unavailable_reason
from triage.core.settings import StoreSettings
from triage.ops.fleet import DEFAULT_RENEW_EVERY, DEFAULT_TTL, LEADER, fleet_status
from triage.store.db import STORE_ERRORS, Database

ACCOUNTS = 6
INSTANCES = (1, 2, 3)
# After the leases are settled and every holder has synced: time for the workers to enter IDLE.
SETTLE_S = 2.0
# Start-up of a fleet includes a few lease renewals (every 5 s by default) to balance.
FLEET_READY_TIMEOUT = READY_TIMEOUT + 6 * DEFAULT_RENEW_EVERY
POLL_S = 0.05

# The rest of devtools.demo's settings (the ones bench.backlog and bench.latency run with), for
# several accounts and either store.
REST = """\
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"

{store}
[replies]
mode = "live"
from_address = "{first}@{domain}"
from_name = "Example Furniture"
envelope_sender = "noreply@{domain}"
our_addresses = [{ours}]
trusted_authserv_ids = ["mx.example.test"]
company_name = "Example Furniture Ltd"
signature = "The Example Furniture team"

[ingest]
workers = {workers}

[daemon]
health_port = 0
"""


def accounts(count: int = ACCOUNTS) -> tuple[str, ...]:
    """The names (and harness users) of the mailboxes the fleet shares: fleet00, fleet01, …"""
    return tuple(f"fleet{n:02d}" for n in range(count))


def users(count: int = ACCOUNTS) -> dict[str, str]:
    """Harness users for the shared mailboxes (local part -> password)."""
    return {name: f"pw-{name}" for name in accounts(count)}


def write_config(
    harness: MailHarness, base: Path, names: Sequence[str], store: StoreSettings, workers: int
) -> Path:
    """Settings watching the INBOX of each of `names` with `store`; returns the file."""
    cfg = harness.config
    base.mkdir(parents=True, exist_ok=True)
    text = accounts_toml(harness, base, names, options="idle = true\npoll_interval = 5\n")
    text += REST.format(
        smtp_port=cfg.smtp_port,
        store=store_toml(store),
        domain=cfg.domain,
        first=names[0],
        ours=", ".join(f'"{user}@{cfg.domain}"' for user in names),
        workers=workers,
    )
    path = base / "triage.toml"
    path.write_text(text)
    return path


def spread_messages(size: int, addresses: Sequence[str], tag: str) -> list[list[bytes]]:
    """bench.backlog's `size` messages dealt round-robin to `addresses` (one list each), each
    readdressed to the mailbox it goes to: the same mix as a single-mailbox backlog."""
    dealt: list[list[bytes]] = [[] for _ in addresses]
    for i, raw in enumerate(backlog_messages(size, addresses[0], tag)):
        to = addresses[i % len(addresses)]
        # The same Message-ID as backlog_messages gave it; only To changes.
        dealt[i % len(addresses)].append(
            readdress(raw, f"<bench-{tag}-{i}@bench.example.test>", to)
        )
    return dealt


# -- instances ----------------------------------------------------------------------------------


class Instance:
    """One `triage run` child process (started, stopped) with its own log."""

    def __init__(self, config: Path, env: Mapping[str, str], log: Path) -> None:
        self.config = config
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id of the running `triage run`."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start `triage run` (readiness is judged from the store, by the caller)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*triage_command(), "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env),
            )

    def check(self) -> None:
        """Raise when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
            raise RuntimeError(f"triage run exited {self.proc.returncode}: {tail}")

    def terminate(self) -> None:
        """SIGTERM, as systemd stops it (wait with `wait`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Wait for the process to end; SIGKILL only if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(
    count: int, config: Path, env: Mapping[str, str], logs: Path
) -> Iterator[list[Instance]]:
    """`count` instances of `triage run` on `config`, started together, stopped at the end (all
    signalled first, so those left do not take over the leases of those stopping)."""
    instances = [Instance(config, env, logs / f"triage-{n}.log") for n in range(count)]
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.terminate()
        for instance in instances:
            instance.wait()


def _env(model: Path, mode: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "TRIAGE_REPLIES__MODE": mode,
        "TRIAGE_CLASSIFIER__MODEL_PATH": str(model),
        **(extra or {}),
    }


# -- reading the store --------------------------------------------------------------------------


def _epoch(stored: str) -> float:
    return datetime.fromisoformat(stored).timestamp()


def synced(db: Database, names: Sequence[str]) -> dict[str, float]:
    """{account: last sync of its INBOX, epoch seconds} for those of `names` synced yet."""
    rows = db.reads.execute(
        "SELECT account, last_sync FROM mailbox_state WHERE folder = 'INBOX'"
    ).fetchall()
    return {str(r[0]): _epoch(str(r[1])) for r in rows if r[1] and str(r[0]) in names}


@dataclass(frozen=True)
class Leases:
    """The accounts' leases at one moment, from `fleet_status` (the leader lease left out)."""

    owners: dict[str, str]  # account -> live instance id holding it
    taken: dict[str, float]  # account -> when its holder acquired it (epoch, database clock)
    generations: dict[str, int]  # every account's lease generation, held or not
    live: int  # live instances


def leases_now(db: Database) -> Leases:
    """The leases as the database sees them now."""
    status = fleet_status(db, DEFAULT_TTL)
    owners: dict[str, str] = {}
    taken: dict[str, float] = {}
    generations = {lease.name: lease.generation for lease in status.unheld}
    live = 0
    for instance in status.instances:
        live += instance.state == "live"
        for lease in instance.leases:
            if lease.name == LEADER:
                continue
            generations[lease.name] = lease.generation
            if instance.state == "live":
                owners[lease.name] = instance.instance.id
                taken[lease.name] = lease.acquired_at or 0.0
    generations.pop(LEADER, None)
    return Leases(owners, taken, generations, live)


def balanced(owners: Mapping[str, str], names: Sequence[str], live: int, count: int) -> bool:
    """Every account held, `count` instances live, each holding its fair share (the floor or
    the ceiling of accounts / instances: what `LeaseManager` settles on)."""
    if live != count or set(owners) != set(names):
        return False
    held = Counter(owners.values())
    low, high = len(names) // count, -(-len(names) // count)
    return len(held) == count and all(low <= n <= high for n in held.values())


def wait_ready(
    store: StoreSettings, names: Sequence[str], instances: Sequence[Instance]
) -> Leases | None:
    """Wait until every account of `names` is served and synced; the leases then (None on
    SQLite, where one instance serves everything)."""
    deadline = time.perf_counter() + FLEET_READY_TIMEOUT
    owners: dict[str, str] = {}
    while True:
        for instance in instances:
            instance.check()
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{len(instances)} instance(s) not serving {len(names)} mailboxes in "
                f"{FLEET_READY_TIMEOUT:g} s (leases {owners})"
            )
        # On SQLite the daemon creates and migrates the file: open it only once it has.
        if store.is_postgresql or first_sync_recorded(store.path):
            try:
                db = Database(store)
            except STORE_ERRORS:
                time.sleep(POLL_S)
                continue
            try:
                done = synced(db, names)
                if not store.is_postgresql:
                    if len(done) == len(names):
                        return None
                else:
                    now = leases_now(db)
                    owners = now.owners
                    # The holder's own first pass came after it took the lease (its worker runs).
                    if balanced(owners, names, now.live, len(instances)) and all(
                        done.get(name, 0.0) >= now.taken[name] for name in names
                    ):
                        return now
            except STORE_ERRORS:
                pass  # the schema is being made: again
            finally:
                db.close()
        time.sleep(POLL_S)


# The row's database sessions other than the one asking: waiting for a lock, and in a
# transaction (running a statement, waiting, or holding it open while the client works).
_SESSIONS = (
    "SELECT COUNT(*) FILTER (WHERE wait_event_type = 'Lock'),"
    " COUNT(*) FILTER (WHERE state <> 'idle')"
    " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"
)


@dataclass
class Sessions:
    """pg_stat_activity sampled while the backlog runs: how many of the instances' sessions
    wait for a lock, and how many are in a transaction, on average. It tells a fleet limited by
    a lock (one transaction at a time) from one limited by CPU or round trips."""

    samples: int = 0
    waiting: int = 0
    busy: int = 0

    def sample(self, db: Database) -> None:
        """One look (the bench's own polling is sequential: at most this session is active)."""
        waiting, busy = db.reads.execute(_SESSIONS).fetchone()
        self.samples += 1
        self.waiting += int(waiting)
        self.busy += int(busy)

    def means(self) -> tuple[float, float] | None:
        """(sessions waiting for a lock, sessions in a transaction) on average, or None."""
        if not self.samples:
            return None
        return self.waiting / self.samples, self.busy / self.samples


def _finished(db: Database) -> int:
    row = db.reads.execute(
        "SELECT COUNT(*) FROM messages WHERE state IN ('done', 'quarantined')"
    ).fetchone()
    return int(row[0])


@dataclass(frozen=True)
class Span:
    """What the store recorded about the backlog."""

    seconds: float  # first `seen` to last finished
    decisions: dict[str, int]
    replies: int
    per_account: dict[str, int]


def span(db: Database) -> Span:
    """The backlog's span, decision counts, dry-run replies and messages per account."""
    first, last = db.reads.execute(
        "SELECT MIN(created_at), MAX(updated_at) FROM messages"
    ).fetchone()
    decisions = {
        str(r[0]): int(r[1])
        for r in db.reads.execute(
            "SELECT COALESCE(decision, state), COUNT(*) FROM messages GROUP BY 1"
        ).fetchall()
    }
    per_account = {
        str(r[0]): int(r[1])
        for r in db.reads.execute("SELECT account, COUNT(*) FROM messages GROUP BY 1").fetchall()
    }
    replies = int(db.reads.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
    return Span(_epoch(str(last)) - _epoch(str(first)), decisions, replies, per_account)


# -- the backlog rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetBacklog:
    """One row: a backlog spread over the mailboxes, worked through by `instances`."""

    backend: str  # "sqlite" or "postgresql"
    instances: int
    accounts: int
    size: int
    seconds: float  # first `seen` to last finished, from the store's timestamps
    wall_seconds: float  # from the MOVEs to the last finished seen by polling
    decisions: dict[str, int]
    replies: int
    per_account: dict[str, int]
    # How many accounts each instance served (by instance number) when the backlog was released;
    # between then and its end, how many accounts changed hands (or were held by nobody at the
    # end), and how many lease acquisitions there were (new generations, by the same instance
    # or another): 0 and 0 when every instance kept its leases throughout.
    shares: tuple[int, ...]
    moved: int
    retaken: int
    triage_cpu_ms: float  # CPU per message of every `triage run` process together
    database_cpu_ms: float | None  # CPU per message of the PostgreSQL server (None on SQLite)
    # On PostgreSQL: the instances' sessions waiting for a lock, and in a transaction, on
    # average while the backlog ran (`Sessions`); None on SQLite.
    lock_waits: float | None = None
    in_transaction: float | None = None

    @property
    def rate(self) -> float:
        """Messages per second over the store-measured span."""
        return self.size / self.seconds if self.seconds else 0.0

    @property
    def wall_rate(self) -> float:
        """Messages per second including the IDLE wake-up."""
        return self.size / self.wall_seconds if self.wall_seconds else 0.0


def _tree_cpu(pids: Sequence[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        for p in [pid, *descendants(pid)]:
            out[p] = cpu_seconds(p)
    return out


def _used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _release(harness: MailHarness, names: Sequence[str]) -> None:
    """Move every staging folder into its INBOX, one thread per mailbox, all at once."""
    errors: list[BaseException] = []
    gate = threading.Barrier(len(names))

    def move(user: str) -> None:
        try:
            gate.wait()
            move_all(harness, user, STAGING, "INBOX")
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(user,), daemon=True) for user in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def backlog(
    harness: MailHarness,
    work: Path,
    model: Path,
    store: StoreSettings,
    count: int,
    size: int,
    workers: int = 0,
    database_pid: int | None = None,
) -> FleetBacklog:
    """One backlog row: `size` messages over ACCOUNTS mailboxes, `count` instances on `store`."""
    names = accounts()
    for user in names:
        harness.clear_mailbox(user)
    tag = datetime.now(UTC).strftime("%H%M%S%f")
    dealt = spread_messages(size, [harness.address(user) for user in names], tag)
    for user, messages in zip(names, dealt, strict=True):
        seed(harness, user, messages, STAGING)
    base = work / f"fleet-{'pg' if store.is_postgresql else 'sqlite'}-{count}"
    config = write_config(harness, base, names, store, workers)
    with running(count, config, _env(model, "dry-run"), base) as instances:
        before = wait_ready(store, names, instances)
        time.sleep(SETTLE_S)
        pids = [instance.pid for instance in instances]
        server = [database_pid] if database_pid else []
        cpu_before, db_before = _tree_cpu(pids), _tree_cpu(server)
        moved_at = time.perf_counter()
        _release(harness, names)
        db = Database(store)
        sessions = Sessions()
        try:
            deadline = moved_at + DONE_TIMEOUT
            while (finished := _finished(db)) < size:
                if store.is_postgresql:
                    sessions.sample(db)
                for instance in instances:
                    instance.check()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"finished {finished} of {size} in {DONE_TIMEOUT:g} s")
                time.sleep(0.02)
            done_at = time.perf_counter()
            cpu_after, db_after = _tree_cpu(pids), _tree_cpu(server)
            result = span(db)
            after = leases_now(db) if before is not None else None
        finally:
            db.close()
    means = sessions.means()
    by_pid = {str(pid): n for n, pid in enumerate(pids)}
    owners = {} if before is None else before.owners
    shares = Counter(by_pid.get(owner.split(":")[1], -1) for owner in owners.values())
    retaken = moved = 0
    if before is not None and after is not None:
        retaken = sum(after.generations[n] - before.generations[n] for n in names)
        moved = sum(1 for name, owner in owners.items() if after.owners.get(name) != owner)
    return FleetBacklog(
        backend="postgresql" if store.is_postgresql else "sqlite",
        instances=count,
        accounts=len(names),
        size=size,
        seconds=result.seconds,
        wall_seconds=done_at - moved_at,
        decisions=result.decisions,
        replies=result.replies,
        per_account=result.per_account,
        shares=tuple(shares[n] for n in range(count)) if owners else (len(names),),
        moved=moved,
        retaken=retaken,
        triage_cpu_ms=_used(cpu_before, cpu_after) / size * 1000,
        database_cpu_ms=_used(db_before, db_after) / size * 1000 if server else None,
        lock_waits=None if means is None else means[0],
        in_transaction=None if means is None else means[1],
    )


# -- push latency -------------------------------------------------------------------------------


def push_latency(
    harness: MailHarness, work: Path, model: Path, store: StoreSettings, count: int
) -> LatencyResult:
    """bench.latency's measurement with one instance watching hello@ on `store`."""
    senders = list(prospects(count))
    for user in ("hello", *senders):
        harness.clear_mailbox(user)
    hello = harness.address("hello")
    base = work / f"latency-{'pg' if store.is_postgresql else 'sqlite'}"
    config = write_config(harness, base, ["hello"], store, 0)
    # Every prospect is on example.test: the default caps would defer all but the first replies.
    caps = {
        "TRIAGE_REPLIES__MAX_PER_HOUR": str(10 * count),
        "TRIAGE_REPLIES__MAX_PER_DOMAIN_PER_HOUR": str(10 * count),
    }
    gaps = random.Random(SEED)
    latencies: list[float] = []
    with running(1, config, _env(model, "live", caps), base) as instances:
        wait_ready(store, ["hello"], instances)
        time.sleep(1.0)  # let the first pass finish and IDLE begin, as bench.latency does
        for n, user in enumerate(senders):
            seconds = _one(harness, user, hello, n)
            if seconds is not None:
                latencies.append(seconds)
            time.sleep(gaps.uniform(0.0, MAX_GAP_S))
    return LatencyResult(tuple(latencies), count)


# -- the section ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetResult:
    """The whole section: the backlog rows (SQLite first) and the push latency on both stores."""

    backlogs: tuple[FleetBacklog, ...]
    sqlite_latency: LatencyResult
    postgresql_latency: LatencyResult
    postgresql_version: str
    cores: int = field(default_factory=lambda: os.cpu_count() or 0)

    @property
    def sqlite_rate(self) -> float:
        """The SQLite row's rate, the denominator of every ratio."""
        return next((b.rate for b in self.backlogs if b.backend == "sqlite"), 0.0)

    def ratio(self, row: FleetBacklog) -> float:
        """`row`'s rate over the SQLite row's."""
        return row.rate / self.sqlite_rate if self.sqlite_rate else 0.0


def _pg_store(pg: PgHarness, base: Path, name: str) -> StoreSettings:
    """A new database `name` on `pg`, as a configuration names it (password in a 0600 file)."""
    pg.create_database(name)
    base.mkdir(parents=True, exist_ok=True)
    secret = base / "pg.password"
    secret.write_text(pg.password + "\n")
    secret.chmod(0o600)
    url = pg.url_for(name, with_password=False)
    return StoreSettings(path=base / "triage.db", url=url, password_file=secret)


@contextlib.contextmanager
def _database(pg: PgHarness, base: Path) -> Iterator[StoreSettings]:
    """A fresh database for one row, migrated before any instance starts, dropped after it."""
    from triage.store.postgres.backend import close_pools

    name = f"bench_{secrets.token_hex(6)}"
    store = _pg_store(pg, base, name)
    try:
        Database(store).close()
        yield store
    finally:
        close_pools()
        pg.drop_database(name)


def run(
    harness: MailHarness,
    work: Path,
    model: Path,
    size: int,
    latency_count: int,
    instances: Sequence[int] = INSTANCES,
    workers: int = 0,
) -> FleetResult:
    """Every row of the section on `harness` (which must have `users()` and the latency
    senders `prospects(latency_count)`), with a private PostgreSQL removed afterwards."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    sqlite = StoreSettings(path=work / "fleet-sqlite-1" / "triage.db")
    rows = [backlog(harness, work, model, sqlite, 1, size, workers)]
    sqlite = StoreSettings(path=work / "latency-sqlite" / "triage.db")
    sqlite_latency = push_latency(harness, work, model, sqlite, latency_count)
    with PgHarness() as pg:
        version = pg.psql("SHOW server_version", database="postgres").split()[0]
        for count in instances:
            with _database(pg, work / f"fleet-pg-{count}") as store:
                rows.append(
                    backlog(harness, work, model, store, count, size, workers, pg.server_pid())
                )
        with _database(pg, work / "latency-pg") as store:
            pg_latency = push_latency(harness, work, model, store, latency_count)
    return FleetResult(tuple(rows), sqlite_latency, pg_latency, version)


def figures(result: FleetResult) -> dict[str, Any]:
    """The section's figures under stable names (the `fleet` key of the suite's JSON)."""
    rows = []
    for b in result.backlogs:
        rows.append(
            {
                "backend": b.backend,
                "instances": b.instances,
                "accounts": b.accounts,
                "messages": b.size,
                "msgs_per_s": b.rate,
                "seconds": b.seconds,
                "wall_msgs_per_s": b.wall_rate,
                "ratio_to_sqlite": result.ratio(b),
                "triage_cpu_ms_per_msg": b.triage_cpu_ms,
                "database_cpu_ms_per_msg": b.database_cpu_ms,
                "sessions_waiting_for_a_lock": b.lock_waits,
                "sessions_in_a_transaction": b.in_transaction,
                "shares": list(b.shares),
                "leases_moved": b.moved,
                "leases_retaken": b.retaken,
                "replies_composed": b.replies,
                "decisions": b.decisions,
            }
        )

    def latency(r: LatencyResult) -> dict[str, Any]:
        return {
            "p50_s": r.p50,
            "p95_s": r.p95,
            "max_s": max(r.seconds, default=float("inf")),
            "sent": r.sent,
            "replied": r.replied,
        }

    return {
        "backlogs": rows,
        "push_sqlite": latency(result.sqlite_latency),
        "push_postgresql": latency(result.postgresql_latency),
        "postgresql_version": result.postgresql_version,
        "nproc": result.cores,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the section alone, print its figures and its rows of the suite's table (with a line
    naming the command, the machine and the load), write them where asked."""
    # The suite's table and machine line (imported here: bench.__main__ imports this module).
    from bench.__main__ import fleet_rows, load, machine, table

    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000, help="backlog messages (10,000)")
    parser.add_argument("--latency", type=int, default=50, help="latency samples (50)")
    parser.add_argument("--instances", default="1,2,3", help="PostgreSQL rows (1,2,3)")
    parser.add_argument("--workers", type=int, default=0, help="ingest.workers of every instance")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--output", type=Path, default=None, help="also write the table there")
    args = parser.parse_args(argv)
    load_before = load()
    counts = [int(n) for n in str(args.instances).split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        work = Path(tmp)
        model = ensure_model(work)
        with private_harness(work / "mail", {**users(), **prospects(args.latency)}) as harness:
            result = run(harness, work, model, args.size, args.latency, counts, args.workers)
    for b in result.backlogs:
        db_cpu = "" if b.database_cpu_ms is None else f" + {b.database_cpu_ms:.2f} ms PostgreSQL"
        if b.lock_waits is not None and b.in_transaction is not None:
            db_cpu += (
                f"; sessions {b.lock_waits:.2f} waiting for a lock, {b.in_transaction:.2f} in a tx"
            )
        print(
            f"{b.backend} x{b.instances}: {b.rate:,.0f} msgs/s ({b.seconds:.2f} s; ratio "
            f"{result.ratio(b):.2f}); CPU {b.triage_cpu_ms:.2f} ms/msg triage{db_cpu}; shares "
            f"{list(b.shares)}, moved {b.moved}, retaken {b.retaken}; {b.replies} replies;"
            f" {b.decisions}"
        )
    for name, r in (("sqlite", result.sqlite_latency), ("postgresql", result.postgresql_latency)):
        print(f"push {name}: {r.replied}/{r.sent}; p50 {r.p50:.3f} s, p95 {r.p95:.3f} s")
    command = " ".join(["python -m bench.fleet", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"`{command}` · {when} · {machine()} · load average {load_before} before, {load()} after"
    )
    text = header + "\n\n" + table(fleet_rows(result)) + "\n"
    print("\n" + text, end="")
    if args.output is not None:
        args.output.write_text(text)
    if args.json is not None:
        data = figures(result)
        data["command"], data["when"], data["machine"] = command, when, machine()
        data["details"] = asdict(result)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
