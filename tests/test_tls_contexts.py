"""One client TLS context per (CA file, verification) per process.

Building a context loads a trust store (about a third of a megabyte); with a thousand mailboxes
on one server, every connection shares the one context instead, and a CA file replaced on disk
is read again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from devtools.mailharness import MailHarness
from triage.core import hosts
from triage.core.hosts import tls_context
from triage.core.settings import ImapAccount
from triage.ingest.mailbox import ImapMailbox


def test_the_same_arguments_give_the_same_context() -> None:
    """The system store with verification is one context; without verification another."""
    assert tls_context(None, True) is tls_context(None, True)
    assert tls_context(None, False) is tls_context(None, False)
    assert tls_context(None, True) is not tls_context(None, False)
    assert tls_context(None, False).check_hostname is False
    assert tls_context(None, True).check_hostname is True


def test_a_replaced_ca_file_is_read_again(mail_harness: MailHarness, tmp_path: Path) -> None:
    """A CA file replaced on disk gets a new context; the old one is dropped from the cache."""
    ca = tmp_path / "ca.pem"
    shutil.copy(mail_harness.ca_file, ca)
    first = tls_context(ca, True)
    assert tls_context(str(ca), True) is first
    replacement = tmp_path / "ca.new"
    shutil.copy(mail_harness.ca_file, replacement)
    replacement.replace(ca)  # another inode, as an update by `cp` + `mv` leaves it
    second = tls_context(ca, True)
    assert second is not first
    assert tls_context(ca, True) is second


def test_a_missing_ca_file_raises_and_is_not_cached(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tls_context(tmp_path / "missing.pem", True)


def test_an_old_context_is_built_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """After CONTEXT_MAX_AGE a new context reads an updated system store."""
    first = tls_context(None, True)
    monkeypatch.setattr(hosts, "CONTEXT_MAX_AGE", 0.0)
    time.sleep(0.001)
    assert tls_context(None, True) is not first


@pytest.mark.mail
def test_two_mailboxes_of_one_server_share_one_context(mail_harness: MailHarness) -> None:
    """Two accounts of the harness's Dovecot over IMAPS: both connections use one context."""
    cfg = mail_harness.config
    mailboxes = [
        ImapMailbox(
            ImapAccount(
                name=user,
                host=cfg.host,
                port=cfg.imaps_port,
                security="tls",
                ca_file=mail_harness.ca_file,
                username=user,
                password=SecretStr(mail_harness.password(user)),
            )
        )
        for user in ("hello", "sales")
    ]
    try:
        for mailbox in mailboxes:
            mailbox.connect()
        first, second = (m.client._imap.sock.context for m in mailboxes)
        assert first is second
        assert first is tls_context(mail_harness.ca_file, True)
    finally:
        for mailbox in mailboxes:
            mailbox.close()
