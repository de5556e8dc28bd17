"""The store on SQLite: a small pool of connections per database file, shared by the process.

A daemon runs one thread per mailbox, and each thread has its own `Database` handle. Were each
handle to keep a connection for the thread's life, every mailbox would cost three file
descriptors (the database, its -wal and -shm files) and a page cache of its own. Instead the
handles of one file share a `SqlitePool`: a thread borrows a connection for one transaction, or
for one statement read outside a transaction, and gives it back, so a few connections serve a
thousand mailboxes (SQLite has one writer at a time anyway, `BEGIN IMMEDIATE`).

- `pool_for(path, size, timeout)` returns the process's pool of a file, keyed by the file's
  device and inode: a file replaced on disk (a restored backup, a test's fresh store) gets a new
  pool. The registry holds pools weakly: a pool lives as long as a handle holds it.
- At most `size` connections are open; a thread that finds them all borrowed waits up to
  `timeout` seconds, then gets `StoreUnavailable` (retried like any outage). A thread that
  already holds one of the pool's connections (a read on a second handle inside a transaction)
  never waits for another: it could wait for itself. It gets an extra connection, closed when
  given back.
- `:memory:` is one database per connection: its pool is the handle's own, of one connection.
- After a fork the child forgets the parent's pools without closing their connections (SQLite
  connections must not cross a fork), and opens its own on first use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from triage.core.errors import StoreError, StoreUnavailable
from triage.store.per_process import PerProcess

__all__ = ["SqliteHandle", "SqlitePool", "pool_for"]


def _connect(path: str) -> sqlite3.Connection:
    """A connection set up as the store expects (raises sqlite3.Error)."""
    # isolation_level=None: the store issues BEGIN/COMMIT itself, so a transaction is exactly the
    # block it says. check_same_thread=False: a connection serves one thread at a time, but not
    # always the same one.
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop the
        # last transactions, and the ledger makes that safe to redo.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # 512 KiB of page cache per connection instead of SQLite's 2 MiB: another connection's
        # write empties this one's cache at its next read (and the recording thread writes every
        # batch), so a bigger one is mostly memory held per pooled connection; the file's pages
        # stay in the system's page cache either way.
        conn.execute("PRAGMA cache_size = -512")
    except BaseException:
        conn.close()
        raise
    return conn


class SqlitePool:
    """The connections of one SQLite database in this process (use `pool_for`, not this class,
    except for `:memory:`)."""

    def __init__(
        self,
        path: str,
        size: int = 10,
        timeout: float = 30.0,
        connect: Callable[[str], sqlite3.Connection] = _connect,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.path = path
        self.size = size
        self.timeout = timeout
        self.pid = os.getpid()
        self._connect = connect
        self._idle: list[sqlite3.Connection] = []
        self._open = 0  # connections out of `_idle` and in it
        self._cond = threading.Condition(threading.Lock())
        # How many of this pool's connections each thread holds now (see the module's text).
        self._mine = threading.local()
        # Handles not closed yet: when the last one closes, the idle connections close too.
        self._handles = 0
        # Serialises the migration check of new handles (see `Database`).
        self.migration_lock = threading.Lock()
        # This process's writers take turns here before they borrow a connection: one waiting
        # for SQLite's write lock inside BEGIN IMMEDIATE would hold a pooled connection the
        # whole time, and ten such writers would leave none for reads (which WAL never makes
        # wait for a writer). Reentrant, as SQLite's own lock was for a thread's nested use.
        self._write_turn = threading.RLock()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """This process's turn to write to the file, for the block (StoreUnavailable after
        `timeout` seconds without it)."""
        if not self._write_turn.acquire(timeout=self.timeout):
            raise StoreUnavailable(
                f"{self.path}: another transaction of this process kept the database busy for"
                f" {self.timeout:g} s"
            )
        try:
            yield
        finally:
            self._write_turn.release()

    @property
    def open_connections(self) -> int:
        """How many connections are open, borrowed or idle."""
        return self._open

    def acquire(self) -> sqlite3.Connection:
        """A connection for the caller's thread alone until it calls `release` (raises
        StoreUnavailable after `timeout` seconds without one, or sqlite3.Error)."""
        held: int = getattr(self._mine, "held", 0)
        with self._cond:
            deadline: float | None = None
            while not self._idle and self._open >= self.size and not held:
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._idle or self._open < self.size:
                        break
                    raise StoreUnavailable(
                        f"{self.path}: no database connection within {self.timeout:g} s"
                        f" (all {self.size} of the pool's connections in use)"
                    )
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                self._open += 1
        if conn is None:
            try:
                conn = self._connect(self.path)
            except BaseException:
                self._forget()
                raise
        self._mine.held = held + 1
        return conn

    def release(self, conn: sqlite3.Connection) -> None:
        """Give back a connection `acquire` returned; one left inside a transaction (a COMMIT
        that failed) is rolled back first, and closed if even that fails."""
        self._mine.held = max(getattr(self._mine, "held", 1) - 1, 0)
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._discard(conn)
                return
        with self._cond:
            if self._open <= self.size and self._handles > 0:
                self._idle.append(conn)
                self._cond.notify()
                return
        self._discard(conn)  # an extra one (see `acquire`), or nobody needs it any more

    def _discard(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        finally:
            self._forget()

    def _forget(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def attach(self) -> None:
        """A handle starts using the pool."""
        with self._cond:
            self._handles += 1

    def detach(self) -> None:
        """A handle was closed; after the last one the idle connections are closed (a closed
        store keeps no file open) and the next handle opens a new pool."""
        with _registry.lock:  # before `_cond`, as in `pool_for`: no handle attaches in between
            with self._cond:
                self._handles = max(self._handles - 1, 0)
                if self._handles:
                    return
                idle, self._idle = self._idle, []
                self._open -= len(idle)
            _registry.remove(self)
        for conn in idle:
            conn.close()


# Pools by (device, inode) of their file, held weakly: each handle holds its pool.
_registry: PerProcess[tuple[int, int], SqlitePool] = PerProcess(weakref.WeakValueDictionary())


def pool_for(path: str, size: int = 10, timeout: float = 30.0) -> SqlitePool:
    """The process's pool for the database file at `path` (which must exist), created on first
    use, with the caller attached (call `detach` when done); while the pool is in use the first
    caller's `size` and `timeout` win. `:memory:` gets a new pool of one connection each time
    (each is a database of its own). Raises OSError when the file cannot be looked at."""
    if path == ":memory:":
        private = SqlitePool(path, size=1, timeout=timeout)
        private.attach()
        return private
    info = os.stat(path)
    key = (info.st_dev, info.st_ino)
    with _registry.lock:
        pool = _registry.items.get(key)
        if pool is None or pool.pid != os.getpid():
            pool = _registry.items[key] = SqlitePool(path, size=size, timeout=timeout)
        pool.attach()
        return pool


class SqliteHandle:
    """One thread's handle on a file's pool: what a SQLite `Database` delegates to. Cheap to
    create (no connection of its own); it remembers the connection of its open transaction.
    Not for sharing between threads (as a sqlite3 connection was not)."""

    __slots__ = ("closed", "name", "pool", "size", "timeout", "tx_conn")

    def __init__(self, name: str, size: int, timeout: float) -> None:
        self.name = name
        self.size = size
        self.timeout = timeout
        self.pool = pool_for(name, size, timeout)  # OSError when the file cannot be looked at
        # The connection of the open transaction, None outside one.
        self.tx_conn: sqlite3.Connection | None = None
        self.closed = False

    def _current_pool(self) -> SqlitePool:
        if self.pool.pid != os.getpid():
            # A handle that crossed a fork: the parent's connections are not the child's.
            self.pool = pool_for(self.name, self.size, self.timeout)
        return self.pool

    @contextmanager
    def writing(self) -> Iterator[None]:
        """This process's turn to write (see `SqlitePool.writing`)."""
        with self._current_pool().writing():
            yield

    @contextmanager
    def borrowed(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection for the block (StoreError when none can be opened)."""
        if self.closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        self._current_pool()
        try:
            conn = self.pool.acquire()
        except sqlite3.OperationalError as exc:
            # Not found, not allowed, out of file descriptors (a corrupt file is another
            # DatabaseError: "unusable" when the handle is opened).
            raise StoreError(f"cannot open the database {self.name}: {exc}") from None
        try:
            yield conn
        finally:
            self.pool.release(conn)

    def close(self) -> None:
        """Release the handle; the last handle of a file closes the pool's idle connections."""
        if not self.closed:
            self.closed = True
            self.pool.detach()
