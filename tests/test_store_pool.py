"""SQLite connections are bounded: the handles of one file share a small pool.

A daemon has one `Database` handle per account thread; each handle holds a connection only for
one transaction or one read, so the process's open files stay bounded however many threads
there are, no thread waits for itself, and a thread that finds every connection busy gets a
`StoreUnavailable` after the pool's timeout instead of hanging.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from triage.core.errors import StoreError, StoreUnavailable
from triage.core.settings import StoreSettings
from triage.store.db import Database

pytestmark = pytest.mark.filterwarnings("error")


def store_fds(path: Path) -> int:
    """File descriptors of this process open on the database, its -wal or its -shm file."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in names:
                count += 1
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return count


def settings(path: Path, size: int, timeout: float = 30.0) -> StoreSettings:
    return StoreSettings(path=path, pool_size=size, pool_timeout=timeout)


def make_table(path: Path) -> None:
    db = Database(path)
    with db.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS counter (thread INTEGER, n INTEGER)")
    db.close()


def test_many_threads_share_a_bounded_number_of_connections(tmp_path: Path) -> None:
    """60 threads, each with its own handle, write and read through a pool of 4: every write
    lands, no thread deadlocks, and never more than 4 connections (3 files each) are open."""
    path = tmp_path / "triage.db"
    make_table(path)
    size, threads, rounds = 4, 60, 15
    handles = [Database(settings(path, size)) for _ in range(threads)]
    most = 0
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        nonlocal most
        db = handles[number]
        try:
            start.wait()
            for n in range(rounds):
                with db.transaction() as tx:
                    tx.execute("INSERT INTO counter VALUES (?, ?)", (number, n))
                    most = max(most, store_fds(path))
                rows = db.reads.execute(
                    "SELECT COUNT(*) FROM counter WHERE thread = ?", (number,)
                ).fetchone()
                assert rows[0] == n + 1
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread is stuck"
    assert errors == []
    assert handles[0].reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == (
        threads * rounds
    )
    assert 0 < most <= 3 * size
    assert store_fds(path) <= 3 * size
    for db in handles:
        db.close()
    # The last handle closed: the process keeps no file of the store open.
    assert store_fds(path) == 0


def test_a_handle_holds_no_connection_between_transactions(tmp_path: Path) -> None:
    """Opening handles costs no file descriptors: 200 handles, one pooled connection."""
    path = tmp_path / "triage.db"
    make_table(path)
    handles = [Database(path) for _ in range(200)]
    for db in handles:
        db.reads.execute("SELECT COUNT(*) FROM counter").fetchone()
    assert 0 < store_fds(path) <= 3
    for db in handles:
        db.close()


def test_a_thread_inside_a_transaction_may_read_through_another_handle(tmp_path: Path) -> None:
    """With the only connection of a pool of one held by this thread's transaction, a read on a
    second handle gets an extra connection at once instead of waiting for itself; it sees the
    committed data only, and the extra connection is closed when given back."""
    path = tmp_path / "triage.db"
    make_table(path)
    first, second = Database(settings(path, 1, 2.0)), Database(settings(path, 1, 2.0))
    with first.transaction() as tx:
        tx.execute("INSERT INTO counter VALUES (1, 1)")
        assert first.reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 1
        assert second.reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 0
        assert first.in_transaction and not second.in_transaction
    assert second.reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 1
    # The extra connection was closed (SQLite may keep its database descriptor a while, for
    # reuse, when other connections of the process hold locks on the file).
    assert first._sqlite.pool.open_connections == 1
    first.close()
    second.close()


def test_a_thread_that_finds_every_connection_busy_gets_store_unavailable(
    tmp_path: Path,
) -> None:
    """Another thread holds the pool's only connection: after the pool's timeout the waiting
    thread gets StoreUnavailable (an outage the daemon retries), then works once it is free."""
    path = tmp_path / "triage.db"
    make_table(path)
    holder, waiter = Database(settings(path, 1, 0.3)), Database(settings(path, 1, 0.3))
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.transaction():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(StoreUnavailable, match=r"no database connection within 0\.3 s"):
            waiter.reads.execute("SELECT 1")
    finally:
        leave.set()
        thread.join(10)
    assert waiter.reads.execute("SELECT 1").fetchone()[0] == 1
    holder.close()
    waiter.close()


def test_transactions_keep_their_single_writer_semantics(tmp_path: Path) -> None:
    """A transaction is one connection's BEGIN IMMEDIATE: nesting is refused, an error rolls it
    back, and a closed handle refuses work."""
    path = tmp_path / "triage.db"
    make_table(path)
    db = Database(path)
    with db.transaction(), pytest.raises(StoreError, match="within a transaction"):  # noqa: SIM117
        with db.transaction():
            pass
    with pytest.raises(ValueError, match="boom"), db.transaction() as tx:
        tx.execute("INSERT INTO counter VALUES (7, 7)")
        raise ValueError("boom")
    assert db.reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 0
    assert not db.in_transaction
    assert db.schema_version > 0
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        db.reads.execute("SELECT 1")


def test_a_replaced_file_gets_its_own_connections(tmp_path: Path) -> None:
    """A store file replaced on disk (a restored backup) is opened afresh, not served by the
    connections to the old one that other handles keep."""
    path = tmp_path / "triage.db"
    make_table(path)
    old = Database(path)
    with old.transaction() as tx:
        tx.execute("INSERT INTO counter VALUES (1, 1)")
    path.rename(tmp_path / "old.db")
    new = Database(path)
    assert (
        new.reads.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'counter'").fetchone()[0]
        == 0
    )
    old.close()
    new.close()


def test_each_in_memory_database_is_its_own(tmp_path: Path) -> None:
    """`:memory:` handles do not share a pool: each is a database of its own that lasts."""
    one, two = Database(":memory:"), Database(":memory:")
    with one.transaction() as tx:
        tx.execute("CREATE TABLE only_here (x INTEGER)")
        tx.execute("INSERT INTO only_here VALUES (1)")
    assert one.reads.execute("SELECT x FROM only_here").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError):
        two.reads.execute("SELECT x FROM only_here")
    one.close()
    two.close()


def test_a_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    """SQLite connections must not cross a fork: a handle used in a child process gets a pool
    of the child's own, and the parent's handle goes on with its connections."""
    path = tmp_path / "triage.db"
    make_table(path)
    db = Database(path)
    db.reads.execute("SELECT COUNT(*) FROM counter").fetchone()
    parent_pool = db._sqlite.pool
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        status = 1
        try:
            with db.transaction() as tx:
                tx.execute("INSERT INTO counter VALUES (2, 2)")
            own = db._sqlite.pool is not parent_pool and db._sqlite.pool.pid == os.getpid()
            status = 0 if own else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert db._sqlite.pool is parent_pool
    assert db.reads.execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 1
    db.close()


def test_reads_do_not_wait_behind_writers_queued_for_the_write_lock(tmp_path: Path) -> None:
    """One long transaction and more writers than the pool has connections: a read on another
    handle still answers at once (the writers wait for their turn without holding a pooled
    connection, as WAL lets reads go on beside a writer)."""
    store = StoreSettings(path=tmp_path / "triage.db", pool_size=3)
    holder = Database(store)
    started = threading.Event()
    release = threading.Event()

    def long_transaction() -> None:
        with holder.transaction() as tx:
            tx.execute("INSERT INTO kv (key, value) VALUES ('long', '1')")
            started.set()
            release.wait(10)

    def writer(n: int) -> None:
        db = Database(store)
        with db.transaction() as tx:
            tx.execute("INSERT INTO kv (key, value) VALUES (?, '1')", (f"w{n}",))
        db.close()

    threads = [threading.Thread(target=long_transaction)]
    threads[0].start()
    started.wait(5)
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)  # the writers are queued now
    reader = Database(store)
    began = time.monotonic()
    reader.reads.execute("SELECT count(*) FROM kv").fetchone()
    waited = time.monotonic() - began
    release.set()
    for t in threads:
        t.join(10)
    assert waited < 1.0
    assert reader.reads.execute("SELECT count(*) FROM kv WHERE key LIKE 'w%'").fetchone()[0] == 6
    reader.close()
    holder.close()
