"""The store's SQL in its portable forms means what the SQLite-only forms meant: ids come from
`RETURNING`, a high-water mark never goes back, "no limit" returns every row, a message's reply
state is one reply's, emptied digests keep an empty (not NULL) raw message, and the doctor's
write probe leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from triage.core.settings import Settings, load_settings
from triage.ops.doctor import check_store
from triage.store import digests, retention, review, stats
from triage.store.corrections import list_corrections
from triage.store.db import (
    SQLITE_MINIMUM,
    SQLITE_VERSION,
    Database,
    inserted_id,
    sqlite_library_problem,
    timestamp,
)
from triage.store.ledger import Ledger
from triage.store.probe import probe_write
from triage.store.schema import MIGRATIONS

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "triage.db")
    yield database
    database.close()


def _message(db: Database, uid: int, decision: str = "review") -> int:
    with db.transaction() as c:
        return inserted_id(
            c.execute(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, decision,"
                " created_at, updated_at) VALUES ('a', 'INBOX', 1, ?, ?, ?, ?, ?) RETURNING id",
                (uid, f"<m{uid}@example.test>", decision, timestamp(T0), timestamp(T0)),
            )
        )


def test_inserted_id_is_the_new_rows_id_and_0_when_nothing_was_inserted(db: Database) -> None:
    """`RETURNING id` gives each new row's id; an `INSERT … SELECT` that finds no row gives 0
    (never the id of an earlier insert, as a driver's `lastrowid` would)."""
    first, second = _message(db, 1), _message(db, 2)
    assert second == first + 1
    with db.transaction() as c:
        copied = c.execute(
            "INSERT INTO kv (key, value) SELECT 'x', message_id FROM messages WHERE id = ?"
            " RETURNING 1",
            (second + 100,),
        )
        assert inserted_id(copied) == 0


def test_the_sqlite_library_must_support_returning() -> None:
    """3.35.0 (RETURNING) is the oldest library accepted; an older one is named in the reason."""
    assert sqlite_library_problem() is None  # the library this test runs with
    assert sqlite_library_problem(SQLITE_MINIMUM) is None
    problem = sqlite_library_problem((3, 34, 1))
    assert problem is not None
    assert "SQLite 3.34.1" in problem
    assert "3.35.0" in problem


def test_the_high_water_mark_never_moves_back(db: Database) -> None:
    """`advance` keeps the larger of the stored and the given UID."""
    ledger = Ledger(db)
    ledger.start_folder("a", "INBOX", 7, baseline_uid=0)
    ledger.advance("a", "INBOX", 40)
    ledger.advance("a", "INBOX", 12)
    state = ledger.folder_state("a", "INBOX")
    assert state is not None
    assert state.last_uid == 40
    ledger.advance("a", "INBOX", 41)
    state = ledger.folder_state("a", "INBOX")
    assert state is not None
    assert state.last_uid == 41


def test_no_limit_returns_every_row(db: Database) -> None:
    """Without a limit the review queue and the corrections list hold every row; with one,
    at most that many."""
    for uid in range(1, 4):
        _message(db, uid)
    with db.transaction() as c:
        for n in range(3):
            c.execute(
                "INSERT INTO corrections (created_at, message_id, subject, new_label, source,"
                " weight) VALUES (?, ?, 's', 'sales', 'review', 1.0)",
                (timestamp(T0 + timedelta(minutes=n)), f"<m{n}@example.test>"),
            )
    c = db.reads
    assert len(review.pending(c)) == 3
    assert len(review.pending(c, limit=2)) == 2
    assert len(list_corrections(c)) == 3
    assert [r.message_id for r in list_corrections(c, limit=1)] == ["<m2@example.test>"]


def test_a_messages_reply_state_is_its_first_replys(db: Database) -> None:
    """A message with two replies has one reply state: the first reply's (what SQLite gave for
    the subquery without ORDER BY, over the index on message_row)."""
    row = _message(db, 1)
    with db.transaction() as c:
        for n, state in enumerate(("failed", "sent")):
            c.execute(
                "INSERT INTO replies (message_row, reply_message_id, recipient, envelope_from,"
                " template, mode, state, raw, next_attempt, created_at)"
                " VALUES (?, ?, 'p@client.example', '', 'sales', 'live', ?, ?, ?, ?)",
                (row, f"<r{n}@example.test>", state, b"x", timestamp(T0), timestamp(T0)),
            )
    [handled] = stats.handled_messages(db.reads)
    assert handled.reply_state == "failed"


def test_retention_empties_a_digest_to_an_empty_message_not_null(db: Database) -> None:
    """A finished digest older than the cutoff keeps a zero-length raw message."""
    with db.transaction() as c:
        digest = digests.insert(
            c,
            kind="digest",
            slot="2026-03-02",
            message_id="<d@example.test>",
            raw=b"the digest",
            recipients=["sales@example.test"],
            envelope_from="triage@example.test",
            now=T0,
        )
        c.execute("UPDATE digests SET state = 'sent' WHERE id = ?", (digest,))
        emptied = retention.empty_before(c, timestamp(T0 + timedelta(days=1)))
    assert emptied.digests == 1
    raw = db.reads.execute("SELECT raw FROM digests WHERE id = ?", (digest,)).fetchone()[0]
    assert raw == b""


def test_the_write_probe_leaves_nothing_behind(db: Database) -> None:
    """The doctor's probe returns the schema version and rolls its row back."""
    assert probe_write(db) == len(MIGRATIONS)
    assert db.reads.execute("SELECT COUNT(*) FROM kv WHERE key = 'doctor'").fetchone()[0] == 0
    assert not db.in_transaction


def _store_settings(path: Path) -> Settings:
    return load_settings(
        None,
        environ={},
        overrides={"imap": {"username": "u", "password": "p"}, "store": {"path": str(path)}},
    )


def test_the_doctor_names_the_sqlite_library_and_refuses_one_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store row says which SQLite library runs the store; a library older than 3.35 is a
    problem row saying so (before any database is opened)."""
    (finding,) = check_store(_store_settings(tmp_path / "triage.db"))
    assert finding.status == "ok"
    assert f"writable, SQLite {SQLITE_VERSION})" in finding.detail

    monkeypatch.setattr(
        "triage.store.db.sqlite_library_problem", lambda: sqlite_library_problem((3, 31, 1))
    )
    (finding,) = check_store(_store_settings(tmp_path / "other" / "triage.db"))
    assert finding.status == "problem"
    assert "SQLite 3.31.1 is too old" in finding.detail
    assert not (tmp_path / "other").exists()
