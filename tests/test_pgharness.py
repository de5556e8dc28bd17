"""The PostgreSQL harness (devtools.pgharness) against the real server from Debian's packages."""

from __future__ import annotations

import os
import pwd
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import errors

from devtools.pgharness import PgHarness, PgHarnessError, main, unavailable_reason


def _server_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (the container's init reaps no postmaster) is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def running(postgres: PgHarness) -> Iterator[PgHarness]:
    """The session's server, started again after a test that stopped or killed it."""
    yield postgres
    postgres.start_server()


def test_server_runs_as_the_postgres_user_in_a_private_folder(postgres: PgHarness) -> None:
    pid = postgres.server_pid()
    assert pid is not None
    assert Path(f"/proc/{pid}").stat().st_uid == _server_uid()
    for folder in (postgres.data_dir, postgres.socket_dir):
        info = folder.stat()
        assert info.st_uid == _server_uid()
        assert stat.S_IMODE(info.st_mode) == 0o700
    assert str(postgres.base_dir).startswith("/tmp/triage-pg-")
    assert (postgres.socket_dir / f".s.PGSQL.{postgres.port}").is_socket()


def test_application_role_logs_in_over_loopback_tcp_with_its_password(
    postgres: PgHarness,
) -> None:
    assert postgres.url.startswith(f"postgresql://triage:{postgres.password}@127.0.0.1:")
    assert postgres.url_without_password == f"postgresql://triage@127.0.0.1:{postgres.port}/triage"
    with psycopg.connect(postgres.url) as conn:
        user, db, addr, superuser = (
            conn.execute(
                "SELECT current_user, current_database(), host(inet_server_addr()),"
                " current_setting('is_superuser')"
            ).fetchone()
            or ()
        )
    assert (user, db, addr, superuser) == ("triage", "triage", "127.0.0.1", "off")
    # The same server through the password given apart, and through the DSN's parts.
    with psycopg.connect(postgres.url_without_password, password=postgres.password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(**postgres.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("triage",)
    # The stored verifier is a SCRAM one, and pg_hba asks for it on TCP.
    assert postgres.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'triage'").startswith(
        "SCRAM-SHA-256$"
    )
    assert postgres.psql(
        "SELECT type, address, auth_method FROM pg_hba_file_rules ORDER BY line_number"
    ).splitlines() == ["local||trust", "host|127.0.0.1|scram-sha-256"]


def test_a_wrong_or_missing_password_is_refused(postgres: PgHarness) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.url_without_password, password="wrong")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(postgres.url_without_password)


def test_settings_suit_tests_and_a_fleet(postgres: PgHarness) -> None:
    rows = postgres.psql(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'full_page_writes',"
        " 'synchronous_commit', 'max_connections', 'listen_addresses', 'lc_collate') ORDER BY name"
    )
    assert dict(line.split("|") for line in rows.splitlines()) == {
        "fsync": "off",
        "full_page_writes": "off",
        # on: a SIGKILL of the server (kill()) must not lose committed transactions
        "synchronous_commit": "on",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
        "lc_collate": "C",
    }


def test_each_test_gets_an_empty_database_of_its_own(postgres: PgHarness, pg_url: str) -> None:
    name = _dbname(pg_url)
    assert name.startswith("test_")
    assert name != postgres.database
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
        # Owned by the application's role: it may create its schema there.
        conn.execute("CREATE TABLE mine (x int)")
        conn.execute("INSERT INTO mine VALUES (1)")
    other_url = postgres.create_database("test_other_pgharness")
    try:
        with psycopg.connect(other_url) as conn, pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT x FROM mine")
    finally:
        postgres.drop_database("test_other_pgharness")
    assert postgres.psql(
        "SELECT count(*) FROM pg_database WHERE datname = 'test_other_pgharness'"
    ) == ("0")


def test_drop_database_ends_open_sessions(postgres: PgHarness) -> None:
    url = postgres.create_database("test_drop_open")
    conn = psycopg.connect(url)
    try:
        postgres.drop_database("test_drop_open")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    postgres.drop_database("test_drop_open")  # absent: no error


def test_database_names_are_checked(postgres: PgHarness) -> None:
    with pytest.raises(PgHarnessError, match="must match"):
        postgres.create_database('x"; DROP DATABASE triage; --')


def test_stop_server_refuses_connections_and_start_server_brings_the_data_back(
    running: PgHarness, pg_url: str
) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    port = running.port
    began = time.monotonic()
    running.stop_server()
    stopped = time.monotonic() - began
    assert not running.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, connect_timeout=2)
    began = time.monotonic()
    running.start_server()
    started = time.monotonic() - began
    assert running.port == port
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]
    assert stopped < 5 and started < 5, (stopped, started)


def test_kill_loses_no_committed_transaction(running: PgHarness, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (8)")
        running.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert not running.is_running()
    running.start_server()  # crash recovery
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(8,)]


def test_skip_locked_hands_each_row_to_one_connection(pg_url: str) -> None:
    claim = "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE jobs (id int PRIMARY KEY)")
        setup.execute("INSERT INTO jobs VALUES (1), (2)")
    with psycopg.connect(pg_url) as first, psycopg.connect(pg_url) as second:
        assert first.execute(claim).fetchone() == (1,)
        # The row the first transaction holds is skipped, not waited for.
        assert second.execute(claim).fetchone() == (2,)
        second.rollback()
        second.execute("SET lock_timeout = '100ms'")
        with pytest.raises(errors.LockNotAvailable):
            second.execute("SELECT id FROM jobs WHERE id = 1 FOR UPDATE")
        second.rollback()
        first.execute("DELETE FROM jobs WHERE id = 1")
        first.commit()
        # Once the first commits, its row is gone and the next claim gets the other one.
        assert second.execute(claim).fetchone() == (2,)


def test_a_harness_of_its_own_removes_its_folder_when_stopped() -> None:
    if unavailable_reason():
        pytest.skip(unavailable_reason() or "")
    began = time.monotonic()
    with PgHarness() as harness:
        seconds = time.monotonic() - began
        base = harness.base_dir
        pid = harness.server_pid()
        assert pid is not None
        with psycopg.connect(harness.url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("triage",)
    assert not base.exists()
    assert not _alive(pid)
    # initdb + start + role and database: ~1.3 s here; a budget that catches a regression.
    assert seconds < 15, seconds


def test_command_line_keeps_the_data_between_start_and_stop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if unavailable_reason():
        pytest.skip(unavailable_reason() or "")
    folder = PgHarness().base_dir  # a fresh folder under /tmp, reachable by postgres
    try:
        assert main(["start", "--dir", str(folder)]) == 0
        url = capsys.readouterr().out.split("url", 1)[1].split()[0]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        assert main(["status", "--dir", str(folder)]) == 0
        assert main(["stop", "--dir", str(folder)]) == 0
        assert main(["status", "--dir", str(folder)]) == 3
        capsys.readouterr()
        # Started again: same port, same password, same data.
        assert main(["start", "--dir", str(folder)]) == 0
        assert capsys.readouterr().out.split("url", 1)[1].split()[0] == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        assert main(["stop", "--dir", str(folder), "--remove"]) == 0
    assert not folder.exists()


def test_unavailable_without_the_server_programs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRIAGE_PG_BINDIR", str(tmp_path))
    reason = unavailable_reason()
    assert reason is not None
    assert "initdb" in reason and str(tmp_path) in reason and "apt-get install" in reason
    with pytest.raises(PgHarnessError, match="initdb"):
        PgHarness(tmp_path / "pg").start()


def test_a_folder_the_server_user_cannot_reach_is_refused_untouched(tmp_path: Path) -> None:
    if os.geteuid() != 0 or unavailable_reason():
        pytest.skip("as root only: the server then runs as the postgres user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PgHarnessError, match="not searchable by the postgres user"):
        PgHarness(private / "pg").start()
    assert not (private / "pg").exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
