"""The store on SQLite and PostgreSQL: migrations keep data across upgrades; a newer schema is
refused clearly; a failed transaction leaves nothing. The SQLite file tests (a first-schema
file, `user_version`, a junk file) have PostgreSQL twins (an older `triage_schema`, a newer one,
a server that cannot be reached)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from triage.core.errors import StoreError, StoreInUseError, StoreUnavailable
from triage.core.settings import StoreSettings
from triage.store.db import Database
from triage.store.ledger import Ledger
from triage.store.lock import exclusive
from triage.store.postgres import ddl
from triage.store.postgres.backend import close_pools, hold_store_lock, pg_row, run_migrations
from triage.store.schema import MIGRATIONS

ROOT = Path(__file__).resolve().parents[1]
_OLD_ROW = (
    "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, created_at,"
    " updated_at) VALUES ('a', 'INBOX', 7, 42, '<kept@example.test>', 'then', 'then')"
)


@pytest.mark.sqlite_only
def test_a_version_1_database_upgrades_without_losing_data(tmp_path: Path) -> None:
    """A store written by the first schema gains every later migration and keeps its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.execute(_OLD_ROW)
    conn.commit()
    conn.close()

    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    row = Ledger(db).rows_for("a", "INBOX", 7, [42])[42]
    assert row.message_id == "<kept@example.test>"
    db.close()


def test_a_fresh_database_gets_the_latest_schema_and_reopens(store: StoreSettings) -> None:
    """Opening twice applies migrations once."""
    Database(store).close()
    db = Database(store)
    assert db.schema_version == len(MIGRATIONS)
    db.close()


@pytest.mark.sqlite_only
def test_a_database_from_a_newer_triage_is_refused(tmp_path: Path) -> None:
    """Downgrading never silently corrupts: a newer schema is a clear one-line StoreError."""
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this triage"):
        Database(path)


@pytest.mark.sqlite_only
def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """Garbage instead of a database: StoreError naming the file, no traceback from sqlite."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        Database(path)


def test_a_failed_transaction_leaves_nothing_behind(store: StoreSettings) -> None:
    """Effects and their records land together or not at all."""
    db = Database(store)
    with pytest.raises(RuntimeError), db.transaction() as c:
        c.execute("INSERT INTO kv (key, value) VALUES ('a', 'b')")
        raise RuntimeError("boom")
    assert db.reads.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 0
    db.close()


# --- PostgreSQL twins of the SQLite file tests -----------------------------------------------


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[StoreSettings]:
    """The settings of `pg_url` (an empty database); its pools are closed afterwards."""
    yield _settings(pg_url, tmp_path)
    close_pools()


@pytest.mark.postgresql
def test_a_postgresql_database_at_schema_1_upgrades_without_losing_data(
    pg_url: str, pg_store: StoreSettings
) -> None:
    """A database migrated to the first schema only (by an older triage) gains every later
    migration through `Database` and keeps its rows."""
    with psycopg.connect(pg_url, autocommit=True, row_factory=pg_row) as conn:
        assert run_migrations(conn, "old", ddl.migrations()[:1]) == 1
        conn.execute(_OLD_ROW)
    db = Database(pg_store)
    assert db.schema_version == len(MIGRATIONS)
    row = Ledger(db).rows_for("a", "INBOX", 7, [42])[42]
    assert row.message_id == "<kept@example.test>"
    db.close()


@pytest.mark.postgresql
def test_a_postgresql_database_from_a_newer_triage_is_refused(
    pg_url: str, pg_store: StoreSettings
) -> None:
    """A `triage_schema` ahead of this code is a clear one-line StoreError, nothing applied."""
    with psycopg.connect(pg_url, autocommit=True, row_factory=pg_row) as conn:
        run_migrations(conn, "new", ddl.migrations())
        conn.execute(
            "INSERT INTO triage_schema VALUES (%s, '2030-01-01', '9.9')", (len(MIGRATIONS) + 1,)
        )
    with pytest.raises(StoreError, match="newer than this triage") as caught:
        Database(pg_store)
    assert "\n" not in str(caught.value)


@pytest.mark.postgresql
def test_an_unreachable_server_is_a_clear_error_without_the_password(
    pg_url: str, tmp_path: Path
) -> None:
    """No server at the URL: StoreUnavailable in one line naming the database, never the
    password from the password file."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nobody listens there
    parts = urlsplit(pg_url)
    settings = _settings(pg_url, tmp_path)
    url = urlsplit(settings.url)._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()
    with pytest.raises(StoreUnavailable) as caught:
        Database(StoreSettings(url=url, password_file=settings.password_file))
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "\n" not in message
    assert parts.password and parts.password not in message


def _settings(pg_url: str, folder: Path) -> StoreSettings:
    """The settings of `pg_url`, the password in a private file as an operator keeps it."""
    parts = urlsplit(pg_url)
    secret = folder / "pg.password"
    secret.write_text(f"{parts.password}\n")
    secret.chmod(0o600)
    return StoreSettings(
        url=parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl(),
        password_file=secret,
    )


# --- one acting process per PostgreSQL database (triage.store.lock) --------------------------


@pytest.mark.postgresql
def test_a_postgresql_store_is_locked_for_one_process_until_it_dies(
    pg_store: StoreSettings,
) -> None:
    """`exclusive` on a PostgreSQL store holds a session advisory lock: another process is
    refused at once with the holder's name and server pid, the holder's own process joins it,
    and the lock goes when the holder dies (SIGKILL, no clean-up) or leaves the block."""
    code = (
        "import time\n"
        "from triage.core.settings import StoreSettings\n"
        "from triage.store.lock import exclusive\n"
        f"store = StoreSettings(url={pg_store.url!r},"
        f" password_file={str(pg_store.password_file)!r})\n"
        "with exclusive(store):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with pytest.raises(StoreInUseError) as caught, exclusive(pg_store):
                pass
            message = str(caught.value)
            assert "is in use by another triage process (triage lock " in message
            assert f":{holder.pid}" in message and "server pid " in message
            assert "\n" not in message
        finally:
            holder.kill()
    password = pg_store.password()
    with exclusive(pg_store), exclusive(pg_store), pytest.raises(StoreInUseError):  # joined
        hold_store_lock(pg_store.url, password=password)  # another session is refused
    hold_store_lock(pg_store.url, password=password).close()  # leaving the block released it


def test_a_reload_keeps_the_locked_store_file_or_server(tmp_path: Path) -> None:
    """SIGHUP's new settings never move a running process to another store than the one it
    locked: a changed path or URL waits for the next start; other store settings apply."""
    from tests.test_leads import make_settings
    from triage.ops.runner import _keep_store

    old = make_settings(tmp_path)
    server = old.store.model_copy(update={"url": "postgresql://triage@db.example/triage"})
    moved = make_settings(tmp_path / "elsewhere")
    assert _keep_store(old, moved).store == old.store
    on_server = old.model_copy(update={"store": server})
    other_server = server.model_copy(update={"url": "postgresql://triage@db2.example/triage"})
    kept = _keep_store(on_server, old.model_copy(update={"store": other_server}))
    assert kept.store.url == server.url
    resized = server.model_copy(update={"pool_size": 20})
    assert _keep_store(on_server, old.model_copy(update={"store": resized})).store.pool_size == 20
