"""Crash safety: SIGKILL at any point loses nothing and never sends a second reply.

The process is killed like a power cut at each named point of the ledger (after fetch, after
classification, after recording, after sending, before marking done) and of the two-phase send
(connected; content sent with the final dot held back; `sending` recorded; the dot acknowledged
but `sent` not recorded), restarted, and every message must end `done` exactly once with at most
one reply in each prospect's mailbox. Only a kill between recording `sending` and recording the
server's answer to the dot leaves a reply `uncertain`; a person settles it with `triage outbox
resolve`, and even then nobody gets a second copy.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import ROOT, config_for, db, inquiry, replies_in, states, triage, wait_until
from tests.test_ingest import HELLO, deliver

pytestmark = pytest.mark.mail

POINTS = [
    "after_fetch",
    "after_classification",
    "after_record",
    "smtp_connected",
    "smtp_data_sent",
    "after_send",
    "before_done",
]
# Killed here, the reply being sent may or may not have arrived: how many copies did.
UNCERTAIN_POINTS = [("smtp_sending", 0, "resend"), ("smtp_accepted", 1, "sent")]
PROSPECTS = ["alice", "bob", "carol"]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_ledger_point_then_restart(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, point: str
) -> None:
    """Killed at `point`, then restarted: each message done once, each prospect one reply."""
    config, base = kill_once_with_three_inquiries(mail_harness, tmp_path, point)

    result = triage(config, "once")
    assert result.returncode == 0, result.stderr
    assert triage(config, "once").returncode == 0

    assert states(base) == {"done": 3}
    with db(base) as conn:
        ids = [r[0] for r in conn.execute("SELECT message_id FROM messages")]
        assert len(set(ids)) == 3
    for p in PROSPECTS:
        mail_harness.wait_for_messages(p, count=1, timeout=20)
    time.sleep(0.5)  # anything sent twice would have arrived by now
    for p in PROSPECTS:
        got = replies_in(mail_harness, p)
        assert len(got) == 1, f"{p} got {len(got)} replies after a crash at {point}"


def drained(harness: MailHarness) -> None:
    """Wait until Postfix's queue is empty (every message handed over is in a mailbox or
    bounced), then a little longer for the final delivery into the mailbox to show over IMAP."""
    wait_until(lambda: not harness.mail_queue(), timeout=30, interval=0.2)
    time.sleep(2.0)


def kill_once_with_three_inquiries(
    harness: MailHarness, tmp_path: Path, point: str
) -> tuple[Path, Path]:
    """Baseline, three inquiries, then `triage once` SIGKILLed at the first `point`; returns
    (config, base)."""
    base = tmp_path / "triage"
    config = config_for(harness, base)
    assert triage(config, "once").returncode == 0  # baseline
    deliver(
        harness,
        [
            (f"{p}@example.test", inquiry(f"{p}@example.test", HELLO, i, p.title()))
            for i, p in enumerate(PROSPECTS)
        ],
    )
    crashed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "crash_driver.py"), str(config), point, "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    return config, base


@pytest.mark.parametrize(("point", "arrived", "decision"), UNCERTAIN_POINTS)
def test_sigkill_between_sending_and_sent_leaves_one_uncertain_reply(
    mail_harness: MailHarness,
    clean_mail: None,
    tmp_path: Path,
    point: str,
    arrived: int,
    decision: str,
) -> None:
    """Killed after `sending` was recorded (before the dot, or before `sent` was recorded):
    after the restart that one reply is `uncertain` and not resent, the others go out once; the
    operator's `triage outbox resolve` (resend when nothing arrived, sent when it did) leaves
    every prospect exactly one reply."""
    config, base = kill_once_with_three_inquiries(mail_harness, tmp_path, point)
    assert triage(config, "once").returncode == 0
    assert triage(config, "once").returncode == 0
    assert states(base) == {"done": 3}
    with db(base) as conn:
        rows = conn.execute("SELECT id, recipient, state FROM replies ORDER BY id").fetchall()
    uncertain = [(r[0], r[1]) for r in rows if r[2] == "uncertain"]
    assert len(uncertain) == 1, rows
    [(row_id, recipient)] = uncertain
    assert sorted(r[2] for r in rows) == ["sent", "sent", "uncertain"]
    doubtful = recipient.partition("@")[0]
    for p in PROSPECTS:
        mail_harness.wait_for_messages(p, count=arrived if p == doubtful else 1, timeout=20)
    # With `arrived` 0 there is nothing to wait for above: let everything handed to Postfix
    # reach the mailboxes before counting, so a late copy would be seen.
    drained(mail_harness)
    assert len(replies_in(mail_harness, doubtful)) == arrived

    listed = triage(config, "outbox", "list", "--state", "uncertain")
    assert f"reply:{row_id}" in listed.stdout, listed
    resolved = triage(config, "outbox", "resolve", f"reply:{row_id}", decision, "--by", "ops")
    assert resolved.returncode == 0, resolved.stderr
    assert triage(config, "once").returncode == 0
    mail_harness.wait_for_messages(doubtful, count=1, timeout=20)
    drained(mail_harness)
    for p in PROSPECTS:
        got = replies_in(mail_harness, p)
        assert len(got) == 1, f"{p} got {len(got)} replies after a crash at {point}"
    with db(base) as conn:
        row = conn.execute("SELECT state FROM replies WHERE id = ?", (row_id,)).fetchone()
        assert row[0] == "sent"


@pytest.mark.slow
def test_random_sigkills_during_a_300_message_run(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """`triage run` killed at 30 random moments while 300 messages arrive: every message ends
    done once, and no inbound message gets more than one reply."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    assert triage(config, "once").returncode == 0
    senders = [f"{p}@example.test" for p in PROSPECTS]
    messages = [(senders[i % 3], inquiry(senders[i % 3], HELLO, i)) for i in range(300)]
    rng = random.Random(20261126)
    log = (tmp_path / "daemon.log").open("w")
    sent = 0
    try:
        for _kill in range(30):
            proc = subprocess.Popen(
                [sys.executable, "-m", "triage", "--config", str(config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            # Deliver a slice of the messages while the daemon starts and works.
            chunk = messages[sent : sent + 10]
            if chunk:
                deliver_some(mail_harness, chunk)
                sent += len(chunk)
            time.sleep(rng.uniform(0.2, 3.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: states(base).get("done", 0) == 300, 120, interval=0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    finally:
        log.close()
    assert states(base) == {"done": 300}
    with db(base) as conn:
        per_message = conn.execute(
            "SELECT message_row, COUNT(*) FROM replies GROUP BY message_row HAVING COUNT(*) > 1"
        ).fetchall()
    assert per_message == []
    time.sleep(0.5)
    for p in PROSPECTS:
        in_reply_to = [str(m["In-Reply-To"]) for m in replies_in(mail_harness, p)]
        assert len(in_reply_to) == len(set(in_reply_to)), f"{p} got a reply twice"


def deliver_some(harness: MailHarness, chunk: list[tuple[str, bytes]]) -> None:
    """Submit without waiting for Dovecot (the daemon picks them up as they land)."""
    import smtplib

    with smtplib.SMTP(harness.config.host, harness.config.smtp_port, timeout=30) as smtp:
        for sender, raw in chunk:
            smtp.sendmail(sender, [HELLO], raw)
