"""The store's PostgreSQL backend (triage.store.postgres) against a real PostgreSQL.

Translator cases need no server; everything else runs on a fresh database of the session's
server (devtools.pgharness): the migrations and their equivalence with SQLite's schema, pooled
transactions, rows by name, SKIP LOCKED and advisory locks between threads, concurrent
migration, a server outage and a wrong password.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import errors as pg_errors

from devtools.pgharness import PgHarness
from triage.core.errors import (
    StoreConflict,
    StoreError,
    StoreIntegrityError,
    StoreUnavailable,
)
from triage.store.db import Database
from triage.store.postgres import backend, ddl
from triage.store.postgres.backend import (
    DIALECT,
    BufferedResult,
    PgHandle,
    PgPool,
    PgRow,
    close_pools,
    display_name,
    map_error,
    pg_row,
    pool_for,
    run_migrations,
)
from triage.store.postgres.translate import translate
from triage.store.schema import MIGRATIONS

T = TypeVar("T")


@pytest.fixture
def pool(pg_url: str) -> Iterator[PgPool]:
    """The process's pool of a fresh, migrated database; every pool is closed afterwards."""
    yield pool_for(pg_url, max_size=4, timeout=5.0, purpose="test")
    close_pools()


@pytest.fixture
def db(pool: PgPool) -> PgHandle:
    return PgHandle(pool)


def _connect(url: str) -> psycopg.Connection[PgRow]:
    return psycopg.connect(url, autocommit=True, row_factory=pg_row)


def _in_threads(*functions: Callable[[], T], timeout: float = 30.0) -> list[T]:
    """Run each function in a thread of its own; their results in order, or the first error."""
    results: list[Any] = [None] * len(functions)
    failures: list[BaseException] = []

    def run(index: int, function: Callable[[], T]) -> None:
        try:
            results[index] = function()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(i, f), daemon=True) for i, f in enumerate(functions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread did not finish"
    if failures:
        raise failures[0]
    return results


# --------------------------------------------------------------------------------------------
# The statement translator


@pytest.mark.parametrize(
    ("sql", "named", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", False, "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("UPDATE t SET a = :a WHERE id = :id", True, "UPDATE t SET a = %(a)s WHERE id = %(id)s"),
        ("SELECT :up, :up", True, "SELECT %(up)s, %(up)s"),
        # A positional statement keeps a colon word (it would be the server's syntax error).
        ("SELECT :a", False, "SELECT :a"),
        # Literals keep ? and :name; '' is a quote inside the literal, not its end.
        ("SELECT '?', 'a:b', ?", False, "SELECT '?', 'a:b', %s"),
        ("SELECT 'it''s ? :x', :x", True, "SELECT 'it''s ? :x', %(x)s"),
        (
            'SELECT "odd?col", "a:b" FROM t WHERE c = ?',
            False,
            'SELECT "odd?col", "a:b" FROM t WHERE c = %s',
        ),
        # % is doubled everywhere, literals included: psycopg parses every %.
        ("SELECT 'a%b' WHERE x LIKE ?", False, "SELECT 'a%%b' WHERE x LIKE %s"),
        ("SELECT 10 % 3", False, "SELECT 10 %% 3"),
        # :: is a cast, never a parameter.
        ("SELECT ?::text, x::bigint", False, "SELECT %s::text, x::bigint"),
        ("SELECT :v::text, x::bigint", True, "SELECT %(v)s::text, x::bigint"),
        # Comments keep their ? and :name.
        ("SELECT 1 -- why? :x 5%\n, ?", True, "SELECT 1 -- why? :x 5%%\n, %s"),
        ("SELECT /* ? :x */ :y", True, "SELECT /* ? :x */ %(y)s"),
        # A dollar-quoted body is copied; $1-style numbers are not tags.
        ("SELECT $b$ ? :x $b$, :y", True, "SELECT $b$ ? :x $b$, %(y)s"),
        ("SELECT $$?$$, ?", False, "SELECT $$?$$, %s"),
        # Unclosed quotes do not crash the scanner (the server reports them).
        ("SELECT 'open ?", False, "SELECT 'open ?"),
        ("", False, ""),
    ],
)
def test_translate_maps_placeholders_outside_quotes_and_comments(
    sql: str, named: bool, expected: str
) -> None:
    assert translate(sql, named) == expected


def test_translate_runs_once_per_distinct_statement() -> None:
    translate.cache_clear()
    for _ in range(3):
        translate("SELECT ? FROM cached", False)
    info = translate.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_translated_statements_return_what_sqlite_returns(db: PgHandle, tmp_path: Path) -> None:
    """The same statements with literals holding ?, : and % on both backends."""
    cases: list[tuple[str, tuple[object, ...] | dict[str, object]]] = [
        ("SELECT '?', 'a:b', '50%', ?", ("x",)),
        ("SELECT 'it''s', :n, :n || 'z'", {"n": "y"}),
        ("SELECT 'a%b' LIKE ?", ("a%",)),
        ("SELECT 7 % 4, ? -- trailing? :c\n", (1,)),
    ]
    lite = sqlite3.connect(tmp_path / "t.db")
    try:
        for sql, params in cases:
            expected = lite.execute(sql, params).fetchone()
            got = db.reads.execute(sql, params).fetchone()
            assert got is not None
            # SQLite has no booleans: compare 1/0 with True/False as numbers.
            assert tuple(got) == tuple(expected), sql
    finally:
        lite.close()


# --------------------------------------------------------------------------------------------
# DDL and migrations


def test_types_are_mapped_in_code_not_in_literals_or_comments() -> None:
    script = """
    CREATE TABLE t (
        id    INTEGER PRIMARY KEY,
        n     INTEGER NOT NULL DEFAULT 0, -- an INTEGER, a REAL, some TEXT
        text  TEXT NOT NULL DEFAULT 'TEXT and INTEGER',
        x     REAL,
        b     BLOB
    );
    CREATE TABLE u (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT PRIMARY KEY);
    """
    mapped = ddl.map_types(script)
    assert "id    BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY," in mapped
    assert "n     BIGINT NOT NULL DEFAULT 0, -- an INTEGER, a REAL, some TEXT" in mapped
    assert "text  TEXT COLLATE \"C\" NOT NULL DEFAULT 'TEXT and INTEGER'," in mapped
    assert "x     DOUBLE PRECISION," in mapped
    assert "b     BYTEA" in mapped
    assert (
        '(id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, k TEXT COLLATE "C" PRIMARY KEY)'
        in mapped
    )
    assert ddl.map_types(mapped) == mapped  # mapping twice changes nothing


def test_migration_3_differs_from_sqlites_only_by_strpos() -> None:
    """The override must stay the same migration: only instr() becomes strpos()."""
    assert ddl.migration(3) == ddl.map_types(MIGRATIONS[2].replace("instr(", "strpos("))
    assert "instr(" not in ddl.migration(3)
    assert [ddl.migration(n) for n in range(1, len(MIGRATIONS) + 1)] == list(ddl.migrations())
    for number in (0, len(MIGRATIONS) + 1):
        with pytest.raises(ValueError, match="no migration"):
            ddl.migration(number)


def test_every_migration_applies_in_order_each_in_its_own_transaction(pg_url: str) -> None:
    with _connect(pg_url) as conn:
        assert backend.schema_version(conn) == 0
        for number in range(1, len(MIGRATIONS) + 1):
            assert run_migrations(conn, "test", ddl.migrations()[:number]) == number
            assert backend.schema_version(conn) == number
        rows = conn.execute("SELECT version, triage_version FROM triage_schema ORDER BY 1")
        assert [(r["version"], r["triage_version"]) for r in rows] == [
            (n, "0.1.0") for n in range(1, len(MIGRATIONS) + 1)
        ]
        # A failing migration leaves neither its changes nor its version row behind.
        broken = [*ddl.migrations(), "CREATE TABLE half (a BIGINT); SELECT no_such_function()"]
        with pytest.raises(psycopg.errors.UndefinedFunction):
            run_migrations(conn, "test", broken)
        assert backend.schema_version(conn) == len(MIGRATIONS)
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)


def _sqlite_schema(path: Path) -> dict[str, dict[str, object]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        schema: dict[str, dict[str, object]] = {}
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            columns = [
                # (name, type, NOT NULL, default); a primary key is never NULL on PostgreSQL.
                (r[1], r[2], bool(r[3]) or r[5] > 0, r[4])
                for r in info
            ]
            unique = {pk}
            named: dict[str, tuple[tuple[str, ...], bool]] = {}
            for _seq, name, is_unique, origin, _partial in conn.execute(
                f"PRAGMA index_list({table})"
            ):
                cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
                if is_unique:
                    unique.add(cols)
                if origin == "c":
                    named[name] = (cols, bool(is_unique))
            fks = {
                (r[3], r[2], r[4], r[6]) for r in conn.execute(f"PRAGMA foreign_key_list({table})")
            }
            schema[table] = {
                "columns": columns,
                "primary key": pk,
                "unique": unique,
                "indexes": named,
                "foreign keys": fks,
            }
        return schema
    finally:
        conn.close()


_PG_TYPES = {
    "bigint": "INTEGER",
    "text": "TEXT",
    "double precision": "REAL",
    "bytea": "BLOB",
}
_ON_DELETE = {
    "a": "NO ACTION",
    "c": "CASCADE",
    "r": "RESTRICT",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}


def _pg_default(default: str | None) -> str | None:
    # 'seen'::text → 'seen'; numbers are shown as written.
    if default is None:
        return None
    return default.split("::", 1)[0] if default.startswith("'") else default


def _pg_schema(conn: psycopg.Connection[PgRow]) -> dict[str, dict[str, object]]:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name <> 'triage_schema'"
        )
    ]
    schema: dict[str, dict[str, object]] = {}
    for table in tables:
        columns = []
        for r in conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default, is_identity,"
            " collation_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ):
            if r["data_type"] == "text":
                assert r["collation_name"] == "C", (table, r["column_name"])
            columns.append(
                (
                    r["column_name"],
                    _PG_TYPES[r["data_type"]],
                    r["is_nullable"] == "NO",
                    _pg_default(r["column_default"]),
                    r["is_identity"] == "YES",
                )
            )
        indexes = conn.execute(
            "SELECT i.relname AS name, x.indisunique AS is_unique, x.indisprimary AS is_pk,"
            " array_agg(a.attname::text ORDER BY k.ord) AS cols,"
            " EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) AS backs"
            " FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
            # LEFT: an expression's key column (attnum 0) is None, as SQLite's index_info says.
            " LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
            " WHERE t.relname = %s AND t.relnamespace = 'public'::regnamespace"
            " GROUP BY i.relname, x.indexrelid, x.indisunique, x.indisprimary",
            (table,),
        ).fetchall()
        fks = {
            (r[0], r[1], r[2], _ON_DELETE[r[3]])
            for r in conn.execute(
                "SELECT a.attname::text, f.relname::text, af.attname::text, c.confdeltype"
                " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
                " JOIN pg_class f ON f.oid = c.confrelid"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1]"
                " WHERE c.contype = 'f' AND t.relname = %s",
                (table,),
            )
        }
        schema[table] = {
            "columns": columns,
            "primary key": next(tuple(r["cols"]) for r in indexes if r["is_pk"]),
            "unique": {tuple(r["cols"]) for r in indexes if r["is_unique"]},
            "indexes": {
                r["name"]: (tuple(r["cols"]), r["is_unique"])
                for r in indexes
                # Constraints' own indexes are named by PostgreSQL (t_pkey, t_a_b_key).
                if not r["backs"]
            },
            "foreign keys": fks,
        }
    return schema


def test_migrated_postgresql_schema_matches_sqlites(pool: PgPool, tmp_path: Path) -> None:
    """Tables, columns (order, type, nullability, default), primary keys, unique and named
    indexes and foreign keys agree between the two backends after every migration."""
    Database(tmp_path / "triage.db").close()
    lite = _sqlite_schema(tmp_path / "triage.db")
    with pool.connection() as conn:
        pg = _pg_schema(conn)
    assert sorted(pg) == sorted(lite)
    for table, want in lite.items():
        got = pg[table]
        pk = want["primary key"]
        integer_pk = len(pk) == 1 and any(  # type: ignore[arg-type]
            c[0] == pk[0] and c[1] == "INTEGER"  # type: ignore[index]
            for c in want["columns"]  # type: ignore[attr-defined]
        )
        expected_columns = [
            (name, kind, not_null, default, integer_pk and name == pk[0])  # type: ignore[index]
            for name, kind, not_null, default in want["columns"]  # type: ignore[attr-defined]
        ]
        assert got["columns"] == expected_columns, table
        for key in ("primary key", "unique", "indexes", "foreign keys"):
            assert got[key] == want[key], (table, key)


def test_two_processes_starting_together_migrate_once(pg_url: str) -> None:
    """Two connections race through the migrations (the advisory lock serialises them): both
    succeed, and each migration was applied and recorded exactly once."""
    barrier = threading.Barrier(2)

    def start() -> int:
        with _connect(pg_url) as conn:
            barrier.wait()
            return run_migrations(conn, "test")

    assert _in_threads(start, start) == [len(MIGRATIONS)] * 2
    with _connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM triage_schema ORDER BY 1")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_pool_for_from_many_threads_opens_one_pool(pg_url: str) -> None:
    try:
        pools = _in_threads(*[lambda: pool_for(pg_url, max_size=2)] * 4)
        assert all(p is pools[0] for p in pools)
        assert PgHandle(pools[0]).schema_version == len(MIGRATIONS)
    finally:
        close_pools()


def test_a_schema_newer_than_the_code_is_refused(pg_url: str) -> None:
    with _connect(pg_url) as conn:
        run_migrations(conn, "test")
        conn.execute(
            "INSERT INTO triage_schema VALUES (%s, '2030-01-01', '9.9')", (len(MIGRATIONS) + 1,)
        )
    with pytest.raises(StoreError) as caught:
        pool_for(pg_url)
    assert str(caught.value) == (
        f"the database {display_name(pg_url)} has schema {len(MIGRATIONS) + 1}, newer than "
        f"this triage ({len(MIGRATIONS)}); upgrade triage"
    )


# --------------------------------------------------------------------------------------------
# Transactions, reads, rows


def test_a_transaction_commits_at_the_end_and_rolls_back_on_error(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("kept", "1"))
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("dropped", "2"))
        raise RuntimeError("boom")
    # A failed statement aborts its transaction; the error leaves as a StoreError.
    with pytest.raises(StoreError, match="no_such_table"), db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("dropped", "3"))
        tx.execute("SELECT * FROM no_such_table")
    assert [r["key"] for r in db.reads.execute("SELECT key FROM kv")] == ["kept"]
    assert not db.in_transaction


def test_reads_join_the_open_transaction_and_nesting_is_refused(db: PgHandle) -> None:
    other = PgHandle(db._pool)
    with db.transaction() as tx:
        assert db.in_transaction and not other.in_transaction
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("k", "v"))
        assert db.reads is tx
        assert db.reads.execute("SELECT value FROM kv").fetchall() == [("v",)]
        # Another handle sees committed data only.
        assert other.reads.execute("SELECT value FROM kv").fetchall() == []
        with pytest.raises(StoreError, match="within a transaction"), db.transaction():
            pass
    assert other.reads.execute("SELECT value FROM kv").fetchall() == [("v",)]


def test_rows_answer_by_position_and_by_name_like_sqlite_rows(db: PgHandle) -> None:
    row = db.reads.execute("SELECT 1 AS id, 'x' AS name, 2 AS id, 3 AS \"Mixed\"").fetchone()
    assert row is not None
    assert row[0] == row["id"] == 1  # the first column of a name wins, as in sqlite3.Row
    assert row["name"] == row[1] == "x"
    assert row["NAME"] == "x" and row["mixed"] == 3  # names are case-insensitive
    assert row[-1] == 3 and row[1:3] == ("x", 2)
    assert row.keys() == ["id", "name", "id", "Mixed"]
    assert dict(zip(row.keys(), row, strict=True))["name"] == "x"
    with pytest.raises(IndexError, match="nope"):
        row["nope"]
    assert tuple(row) == (1, "x", 2, 3) and row == (1, "x", 2, 3)
    # One row class per column list, shared by every row of it.
    rows = db.reads.execute("SELECT g AS n FROM generate_series(1, 3) AS g").fetchall()
    assert [r["n"] for r in rows] == [1, 2, 3]
    assert len({type(r) for r in rows}) == 1


def test_values_round_trip_as_sqlite_gives_them(db: PgHandle) -> None:
    now = "2026-01-01T00:00:00.000000+00:00"
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, confidence,"
            " raw, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("a", "INBOX", 4294967295, 4294967294, "<m@x>", 0.1, b"\x00\xffraw", now, now),
        )
    row = db.reads.execute(
        "SELECT uidvalidity, uid, confidence, raw, sum(uid) AS total, avg(uid) AS mean,"
        " count(*) AS n FROM messages GROUP BY 1, 2, 3, 4"
    ).fetchone()
    assert row is not None
    assert row["uidvalidity"] == 4294967295 and row["uid"] == 4294967294  # BIGINT
    assert row["confidence"] == 0.1  # DOUBLE PRECISION
    assert row["raw"] == b"\x00\xffraw" and isinstance(row["raw"], bytes)
    # numeric results come back as int or float (as sqlite3 gives them), never Decimal.
    assert row["total"] == 4294967294 and type(row["total"]) is int
    assert row["mean"] == 4294967294.0 and type(row["mean"]) is float
    assert type(row["n"]) is int


def test_insert_returning_id_and_rowcount(db: PgHandle) -> None:
    ids = []
    with db.transaction() as tx:
        for action in ("login", "logout"):
            cur = tx.execute(
                "INSERT INTO audit (at, actor, action) VALUES (?, ?, ?) RETURNING id",
                ("2026-01-01", "sam", action),
            )
            row = cur.fetchone()
            assert row is not None
            ids.append(row["id"])
        updated = tx.execute("UPDATE audit SET actor = 'kim' WHERE id = ?", (ids[0],)).rowcount
        missed = tx.execute("UPDATE audit SET actor = 'kim' WHERE id = ?", (999,)).rowcount
    assert ids == [1, 2] and (updated, missed) == (1, 0)


def test_executemany_with_positional_and_named_rows(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.executemany("INSERT INTO kv (key, value) VALUES (?, ?)", [("a", "1"), ("b", "2")])
        tx.executemany(
            "INSERT INTO kv (key, value) VALUES (:k, :v)",
            [{"k": "c", "v": "3"}, {"k": "d", "v": "4"}],
        )
        tx.executemany("INSERT INTO kv (key, value) VALUES (?, ?)", [])
    result = db.reads.execute("SELECT key, value FROM kv ORDER BY key")
    assert isinstance(result, BufferedResult)
    assert result.rowcount == 4
    first = result.fetchone()
    assert first is not None and first["key"] == "a"
    assert [r["key"] for r in result] == ["b", "c", "d"]
    assert result.fetchall() == [] and result.fetchone() is None
    # A write outside a transaction commits by itself (autocommit), and reports its rowcount.
    assert db.reads.execute("DELETE FROM kv WHERE key IN ('a', 'b')").rowcount == 2
    assert db.reads.execute("SELECT count(*) FROM kv").fetchone() == (2,)


def test_constraint_violations_are_integrity_errors(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('k', 'v')")
    with pytest.raises(StoreIntegrityError, match="23505"), db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('k', 'w')")
    with pytest.raises(StoreIntegrityError, match="23503"), db.transaction() as tx:
        tx.execute("INSERT INTO lead_messages (lead_id, message_row) VALUES (7, 8)")


def test_sessions_carry_the_timeouts_and_an_application_name(db: PgHandle) -> None:
    row = db.reads.execute(
        "SELECT current_setting('lock_timeout'),"
        " current_setting('idle_in_transaction_session_timeout'),"
        " current_setting('application_name')"
    ).fetchone()
    assert row is not None
    assert row[:2] == ("30s", "10s")
    assert row[2].startswith("triage test ") and row[2].endswith(f":{os.getpid()}")


# --------------------------------------------------------------------------------------------
# The dialect and concurrency


def test_in_list_ci_like_and_for_update_fragments(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.executemany("INSERT INTO kv (key, value) VALUES (?, ?)", [("a", "Sam"), ("b", "kim")])
        for values, expected in ((["a", "b", "z"], ["a", "b"]), (["b"], ["b"]), ([], [])):
            fragment, params = DIALECT.in_list("key", values)
            sql = f"SELECT key FROM kv WHERE {fragment} ORDER BY key"  # noqa: S608
            rows = tx.execute(sql, params)
            assert [r[0] for r in rows] == expected
        ids = [
            tx.execute(
                "INSERT INTO audit (at, actor, action) VALUES ('t', 'a', 'x') RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
            for _ in range(3)
        ]
        fragment, params = DIALECT.in_list("id", ids[:2])
        sql = f"SELECT count(*) FROM audit WHERE {fragment}"  # noqa: S608
        assert tx.execute(sql, params).fetchone() == (2,)
        like = f"SELECT key FROM kv WHERE value {DIALECT.ci_like} ?"  # noqa: S608
        assert tx.execute(like, ("%SAM%",)).fetchall() == [("a",)]
    assert DIALECT.for_update() == " FOR UPDATE"
    assert DIALECT.for_update(skip_locked=True) == " FOR UPDATE SKIP LOCKED"
    assert DIALECT.name == "postgresql" and DIALECT.translate("?", False) == "%s"


def test_now_epoch_is_the_servers_clock_and_for_share_locks_rows(db: PgHandle) -> None:
    """now_epoch: the server's wall clock in epoch seconds, a float that moves inside a
    transaction (clock_timestamp, not the transaction's start); FOR SHARE keeps others from
    locking the row for update (SKIP LOCKED then skips it) until the transaction ends."""
    before = time.time()
    with db.transaction() as tx:
        (first,) = tx.execute(f"SELECT {DIALECT.now_epoch}").fetchone()  # type: ignore[misc]
        time.sleep(0.05)
        (second,) = tx.execute(f"SELECT {DIALECT.now_epoch}").fetchone()  # type: ignore[misc]
        tx.execute("INSERT INTO kv (key, value) VALUES ('a', 'x')")
    assert isinstance(first, float)
    assert before - 0.01 <= first and second - first >= 0.04 and second <= time.time() + 0.01
    assert DIALECT.for_share() == " FOR SHARE"
    holding, done = threading.Event(), threading.Event()

    def holder() -> None:
        with PgHandle(db._pool).transaction() as tx:
            tx.execute(f"SELECT key FROM kv WHERE key = 'a'{DIALECT.for_share()}")  # noqa: S608
            holding.set()
            assert done.wait(10)

    def claimer() -> list[str]:
        assert holding.wait(10)
        lock = DIALECT.for_update(skip_locked=True)
        with PgHandle(db._pool).transaction() as tx:
            rows = tx.execute(f"SELECT key FROM kv WHERE key = 'a'{lock}").fetchall()  # noqa: S608
        done.set()
        return [str(r[0]) for r in rows]

    assert _in_threads(holder, claimer)[1] == []


def test_for_update_skip_locked_hands_each_row_to_one_thread(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.executemany("INSERT INTO kv (key, value) VALUES (?, 'queued')", [("a",), ("b",)])
    lock = DIALECT.for_update(skip_locked=True)
    claim = f"SELECT key FROM kv WHERE value = 'queued' ORDER BY key LIMIT 1{lock}"  # noqa: S608
    first_holds = threading.Event()
    second_done = threading.Event()

    def first() -> str:
        with PgHandle(db._pool).transaction() as tx:
            row = tx.execute(claim).fetchone()
            first_holds.set()
            assert second_done.wait(10)
            assert row is not None
            return str(row["key"])

    def second() -> str:
        assert first_holds.wait(10)
        with PgHandle(db._pool).transaction() as tx:
            row = tx.execute(claim).fetchone()
        second_done.set()
        assert row is not None
        return str(row["key"])

    assert _in_threads(first, second) == ["a", "b"]


def test_advisory_lock_serialises_transactions_on_one_key(db: PgHandle) -> None:
    order: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with PgHandle(db._pool).transaction() as tx:
            DIALECT.lock(tx, "leads", "sam@example.com")
            holding.set()
            time.sleep(0.3)
            order.append("holder commits")

    def waiter() -> None:
        assert holding.wait(10)
        with PgHandle(db._pool).transaction() as tx:
            DIALECT.lock(tx, "leads", "kim@example.com")  # another key: no wait
            order.append("other key locked")
            DIALECT.lock(tx, "leads", "sam@example.com")
            order.append("same key locked")

    _in_threads(holder, waiter)
    assert order == ["other key locked", "holder commits", "same key locked"]


def test_a_lock_wait_past_lock_timeout_is_a_conflict(db: PgHandle) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('k', 'v')")
    holding = threading.Event()
    released = threading.Event()

    def holder() -> None:
        with PgHandle(db._pool).transaction() as tx:
            tx.execute(f"SELECT * FROM kv WHERE key = 'k'{DIALECT.for_update()}")  # noqa: S608
            holding.set()
            assert released.wait(10)

    def waiter() -> None:
        assert holding.wait(10)
        try:
            with pytest.raises(StoreConflict, match="55P03"), db.transaction() as tx:
                tx.execute("SET LOCAL lock_timeout = '100ms'")
                tx.execute("UPDATE kv SET value = 'w' WHERE key = 'k'")
        finally:
            released.set()

    _in_threads(holder, waiter)


def test_a_transaction_left_idle_too_long_is_ended_as_a_conflict(db: PgHandle) -> None:
    """A paused process cannot keep its locks: the server ends a transaction left idle (10 s by
    default, 0.2 s here); the process learns it at its next statement, and nothing is kept."""
    with pytest.raises(StoreConflict, match="25P03"), db.transaction() as tx:
        tx.execute("SET LOCAL idle_in_transaction_session_timeout = '200ms'")
        tx.execute("INSERT INTO kv (key, value) VALUES ('paused', 'x')")
        time.sleep(1.0)
        tx.execute("SELECT 1")
    assert db.reads.execute("SELECT count(*) FROM kv").fetchone() == (0,)


def test_migrating_waits_for_another_migration_past_lock_timeout(pg_url: str) -> None:
    """The migration lock is waited for without lock_timeout (a long migration elsewhere)."""
    with _connect(pg_url) as holder, _connect(pg_url) as starter:
        starter.execute("SET lock_timeout = '100ms'")
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (backend._MIGRATION_LOCK,))
            waiting = threading.Thread(target=run_migrations, args=(starter, "test"), daemon=True)
            waiting.start()
            time.sleep(0.5)
            assert waiting.is_alive()  # still waiting, not failed after 100 ms
        waiting.join(30)
        assert not waiting.is_alive()
        assert backend.schema_version(starter) == len(MIGRATIONS)
        assert starter.execute("SHOW lock_timeout").fetchone() == ("100ms",)


def test_a_pool_opened_without_migrating_migrates_when_a_writer_asks(pg_url: str) -> None:
    try:
        reader = pool_for(pg_url, migrate=False)
        assert PgHandle(reader).schema_version == 0
        assert pool_for(pg_url) is reader
        assert PgHandle(reader).schema_version == len(MIGRATIONS)
    finally:
        close_pools()


def test_a_closed_pool_is_forgotten_and_opened_again(pg_url: str) -> None:
    try:
        first = pool_for(pg_url, max_size=1)
        first.close()
        second = pool_for(pg_url, max_size=1)
        assert second is not first
        assert PgHandle(second).reads.execute("SELECT 1").fetchone() == (1,)
    finally:
        close_pools()


def test_uncertainty_fragment_agrees_with_sqlites(db: PgHandle, tmp_path: Path) -> None:
    """review.py's SQLite fragment and the dialect's give the same numbers for well-formed,
    single, malformed, non-object and missing probabilities."""
    from triage.store.dialect import SQLITE

    samples = [
        '{"sales": 0.7, "support": 0.2, "spam": 0.1}',
        '{"sales": 0.5, "support": 0.5}',
        '{"sales": 1}',
        '{"sales": true, "x": "y"}',
        "[0.5, 0.5]",
        "not json",
        "",
        None,
    ]
    now = "2026-01-01T00:00:00.000000+00:00"
    insert = (
        "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, probabilities,"
        " created_at, updated_at) VALUES ('a', 'INBOX', 1, ?, '<m>', ?, ?, ?)"
    )
    lite = Database(tmp_path / "triage.db")
    with lite.transaction() as ltx:
        for uid, probabilities in enumerate(samples, start=1):
            ltx.execute(insert, (uid, probabilities, now, now))
    query = "SELECT {} FROM messages m ORDER BY uid"
    expected = [r[0] for r in lite.reads.execute(query.format(SQLITE.uncertainty))]
    lite.close()
    with db.transaction() as tx:  # migration 12 created the fragment's function
        for uid, probabilities in enumerate(samples, start=1):
            tx.execute(insert, (uid, probabilities, now, now))
    got = [r[0] for r in db.reads.execute(query.format(DIALECT.uncertainty))]
    assert got == expected
    assert expected[:3] == [0.5, 1.0, 0.0] and expected[3:] == [None] * 5


# --------------------------------------------------------------------------------------------
# Errors, outages, fork


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", StoreUnavailable),
        ("57P01", StoreUnavailable),
        ("53300", StoreUnavailable),
        ("40001", StoreConflict),
        ("40P01", StoreConflict),
        ("55P03", StoreConflict),
        ("23505", StoreIntegrityError),
        ("23503", StoreIntegrityError),
        ("42P01", StoreError),
    ],
)
def test_errors_map_by_sqlstate(sqlstate: str, kind: type[StoreError]) -> None:
    exc = pg_errors.lookup(sqlstate)("something\n  went wrong for s3cret")
    mapped = map_error(exc, "postgresql://u@h/db", secrets=["s3cret"])
    assert type(mapped) is kind
    assert str(mapped) == f"postgresql://u@h/db: something went wrong for *** (SQLSTATE {sqlstate})"


def test_display_name_never_shows_the_password(postgres: PgHarness) -> None:
    name = display_name(postgres.url)
    assert name == f"postgresql://triage@127.0.0.1:{postgres.port}/triage"
    assert postgres.password not in name
    assert display_name("host=h port=5 dbname=d user=u password=pw") == "postgresql://u@h:5/d"
    with pytest.raises(StoreError) as caught:
        display_name("postgresql://u:pw@h/d?nonsense=1")
    assert "pw" not in str(caught.value)


def test_a_wrong_password_is_one_line_without_the_password(postgres: PgHarness) -> None:
    wrong = "WrongSecret-123"
    urls = [
        (postgres.url.replace(postgres.password, wrong), None),
        (postgres.url_without_password, wrong),
    ]
    for url, password in urls:
        with pytest.raises(StoreError) as caught:
            pool_for(url, password=password)
        message = str(caught.value)
        assert isinstance(caught.value, StoreUnavailable)
        assert "\n" not in message
        assert wrong not in message and postgres.password not in message
        assert message.startswith(f"postgresql://triage@127.0.0.1:{postgres.port}/triage: ")
        assert "password authentication failed" in message
    assert backend._registry.items == {}


@pytest.mark.slow
def test_a_server_outage_is_unavailable_and_the_pool_recovers(
    postgres: PgHarness, pg_url: str
) -> None:
    pool = pool_for(pg_url, max_size=2, timeout=2.0)
    db = PgHandle(pool)
    try:
        with db.transaction() as tx:
            tx.execute("INSERT INTO kv (key, value) VALUES ('before', 'outage')")
        open_tx = db.transaction()
        tx = open_tx.__enter__()
        tx.execute("INSERT INTO kv (key, value) VALUES ('lost', 'with the server')")
        postgres.stop_server()
        try:
            # The open transaction breaks; leaving it (a rollback on a dead connection) too.
            with pytest.raises(StoreUnavailable):
                tx.execute("SELECT 1")
            with pytest.raises(StoreUnavailable):
                open_tx.__exit__(None, None, None)
            assert not db.in_transaction
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="no database connection within 2 s"):
                db.reads.execute("SELECT 1")
            assert time.monotonic() - began < 10
            with pytest.raises(StoreUnavailable), db.transaction():
                pass
        finally:
            postgres.start_server()
        deadline = time.monotonic() + 60
        while True:
            try:
                rows = db.reads.execute("SELECT key FROM kv ORDER BY key").fetchall()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the pool did not recover"
                time.sleep(0.2)
        assert rows == [("before",)]
        with db.transaction() as tx:
            tx.execute("INSERT INTO kv (key, value) VALUES ('after', 'outage')")
        assert pool.stats()["pool_max"] == 2
    finally:
        postgres.start_server()
        close_pools()


def test_a_forked_child_forgets_the_pools_and_leaves_the_parents_connections(
    db: PgHandle, pg_url: str
) -> None:
    assert db.reads.execute("SELECT 1").fetchone() == (1,)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            if backend._registry.items == {} and backend._registry.orphans:
                gc.collect()
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pooled connection still works: the child closed none of its sockets.
    assert db.reads.execute("SELECT 2").fetchone() == (2,)
    assert pool_for(pg_url) is db._pool
