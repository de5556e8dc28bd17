"""Shared pytest fixtures. Keep each one small; add new ones below the existing ones."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.mailharness import HarnessConfig, MailHarness, unavailable_reason


@pytest.fixture(scope="session")
def mail_harness() -> Iterator[MailHarness]:
    """Real Dovecot and Postfix for the whole session, in a temporary folder.

    Ports are chosen free at start (not the fixed defaults), so a demo harness or another
    test run on the same machine does not collide with this one.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's own temporary folder: another pytest run on the machine resets that to
    # mode 0700, and the mail daemons (users dovecot, postfix) must be able to walk into ours.
    base = Path(tempfile.mkdtemp(prefix="triage-mailservers-"))
    harness = MailHarness(HarnessConfig(base_dir=base).with_free_ports())
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_mail(mail_harness: MailHarness) -> MailHarness:
    """The session's harness with every user's mailbox emptied before the test."""
    mail_harness.clear_all_mailboxes()
    return mail_harness
