"""One process per store: an exclusive lock on `<db>.lock` for the processes that act on mail.

`triage run` and `triage once` fetch, decide, send and file; two of them on one store would do it
all twice (the outbox's start-up recovery, for one, assumes nobody else is sending). They hold
`exclusive(path)` for as long as they work. Commands that only read or make small, transactional
changes (`leads`, `review`, `digest`, `doctor`) do not take it and work while the daemon runs.

The lock is `flock(2)` on a file beside the database, created 0600; it holds the pid of its
holder for the error message. The kernel releases it when the holder dies, SIGKILL included, so
there is never a stale lock to clean up. A flock belongs to the open file, which a fork shares:
forked children (the `ingest.workers` processes) close their copy at once, so that a child that
outlives its parent for a moment never keeps the store locked.

On PostgreSQL (`[store] url`) the lock is a session advisory lock of the database, held on a
connection of its own for as long as the block runs; the server releases it when that session
ends, as the kernel does a flock. Forked children forget that connection without closing it
(closing would end the parent's session). The instances of a fleet (`triage run`) hold it
shared — their mailbox leases keep them apart — and `triage once` exclusively, since it serves
every account without leases.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.core.errors import ConfigError, StoreError, StoreInUseError
from triage.core.settings import StoreSettings
from triage.store.db import FILE_MODE, ensure_directory


@dataclass
class _Held:
    """A lock this process holds: its file descriptor (SQLite) or the connection holding it
    (PostgreSQL), and how many callers hold it."""

    fd: int
    holders: int = 1
    conn: Any = None


# Locks are per process by nature; so is this table. A second `exclusive` of the same store in
# the same process joins the lock instead of failing against itself.
_held: dict[str, _Held] = {}
_guard = threading.Lock()
_fork_hook_installed = False
# Lock connections inherited through a fork: referenced forever, so that the child never
# finalises (and closes) the parent's session.
_orphans: list[Any] = []


def lock_path(db_path: Path) -> Path:
    """The lock file of the store at `db_path`: `triage.db` → `triage.db.lock`."""
    return db_path.with_name(f"{db_path.name}.lock")


def _close_in_child() -> None:
    """After a fork, in the child: close the inherited lock files (the parent keeps its lock)."""
    global _guard  # noqa: PLW0603 - a lock held by another thread at fork time is never released
    for held in _held.values():
        if held.conn is not None:
            _orphans.append(held.conn)
            continue
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _held.clear()
    _guard = threading.Lock()


def _install_fork_hook() -> None:
    global _fork_hook_installed  # noqa: PLW0603 - one hook per process
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_close_in_child)
        _fork_hook_installed = True


def _holder(fd: int) -> int | None:
    """The pid written by the process holding the lock, if it wrote one yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _acquire(db_path: Path) -> int:
    ensure_directory(db_path)
    path = lock_path(db_path)
    try:
        # O_NOFOLLOW: a symlink planted in the store's directory does not redirect the write.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        by = f" (pid {pid})" if pid is not None else ""
        raise StoreInUseError(
            f"the store {db_path} is in use by another triage process{by}; one process per store"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {exc}") from None
    try:
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the pid is a courtesy for the error message; the lock is what matters
    return fd


def _acquire_server(store: StoreSettings, shared: bool) -> _Held:
    from triage.store.postgres.backend import hold_store_lock

    try:
        password = store.password()
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
    return _Held(
        -1, conn=hold_store_lock(store.url, password=password, purpose="lock", shared=shared)
    )


@contextlib.contextmanager
def exclusive(store: StoreSettings | Path | str, *, fleet: bool = False) -> Iterator[None]:
    """Hold the store's lock for the block, or raise `StoreInUseError` at once naming the holder.

    `store` is the store settings (a SQLite file, or a PostgreSQL database) or a file's path.
    An in-memory store (`:memory:`) belongs to its process anyway: nothing to lock. `fleet`
    (PostgreSQL only): an instance of a fleet, which shares the database with the other
    instances (their leases keep them apart) but never with an exclusive holder.
    """
    server = store if isinstance(store, StoreSettings) and store.is_postgresql else None
    db_path = store.path if isinstance(store, StoreSettings) else store
    if server is None and str(db_path) == ":memory:":
        yield
        return
    path = Path(os.path.abspath(db_path))
    key = server.url if server is not None else str(path)
    with _guard:
        _install_fork_hook()
        held = _held.get(key)
        if held is None:
            _held[key] = (
                _acquire_server(server, fleet) if server is not None else _Held(_acquire(path))
            )
        else:
            held.holders += 1
    try:
        yield
    finally:
        with _guard:
            held = _held.get(key)
            if held is not None:
                held.holders -= 1
                if held.holders == 0:
                    del _held[key]
                    _release(held)


def _release(held: _Held) -> None:
    if held.conn is not None:
        # Ending the session releases the advisory lock (a broken one has released it already).
        with contextlib.suppress(Exception):
            held.conn.close()
    else:
        # Closing the last descriptor releases the lock; the file stays, so that a waiting
        # process never locks a file that is being unlinked.
        os.close(held.fd)
