"""The store on PostgreSQL: one connection pool per process and URL, transactions, migrations.

- `pool_for(url, ...)` returns the process-wide `PgPool` of a URL, creating it on first use: it
  connects once (so a wrong URL or password fails at once with the server's reason), migrates the
  database under an advisory lock (two processes starting together migrate once) and opens a
  `psycopg_pool.ConnectionPool`. Threads share it: a thread holds a connection only for one
  statement or one transaction, so ten connections serve a thousand mailboxes.
- `PgHandle(pool)` is the per-thread handle a `Database` wraps: `transaction()` (committed when
  the block ends, rolled back if it raises), `reads` (inside an open transaction, that
  transaction; outside, one pooled connection per statement and a buffered result),
  `in_transaction`, `schema_version`.
- Statements are written for sqlite3 (`?`, `:name`) and translated once each
  (`triage.store.postgres.translate`). Rows are `PgRow`s: tuples that also answer by column
  name and `keys()`, as `sqlite3.Row` does.
- Every psycopg error leaves as a `StoreError` subclass (`StoreUnavailable`, `StoreConflict`,
  `StoreIntegrityError`), one line, naming the database by its URL without the password.
- After a fork the child forgets the parent's pools without touching their sockets, and opens
  its own on first use.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol, SupportsIndex, overload

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from triage import __version__
from triage.core.errors import (
    StoreConflict,
    StoreError,
    StoreIntegrityError,
    StoreInUseError,
    StoreUnavailable,
)
from triage.store.per_process import PerProcess
from triage.store.postgres import ddl
from triage.store.postgres.translate import translate

if TYPE_CHECKING:
    from psycopg._cursor_base import BaseCursor

__all__ = [
    "BufferedResult",
    "PgHandle",
    "PgPool",
    "PgRow",
    "PgTx",
    "PostgresDialect",
    "close_pools",
    "display_name",
    "hold_store_lock",
    "pool_for",
    "run_migrations",
    "schema_version",
]

Params = Sequence[object] | Mapping[str, object]

# Every session: a lock wait ends after 30 s with StoreConflict (SQLite's busy timeout), and a
# session idle inside a transaction (a paused process) is ended after 10 s, so it cannot keep
# locks that others wait for.
_SESSION_OPTIONS = "-c lock_timeout=30s -c idle_in_transaction_session_timeout=10s"
# A peer that vanished (a dead host, a dropped NAT entry) is noticed within about a minute.
_KEEPALIVES: Final[Mapping[str, int]] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_CONNECT_TIMEOUT = 10
_APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1: the server truncates longer names
# pg_advisory_xact_lock key of the migration runner ("triage" and 1, as a positive bigint).
_MIGRATION_LOCK = 0x7472_6961_6765_0001
# pg_try_advisory_lock key of `triage.store.lock.exclusive` ("triage" and 2): one acting process
# per database until fleet mode shares the mailboxes out.
_STORE_LOCK = 0x7472_6961_6765_0002
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS triage_schema ("
    " version BIGINT PRIMARY KEY,"
    ' applied_at TEXT COLLATE "C" NOT NULL,'
    ' triage_version TEXT COLLATE "C" NOT NULL)'
)

# SQLSTATEs by what the caller can do about them (see triage.core.errors).
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "58"})  # connection, resources, system
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03"})  # shutdown, crash, starting up
_CONFLICT_STATES = frozenset({"40001", "40P01", "55P03", "25P03"})  # serialization, deadlock,
# lock timeout, a transaction ended by idle_in_transaction_session_timeout
_INTEGRITY_STATES = frozenset({"23505", "23503"})  # unique, foreign key


# --------------------------------------------------------------------------------------------
# Rows


class PgRow(tuple[Any, ...]):
    """One result row: a tuple that also answers `row["name"]` and `keys()` like sqlite3.Row.

    A name finds the first column of that name (then case-insensitively, as sqlite3.Row does).
    The row factory makes one subclass per distinct column list, so rows carry no per-row map.
    """

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _index: Mapping[str, int] = {}

    @overload
    def __getitem__(self, key: SupportsIndex | str) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, str):
            position = self._index.get(key)
            if position is None:
                position = self._index.get(key.lower())
            if position is None:
                raise IndexError(f"no column named {key!r}")
            return tuple.__getitem__(self, position)
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """The column names, in order (duplicates included), as sqlite3.Row.keys() gives them."""
        return list(self._names)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    index: dict[str, int] = {}
    for position, name in enumerate(names):
        index.setdefault(name, position)
    for position, name in enumerate(names):
        index.setdefault(name.lower(), position)
    return type("PgRow", (PgRow,), {"__slots__": (), "_names": names, "_index": index})


def pg_row(cursor: BaseCursor[Any, Any]) -> RowMaker[PgRow]:
    """psycopg row factory making `PgRow`s."""
    description = cursor.description
    cls = _row_class(tuple(column.name for column in description or ()))

    def make(values: Sequence[Any]) -> PgRow:
        return tuple.__new__(cls, values)

    return make


class _NumericLoader(Loader):
    """`numeric` as sqlite3 would give it: an int when integral (sum() of BIGINTs), else a float
    (avg(), round()), never a Decimal that the store's callers do not expect."""

    def load(self, data: Buffer) -> int | float:
        text = bytes(data)
        if text.isdigit() or (text[:1] == b"-" and text[1:].isdigit()):
            return int(text)
        return float(text)


def _configure(conn: psycopg.Connection[PgRow]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)


# --------------------------------------------------------------------------------------------
# Results


class BufferedResult:
    """The rows and rowcount of a statement that ran on a connection already back in the pool."""

    __slots__ = ("_next", "_rows", "rowcount")

    def __init__(self, rows: list[PgRow], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> PgRow | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[PgRow]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[PgRow]:
        while (row := self.fetchone()) is not None:
            yield row


# --------------------------------------------------------------------------------------------
# Dialect


class _Executes(Protocol):
    def execute(self, sql: str, params: Params = ()) -> Any: ...


_NUMBERS = (
    "SELECT (value)::float8 AS value FROM jsonb_each(triage_json_object(m.probabilities))"
    " WHERE jsonb_typeof(value) = 'number'"
)


class PostgresDialect:
    """PostgreSQL's SQL fragments; stateless, one per process (`DIALECT`)."""

    __slots__ = ()

    name: Final = "postgresql"
    # PostgreSQL's LIKE respects case; SQLite's ignores ASCII case, and the search box relies on it.
    ci_like: Final = "ILIKE"
    # clock_timestamp(), not now(): a transaction's start time would stand still inside a long
    # transaction. Cast from numeric, which extract() returns, to a float as SQLite gives it.
    now_epoch: Final = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    # review.py's uncertainty, 1 - (p_top - p_second) of `m.probabilities`, or NULL when it is not
    # a JSON object with numbers (needs `ddl.JSON_OBJECT_FUNCTION`).
    uncertainty: Final = (
        f"CASE WHEN EXISTS ({_NUMBERS}) THEN"
        f" ROUND((1 - (({_NUMBERS} ORDER BY value DESC LIMIT 1)"
        f" - COALESCE(({_NUMBERS} ORDER BY value DESC LIMIT 1 OFFSET 1), 0)))::numeric, 6)"
        " END"
    )

    def translate(self, sql: str, named: bool = False) -> str:
        return translate(sql, named)

    def in_list(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        """`column = ANY(?)` with the values as one array: one statement text for any length."""
        return f"{column} = ANY(?)", [list(values)]

    def in_many(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        """As `in_list`: an array parameter has no length limit."""
        return f"{column} = ANY(?)", [list(values)]

    def for_update(self, *, skip_locked: bool = False, keep_key: bool = False) -> str:
        mode = " FOR NO KEY UPDATE" if keep_key else " FOR UPDATE"
        return f"{mode} SKIP LOCKED" if skip_locked else mode

    def for_share(self, *, key_only: bool = False) -> str:
        return " FOR KEY SHARE" if key_only else " FOR SHARE"

    def lock(self, tx: _Executes, namespace: str, key: str) -> None:
        """Wait for the transaction-scoped lock of (`namespace`, `key`); commit or rollback
        releases it. Namespaces are fixed words without "/", so the pair maps to one text."""
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"{namespace}/{key}",))


DIALECT: Final = PostgresDialect()


# --------------------------------------------------------------------------------------------
# Errors and names


def display_name(url: str) -> str:
    """The URL as messages show it: `postgresql://user@host:port/dbname`, never a password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        # libpq's complaint may quote the URL, password included: say nothing of it.
        raise StoreError("the store URL is not a valid PostgreSQL connection URL") from None
    user = params.get("user")
    host = params.get("host") or ""
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{params.get('dbname') or ''}"


def _one_line(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"\s+", " ", text).strip()


def map_error(
    exc: psycopg.Error, name: str, *, secrets: Iterable[str] = (), timeout: float = 0.0
) -> StoreError:
    """The `StoreError` subclass for a psycopg (or pool) error: one line naming `name`, with
    every string of `secrets` (the password) masked."""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(
            f"{name}: no database connection within {timeout:g} s (server down or pool exhausted)"
        )
    state = exc.sqlstate
    text = _one_line(str(exc), secrets) or type(exc).__name__
    if state is None:
        # Client-side: the connection failed or broke (libpq gives no SQLSTATE for those).
        kind = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else StoreError
        return kind(f"{name}: {text}")
    return _kind(state)(f"{name}: {text} (SQLSTATE {state})")


def _kind(state: str) -> type[StoreError]:
    if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
        return StoreUnavailable
    if state in _CONFLICT_STATES:
        return StoreConflict
    if state in _INTEGRITY_STATES:
        return StoreIntegrityError
    return StoreError


# --------------------------------------------------------------------------------------------
# Migrations


def schema_version(conn: psycopg.Connection[PgRow]) -> int:
    """How many migrations the database has had (0 for an empty database)."""
    row = conn.execute("SELECT to_regclass('triage_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM triage_schema").fetchone()
    return 0 if row is None else int(row[0])


def _check_committed(transaction: psycopg.Transaction, name: str) -> None:
    """Raise unless the block committed: psycopg leaves a transaction on a connection that
    broke inside it without a word (status FAILED), and the caller must not think it landed."""
    if transaction.status is psycopg.Transaction.Status.FAILED:
        raise StoreUnavailable(f"{name}: the connection broke; the transaction was not committed")


def _refuse_newer(name: str, current: int, known: int) -> None:
    if current > known:
        raise StoreError(
            f"the database {name} has schema {current}, newer than this triage ({known}); "
            "upgrade triage"
        )


def run_migrations(
    conn: psycopg.Connection[PgRow], name: str, scripts: Sequence[str] | None = None
) -> int:
    """Bring the database to the last of `scripts` (default: every migration of the schema,
    as `ddl` maps them); return the schema version.

    Each migration runs in its own transaction that first takes an advisory lock and re-reads
    the version, so concurrent starters apply each migration exactly once; `triage_schema` gets
    one row per migration. A database newer than `scripts` is refused. `conn` is in autocommit.
    """
    scripts = ddl.migrations() if scripts is None else scripts
    from triage.store.db import utcnow

    current = schema_version(conn)
    _refuse_newer(name, current, len(scripts))
    while current < len(scripts):
        with conn.transaction() as transaction:
            # Wait for another process's migration however long it takes (lock_timeout would
            # end the wait after 30 s); the migration itself keeps the session's lock_timeout.
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("SET LOCAL lock_timeout TO DEFAULT")
            conn.execute(_SCHEMA_TABLE)
            current = schema_version(conn)
            _refuse_newer(name, current, len(scripts))
            if current >= len(scripts):
                break
            conn.execute(scripts[current])  # no parameters: several statements, no placeholders
            conn.execute(
                "INSERT INTO triage_schema (version, applied_at, triage_version)"
                " VALUES (%s, %s, %s)",
                (current + 1, utcnow(), __version__),
            )
        _check_committed(transaction, name)
        current += 1
    return current


# --------------------------------------------------------------------------------------------
# The pool


def _application_name(purpose: str | None) -> str:
    name = f"triage {purpose + ' ' if purpose else ''}{socket.gethostname()}:{os.getpid()}"
    return name[:_APPLICATION_NAME_MAX]


class PgPool:
    """The process-wide connection pool of one database (use `pool_for`, not this class)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        max_size: int = 10,
        timeout: float = 30.0,
        purpose: str | None = None,
        migrate: bool = True,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.name = display_name(url)
        self.timeout = timeout
        self.dialect: PostgresDialect = DIALECT
        self._secrets = tuple(
            s for s in (password, conninfo_to_dict(url).get("password")) if isinstance(s, str)
        )
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": pg_row,
            "application_name": _application_name(purpose),
            "options": _SESSION_OPTIONS,
            "connect_timeout": _CONNECT_TIMEOUT,
            **_KEEPALIVES,
        }
        if password is not None:
            kwargs["password"] = password
        # One direct connection first: it fails with the server's reason (the pool would only
        # time out), and it runs the migrations before any pooled connection exists.
        try:
            with psycopg.connect(url, **kwargs) as conn:
                _configure(conn)
                if migrate:
                    run_migrations(conn, self.name)
        except psycopg.Error as exc:
            raise self.error(exc) from None
        self.migrated = migrate
        self._pool: ConnectionPool[psycopg.Connection[PgRow]] = ConnectionPool(
            url,
            connection_class=psycopg.Connection[PgRow],
            kwargs=kwargs,
            min_size=1,
            max_size=max_size,
            open=False,
            configure=_configure,
            # A connection a server restart broke is dropped when it is taken, not handed out.
            check=ConnectionPool.check_connection,
            name=self.name,
            timeout=timeout,
        )
        self._pool.open(wait=False)

    def migrate(self) -> None:
        """Bring the database to this code's schema, unless this process did already."""
        if not self.migrated:
            with self.connection() as conn:
                run_migrations(conn, self.name)
            self.migrated = True

    def error(self, exc: psycopg.Error) -> StoreError:
        """`exc` as the store reports it (see `map_error`)."""
        return map_error(exc, self.name, secrets=self._secrets, timeout=self.timeout)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[PgRow]]:
        """A pooled connection (autocommit) for the block; psycopg errors become StoreErrors."""
        try:
            with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
        except psycopg.Error as exc:
            raise self.error(exc) from None

    def stats(self) -> dict[str, int]:
        """psycopg_pool's counters (pool_size, pool_available, requests_waiting, …)."""
        return self._pool.get_stats()

    def close(self) -> None:
        """Close the pool's connections and forget it; the next `pool_for` opens a new one."""
        with _registry.lock:
            _registry.remove(self)
        self._pool.close()


# Pools are per process (and forgotten in a forked child: see `triage.store.per_process`).
_registry: PerProcess[tuple[str, str | None], PgPool] = PerProcess({})


def pool_for(
    url: str,
    *,
    password: str | None = None,
    max_size: int = 10,
    timeout: float = 30.0,
    purpose: str | None = None,
    migrate: bool = True,
) -> PgPool:
    """The process's pool for `url`, opened (and the database migrated) on first use.

    `password` (from a password file) is given to libpq beside the URL; otherwise the URL's or
    libpq's environment (PGPASSWORD, ~/.pgpass) applies. `max_size` connections at most, each
    `pool_for` of the same URL shares the first one's pool (its size and timeout win); a thread
    waiting longer than `timeout` seconds for a connection gets `StoreUnavailable`. `purpose`
    (e.g. "run", "web") goes into the server's application_name with host and pid.
    """
    key = (url, password)
    with _registry.lock:
        pool = _registry.items.get(key)
        if pool is None:
            pool = PgPool(
                url,
                password=password,
                max_size=max_size,
                timeout=timeout,
                purpose=purpose,
                migrate=migrate,
            )
            _registry.items[key] = pool
        elif migrate:
            pool.migrate()  # opened by a reader that did not migrate
        return pool


# The session holding a session-level advisory lock of this database on the key (split as
# pg_locks shows a bigint key: classid the high half, objid the low one, objsubid 1).
_LOCK_HOLDER = """
    SELECT a.application_name, host(a.client_addr), a.pid
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = %s AND l.objid::bigint = %s
    """


def hold_store_lock(
    url: str, *, password: str | None = None, purpose: str | None = None, shared: bool = False
) -> psycopg.Connection[PgRow]:
    """Take the database's store lock (a session advisory lock) on a connection of its own,
    outside the pool, and return that connection: the lock lasts until it is closed or the
    session ends (the process dies, SIGKILL included). `StoreInUseError` at once, naming the
    holder's application name, address and server pid, when another session holds it in a
    conflicting mode. `shared`: the fleet's instances hold it together, excluding only an
    exclusive holder (`triage once`)."""
    name = display_name(url)
    secrets = tuple(
        s for s in (password, conninfo_to_dict(url).get("password")) if isinstance(s, str) and s
    )
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "row_factory": pg_row,
        "application_name": _application_name(purpose),
        "connect_timeout": _CONNECT_TIMEOUT,
        **_KEEPALIVES,
    }
    if password is not None:
        kwargs["password"] = password
    try:
        conn: psycopg.Connection[PgRow] = psycopg.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise map_error(exc, name, secrets=secrets) from None
    try:
        take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        row = conn.execute(f"SELECT {take}(%s)", (_STORE_LOCK,)).fetchone()
        if row is not None and row[0]:
            return conn
        holder = conn.execute(_LOCK_HOLDER, (_STORE_LOCK >> 32, _STORE_LOCK & 0xFFFF_FFFF))
        found = holder.fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise map_error(exc, name, secrets=secrets) from None
    conn.close()
    by = ""
    if found is not None:
        application, address, pid = found
        where = f" at {address}" if address else ""
        by = f" ({application or 'unnamed'}{where}, server pid {pid})"
    raise StoreInUseError(
        f"the store {name} is in use by another triage process{by}; "
        + (
            "it holds it alone (`triage once`, or a triage run from before fleet mode)"
            if shared
            else "one process per store (instances of `triage run` share it; `triage once` not)"
        )
    )


def close_pools() -> None:
    """Close every pool of this process (at shutdown, and between tests)."""
    with _registry.lock:
        pools = list(_registry.items.values())
        _registry.items.clear()
    for pool in pools:
        pool._pool.close()


# --------------------------------------------------------------------------------------------
# Transactions and handles


class PgTx:
    """Statements on one connection: inside a transaction, or (for `reads`) in autocommit."""

    __slots__ = ("_conn", "_pool", "dialect")

    def __init__(self, conn: psycopg.Connection[PgRow], pool: PgPool) -> None:
        self._conn = conn
        self._pool = pool
        self.dialect: PostgresDialect = pool.dialect

    def execute(self, sql: str, params: Params = ()) -> psycopg.Cursor[PgRow]:
        """Run one statement (sqlite3's placeholders) and return its cursor."""
        try:
            return self._conn.execute(translate(sql, isinstance(params, Mapping)), params)
        except psycopg.Error as exc:
            raise self._pool.error(exc) from None

    def executemany(self, sql: str, rows: Iterable[Params]) -> psycopg.Cursor[PgRow]:
        """Run one statement for many rows (psycopg pipelines them)."""
        batch = list(rows)
        cursor = self._conn.cursor()
        named = bool(batch) and isinstance(batch[0], Mapping)
        try:
            cursor.executemany(translate(sql, named), batch)
        except psycopg.Error as exc:
            raise self._pool.error(exc) from None
        return cursor


class PgReads:
    """`reads` outside a transaction: each statement on a pooled connection of its own, in
    autocommit, so it sees what was committed before it (as SQLite's autocommit reads do)."""

    __slots__ = ("_pool", "dialect")

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool
        self.dialect: PostgresDialect = pool.dialect

    def _buffered(self, run: Callable[[PgTx], psycopg.Cursor[PgRow]]) -> BufferedResult:
        with self._pool.connection() as conn:
            cursor = run(PgTx(conn, self._pool))
            try:
                rows = cursor.fetchall() if cursor.description is not None else []
            except psycopg.Error as exc:
                raise self._pool.error(exc) from None
            return BufferedResult(rows, cursor.rowcount)

    def execute(self, sql: str, params: Params = ()) -> BufferedResult:
        return self._buffered(lambda tx: tx.execute(sql, params))

    def executemany(self, sql: str, rows: Iterable[Params]) -> BufferedResult:
        return self._buffered(lambda tx: tx.executemany(sql, rows))


class PgHandle:
    """One thread's handle on a pool: what a `Database` on PostgreSQL delegates to.

    Cheap to create (no connection of its own). A handle remembers its open transaction, so
    `reads` and `in_transaction` inside `transaction()` use that transaction's connection.
    Not for sharing between threads (like a sqlite3 connection).
    """

    __slots__ = ("_pool", "_tx")

    def __init__(self, pool: PgPool) -> None:
        self._pool = pool
        self._tx: PgTx | None = None

    @property
    def name(self) -> str:
        """The database's URL without the password."""
        return self._pool.name

    @property
    def dialect(self) -> PostgresDialect:
        return self._pool.dialect

    @property
    def in_transaction(self) -> bool:
        """Whether this handle's `transaction()` block is open."""
        return self._tx is not None

    @property
    def reads(self) -> PgTx | PgReads:
        """Reads: in the open transaction if there is one, else each on a pooled connection."""
        return self._tx if self._tx is not None else PgReads(self._pool)

    @property
    def schema_version(self) -> int:
        """How many migrations the database has had."""
        with self._pool.connection() as conn:
            return schema_version(conn)

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        """A transaction (READ COMMITTED) on one pooled connection: committed when the block
        ends, rolled back if it raises. Nested transactions are refused, as on SQLite."""
        if self._tx is not None:
            raise StoreError(f"{self.name}: cannot start a transaction within a transaction")
        with self._pool.connection() as conn:
            try:
                with conn.transaction() as transaction:
                    self._tx = PgTx(conn, self._pool)
                    try:
                        yield self._tx
                    finally:
                        self._tx = None
            except psycopg.Error as exc:  # BEGIN, COMMIT or ROLLBACK failed
                raise self._pool.error(exc) from None
            _check_committed(transaction, self.name)

    def close(self) -> None:
        """Nothing to release: connections belong to the pool (see `PgPool.close`)."""
