"""Crash safety: SIGKILL at any point loses nothing and never sends a second reply.

The process is killed like a power cut at each named point of the ledger (after fetch, after
classification, after recording, after SMTP accepted a reply but before the outbox recorded it,
after sending, before marking done), restarted, and every message must end `done` exactly once
with exactly one reply in each prospect's mailbox.
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
    "smtp_accepted",
    "after_send",
    "before_done",
]
PROSPECTS = ["alice", "bob", "carol"]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_ledger_point_then_restart(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, point: str
) -> None:
    """Killed at `point`, then restarted: each message done once, each prospect one reply."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    assert triage(config, "once").returncode == 0  # baseline
    deliver(
        mail_harness,
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
