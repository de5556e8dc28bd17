"""Ingestion under attack, against the real Dovecot and Postfix of the harness.

Each test states a guarantee a hostile or unlucky mailbox must not break: a pass holds a bounded
amount of mail in memory however large the messages; a message that kills the process while it is
decided is quarantined after `ingest.max_attempts` deaths and the mail after it is answered; mail
that was in a folder before triage first saw it is never answered, even after the folder is
recreated with a new UIDVALIDITY and the old mail is put back with new Message-IDs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import ROOT, SALES_BODY, config_for, db, inquiry, replies_in, states, triage
from tests.test_ingest import HELLO, deliver
from triage.ingest.sync import byte_batches

pytestmark = pytest.mark.mail

MIB = 1024 * 1024


def big_inquiry(sender: str, n: int, size: int) -> bytes:
    """A sales inquiry with a random attachment, about `size` bytes once base64-encoded."""
    msg = EmailMessage()
    msg["From"] = f"Pat Buyer <{sender}>"
    msg["To"] = HELLO
    msg["Subject"] = f"Quote request for {n} pallets, drawings attached"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(f"big{n}", domain="example.test")
    msg.set_content(SALES_BODY.format(n=n, name="Pat Buyer"))
    # base64 grows 3 → 4 bytes plus a line break per 76 characters.
    payload = random.Random(n).randbytes(size * 57 // 78)
    msg.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename=f"drawings-{n}.bin"
    )
    return msg.as_bytes()


# Runs a command and writes its exit code and peak RSS (KiB) to the file named first.
_MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(f"{code} {peak}")
"""


def run_measured(
    config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> tuple[int, int, str]:
    """Run `triage` and return its exit code, its peak RSS in bytes and its output.

    A small Python process starts it and reads RUSAGE_CHILDREN: Linux keeps the high-water RSS
    a process had before `exec` in its peak, so a child forked straight from this test process,
    which holds the test's messages, would report this process's size instead of triage's.
    """
    stamp = time.monotonic_ns()
    log, figures = config.parent / f"measured-{stamp}.log", config.parent / f"measured-{stamp}"
    with log.open("w") as out:
        subprocess.run(
            [
                sys.executable,
                "-c",
                _MEASURE,
                str(figures),
                sys.executable,
                "-m",
                "triage",
                "--config",
                str(config),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=True,
        )
    code, peak = figures.read_text().split()
    return int(code), int(peak) * 1024, log.read_text()


# -- A. memory per batch ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_large_messages_keep_peak_memory_bounded(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, workers: int
) -> None:
    """Eight ~20 MB inquiries in one pass: batches are bounded by bytes as well as by count, so
    `triage once` grows by far less than the 160 MB of mail (one FETCH of all of them took it
    to ~670 MiB), stays under 250 MiB in all, and answers each of them."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, f"\n[ingest]\nworkers = {workers}\n")
    code, idle, output = run_measured(config, "once")  # the baseline, on the empty mailbox
    assert code == 0, output
    senders = [f"{p}@example.test" for p in ("alice", "bob", "carol")]
    deliver(
        mail_harness,
        [(senders[n % 3], big_inquiry(senders[n % 3], n, 20 * 1000 * 1000)) for n in range(8)],
    )
    code, peak, output = run_measured(config, "once")
    assert code == 0, output
    print(
        f"peak RSS of `triage once`, workers = {workers}: {peak / MIB:.0f} MiB over 8 x 20 MB,"
        f" {idle / MIB:.0f} MiB with nothing to do"
    )
    assert states(base) == {"done": 8}
    assert peak - idle < 100 * MIB, f"{peak / MIB:.0f} MiB, {idle / MIB:.0f} MiB idle"
    assert peak < 250 * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_message_over_max_message_bytes_is_quarantined_with_a_reason(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """A message above `ingest.max_message_bytes` is recorded and quarantined unread, with its
    size as the reason and the quarantine keyword; the message next to it is answered."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nmax_message_bytes = 1048576\n")
    assert triage(config, "once").returncode == 0
    deliver(
        mail_harness,
        [
            ("alice@example.test", big_inquiry("alice@example.test", 1, 3 * MIB)),
            ("bob@example.test", inquiry("bob@example.test", HELLO, 2, "Bob")),
        ],
    )
    result = triage(config, "once")
    assert result.returncode == 0, result.stderr
    assert states(base) == {"done": 1, "quarantined": 1}
    with db(base) as conn:
        row = conn.execute("SELECT error, message_id FROM messages WHERE state = 'quarantined'")
        error, message_id = row.fetchone()
    assert "exceeds max_message_bytes" in error and "big1" in message_id
    mail_harness.wait_for_messages("bob", count=1, timeout=20)
    assert replies_in(mail_harness, "alice") == []
    with mail_harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["KEYWORD", "$Triage-Quarantine"])) == 1


# -- B. a message that kills the process -----------------------------------------------------

KILLER = "Killer-7f3a"


def killer_inquiry(sender: str) -> bytes:
    """An inquiry whose Subject carries the marker the crash driver dies on."""
    return inquiry(sender, HELLO, 1).replace(b"Subject: ", f"Subject: {KILLER} ".encode(), 1)


def kill_deciding(config: Path) -> subprocess.CompletedProcess[str]:
    """`triage once` through the crash driver: deciding the marked message kills the process
    that decides it."""
    driver = ROOT / "tests" / "crash_driver.py"
    return subprocess.run(
        [sys.executable, str(driver), str(config), "--kill-deciding", KILLER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def quarantined_row(base: Path) -> tuple[bytes, str, int]:
    """Raw bytes, error and attempts of the one quarantined message."""
    with db(base) as conn:
        row = conn.execute("SELECT raw, error, attempts FROM messages WHERE state = 'quarantined'")
        raw, error, attempts = row.fetchone()
    return raw, error, attempts


def quarantine_keywords(harness: MailHarness) -> int:
    """Messages in hello's INBOX with the quarantine keyword."""
    with harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        return len(client.search(["KEYWORD", "$Triage-Quarantine"]))


def test_message_that_kills_the_process_is_quarantined_after_max_attempts_deaths(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """Deciding one message kills triage (as the kernel's OOM killer would), on every start: its
    attempts are committed before it is decided, so after `max_attempts` deaths the next start
    quarantines it (raw bytes kept, keyword set) and answers the inquiry next to it, once."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    assert triage(config, "once").returncode == 0
    deliver(
        mail_harness,
        [
            ("alice@example.test", killer_inquiry("alice@example.test")),
            ("bob@example.test", inquiry("bob@example.test", HELLO, 2, "Bob")),
        ],
    )
    max_attempts = 3  # the default
    deaths = 0
    for _start in range(max_attempts + 2):
        run = kill_deciding(config)
        if run.returncode != -signal.SIGKILL:
            break
        deaths += 1
    assert run.returncode == 0, run.stderr
    assert deaths == max_attempts
    assert states(base) == {"done": 1, "quarantined": 1}
    raw, error, attempts = quarantined_row(base)
    assert KILLER.encode() in raw
    assert error == f"the process died {max_attempts} times while deciding it"
    assert attempts == max_attempts
    assert quarantine_keywords(mail_harness) == 1

    assert triage(config, "once").returncode == 0  # an ordinary start changes nothing
    mail_harness.wait_for_messages("bob", count=1, timeout=20)
    time.sleep(0.5)  # a second reply would have arrived by now
    assert len(replies_in(mail_harness, "bob")) == 1
    assert replies_in(mail_harness, "alice") == []
    assert states(base) == {"done": 1, "quarantined": 1}


def test_worker_killed_while_deciding_counts_and_is_replaced(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """With worker processes the message kills a worker, not triage: each death counts against
    the message, the pool is restarted, the other messages are answered on the first pass, and
    the killer is quarantined on the `max_attempts`-th pass. No pass hangs."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nworkers = 1\n")
    assert triage(config, "once").returncode == 0
    deliver(
        mail_harness,
        [
            ("bob@example.test", inquiry("bob@example.test", HELLO, 2, "Bob")),
            ("alice@example.test", killer_inquiry("alice@example.test")),
            ("carol@example.test", inquiry("carol@example.test", HELLO, 3, "Carol")),
        ],
    )
    max_attempts = 3
    for attempt in range(1, max_attempts + 1):
        run = kill_deciding(config)  # the timeout catches a pass that hangs
        assert run.returncode == 0, run.stderr
        if attempt < max_attempts:
            assert states(base) == {"done": 2, "seen": 1}
            with db(base) as conn:
                row = conn.execute("SELECT attempts, error FROM messages WHERE state = 'seen'")
                assert tuple(row.fetchone()) == (attempt, "a worker process died while deciding it")
    assert states(base) == {"done": 2, "quarantined": 1}
    raw, error, attempts = quarantined_row(base)
    assert KILLER.encode() in raw
    assert error == "a worker process died while deciding it"
    assert attempts == max_attempts
    for prospect in ("bob", "carol"):
        mail_harness.wait_for_messages(prospect, count=1, timeout=20)
    time.sleep(0.5)
    assert [len(replies_in(mail_harness, p)) for p in ("bob", "carol")] == [1, 1]
    assert replies_in(mail_harness, "alice") == []


def test_batches_handed_ahead_to_a_worker_are_each_handled_once(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> None:
    """With a worker process and batches of two, the batches after the current one are fetched
    and handed to the worker before it is recorded (`LOOKAHEAD`): one pass still answers every
    inquiry exactly once and leaves every message done, in order of arrival."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nworkers = 1\nbatch_size = 2\n")
    assert triage(config, "once").returncode == 0
    prospects = ["bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"]
    deliver(
        mail_harness,
        [
            (f"{p}@example.test", inquiry(f"{p}@example.test", HELLO, n, p.title()))
            for n, p in enumerate(prospects, start=2)
        ],
    )
    run = triage(config, "once")
    assert run.returncode == 0, run.stderr
    assert states(base) == {"done": len(prospects)}
    with db(base) as conn:
        uids = [r[0] for r in conn.execute("SELECT uid FROM messages ORDER BY id")]
    assert uids == sorted(uids)
    for prospect in prospects:
        mail_harness.wait_for_messages(prospect, count=1, timeout=20)
    time.sleep(0.5)  # a second reply would have arrived by now
    assert [len(replies_in(mail_harness, p)) for p in prospects] == [1] * len(prospects)


# -- C. a new UIDVALIDITY must not answer old mail -------------------------------------------


def with_return_path(sender: str, raw: bytes) -> bytes:
    """What SMTP delivery adds and an APPEND does not: the envelope sender replies go to."""
    return b"Return-Path: <%s>\r\n" % sender.encode() + raw


@pytest.mark.parametrize("backfill", ["record", "classify"])
def test_recreated_folder_with_old_mail_answers_only_new_mail(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, backfill: str
) -> None:
    """Mail in a folder before triage's first start, put back after the folder was deleted and
    recreated (new UIDVALIDITY) with its original INTERNALDATE — as it was, and as copies with
    new Message-IDs the ledger has never seen — is backfill, never answered; a message handled
    before the change is not handled again; a genuinely new message is answered."""
    base = tmp_path / "triage"
    extra = (
        "\n[ingest]\nbackfill_days = 30\nbackfill_classify = true\n"
        if backfill == "classify"
        else ""
    )
    config = config_for(mail_harness, base, extra)
    env = {"TRIAGE_IMAP__FOLDERS": '["Inbound"]'}
    received = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    old_senders = ["alice", "bob", "carol"]
    old = [
        with_return_path(f"{s}@example.test", inquiry(f"{s}@example.test", HELLO, i, s.title()))
        for i, s in enumerate(old_senders)
    ]
    copies = [
        with_return_path(f"{s}@example.test", inquiry(f"{s}@example.test", HELLO, i, s.title()))
        for i, s in enumerate(old_senders)
    ]
    with mail_harness.imap("hello") as client:
        client.create_folder("Inbound")
        for raw in old:
            client.append("Inbound", raw, msg_time=received)
        first = client.folder_status("Inbound", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    assert triage(config, "once", env=env).returncode == 0  # first start: old mail is backfill

    handled = with_return_path("sales@example.test", inquiry("sales@example.test", HELLO, 7, "Sal"))
    with mail_harness.imap("hello") as client:
        client.append("Inbound", handled)
    assert triage(config, "once", env=env).returncode == 0
    mail_harness.wait_for_messages("sales", count=1, timeout=20)
    with mail_harness.imap("hello") as client:
        client.select_folder("Inbound", readonly=True)
        dates = client.fetch(client.search("ALL"), [b"INTERNALDATE"])
        handled_at = max(v[b"INTERNALDATE"] for v in dates.values())

    with mail_harness.imap("hello") as client:
        client.delete_folder("Inbound")
        time.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        client.create_folder("Inbound")
        for raw in old + copies:
            client.append("Inbound", raw, msg_time=received)
        client.append("Inbound", handled, msg_time=handled_at)
        client.append(
            "Inbound",
            with_return_path("other@example.test", inquiry("other@example.test", HELLO, 8, "Olga")),
        )
        second = client.folder_status("Inbound", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    assert second != first
    result = triage(config, "once", env=env)
    assert result.returncode == 0, result.stderr
    assert triage(config, "once", env=env).returncode == 0

    mail_harness.wait_for_messages("other", count=1, timeout=20)
    time.sleep(0.5)  # anything wrongly answered would have arrived by now
    for s in old_senders:
        assert replies_in(mail_harness, s) == [], f"{s}'s old mail was answered"
    assert len(replies_in(mail_harness, "sales")) == 1
    assert len(replies_in(mail_harness, "other")) == 1
    with db(base) as conn:
        rows = conn.execute(
            "SELECT backfill, decision, state FROM messages WHERE uidvalidity = ? ORDER BY uid",
            (second,),
        ).fetchall()
    assert len(rows) == 8
    as_were, as_copies, duplicate, new = rows[:3], rows[3:6], rows[6], rows[7]
    if backfill == "record":
        # Nothing of the old mail was recorded at the first start: all of it is backfill now.
        assert {(r["decision"], r["state"]) for r in as_were + as_copies} == {("backfill", "done")}
    else:
        # Recorded and classified at the first start: the originals are known by Message-ID,
        # the copies are classified as backfill (leads, never replies).
        assert {(r["decision"], r["state"]) for r in as_were} == {("duplicate", "done")}
        assert all(r["backfill"] == 1 and r["state"] == "done" for r in as_copies)
        assert all(r["decision"] not in (None, "backfill") for r in as_copies)
    assert (duplicate["decision"], duplicate["state"]) == ("duplicate", "done")
    assert (new["backfill"], new["state"]) == (0, "done")


def test_byte_batches_bound_count_and_bytes() -> None:
    """Runs keep their order, hold at most `count` messages and `limit` bytes, and a message
    above the limit (here uid 3) is a run of its own."""
    sizes = {1: 10, 2: 10, 3: 50, 4: 10, 5: 10, 6: 10, 7: 0}
    assert byte_batches([1, 2, 3, 4, 5, 6, 7], sizes, count=2, limit=30) == [
        [1, 2],
        [3],
        [4, 5],
        [6, 7],
    ]
    assert byte_batches([1, 2, 3, 4, 5, 6, 7], sizes, count=10, limit=30) == [
        [1, 2],
        [3],
        [4, 5, 6, 7],
    ]
    assert byte_batches([], sizes, count=10, limit=30) == []
