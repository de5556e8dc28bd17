"""The per-message ledger and per-folder sync state.

A message is keyed by (account, folder, UIDVALIDITY, UID) and carries its Message-ID. It walks
`seen` (fetched and recorded) → `classified` (decision, lead and queued reply recorded in one
transaction) → `done` (mailbox marks applied), or ends `quarantined`. Parsing and classifying are
pure, so a crash between states simply redoes them; every side effect is recorded before it is made
and checked before it is repeated. Each attempt to decide a message is counted before it starts, so
a message that kills the process while it is decided is quarantined after a few restarts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from triage.core.errors import TransientError
from triage.store.db import STORE_ERRORS, Database, Row, Tx, utcnow

SEEN = "seen"
CLASSIFIED = "classified"
DONE = "done"
QUARANTINED = "quarantined"

# Failures that say nothing about the message in hand: a server or network hiccup, or the store
# itself failing (a full disk, say). They stop the pass, which is retried with backoff; they are
# never counted against a message.
NOT_THE_MESSAGES_FAULT: tuple[type[Exception], ...] = (TransientError, *STORE_ERRORS)


@dataclass(frozen=True, slots=True)
class FolderState:
    """Where syncing of one folder stands."""

    account: str
    folder: str
    uidvalidity: int
    last_uid: int
    baseline_uid: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One message's ledger entry, as much as the pipeline needs to resume it."""

    id: int
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str
    state: str
    attempts: int
    backfill: bool
    decision: str | None
    label: str | None
    # Why an earlier attempt failed, when it raised or its worker process died (the death of the
    # whole process leaves no word).
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was decided for one message, recorded with state `classified`."""

    row_id: int
    message_id: str
    sender: str
    subject: str
    language: str
    body: str
    label: str | None
    confidence: float | None
    decision: str
    probabilities: dict[str, float]
    explanation: Sequence[str]
    may_reply: bool
    reasons: Sequence[str]


def _row(r: Row) -> LedgerRow:
    return LedgerRow(
        id=r["id"],
        account=r["account"],
        folder=r["folder"],
        uidvalidity=r["uidvalidity"],
        uid=r["uid"],
        message_id=r["message_id"],
        state=r["state"],
        attempts=r["attempts"],
        backfill=bool(r["backfill"]),
        decision=r["decision"],
        label=r["label"],
        error=r["error"],
    )


class Ledger:
    """Reads and writes the `messages` and `mailbox_state` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- folders -------------------------------------------------------------------------------

    def folder_state(self, account: str, folder: str) -> FolderState | None:
        """The sync state of a folder, or None before its first sync."""
        r = self.db.reads.execute(
            "SELECT * FROM mailbox_state WHERE account = ? AND folder = ?", (account, folder)
        ).fetchone()
        if r is None:
            return None
        return FolderState(
            r["account"], r["folder"], r["uidvalidity"], r["last_uid"], r["baseline_uid"]
        )

    def start_folder(
        self, account: str, folder: str, uidvalidity: int, baseline_uid: int
    ) -> FolderState:
        """Record a folder's first sync (or a new UIDVALIDITY): UIDs ≤ baseline are backfill."""
        now = utcnow()
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO mailbox_state (account, folder, uidvalidity, last_uid, baseline_uid,"
                " first_seen, last_sync) VALUES (?, ?, ?, 0, ?, ?, ?)"
                " ON CONFLICT (account, folder) DO UPDATE SET"
                " uidvalidity = excluded.uidvalidity, last_uid = 0,"
                " baseline_uid = excluded.baseline_uid, last_sync = excluded.last_sync",
                (account, folder, uidvalidity, baseline_uid, now, now),
            )
        return FolderState(account, folder, uidvalidity, 0, baseline_uid)

    def advance(self, account: str, folder: str, last_uid: int) -> None:
        """Move a folder's high-water mark: every UID up to `last_uid` has a ledger row."""
        with self.db.transaction() as c:
            c.execute(
                "UPDATE mailbox_state"
                " SET last_uid = CASE WHEN last_uid > ? THEN last_uid ELSE ? END, last_sync = ?"
                " WHERE account = ? AND folder = ?",
                (last_uid, last_uid, utcnow(), account, folder),
            )

    def touch(self, account: str, folder: str) -> None:
        """Note a successful sync that found nothing new (for health checks)."""
        with self.db.transaction() as c:
            c.execute(
                "UPDATE mailbox_state SET last_sync = ? WHERE account = ? AND folder = ?",
                (utcnow(), account, folder),
            )

    def first_seen(self, account: str, folder: str) -> datetime | None:
        """When triage first synced this folder (kept across UIDVALIDITY changes): mail the
        server received before then is backfill."""
        r = self.db.reads.execute(
            "SELECT first_seen FROM mailbox_state WHERE account = ? AND folder = ?",
            (account, folder),
        ).fetchone()
        return datetime.fromisoformat(r[0]) if r else None

    # -- messages ------------------------------------------------------------------------------

    def known_message_ids(self, account: str, folder: str, ids: Iterable[str]) -> set[str]:
        """Which of `ids` the ledger already holds for this folder (any UIDVALIDITY)."""
        wanted = list(ids)
        found: set[str] = set()
        c = self.db.reads
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            wanted_ids, params = c.dialect.in_list("message_id", chunk)
            rows = c.execute(
                "SELECT message_id FROM messages WHERE account = ? AND folder = ?"  # noqa: S608
                f" AND {wanted_ids}",
                (account, folder, *params),
            )
            found.update(r[0] for r in rows)
        return found

    def record_seen(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        items: Sequence[tuple[int, str, bool]],
        state: str = SEEN,
        decision: str | None = None,
    ) -> None:
        """Insert rows for fetched messages (uid, message_id, backfill); existing rows stay."""
        now = utcnow()
        with self.db.transaction() as c:
            c.executemany(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, backfill,"
                " state, decision, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account, folder, uidvalidity, uid) DO NOTHING",
                [
                    (account, folder, uidvalidity, uid, mid, int(bf), state, decision, now, now)
                    for uid, mid, bf in items
                ],
            )

    def rows_for(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, LedgerRow]:
        """Ledger rows by UID for the given UIDs of one folder."""
        out: dict[int, LedgerRow] = {}
        c = self.db.reads
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            wanted_uids, params = c.dialect.in_list("uid", chunk)
            rows = c.execute(
                "SELECT * FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ?"  # noqa: S608
                f" AND {wanted_uids}",
                (account, folder, uidvalidity, *params),
            )
            out.update((r["uid"], _row(r)) for r in rows)
        return out

    def unfinished(self, account: str, folder: str, uidvalidity: int) -> list[LedgerRow]:
        """Rows of this folder a crash or failure left before `done`, oldest first."""
        rows = self.db.reads.execute(
            "SELECT * FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ?"
            " AND state NOT IN ('done', 'quarantined') ORDER BY uid",
            (account, folder, uidvalidity),
        )
        return [_row(r) for r in rows]

    def get(self, row_id: int) -> LedgerRow | None:
        """One row by id."""
        r = self.db.reads.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
        return _row(r) if r else None

    def record_outcome(self, c: Tx, o: Outcome) -> None:
        """Within the caller's transaction: store the decision and move the row to classified."""
        c.execute(
            "UPDATE messages SET state = 'classified', message_id = ?, sender = ?, subject = ?,"
            " language = ?, body = ?, label = ?, confidence = ?, decision = ?, probabilities = ?,"
            " explanation = ?, may_reply = ?, reasons = ?, error = NULL, updated_at = ?"
            " WHERE id = ?",
            (
                o.message_id,
                o.sender,
                o.subject,
                o.language,
                o.body,
                o.label,
                o.confidence,
                o.decision,
                json.dumps(o.probabilities),
                json.dumps(list(o.explanation)),
                int(o.may_reply),
                json.dumps(list(o.reasons)),
                utcnow(),
                o.row_id,
            ),
        )

    def decisions(self, row_ids: Sequence[int]) -> dict[int, str | None]:
        """The recorded decision of each row: one narrow query per 500 rows, not one per row
        (and not `SELECT *`, which would read back every body just written)."""
        out: dict[int, str | None] = {}
        c = self.db.reads
        for start in range(0, len(row_ids), 500):
            chunk = list(row_ids[start : start + 500])
            wanted_rows, params = c.dialect.in_list("id", chunk)
            found = c.execute(
                f"SELECT id, decision FROM messages WHERE {wanted_rows}",  # noqa: S608
                params,
            )
            out.update((row[0], row[1]) for row in found)
        return out

    def mark_done(self, row_ids: Sequence[int]) -> None:
        """Every effect of these messages is recorded and applied: they are finished."""
        now = utcnow()
        with self.db.transaction() as c:
            c.executemany(
                "UPDATE messages SET state = 'done', updated_at = ? WHERE id = ?"
                " AND state != 'quarantined'",
                [(now, i) for i in row_ids],
            )

    def note_error(self, row_id: int, error: str) -> None:
        """Record why an effect after recording failed, keeping the message's state."""
        with self.db.transaction() as c:
            c.execute(
                "UPDATE messages SET error = ?, updated_at = ? WHERE id = ?",
                (error[:500], utcnow(), row_id),
            )

    def begin_attempt(self, row_ids: Sequence[int]) -> None:
        """Count an attempt to decide these messages, committed before deciding starts.

        A message that kills the process (or its worker) while it is decided leaves this count
        behind, so the deaths add up across restarts even though no exception was ever caught.
        """
        now = utcnow()
        with self.db.transaction() as c:
            c.executemany(
                "UPDATE messages SET attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? AND state = 'seen'",
                [(now, i) for i in row_ids],
            )

    def refund_attempt(self, row_ids: Iterable[int]) -> None:
        """Take back attempts counted for messages that were never decided because the pass
        stopped on a server or connection error: those did not fail, and must not be
        quarantined as if they had killed the process.

        Not guarded by a lease (fleet mode): a pass cut short because its lease was lost takes
        its own counts back, which is right whoever serves the account now."""
        now = utcnow()
        with self.db.transaction(guarded=False) as c:
            c.executemany(
                "UPDATE messages SET attempts = attempts - 1, updated_at = ?"
                " WHERE id = ? AND state = 'seen' AND attempts > 0",
                [(now, i) for i in row_ids],
            )

    def record_failure(
        self,
        row_id: int,
        error: str,
        max_attempts: int,
        raw: bytes | None,
        *,
        count_attempt: bool = False,
    ) -> bool:
        """Note why the attempt counted by `begin_attempt` failed (or, with `count_attempt`,
        count the failed attempt now: acting on a message recorded by an earlier pass);
        quarantine (keeping the raw bytes) once the attempts reach `max_attempts`.

        Returns True when the message is now quarantined.
        """
        with self.db.transaction() as c:
            if count_attempt:
                c.execute("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", (row_id,))
            # FOR UPDATE: a transaction counting an attempt right now is waited for, not missed.
            r = c.execute(
                f"SELECT attempts FROM messages WHERE id = ?{c.dialect.for_update()}",  # noqa: S608
                (row_id,),
            ).fetchone()
            quarantine = (r["attempts"] if r else 0) >= max_attempts
            c.execute(
                "UPDATE messages SET error = ?, updated_at = ?,"
                " state = CASE WHEN ? THEN 'quarantined' ELSE state END,"
                " decision = CASE WHEN ? THEN 'quarantine' ELSE decision END,"
                " raw = CASE WHEN ? THEN ? ELSE raw END WHERE id = ?",
                (error, utcnow(), quarantine, quarantine, quarantine, raw, row_id),
            )
        return quarantine

    def record_act_failure(
        self, row_id: int, error: str, max_attempts: int, *, count_attempt: bool = False
    ) -> bool:
        """Note why acting on a recorded (`classified`) message failed after its record: its
        decision stands (a reply may be queued or sent), so it is never quarantined. Once the
        attempts reach `max_attempts` it is given up: `done`, keeping its decision, with the
        error in `error` and added to its reasons.

        Returns True when the message is now `done`.
        """
        with self.db.transaction() as c:
            if count_attempt:
                c.execute("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", (row_id,))
            # FOR UPDATE: the reasons are read, extended and written back; another transaction
            # doing the same must wait, or one of the two additions would be lost.
            r = c.execute(
                f"SELECT attempts, reasons FROM messages WHERE id = ?{c.dialect.for_update()}",  # noqa: S608
                (row_id,),
            ).fetchone()
            give_up = (r["attempts"] if r else 0) >= max_attempts
            reasons = json.loads(r["reasons"] or "[]") if r else []
            if give_up:
                reasons.append(f"act-failed: {error}")
            c.execute(
                "UPDATE messages SET error = ?, updated_at = ?, reasons = ?,"
                " state = CASE WHEN ? AND state = 'classified' THEN 'done' ELSE state END"
                " WHERE id = ?",
                (error, utcnow(), json.dumps(reasons), give_up, row_id),
            )
        return give_up

    def quarantine(self, row_id: int, error: str, raw: bytes | None) -> None:
        """Quarantine at once: the message can never be handled (e.g. too large)."""
        with self.db.transaction() as c:
            c.execute(
                "UPDATE messages SET state = 'quarantined', decision = 'quarantine', error = ?,"
                " raw = ?, updated_at = ? WHERE id = ?",
                (error, raw, utcnow(), row_id),
            )

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (for status output and tests)."""
        rows = self.db.reads.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
        return {r[0]: r[1] for r in rows}
