"""The SQLite database file: opening it, migrating it, and transactions.

One `Database` is a thread's handle on the process's connections to the store (a small pool per
file, see `triage.store.sqlite_pool`). Writes happen inside `transaction()`, which commits on
success and rolls back on error, so an effect and its record land together or not at all.

Code outside this package sees the `Tx`, `Result` and `Row` types declared here, never a
driver's: a second backend supplies its own objects of the same shape.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from triage.core.errors import ConfigError, StoreError
from triage.core.settings import StoreSettings
from triage.store.dialect import SQLITE, Dialect
from triage.store.schema import MIGRATIONS
from triage.store.sqlite_pool import SqliteHandle

if TYPE_CHECKING:
    from triage.store.postgres.backend import PgPool

# Every error the store can raise: its own and the database driver's (callers outside the store
# name this tuple, not the driver, so a second database needs no change there).
STORE_ERRORS: tuple[type[Exception], ...] = (StoreError, sqlite3.Error)

log = logging.getLogger(__name__)

# The oldest SQLite library the store's SQL runs on: `INSERT … RETURNING` arrived in 3.35.0.
SQLITE_MINIMUM = (3, 35, 0)
# The SQLite library this Python's sqlite3 module uses (not the Python version).
SQLITE_VERSION = sqlite3.sqlite_version


def sqlite_library_problem(
    version: tuple[int, int, int] = sqlite3.sqlite_version_info,
) -> str | None:
    """Why the SQLite library (`version`, by default this Python's) cannot run the store, or
    None when it can."""
    if version >= SQLITE_MINIMUM:
        return None
    have = ".".join(map(str, version))
    need = ".".join(map(str, SQLITE_MINIMUM))
    return f"SQLite {have} is too old for triage's store, which needs {need} or newer"


# What a statement's parameters may be: positional (`?`) or named (`:name`).
Params = Sequence[object] | Mapping[str, object]


class Row(Protocol):
    """One result row: by column name (`r["id"]`, the first column of that name) or position
    (`r[0]`), its column names (`keys()`) and its values in order (`tuple(r)`)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]: ...


class Result(Protocol):
    """What running a statement returns: its rows, and how many rows it changed."""

    def fetchone(self) -> Any: ...  # Row | None, typed as loosely as the drivers type it

    def fetchall(self) -> Sequence[Row]: ...

    def __iter__(self) -> Iterator[Row]: ...

    @property
    def rowcount(self) -> int: ...


def inserted_id(result: Result) -> int:
    """The id that an `INSERT … RETURNING id` returned, 0 when it inserted nothing (an
    `INSERT … SELECT` that found no row). The portable form of a driver's `lastrowid`."""
    row = result.fetchone()
    return 0 if row is None else int(row[0])


class Connection(Protocol):
    """What a `Tx` runs statements on: a driver's connection, or a backend's wrapper of one."""

    def execute(self, sql: str, parameters: Params = (), /) -> Result: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[object]], /) -> Result: ...


# The store holds every inbound message and reply: readable by the service user only.
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def timestamp(moment: datetime) -> str:
    """The stored form of a time: UTC ISO 8601 with microseconds, which sorts as text (a naive
    time is taken as UTC). Every timestamp column holds this form."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def utcnow() -> str:
    """The current time in its stored form (see `timestamp`)."""
    return timestamp(datetime.now(UTC))


def ensure_directory(path: Path) -> None:
    """Create the store's directory (mode 0700) if missing; warn once if an existing one can be
    written by group or others (it is the operator's: left as it is)."""
    directory = path.parent
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the directory of the store {path}: {exc}") from None
    else:
        return
    try:
        mode = directory.stat().st_mode
    except OSError as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    if stat.S_ISDIR(mode) and mode & (stat.S_IWGRP | stat.S_IWOTH):
        _warn_writable_directory(str(directory), mode & (stat.S_ISVTX | 0o777))


@functools.cache
def _warn_writable_directory(directory: str, mode: int) -> None:
    # Once per directory and mode: every thread opens the store, one warning is enough.
    log.warning(
        "the store's directory %s (mode %03o) can be written by other users, who could replace "
        "the database; run `chmod go-w %s` or move store.path",
        directory,
        mode,
        directory,
    )


def _create_private(path: Path) -> None:
    """Create an empty database file of mode 0600 unless one exists; warn when an existing one
    (say, from before triage made them private) can be read by group or others.

    SQLite creates the -wal and -shm files with the database file's mode, so they are 0600 too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        with suppress(OSError):
            mode = path.stat().st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                _warn_readable_store(str(path), stat.S_IMODE(mode))
        return
    except OSError as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    finally:
        os.close(fd)


@functools.cache
def _warn_readable_store(path: str, mode: int) -> None:
    # Once per file and mode: every thread opens the store.
    log.warning(
        "the store %s (mode %04o) can be read by other users, and it holds every message; "
        "run `chmod 600 %s*`",
        path,
        mode,
        path,
    )


class Guard(Protocol):
    """A check every transaction of a `Database` handle begins with (see `Database.guard`)."""

    def check(self, tx: Tx, /) -> None:
        """Raise (a StoreError) to refuse the transaction `tx`, before its first statement."""

    def holds(self) -> bool:
        """Whether, as far as this process can tell without the database, `check` would still
        pass: asked right before an effect that cannot be recorded first (an SMTP final dot)."""


class Tx:
    """One unit of work: the open transaction that a domain step hands to the repositories.

    The domain receives a `Tx` (never a driver connection) and passes it on; only the modules of
    `triage.store` run SQL on it, so a second backend changes what is behind it, not its callers.
    The SQL that differs between backends comes from its `dialect`.
    """

    __slots__ = ("_conn", "dialect")

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self._conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement in this transaction (for `triage.store` only)."""
        # On the hot path (several statements per message): nothing more than the call itself.
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> Result:
        """Run one statement for many rows in this transaction (for `triage.store` only)."""
        return self._conn.executemany(sql, rows)


class _BufferedResult:
    """The rows and rowcount of a statement whose connection went back to the pool."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[sqlite3.Row], rowcount: int) -> None:
        self._rows = iter(rows)
        self.rowcount = rowcount

    def fetchone(self) -> sqlite3.Row | None:
        return next(self._rows, None)

    def fetchall(self) -> list[sqlite3.Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[sqlite3.Row]:
        return self._rows


class _SqliteReads:
    """`Database.reads` on SQLite: in the handle's open transaction if there is one; else each
    statement on a pooled connection, in autocommit, its rows read before the connection goes
    back (as `reads` on PostgreSQL)."""

    __slots__ = ("_handle",)

    def __init__(self, handle: SqliteHandle) -> None:
        self._handle = handle

    def execute(self, sql: str, parameters: Params = (), /) -> Result:
        conn = self._handle.tx_conn
        if conn is not None:
            return conn.execute(sql, parameters)
        with self._handle.borrowed() as conn:
            cursor = conn.execute(sql, parameters)
            return _BufferedResult(cursor.fetchall(), cursor.rowcount)

    def executemany(self, sql: str, parameters: Iterable[Sequence[object]], /) -> Result:
        conn = self._handle.tx_conn
        if conn is not None:
            return conn.executemany(sql, parameters)
        with self._handle.borrowed() as conn:
            cursor = conn.executemany(sql, parameters)
            return _BufferedResult(cursor.fetchall(), cursor.rowcount)


class Database:
    """An open, migrated triage database.

    `Database(path)` opens (creating it) a SQLite file; `Database(settings.store)` opens what
    the settings say: the SQLite file, or the PostgreSQL database of `url` (a
    `PostgresDatabase`, a cheap per-thread handle on the process's connection pool).

    On SQLite too a `Database` is a cheap handle, one per thread, on the process's pool of
    connections to the file (`triage.store.sqlite_pool`, at most `store.pool_size`): it holds a
    connection only for one transaction, or for one statement read outside a transaction.

    `guard`, when set, is checked at the start of every transaction of this handle and may
    raise to refuse it (rolled back, nothing written): fleet mode sets it to a lease's fence
    (`triage.store.leases.Fence`), so that every effect an account's worker records is recorded
    under the lease it holds, or not at all. Its text names it in what the handle claims (the
    outbox's `claimed_by`).
    """

    guard: Guard | None = None
    _sqlite: SqliteHandle

    def __new__(cls, store: StoreSettings | Path | str) -> Database:
        if cls is Database and isinstance(store, StoreSettings) and store.is_postgresql:
            return super().__new__(PostgresDatabase)
        return super().__new__(cls)

    def __init__(self, store: StoreSettings | Path | str) -> None:
        path = store.path if isinstance(store, StoreSettings) else store
        self.path = Path(path)
        # How messages name this database (for a server, its address without a password).
        self.name = str(path)
        settings = store if isinstance(store, StoreSettings) else StoreSettings(path=self.path)
        if problem := sqlite_library_problem():
            raise StoreError(f"cannot open the database {self.name}: {problem}")
        try:
            if str(path) != ":memory:":
                ensure_directory(self.path)
                _create_private(self.path)
            self._sqlite = SqliteHandle(self.name, settings.pool_size, settings.pool_timeout)
        except OSError as exc:
            raise StoreError(f"cannot open the database {self.name}: {exc}") from None
        # One Tx serves every read: it finds the open transaction, or borrows a connection.
        self._reads = Tx(_SqliteReads(self._sqlite), SQLITE)
        try:
            with self._sqlite.pool.migration_lock, self._sqlite.borrowed() as conn:
                self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"the database {self.name} is unusable: {exc}") from None
        except BaseException:
            self.close()
            raise

    @property
    def in_transaction(self) -> bool:
        """Whether this handle's `transaction()` block is open."""
        return self._sqlite.tx_conn is not None

    @property
    def reads(self) -> Tx:
        """The unit of work for reads: inside `transaction()` that transaction's; outside, each
        statement sees committed data."""
        return self._reads

    @property
    def schema_version(self) -> int:
        """The `user_version` of the open database: how many migrations it has had."""
        row = self._reads.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the database {self.name} has schema {current}, newer than this triage "
                f"({len(MIGRATIONS)}); upgrade triage"
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # executescript commits first; wrap each migration so it applies entirely or not.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    @contextmanager
    def transaction(self, *, guarded: bool = True) -> Iterator[Tx]:
        """A write transaction (`BEGIN IMMEDIATE`: one writer at a time) on one pooled
        connection: committed when the block ends, rolled back if it raises. `guard`, when set,
        is checked first in it (see `guard`) unless `guarded` is False: for records that are
        right whoever holds the lease now (the outcome of a send this handle claimed, which
        names its own claim)."""
        handle = self._sqlite
        if handle.tx_conn is not None:
            raise StoreError(f"{self.name}: cannot start a transaction within a transaction")
        with handle.writing(), handle.borrowed() as conn:
            conn.execute("BEGIN IMMEDIATE")
            handle.tx_conn = conn
            tx = Tx(conn, SQLITE)
            try:
                if guarded and self.guard is not None:
                    self.guard.check(tx)
                yield tx
            except BaseException:
                handle.tx_conn = None
                conn.execute("ROLLBACK")
                raise
            handle.tx_conn = None
            conn.execute("COMMIT")

    def close(self) -> None:
        """Release the handle; the object is unusable afterwards. The last handle of a file
        closes the pool's idle connections."""
        self._sqlite.close()


class PostgresDatabase(Database):
    """A triage database on PostgreSQL: the same API as the SQLite one, over the process's
    connection pool for the URL (see `triage.store.postgres.backend`). A transaction holds one
    pooled connection for its block only; reads outside a transaction borrow one each."""

    def __init__(self, store: StoreSettings | Path | str) -> None:
        assert isinstance(store, StoreSettings) and store.is_postgresql
        from triage.store.postgres.backend import PgHandle

        self.path = Path()
        self.name = store.url
        self._handle = PgHandle(_pool(store, migrate=True))

    @property
    def in_transaction(self) -> bool:
        """Whether this handle's transaction is open."""
        return self._handle.in_transaction

    @property
    def reads(self) -> Tx:
        """Reads outside a transaction (each on a pooled connection), or in the open one."""
        reads = self._handle.reads
        return Tx(reads, reads.dialect)

    @property
    def schema_version(self) -> int:
        """How many migrations the database has had."""
        return self._handle.schema_version

    @contextmanager
    def transaction(self, *, guarded: bool = True) -> Iterator[Tx]:
        """A write transaction (READ COMMITTED, locks where the store asks for them):
        committed when the block ends, rolled back if it raises; `guarded` as on SQLite."""
        with self._handle.transaction() as tx:
            unit = Tx(tx, tx.dialect)
            if guarded and self.guard is not None:
                self.guard.check(unit)
            yield unit

    def close(self) -> None:
        """Nothing to release: the connections belong to the process's pool."""


def _pool(store: StoreSettings, *, migrate: bool) -> PgPool:
    from triage.store.postgres.backend import pool_for

    try:
        password = store.password()
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
    return pool_for(
        store.url,
        password=password,
        max_size=store.pool_size,
        timeout=store.pool_timeout,
        purpose=Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None,
        migrate=migrate,
    )


def server_reads(store: StoreSettings) -> Tx:
    """Reads on the PostgreSQL database of `store` (each statement on a pooled connection, in
    autocommit), which is not migrated: for readers that never write, such as training and
    model comparison, while a daemon may be writing. StoreError when it cannot be reached."""
    from triage.store.postgres.backend import PgReads

    reads = PgReads(_pool(store, migrate=False))
    return Tx(reads, reads.dialect)
