"""IMAP ingestion against the real Dovecot and Postfix of the harness.

Each test states an ingestion guarantee: new mail is answered once and marked; mail present at
the first start is never answered; a new UIDVALIDITY does not make anything handled twice; push
and polling both deliver; the daemon survives a server restart; a poison message is quarantined
without stopping the others; one broken account does not stall another.
"""

from __future__ import annotations

import signal
import smtplib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import (
    DaemonStarter,
    config_for,
    db,
    done_count,
    inquiry,
    replies_in,
    states,
    synced,
    triage,
    wait_until,
)
from triage.core.settings import ImapAccount, load_settings
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.sync import SyncResult
from triage.ops.daemon import run_once
from triage.ops.runner import prepare
from triage.ops.service import Service
from triage.pipeline import Decided

pytestmark = pytest.mark.mail

HELLO = "hello@example.test"


@pytest.fixture
def started(mail_harness: MailHarness, clean_mail: None, tmp_path: Path) -> tuple[Path, Path]:
    """A config whose first start (on the empty mailbox) has already recorded the baseline."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    result = triage(config, "once")
    assert result.returncode == 0, result.stderr
    return base, config


def deliver(harness: MailHarness, messages: list[tuple[str, bytes]]) -> None:
    """Send messages through Postfix over one connection and wait until Dovecot has them."""
    with smtplib.SMTP(harness.config.host, harness.config.smtp_port, timeout=30) as smtp:
        for sender, raw in messages:
            smtp.sendmail(sender, [HELLO], raw)
    harness.wait_for_messages("hello", count=len(messages), timeout=60)


def test_new_mail_is_answered_once_threaded_and_marked(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """A sales inquiry from an authenticated sender gets one threaded, Auto-Submitted reply, a
    Sent copy, \\Answered and a keyword; a second pass changes nothing."""
    base, config = started
    raw = inquiry("alice@example.test", HELLO, 40, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", raw)])
    assert triage(config, "once").returncode == 0
    assert triage(config, "once").returncode == 0  # nothing new: must not reply again

    assert states(base) == {"done": 1}
    replies = replies_in(mail_harness, "alice")
    assert len(replies) == 1
    reply = replies[0]
    with db(base) as conn:
        inbound_id = conn.execute("SELECT message_id FROM messages").fetchone()[0]
    assert reply["In-Reply-To"] == inbound_id
    assert reply["Auto-Submitted"] == "auto-replied"
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        flags = next(iter(client.get_flags(client.search("ALL")).values()))
        assert b"\\Answered" in flags
        assert any(f.startswith(b"$Triage-") for f in flags)
        client.select_folder("Sent", readonly=True)
        assert len(client.search("ALL")) == 1


def test_mail_present_at_first_start_is_never_answered(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """200 old messages are recorded (and classified) at the first start, none answered; mail
    arriving afterwards is answered."""
    base = tmp_path / "triage"
    config = config_for(
        mail_harness, base, "\n[ingest]\nbackfill_days = 30\nbackfill_classify = true\n"
    )
    old = [("alice@example.test", inquiry("alice@example.test", HELLO, n)) for n in range(200)]
    deliver(mail_harness, old)
    result = triage(config, "once", timeout=300)
    assert result.returncode == 0, result.stderr

    with db(base) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE backfill = 1").fetchone()[0] == 200
        assert conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0
        # Classified all the same, so their leads reach sales staff.
        assert (
            conn.execute("SELECT COUNT(*) FROM messages WHERE decision IS NULL").fetchone()[0] == 0
        )
    assert replies_in(mail_harness, "alice") == []

    deliver(mail_harness, [("bob@example.test", inquiry("bob@example.test", HELLO, 7, "Bob"))])
    assert triage(config, "once").returncode == 0
    mail_harness.wait_for_messages("bob", count=1, timeout=20)
    assert len(replies_in(mail_harness, "bob")) == 1
    assert replies_in(mail_harness, "alice") == []


def test_new_uidvalidity_does_not_handle_anything_twice(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """A folder deleted and recreated with the same messages: no second reply, rows linked as
    duplicates."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    env = {"TRIAGE_IMAP__FOLDERS": '["Inbound"]'}
    senders = ["alice", "bob", "carol"]
    raws = [
        b"Return-Path: <%s@example.test>\r\n" % s.encode()
        + inquiry(f"{s}@example.test", HELLO, i, s.title())
        for i, s in enumerate(senders)
    ]
    with mail_harness.imap("hello") as client:
        client.create_folder("Inbound")
    assert triage(config, "once", env=env).returncode == 0  # baseline on the empty folder
    with mail_harness.imap("hello") as client:
        for raw in raws:
            client.append("Inbound", raw)
        first = client.folder_status("Inbound", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    assert triage(config, "once", env=env).returncode == 0
    for s in senders:
        mail_harness.wait_for_messages(s, count=1, timeout=20)

    with mail_harness.imap("hello") as client:
        client.delete_folder("Inbound")
        time.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        client.create_folder("Inbound")
        for raw in raws:
            client.append("Inbound", raw)
        second = client.folder_status("Inbound", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    assert second != first
    result = triage(config, "once", env=env)
    assert result.returncode == 0, result.stderr

    with db(base) as conn:
        assert conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 3
        dupes = conn.execute("SELECT COUNT(*) FROM messages WHERE decision = 'duplicate'")
        assert dupes.fetchone()[0] == 3
    for s in senders:
        assert len(replies_in(mail_harness, s)) == 1


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "polling-1s"])
def test_new_mail_is_handled_promptly_by_push_or_polling(
    mail_harness: MailHarness,
    clean_mail: None,
    tmp_path: Path,
    daemon_factory: DaemonStarter,
    idle: bool,
) -> None:
    """With IDLE (poll interval 60 s) or with polling every second, a delivered message is handled
    long before the next full poll would come: push really pushes."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    env = {
        "TRIAGE_IMAP__IDLE": str(idle).lower(),
        "TRIAGE_IMAP__POLL_INTERVAL": "60" if idle else "1",
    }
    daemon_factory(config, env)
    wait_until(lambda: synced(base), 30)
    time.sleep(0.5)  # let the worker enter IDLE
    mail_harness.send(inquiry("carol@example.test", HELLO, 3), "carol@example.test", HELLO)
    waited = wait_until(lambda: done_count(base) == 1, 20)
    print(f"handled {waited:.2f} s after SMTP submission ({'IDLE' if idle else 'poll 1 s'})")
    assert waited < 10


def test_daemon_reconnects_after_dovecot_restart(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, daemon_factory: DaemonStarter
) -> None:
    """Dovecot restarted while the daemon idles: it reconnects and handles mail that arrived
    meanwhile."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    env = {"TRIAGE_DAEMON__BACKOFF_INITIAL": "0.2", "TRIAGE_DAEMON__BACKOFF_MAX": "1"}
    daemon_factory(config, env)
    wait_until(lambda: synced(base), 30)
    mail_harness.stop_dovecot()
    mail_harness.send(inquiry("bob@example.test", HELLO, 5), "bob@example.test", HELLO)
    time.sleep(1)
    mail_harness.start_dovecot()
    wait_until(lambda: done_count(base) == 1, 30)


def test_poison_message_is_quarantined_and_the_rest_go_on(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """A message whose handling always fails is retried, then quarantined (keyword, raw bytes
    kept); the messages after it are handled on the first pass."""
    base, config = started
    poison = inquiry("alice@example.test", HELLO, 1).replace(b"pallets", b"POISON", 1)
    deliver(
        mail_harness,
        [
            ("alice@example.test", poison),
            ("bob@example.test", inquiry("bob@example.test", HELLO, 2, "Bob")),
        ],
    )
    settings = load_settings(config, environ={})

    class Poisoned(Service):
        def decide_batch(self, items: Sequence[tuple[int, bytes, bool]]) -> list[Decided]:
            if any(b"POISON" in raw for _row, raw, _bf in items):
                raise ValueError("cannot handle this one")
            return super().decide_batch(items)

    shared = prepare(settings)

    def factory(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        return Poisoned(shared).folder_syncs(account, mailbox)

    for attempt in range(settings.ingest.max_attempts):
        run_once(settings, factory)
        if attempt == 0:
            assert states(base).get("done") == 1  # bob's message did not wait for the poison
    assert states(base) == {"done": 1, "quarantined": 1}
    with db(base) as conn:
        row = conn.execute("SELECT raw, error FROM messages WHERE state = 'quarantined'").fetchone()
    assert b"POISON" in row["raw"] and "cannot handle" in row["error"]
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["KEYWORD", "$Triage-Quarantine"])) == 1


def test_a_dropped_connection_does_not_count_against_the_message(
    mail_harness: MailHarness, started: tuple[Path, Path]
) -> None:
    """A pass that stops on a server error (here: the connection drops while a message is being
    decided) takes back the attempt it counted: after more such passes than `max_attempts` the
    message is still answered, not quarantined as if it had killed the process."""
    from triage.core.errors import TransientError

    base, config = started
    deliver(mail_harness, [("alice@example.test", inquiry("alice@example.test", HELLO, 3))])
    settings = load_settings(config, environ={})

    class Dropping(Service):
        def decide_batch(self, items: Sequence[tuple[int, bytes, bool]]) -> list[Decided]:
            raise TransientError("connection dropped")

    shared = prepare(settings)

    def dropping(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        return Dropping(shared).folder_syncs(account, mailbox)

    for _ in range(settings.ingest.max_attempts + 1):
        run_once(settings, dropping)
        with db(base) as conn:
            assert conn.execute("SELECT attempts FROM messages").fetchone()[0] == 0
    assert triage(config, "once").returncode == 0
    assert states(base) == {"done": 1}
    assert len(replies_in(mail_harness, "alice")) == 1


def test_one_account_with_a_wrong_password_does_not_stall_the_other(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, daemon_factory: DaemonStarter
) -> None:
    """Two accounts, one with a wrong password: the other is served, and the login error is
    logged once per backoff step, not once per second."""
    base = tmp_path / "triage"
    extra = (
        '\n[[imap.accounts]]\nname = "broken"\nhost = "127.0.0.1"\n'
        f'port = {mail_harness.config.imap_port}\nsecurity = "plain"\n'
        'username = "other"\npassword = "wrong"\n'
    )
    config = config_for(mail_harness, base, extra)
    env = {"TRIAGE_DAEMON__BACKOFF_INITIAL": "1", "TRIAGE_DAEMON__BACKOFF_MAX": "60"}
    proc = daemon_factory(config, env)
    wait_until(lambda: synced(base), 30)
    mail_harness.send(inquiry("carol@example.test", HELLO, 9), "carol@example.test", HELLO)
    wait_until(lambda: done_count(base) == 1, 20)
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log_text = (tmp_path / "daemon-0.log").read_text()
    errors = [line for line in log_text.splitlines() if "broken" in line and "login" in line]
    # Backoff 1, 2, 4, 8 s (±20 %) within ~10 s of running: a handful, never one per second.
    assert 1 <= len(errors) <= 5, errors
