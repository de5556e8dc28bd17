"""The SQLite dialect: the SQL the store has always run on SQLite, and what its pieces match."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.store.db import Database
from triage.store.dialect import SQLITE, Dialect


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "triage.db")
    with database.transaction() as c:
        c.executemany(
            "INSERT INTO kv (key, value) VALUES (?, ?)", [(f"k{n}", str(n)) for n in range(5)]
        )
    yield database
    database.close()


def keys(db: Database, condition: str, params: list[object]) -> list[str]:
    rows = db.reads.execute(f"SELECT key FROM kv WHERE {condition} ORDER BY key", params)  # noqa: S608
    return [str(r[0]) for r in rows]


def test_every_transaction_and_read_carries_the_sqlite_dialect(db: Database) -> None:
    """Store code reaches the dialect from the unit of work it was handed."""
    dialect: Dialect = db.reads.dialect
    assert dialect is SQLITE
    assert dialect.name == "sqlite"
    with db.transaction() as c:
        assert c.dialect is SQLITE


def test_in_list_is_one_placeholder_per_value(db: Database) -> None:
    """`column IN (?,?,…)` with the values as its parameters, in order."""
    condition, params = SQLITE.in_list("key", ("k3", "k1", "nope"))
    assert condition == "key IN (?,?,?)"
    assert params == ["k3", "k1", "nope"]
    assert keys(db, condition, params) == ["k1", "k3"]


def test_in_list_of_one_value_and_of_none(db: Database) -> None:
    """One value is `IN (?)`; an empty list is `IN ()`, which SQLite accepts and which matches
    no row (callers that skip the query for no values still may)."""
    assert SQLITE.in_list("key", ["k2"]) == ("key IN (?)", ["k2"])
    condition, params = SQLITE.in_list("key", [])
    assert (condition, params) == ("key IN ()", [])
    assert keys(db, condition, params) == []


def test_in_list_keeps_a_qualified_column_and_combines_with_other_parameters(
    db: Database,
) -> None:
    """The column may be qualified; its parameters splice between the statement's others."""
    condition, params = SQLITE.in_list("kv.key", ["k0", "k4"])
    assert condition == "kv.key IN (?,?)"
    rows = db.reads.execute(
        f"SELECT key FROM kv WHERE value != ? AND {condition} AND key != ? ORDER BY key",  # noqa: S608
        ("0", *params, "zzz"),
    )
    assert [r[0] for r in rows] == ["k4"]


def test_in_many_binds_any_number_of_values_as_one_parameter(db: Database) -> None:
    """A list longer than SQLite's limit on parameters (32,766) still works: one JSON array."""
    values = [f"x{n}" for n in range(40_000)] + ["k2", "k4"]
    condition, params = SQLITE.in_many("key", values)
    assert condition == "key IN (SELECT value FROM json_each(?))"
    assert len(params) == 1
    assert keys(db, condition, params) == ["k2", "k4"]
    assert keys(db, *SQLITE.in_many("key", [])) == []


def test_in_many_matches_integers(db: Database) -> None:
    """Ids (integers) match integer columns through the JSON array."""
    rows = db.reads.execute("SELECT rowid FROM kv ORDER BY rowid").fetchall()
    ids = [int(r[0]) for r in rows]
    condition, params = SQLITE.in_many("rowid", [ids[1], ids[3], 10_000])
    found = db.reads.execute(f"SELECT key FROM kv WHERE {condition} ORDER BY key", params)  # noqa: S608
    assert [r[0] for r in found] == ["k1", "k3"]


def test_sqlite_needs_no_translation_no_row_locks_and_no_named_locks(db: Database) -> None:
    """Statements run as written; every write transaction holds SQLite's one write lock, so
    `for_update` is empty and `lock` does nothing (and takes nothing)."""
    sql = "SELECT key FROM kv WHERE key = ? AND value LIKE '%'"
    assert SQLITE.translate(sql) is sql
    assert SQLITE.translate("UPDATE kv SET value = :v WHERE key = :k", named=True) == (
        "UPDATE kv SET value = :v WHERE key = :k"
    )
    assert SQLITE.for_update() == ""
    assert SQLITE.for_update(skip_locked=True) == ""
    with db.transaction() as c:
        SQLITE.lock(c, "leads", "jane@example.test")
        rows = c.execute(f"SELECT key FROM kv WHERE key = ?{SQLITE.for_update()}", ("k1",))  # noqa: S608
        assert [r[0] for r in rows] == ["k1"]


def test_ci_like_ignores_ascii_case(db: Database) -> None:
    """The search box's LIKE matches whatever the case of the ASCII letters."""
    with db.transaction() as c:
        c.execute("INSERT INTO kv (key, value) VALUES ('Jane@Example.TEST', '')")
    assert keys(db, f"key {SQLITE.ci_like} ?", ["%jane@example.test%"]) == ["Jane@Example.TEST"]


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ('{"sales": 0.7, "support": 0.2, "spam": 0.1}', 0.5),
        ('{"sales": 0.5, "support": 0.5}', 1.0),
        ('{"sales": 0.9}', 0.1),  # a single probability: p_second = 0
        ('{"sales": 0.6, "note": "x", "flag": true, "support": 0.2}', 0.6),  # numbers only
        ('{"sales": 1, "support": 0}', 0.0),  # integers are numbers
        ('{"note": "x"}', None),
        ("{}", None),
        ("[0.7, 0.3]", None),  # not an object
        ("not json", None),
        ("", None),
        (None, None),
    ],
)
def test_uncertainty_is_one_minus_the_top_margin(
    db: Database, probabilities: str | None, expected: float | None
) -> None:
    """1 - (p_top - p_second) over the numbers of a JSON object, rounded to six places; NULL
    for anything else."""
    row = db.reads.execute(
        f"SELECT {SQLITE.uncertainty} FROM (SELECT ? AS probabilities) m",  # noqa: S608
        (probabilities,),
    ).fetchone()
    assert row[0] == expected


def test_now_epoch_reads_the_clock_in_epoch_seconds(db: Database) -> None:
    """The database's clock as epoch seconds (UTC, to the millisecond), a float."""
    before = time.time()
    (now,) = db.reads.execute(f"SELECT {SQLITE.now_epoch}").fetchone()
    after = time.time()
    assert isinstance(now, float)
    assert before - 0.002 <= now <= after + 0.002


def test_for_share_adds_nothing_on_sqlite() -> None:
    """Write transactions hold the database's write lock: no row lock clause exists or is
    needed."""
    assert SQLITE.for_share() == ""
