"""The per-message pipeline against the harness's real Dovecot and Postfix.

Each test states a guarantee of one pass: the reply names the salesperson the lead is assigned to;
every handled message is timed from fetch to done; an original moved before its reply is filed
still gets \\Answered; a message whose act step fails is retried, then quarantined, while the
next message is handled on the same pass; a store error is retried and reported, and ends the
process when it persists; any other persistent failure of one account parks only that account.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import config_for, db, inquiry, replies_in, states, triage, wait_until
from tests.test_ingest import HELLO, deliver
from triage.core.settings import ImapAccount, load_settings
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.sync import SyncResult
from triage.ops.daemon import run_once
from triage.ops.metrics import Metrics
from triage.ops.runner import prepare
from triage.ops.service import Service, Shared
from triage.pipeline import Planned
from triage.store.db import Tx

pytestmark = pytest.mark.mail

STAFF = '\n[leads]\nstaff = ["Sam Seller", "Rita Rep"]\nassignment = "round-robin"\n'

Factory = Callable[[ImapAccount, ImapMailbox], list[Callable[[], SyncResult]]]


def started(harness: MailHarness, base: Path, extra: str = "") -> Path:
    """A config whose first start (on the empty mailbox) has recorded the baseline."""
    config = config_for(harness, base, extra)
    result = triage(config, "once")
    assert result.returncode == 0, result.stderr
    return config


def factory_of(shared: Shared, cls: type[Service] = Service) -> Factory:
    """Sync factory building `cls` services on `shared`."""

    def make(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        return cls(shared).folder_syncs(account, mailbox)

    return make


def sales_folder(client: Any) -> str:
    """The name of Triage/Sales with the server's hierarchy delimiter."""
    names = [str(name) for _flags, _delim, name in client.list_folders()]
    return next(n for n in names if n.startswith("Triage") and n.endswith("Sales"))


def plain_text(harness: MailHarness, user: str) -> str:
    """The plain-text body of the one reply in `user`'s INBOX."""
    replies = replies_in(harness, user)
    assert len(replies) == 1
    body = replies[0].get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def test_sales_replies_name_the_owner_each_hot_lead_is_assigned(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Two sales inquiries handled in one batch with round-robin assignment: each reply that
    reaches the prospect through Postfix names the salesperson recorded as its lead's owner, and
    the two leads go to different people. On a later pass, Carol writes in Bob's thread (her
    message joins Bob's lead) together with a new prospect, Olga: Carol's reply names Bob's
    lead's owner, Olga's the owner of her own new lead."""
    base = tmp_path / "triage"
    config = started(mail_harness, base, STAFF)
    deliver(
        mail_harness,
        [
            (who, inquiry(who, HELLO, n, name, authenticated=True))
            for n, (who, name) in enumerate(
                [("alice@example.test", "Alice Moreau"), ("bob@example.test", "Bob Stone")]
            )
        ],
    )
    assert triage(config, "once").returncode == 0
    with db(base) as conn:
        owners = dict(conn.execute("SELECT email, owner FROM leads WHERE kind = 'hot'").fetchall())
    assert sorted(owners.values()) == ["Rita Rep", "Sam Seller"]
    for user in ("alice", "bob"):
        mail_harness.wait_for_messages(user, count=1, timeout=20)
        text = plain_text(mail_harness, user)
        owner = owners[f"{user}@example.test"]
        assert owner in text
        other = ({"Rita Rep", "Sam Seller"} - {owner}).pop()
        assert other not in text
    with db(base) as conn:
        bob_id = conn.execute(
            "SELECT message_id FROM messages WHERE sender = 'bob@example.test'"
        ).fetchone()[0]
    carol = inquiry("carol@example.test", HELLO, 3, "Carol Diaz", authenticated=True)
    carol = f"In-Reply-To: {bob_id}\nReferences: {bob_id}\n".encode() + carol
    olga = inquiry("other@example.test", HELLO, 4, "Olga Hill", authenticated=True)
    deliver(mail_harness, [("carol@example.test", carol), ("other@example.test", olga)])
    assert triage(config, "once").returncode == 0
    with db(base) as conn:
        leads = conn.execute("SELECT id, email, owner FROM leads WHERE kind = 'hot'").fetchall()
        joined = conn.execute(
            "SELECT lead_id FROM lead_messages lm JOIN messages m ON m.id = lm.message_row"
            " WHERE m.sender = 'carol@example.test'"
        ).fetchone()
    by_email = {r["email"]: r["owner"] for r in leads}
    assert len(leads) == 3 and "carol@example.test" not in by_email
    assert joined[0] == next(r["id"] for r in leads if r["email"] == "bob@example.test")
    for user, owner in (
        ("carol", by_email["bob@example.test"]),
        ("other", by_email["other@example.test"]),
    ):
        mail_harness.wait_for_messages(user, count=1, timeout=20)
        text = plain_text(mail_harness, user)
        assert owner in text
        assert ({"Rita Rep", "Sam Seller"} - {owner}).pop() not in text


def test_handling_time_is_observed_per_message_from_fetch_to_done(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """`triage_handling_seconds` counts one observation per message handled to the end, each the
    time from its fetch to its `done`: after two passes (two messages, then one more) its count
    equals the messages done, and a message is never observed again by a later pass."""
    base = tmp_path / "triage"
    config = started(mail_harness, base)
    deliver(
        mail_harness,
        [(f"{w}@example.test", inquiry(f"{w}@example.test", HELLO, n)) for n, w in enumerate("ab")],
    )
    settings = load_settings(config, environ={})
    metrics = Metrics()
    shared = prepare(settings, metrics=metrics)
    registry = metrics.registry
    try:
        assert run_once(settings, factory_of(shared)) == {"default": None}
        assert states(base) == {"done": 2}
        assert registry.get_sample_value("triage_handling_seconds_count") == 2
        deliver(mail_harness, [("c@example.test", inquiry("c@example.test", HELLO, 3))])
        assert run_once(settings, factory_of(shared)) == {"default": None}
    finally:
        shared.close()
    assert states(base) == {"done": 3}
    assert registry.get_sample_value("triage_handling_seconds_count") == 3
    total = registry.get_sample_value("triage_handling_seconds_sum")
    assert total is not None and 0 < total < 60


def test_an_original_moved_before_its_reply_is_filed_still_gets_answered(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """With `move_to_folders`, a reply that could not be sent on the first pass goes out on a
    later one, after the original was moved into Triage/Sales: the original is found there by its
    Message-ID and flagged \\Answered; the next message in INBOX is handled as usual."""
    from triage.core.errors import SendError

    base = tmp_path / "triage"
    config = started(mail_harness, base, "\n[ingest]\nmove_to_folders = true\n")
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", raw)])
    settings = load_settings(config, environ={})
    smtp = {"down": True}

    class SmtpDownOnce(Service):
        def deliver(self, account: str | None = None) -> None:
            if smtp["down"]:
                raise SendError("smtp: connection refused")
            super().deliver(account)

    shared = prepare(settings)
    try:
        run_once(settings, factory_of(shared, SmtpDownOnce))
        with mail_harness.imap("hello") as client:
            client.select_folder(sales_folder(client), readonly=True)
            uids = client.search("ALL")
            assert len(uids) == 1  # moved there, not yet answered
            assert b"\\Answered" not in client.get_flags(uids)[uids[0]]
        smtp["down"] = False
        bob = inquiry("bob@example.test", HELLO, 2, "Bob Stone", authenticated=True)
        deliver(mail_harness, [("bob@example.test", bob)])
        assert run_once(settings, factory_of(shared, SmtpDownOnce)) == {"default": None}
    finally:
        shared.close()
    assert states(base) == {"done": 2}
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    mail_harness.wait_for_messages("bob", count=1, timeout=20)
    with mail_harness.imap("hello") as client:
        client.select_folder(sales_folder(client), readonly=True)
        uids = client.search("ALL")
        assert len(uids) == 2  # alice's and bob's, both moved there
        assert all(b"\\Answered" in f for f in client.get_flags(uids).values())
        client.select_folder("INBOX", readonly=True)
        assert client.search("ALL") == []


def test_a_message_whose_act_step_fails_is_retried_then_quarantined_and_the_next_goes_on(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Recording one message's reply fails with an error of its own (not a server's): the next
    message of the batch is answered and done on the same pass; the failing one is retried on
    later passes, then quarantined with its raw bytes, its error and `$Triage-Quarantine`."""
    base = tmp_path / "triage"
    config = started(mail_harness, base)
    poison = inquiry("alice@example.test", HELLO, 1).replace(b"pallets", b"POISON", 1)
    deliver(
        mail_harness,
        [
            ("alice@example.test", poison),
            ("bob@example.test", inquiry("bob@example.test", HELLO, 2, "Bob")),
        ],
    )
    settings = load_settings(config, environ={})

    class FailsToQueue(Service):
        def _queue_reply(self, c: Tx, planned: Planned) -> str | None:
            if "POISON" in planned.msg.subject:
                raise RuntimeError("cannot queue this one")
            return super()._queue_reply(c, planned)

    shared = prepare(settings)
    try:
        for attempt in range(settings.ingest.max_attempts):
            assert run_once(settings, factory_of(shared, FailsToQueue)) == {"default": None}
            if attempt == 0:
                assert states(base) == {"done": 1, "seen": 1}  # bob did not wait
                mail_harness.wait_for_messages("bob", count=1, timeout=20)
    finally:
        shared.close()
    assert states(base) == {"done": 1, "quarantined": 1}
    with db(base) as conn:
        row = conn.execute(
            "SELECT raw, error, attempts FROM messages WHERE state = 'quarantined'"
        ).fetchone()
    assert b"POISON" in row["raw"] and "cannot queue" in row["error"]
    assert row["attempts"] == settings.ingest.max_attempts
    assert replies_in(mail_harness, "alice") == []
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["KEYWORD", "$Triage-Quarantine"])) == 1


def test_a_full_disk_is_retried_with_backoff_and_its_text_shown_in_healthz(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """The store fails with "database or disk is full" on the first passes: the account's worker
    survives, /healthz answers 503 with that text, and once the disk has room the message is
    handled and /healthz is 200 again."""
    import sqlite3
    import threading

    from tests.test_service_run import get
    from triage.ops.daemon import Control, Daemon
    from triage.ops.health import start_health_server
    from triage.ops.service import sync_factory

    base = tmp_path / "triage"
    config = started(mail_harness, base)
    deliver(mail_harness, [("alice@example.test", inquiry("alice@example.test", HELLO, 1))])
    env = {
        "TRIAGE_DAEMON__BACKOFF_INITIAL": "1",
        "TRIAGE_DAEMON__BACKOFF_MAX": "1",
        "TRIAGE_IMAP__IDLE": "false",
        "TRIAGE_IMAP__POLL_INTERVAL": "1",
    }
    settings = load_settings(config, environ=env)
    full = {"left": 3}

    def checkpoint(name: str) -> None:
        # Reached on every pass that handles the message, the first one and each retry.
        if name == "after_classification" and full["left"]:
            full["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")

    shared = prepare(settings, checkpoint)
    control = Control()
    daemon = Daemon(settings, sync_factory(shared), control=control, period=0.5)
    thread = threading.Thread(target=daemon.run)
    health = start_health_server(
        "127.0.0.1", 0, lambda: list(daemon.statuses.values()), Metrics(), 60
    )
    thread.start()
    try:
        wait_until(lambda: "database or disk is full" in get(health.url + "/healthz")[1], 30)
        assert get(health.url + "/healthz")[0] == 503
        wait_until(lambda: states(base) == {"done": 1}, 60)
        wait_until(lambda: get(health.url + "/healthz")[0] == 200, 30)
        assert thread.is_alive() and not control.failed.is_set()
    finally:
        control.stop.set()
        thread.join(30)
        health.close()
        shared.close()
    assert full["left"] == 0
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    with db(base) as conn:
        # The failed passes were the store's fault, not the message's: their attempts were
        # taken back, only the one that succeeded counts.
        assert conn.execute("SELECT attempts FROM messages").fetchone()[0] == 1


def test_a_store_failing_for_good_makes_triage_run_exit_non_zero(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """`triage run` whose store keeps failing ("database or disk is full") gives up after
    `daemon.max_failed_passes` passes in a row and exits non-zero (not 2, which systemd would
    not restart), naming the account and the error in its log."""
    import subprocess
    import sys

    from tests.mailtools import ROOT

    base = tmp_path / "triage"
    config = started(mail_harness, base)
    deliver(mail_harness, [("alice@example.test", inquiry("alice@example.test", HELLO, 1))])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRIAGE_DAEMON__BACKOFF_INITIAL": "0.2",
        "TRIAGE_DAEMON__BACKOFF_MAX": "0.2",
        "TRIAGE_DAEMON__MAX_FAILED_PASSES": "3",
    }
    driver = ROOT / "tests" / "fault_driver.py"
    proc = subprocess.run(
        [sys.executable, str(driver), "--config", str(config), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    log = proc.stdout + proc.stderr
    assert "database or disk is full" in log
    assert "default" in log and "3 passes in a row failed" in log


def test_one_account_failing_for_good_is_parked_and_the_other_goes_on(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Two accounts; every pass of one (`sales`) fails with an error that is neither the
    store's nor a server's. After `daemon.max_failed_passes` it is parked, not the service
    stopped: /healthz answers 503 naming it with the error text, the other account's mail is
    answered and done, the process keeps running, and SIGTERM ends it with exit code 0."""
    import signal
    import socket
    import subprocess
    import sys

    from tests.mailtools import ROOT
    from tests.test_service_run import get

    base = tmp_path / "triage"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = (
        '\n[[imap.accounts]]\nname = "sales"\nhost = "127.0.0.1"\n'
        f'port = {mail_harness.config.imap_port}\nsecurity = "plain"\n'
        f'username = "other"\npassword = "{mail_harness.password("other")}"\n'
    )
    config = started(mail_harness, base, extra)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRIAGE_FAULT_ACCOUNT": "sales",
        "TRIAGE_DAEMON__BACKOFF_INITIAL": "0.2",
        "TRIAGE_DAEMON__BACKOFF_MAX": "1",
        "TRIAGE_DAEMON__MAX_FAILED_PASSES": "2",
        "TRIAGE_DAEMON__HEALTH_PORT": str(port),
        "TRIAGE_IMAP__POLL_INTERVAL": "1",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("w") as out:
        driver = str(ROOT / "tests" / "fault_driver.py")
        proc = subprocess.Popen(
            [sys.executable, driver, "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: "sales: parked" in get(url)[1], 60)
        status, body = get(url)
        assert status == 503
        assert "injected fault in account sales" in body
        assert not any(line.startswith("default:") for line in body.splitlines())
        deliver(mail_harness, [("alice@example.test", inquiry("alice@example.test", HELLO, 1))])
        wait_until(lambda: states(base) == {"done": 1}, 60)
        mail_harness.wait_for_messages("alice", count=1, timeout=20)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "account parked" in log and "giving up" not in log


def test_a_message_whose_marking_keeps_failing_after_its_reply_is_done_never_quarantined(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marking the mailbox fails, with an error of its own, for a sales inquiry already recorded
    and answered: it is retried on the next passes, then recorded `done` keeping its decision
    (`sales`, its lead, its one reply) with the error in the ledger, never quarantined and never
    given `$Triage-Quarantine`."""
    from triage.ingest.sync import FolderSync
    from triage.pipeline import Act

    base = tmp_path / "triage"
    config = started(mail_harness, base)
    raw = inquiry("alice@example.test", HELLO, 1, "Alice Moreau", authenticated=True)
    deliver(mail_harness, [("alice@example.test", raw)])
    settings = load_settings(config, environ={})

    def mark(self: FolderSync, work: list[Act]) -> None:
        if work:
            raise RuntimeError("cannot mark")

    monkeypatch.setattr(FolderSync, "mark", mark)
    shared = prepare(settings)
    try:
        for attempt in range(settings.ingest.max_attempts):
            assert run_once(settings, factory_of(shared)) == {"default": None}
            if attempt < settings.ingest.max_attempts - 1:
                assert states(base) == {"classified": 1}
    finally:
        shared.close()
    assert states(base) == {"done": 1}
    with db(base) as conn:
        row = conn.execute("SELECT decision, error, reasons FROM messages").fetchone()
        leads = conn.execute("SELECT kind FROM leads").fetchall()
        replies = conn.execute("SELECT state FROM replies").fetchall()
    assert row["decision"] == "sales"
    assert "cannot mark" in row["error"] and "cannot mark" in row["reasons"]
    assert [r[0] for r in leads] == ["hot"]
    assert [r[0] for r in replies] == ["sent"]
    mail_harness.wait_for_messages("alice", count=1, timeout=20)
    assert len(replies_in(mail_harness, "alice")) == 1
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        assert client.search(["KEYWORD", "$Triage-Quarantine"]) == []
