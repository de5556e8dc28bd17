"""Two triage instances answering each other: no auto-reply loop (RFC 3834)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import config_for, db, inquiry, triage

pytestmark = pytest.mark.mail


def count_inbox(harness: MailHarness, user: str) -> int:
    """Messages in `user`'s INBOX."""
    with harness.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        return len(client.search("ALL"))


def test_two_instances_exchange_at_most_one_reply_each(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """hello@ and other@ each run triage and each write to the other once; after many passes
    each instance has sent exactly one reply and answered none of the other's replies."""
    a = config_for(mail_harness, tmp_path / "a", user="hello")
    b = config_for(mail_harness, tmp_path / "b", user="other")
    for config in (a, b):
        result = triage(config, "once")
        assert result.returncode == 0, result.stderr  # baselines
    hello, other = mail_harness.address("hello"), mail_harness.address("other")
    mail_harness.send(inquiry(other, hello, 12, "Olga Other"), other, hello)
    mail_harness.send(inquiry(hello, other, 34, "Harriet Hello"), hello, other)
    mail_harness.wait_for_messages("hello", count=1, timeout=20)
    mail_harness.wait_for_messages("other", count=1, timeout=20)

    for _round in range(4):
        for config in (a, b):
            result = triage(config, "once")
            assert result.returncode == 0, result.stderr
        time.sleep(0.3)  # let each reply land before the other instance looks

    for side in ("a", "b"):
        with db(tmp_path / side) as conn:
            sent = conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
            reasons = [r[0] for r in conn.execute("SELECT reasons FROM messages")]
        assert sent == 1, f"instance {side} sent {sent} replies"
        assert any("auto-submitted" in r for r in reasons), reasons
    # Each mailbox holds the human inquiry and the other side's single auto-reply.
    assert count_inbox(mail_harness, "hello") == 2
    assert count_inbox(mail_harness, "other") == 2
