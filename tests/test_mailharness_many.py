"""The harness's Dovecot takes 1,000 concurrent IMAPS sessions from 127.0.0.1, and the last one
to go into IDLE still hears of new mail at once (its imap processes share inotify instances, so
the kernel's 128 per user, which this test does not change, is not exhausted)."""

from __future__ import annotations

import imaplib
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools.mailharness import DEFAULT_USERS, HarnessConfig, MailHarness, unavailable_reason
from tests.mailtools import inquiry

pytestmark = [pytest.mark.mail, pytest.mark.slow]

SESSIONS = 1000


@pytest.fixture(scope="module")
def big_harness() -> Iterator[MailHarness]:
    """A private harness with 1,000 extra users, 25 sessions per imap process."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="triage-mailservers-"))
    users = {**DEFAULT_USERS, **{f"m{i:04d}": f"pw-m{i:04d}" for i in range(SESSIONS)}}
    config = HarnessConfig(base, users=users, imap_sessions_per_process=25).with_free_ports()
    harness = MailHarness(config)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_thousand_concurrent_imaps_logins_and_idle_still_notifies(
    big_harness: MailHarness,
) -> None:
    cfg = big_harness.config
    context = big_harness.ssl_context()

    def login(n: int) -> imaplib.IMAP4_SSL:
        user = f"m{n:04d}"
        client = imaplib.IMAP4_SSL(cfg.host, cfg.imaps_port, ssl_context=context, timeout=60)
        client.login(user, big_harness.password(user))
        client.select("INBOX")
        return client

    with ThreadPoolExecutor(max_workers=32) as pool:
        clients = list(pool.map(login, range(SESSIONS)))
    try:
        assert len(clients) == SESSIONS
        # Every session is alive at once.
        assert all(c.noop()[0] == "OK" for c in clients)
        last = clients[-1]
        tag = last._new_tag().decode()
        last.send(f"{tag} IDLE\r\n".encode())
        assert last.readline().startswith(b"+")
        raw = inquiry("alice@example.test", big_harness.address(f"m{SESSIONS - 1:04d}"), 1)
        started = time.monotonic()
        big_harness.send(raw, "alice@example.test", big_harness.address(f"m{SESSIONS - 1:04d}"))
        last.sock.settimeout(10)
        line = last.readline()
        assert line.endswith(b"EXISTS\r\n"), line
        # Dovecot waits about half a second before it notifies; polling would take 30 s.
        assert time.monotonic() - started < 5
        last.send(b"DONE\r\n")
    finally:
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda c: c.shutdown(), clients))
