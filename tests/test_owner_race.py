"""The owner a hot-lead reply names, when another account's thread changes the leads meanwhile.

Each account thread has its own store connection: between the rehearsal that tells a reply its
lead's owner and the transaction that records the lead, another thread may commit a lead for the
same prospect with another owner. The reply is then rendered again, never queued naming the
wrong person; a lead whose owner keeps changing gets a reply naming nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from tests.test_leads import make_settings
from triage.core.models import Classification, InboundMessage, Verdict
from triage.core.settings import Settings
from triage.pipeline import OWNER_RETRIES, Decided, Planned, Recorder, decide
from triage.sales.leads import assign_owner
from triage.store.db import Database, Tx
from triage.store.leads import find_leads, set_status
from triage.store.ledger import Ledger

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")


def raw(sender: str, n: int) -> bytes:
    """A sales inquiry from `sender`."""
    return (
        f"From: <{sender}>\r\nTo: sales@example.test\r\nSubject: Quote {n}\r\n"
        f"Message-ID: <m{n}@x.example>\r\nDate: Mon, 13 May 2024 07:00:00 +0000\r\n\r\n"
        "We need a quote for 40 pallet racks.\r\n"
    ).encode()


def check(msg: InboundMessage) -> Verdict:
    """Every sender may be answered."""
    return Verdict(may_reply=True, reasons=(), destination=msg.from_)


def classify(msgs: Sequence[InboundMessage]) -> list[Classification]:
    """Every message is a confident sales inquiry."""
    return [Classification("sales", 0.95, "sales", explanation=("quote",)) for _ in msgs]


class Account:
    """One account thread's view: its own store connection and recorder. Queueing a reply writes
    (row id, owner named) to a table of the test in the recording transaction, so `queued` shows
    what was committed: a reply queued twice shows twice, one rolled back not at all."""

    def __init__(self, settings: Settings, name: str, during_render: Callable[[], None]) -> None:
        self.name = name
        self.db = Database(settings.store)
        self.ledger = Ledger(self.db)
        self.rendered: list[str] = []
        with self.db.transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS test_queued"
                " (account TEXT, n INTEGER, row_id INTEGER, owner TEXT)"
            )

        def prepare(p: Planned) -> Planned:
            self.rendered.append(p.lead_owner)
            during_render()  # rendering takes a moment; another account's thread runs meanwhile
            return p

        def queue(c: Tx, p: Planned) -> None:
            # n numbers this account's replies in order (one thread per account).
            c.execute(
                "INSERT INTO test_queued SELECT ?, COALESCE(MAX(n), 0) + 1, ?, ?"
                " FROM test_queued WHERE account = ?",
                (name, p.row_id, p.lead_owner, name),
            )

        self.recorder = Recorder(
            self.ledger,
            queue,
            response_target=lambda at: at + timedelta(hours=4),
            assign_owner=partial(assign_owner, settings=settings.leads),
            prepare_reply=prepare,
        )

    @property
    def queued(self) -> list[tuple[int, str]]:
        """Every committed (row id, owner named) of a reply this account queued, in order."""
        rows = self.db.reads.execute(
            "SELECT row_id, owner FROM test_queued WHERE account = ? ORDER BY n", (self.name,)
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    def batch(self, mails: Sequence[bytes], first_uid: int = 1) -> list[Decided]:
        """`mails` recorded `seen` in this account's INBOX and decided."""
        uids = list(range(first_uid, first_uid + len(mails)))
        self.ledger.record_seen(self.name, "INBOX", 1, [(u, f"<{u}>", False) for u in uids])
        rows = self.ledger.rows_for(self.name, "INBOX", 1, uids)
        items = [(rows[u].id, m, False) for u, m in zip(uids, mails, strict=True)]
        return decide(items, check, classify, None)


def owners_of_leads(db: Database) -> dict[str, str]:
    """Lead owner by prospect address."""
    return {lead.email: lead.owner for lead in find_leads(db.reads)}


def staff_settings(tmp_path: Path) -> Settings:
    """Two salespeople, round-robin."""
    return make_settings(tmp_path, leads={"staff": ["Sam", "Rita"], "assignment": "round-robin"})


def test_a_lead_created_by_another_account_meanwhile_is_named_in_the_reply(
    tmp_path: Path,
) -> None:
    """Account A rehearses Jane's new lead (Sam, next in the round-robin) and, while it renders
    the reply, account B records Carl's and Jane's leads (Sam, then Rita): A's message joins
    Jane's lead, owned by Rita, so the reply A queues names Rita, not Sam."""
    settings = staff_settings(tmp_path)
    other = Account(settings, "info", lambda: None)
    b_batch = other.batch([raw("carl@c.example", 1), raw("jane@j.example", 2)])
    fired: list[bool] = []

    def b_records_now() -> None:
        if not fired:
            fired.append(True)
            other.recorder.record(b_batch)

    account = Account(settings, "sales", b_records_now)
    a_batch = account.batch([raw("jane@j.example", 3)])
    account.recorder.record(a_batch)
    leads = owners_of_leads(account.db)
    assert leads == {"carl@c.example": "Sam", "jane@j.example": "Rita"}
    assert account.rendered == ["Sam", "Rita"]  # rendered once more after the change
    assert account.queued == [(a_batch[0].row_id, "Rita")]


def test_a_lead_whose_owner_keeps_changing_gets_a_reply_naming_nobody(tmp_path: Path) -> None:
    """Jane's lead is claimed by someone else every time account A renders its reply (as
    `triage leads claim` in another process might): after `OWNER_RETRIES` tries the reply names
    no owner, and it is queued exactly once."""
    settings = staff_settings(tmp_path)
    first = Account(settings, "info", lambda: None)
    first.recorder.record(first.batch([raw("jane@j.example", 1)]))
    claimers = iter(["Ann", "Bea", "Cid", "Dot"])
    clerk = Database(settings.store)

    def someone_claims() -> None:
        lead = find_leads(clerk.reads)[0]
        with clerk.transaction() as c:
            set_status(c, lead.id, "claimed", datetime.now(UTC), owner=next(claimers))

    account = Account(settings, "sales", someone_claims)
    a_batch = account.batch([raw("jane@j.example", 2)])
    account.recorder.record(a_batch)
    assert len(account.rendered) == OWNER_RETRIES + 1
    assert account.rendered[-1] == ""
    assert account.queued == [(a_batch[0].row_id, "")]
    assert owners_of_leads(account.db)["jane@j.example"] not in ("", "Sam")
