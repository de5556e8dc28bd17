"""Filing a reply whose original was moved, when the original's Message-ID is hostile.

The original is found again by its Message-ID (UID SEARCH HEADER). An id that IMAP cannot carry
safely (non-ASCII, atom-specials) is never searched for: the pass goes on, the reply's copy is
still filed, nothing is flagged, and the next message is handled as usual. A forged copy with the
same id makes the search ambiguous: neither copy is flagged \\Answered.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import inquiry, states
from tests.test_ingest import HELLO, deliver
from tests.test_pipeline_run import factory_of, sales_folder, started
from triage.core.errors import SendError
from triage.core.settings import load_settings
from triage.ops.daemon import run_once
from triage.ops.runner import prepare
from triage.ops.service import Service

pytestmark = pytest.mark.mail

MOVE = "\n[ingest]\nmove_to_folders = true\n"


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """`raw` with its Message-ID header replaced (UTF-8 bytes, as a hostile sender may send)."""
    return re.sub(rb"Message-ID: <[^>]*>", f"Message-ID: {message_id}".encode(), raw)


class Smtp:
    """Services whose SMTP is down until `up` is set."""

    def __init__(self) -> None:
        self.down = True

    def service(self) -> type[Service]:
        smtp = self

        class Flaky(Service):
            def deliver(self, account: str | None = None) -> None:
                if smtp.down:
                    raise SendError("smtp: connection refused")
                super().deliver(account)

        return Flaky


@pytest.mark.parametrize(
    "message_id",
    ["<caf\u00e9@evil.example>", "<a(b)c@evil.example>", "<a*b%c{1}@evil.example>"],
    ids=["non-ascii", "parentheses", "wildcards-and-literal"],
)
def test_a_hostile_message_id_never_stops_filing_or_the_next_message(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, message_id: str
) -> None:
    """A reply held back by SMTP goes out after its original (with a hostile Message-ID) was
    moved into Triage/Sales: every later pass succeeds, the next INBOX message is answered and
    done, both replies' copies are filed in Sent, and nothing is flagged \\Answered by a search
    that could not be sent safely."""
    base = tmp_path / "triage"
    config = started(mail_harness, base, MOVE)
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", with_message_id(raw, message_id))])
    settings = load_settings(config, environ={})
    smtp = Smtp()
    shared = prepare(settings)
    try:
        assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
        smtp.down = False
        bob = inquiry("bob@example.test", HELLO, 2, "Bob Stone", authenticated=True)
        deliver(mail_harness, [("bob@example.test", bob)])
        for _ in range(3):
            assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
    finally:
        shared.close()
    assert states(base) == {"done": 2}
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    mail_harness.wait_for_messages("bob", count=1, timeout=20)
    with mail_harness.imap("hello") as client:
        client.select_folder("Sent", readonly=True)
        assert len(client.search("ALL")) == 2
        client.select_folder(sales_folder(client), readonly=True)
        uids = client.search("ALL")
        flags = client.get_flags(uids)
        answered = [u for u in uids if b"\\Answered" in flags[u]]
        assert len(uids) == 2 and len(answered) == 1  # bob's, flagged under its UID
        headers = client.fetch(answered, [b"BODY.PEEK[HEADER.FIELDS (FROM)]"])
        assert b"bob@example.test" in next(iter(headers.values()))[b"BODY[HEADER.FIELDS (FROM)]"]


def test_a_forged_copy_with_the_same_message_id_is_never_flagged(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Two messages in Triage/Sales carry the Message-ID of a moved original (the original and a
    forged copy): the search is ambiguous, so neither is flagged \\Answered; a message whose id
    only contains the original's is no match either. The reply's copy is filed in Sent."""
    base = tmp_path / "triage"
    config = started(mail_harness, base, MOVE)
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", with_message_id(raw, "<orig@x.example>"))])
    settings = load_settings(config, environ={})
    smtp = Smtp()
    shared = prepare(settings)
    try:
        assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
        with mail_harness.imap("hello") as client:
            sales = sales_folder(client)
            client.append(sales, with_message_id(raw, "<orig@x.example>"))
        smtp.down = False
        assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
    finally:
        shared.close()
    assert states(base) == {"done": 1}
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    with mail_harness.imap("hello") as client:
        client.select_folder(sales, readonly=True)
        uids = client.search("ALL")
        assert len(uids) == 2
        assert all(b"\\Answered" not in f for f in client.get_flags(uids).values())
        client.select_folder("Sent", readonly=True)
        assert len(client.search("ALL")) == 1


def test_only_the_exact_message_id_is_flagged(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """SEARCH HEADER matches substrings: a message in Triage/Sales whose Message-ID merely
    contains the original's is not flagged; the moved original is."""
    base = tmp_path / "triage"
    config = started(mail_harness, base, MOVE)
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", with_message_id(raw, "<orig@x.example>"))])
    settings = load_settings(config, environ={})
    smtp = Smtp()
    shared = prepare(settings)
    try:
        assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
        with mail_harness.imap("hello") as client:
            sales = sales_folder(client)
            decoy = with_message_id(raw, "<x<orig@x.example>>").replace(b"Alice", b"Decoy")
            client.append(sales, decoy)
        smtp.down = False
        assert run_once(settings, factory_of(shared, smtp.service())) == {"default": None}
    finally:
        shared.close()
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    with mail_harness.imap("hello") as client:
        client.select_folder(sales, readonly=True)
        uids = client.search("ALL")
        flags = client.get_flags(uids)
        answered = [u for u in uids if b"\\Answered" in flags[u]]
        assert len(uids) == 2 and len(answered) == 1
        body = client.fetch(answered, [b"BODY.PEEK[HEADER.FIELDS (FROM)]"])
        assert b"Alice" in next(iter(body.values()))[b"BODY[HEADER.FIELDS (FROM)]"]


def test_a_reply_that_cannot_be_filed_is_given_up_after_a_few_passes(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Flagging a sent reply's original fails on every pass with an error of its own: each pass
    still succeeds and the message is done; within `FILING_TRIES` passes the filing is given up
    (no copy in Sent, the reply no longer waits to be filed) with the reason in the message's
    ledger row."""
    from tests.mailtools import db
    from triage.ingest.mailbox import ImapMailbox
    from triage.ops.service import FILING_TRIES
    from triage.store.ledger import LedgerRow

    class CannotFlag(Service):
        def _flag_answered(
            self, mailbox: ImapMailbox, folder: str, uidvalidity: int, row: LedgerRow
        ) -> None:
            raise RuntimeError("cannot flag this one")

    base = tmp_path / "triage"
    config = started(mail_harness, base)
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", raw)])
    settings = load_settings(config, environ={})
    shared = prepare(settings)
    try:
        for n in range(FILING_TRIES):
            assert run_once(settings, factory_of(shared, CannotFlag)) == {"default": None}
            assert states(base) == {"done": 1}
            if n == 0:  # tried, not given up yet
                with db(base) as conn:
                    waiting = conn.execute("SELECT COUNT(*) FROM replies WHERE filed_at IS NULL")
                    assert waiting.fetchone()[0] == 1
    finally:
        shared.close()
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    with db(base) as conn:
        assert (
            conn.execute("SELECT COUNT(*) FROM replies WHERE filed_at IS NULL").fetchone()[0] == 0
        )
        error = conn.execute("SELECT error FROM messages").fetchone()[0]
    assert "filing the reply given up" in error and "cannot flag" in error
    with mail_harness.imap("hello") as client:
        client.select_folder("Sent", readonly=True)
        assert client.search("ALL") == []
