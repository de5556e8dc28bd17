"""Acceptance: the digest and alerts through the harness's real Postfix and Dovecot.

- Three sales and two marketing inquiries: the digest that reaches sales@ lists exactly the three
  hot leads with their contacts (text and HTML); the next digest lists none as new, and the lead
  nobody claimed shows as overdue.
- Two messages from one prospect, through the real `triage once`, make one lead with both.
- A digest send killed (SIGKILL) at each step and then rerun arrives exactly once, except when
  killed between committing `sending` and the final dot: then it is uncertain and not resent
  (at most once, as documented in triage.sales.digest).
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import config_for, db, inquiry, triage
from tests.test_digest import KIM, MARCO, MONDAY_8, SATURDAY, TUESDAY_8, parts, seed_week
from tests.test_leads import JANE, ROOT, Store
from triage.core.settings import Settings, load_settings
from triage.sales import digest
from triage.sales.leads import claim, update

pytestmark = pytest.mark.mail

CONFIG = """\
[imap]
username = "hello"
password = "pw"
security = "plain"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "starttls"
ca_file = "{ca_file}"

[store]
path = "{base}/triage.db"

[replies]
templates_dir = "{root}/templates"
from_address = "hello@example.test"
company_name = "Example Ltd"

[digest]
recipients = ["sales@example.test"]
from_address = "noreply@example.test"
timezone = "Europe/Berlin"

[leads]
alert_hot = {alerts}
alert_recipients = ["bob@example.test"]
"""


HELLO = "hello@example.test"


def deliver(harness: MailHarness, messages: list[tuple[str, bytes]]) -> None:
    """Send inquiries to hello@ through Postfix and wait until Dovecot has them."""
    for sender, raw in messages:
        harness.send(raw, sender, HELLO)
    harness.wait_for_messages("hello", count=len(messages), timeout=60)


def write_config(harness: MailHarness, base: Path, alerts: bool = False) -> Path:
    """Settings that send through the harness's Postfix with STARTTLS, verified against its CA."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / "triage.toml"
    path.write_text(
        CONFIG.format(
            smtp_port=harness.config.smtp_port,
            ca_file=harness.ca_file,
            base=base,
            root=ROOT,
            alerts="true" if alerts else "false",
        )
    )
    return path


@pytest.fixture
def config(clean_mail: MailHarness, tmp_path: Path) -> Path:
    return write_config(clean_mail, tmp_path / "triage")


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_settings(config, environ={})


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings)
    yield s
    s.close()


def inbox(harness: MailHarness, user: str) -> list[EmailMessage]:
    """Every message in `user`'s INBOX, oldest first."""
    out = []
    with harness.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search("ALL"))
        fetched = client.fetch(uids, [b"BODY.PEEK[]"]) if uids else {}
        for uid in uids:
            msg = email.message_from_bytes(fetched[uid][b"BODY[]"], policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
    return out


def settled(harness: MailHarness, user: str, expected: int) -> list[EmailMessage]:
    """`user`'s INBOX once `expected` messages arrived and nothing more came for a while."""
    if expected:
        harness.wait_for_messages(user, count=expected, timeout=30)
    harness.flush_queue()
    time.sleep(1.5)  # long enough for a stray second copy to be delivered (≈60 ms each)
    return inbox(harness, user)


def test_digest_reaches_sales_with_exactly_the_hot_leads(
    clean_mail: MailHarness, settings: Settings, store: Store
) -> None:
    """Monday: the three hot leads, with contacts, in both parts; Tuesday: none new, and the
    lead nobody claimed is overdue while contacted ones are not."""
    jane, kim, marco = seed_week(store)
    run = digest.run_digest_if_due(settings, store.db, MONDAY_8)
    assert run.prepared is not None and run.delivered == {run.prepared: "sent"}
    [monday] = settled(clean_mail, "sales", 1)
    assert monday["Subject"] == "triage digest: 3 new hot leads"
    assert monday["From"] == "triage <noreply@example.test>"
    assert monday["Auto-Submitted"] == "auto-generated"
    text, html = parts(monday)
    for part in (text, html):
        for contact in (JANE, KIM, MARCO):
            assert contact.name in part and contact.email in part
        assert "Doe Logistics GmbH" in part and "+49 30 1234" in part
        assert "Northwind Traders" in part and "Rossi Food S.p.A." in part
        assert "reader0@agency.example" not in part and "reader1@agency.example" not in part
    assert text.count("Why:      sales, ") == 3

    for lead in (kim, marco):
        claim(store.db, lead, "alice")
        update(store.db, lead, status="contacted")
    run = digest.run_digest_if_due(settings, store.db, TUESDAY_8)
    assert run.counts["new"] == 0 and run.counts["overdue"] == 1
    monday_again, tuesday = settled(clean_mail, "sales", 2)
    assert monday_again["Message-ID"] == monday["Message-ID"]
    assert tuesday["Subject"] == "triage digest: 0 new hot leads"
    text, html = parts(tuesday)
    assert "NEW HOT LEADS: 0\nNo new hot leads since the last digest." in text
    overdue = text.split("OVERDUE, NOT YET CONTACTED: 1\n")[1]
    assert overdue.startswith(f"#{jane}  Jane Doe, Doe Logistics GmbH: overdue by ")
    assert "Kim Park" not in text and "Marco Rossi" not in text
    new_section, rest = html.split("Overdue, not yet contacted")
    assert "Jane Doe" not in new_section and "Jane Doe" in rest.split("Waiting for review")[0]


def test_hot_lead_alert_arrives_once(clean_mail: MailHarness, tmp_path: Path) -> None:
    """With alert_hot, bob@ gets one alert per hot lead, however often the daemon step runs."""
    settings = load_settings(write_config(clean_mail, tmp_path / "t", alerts=True), environ={})
    store = Store(settings)
    store.inquiry(JANE, "Quote", "We need 40 racks.", at=SATURDAY - timedelta(minutes=3))
    for minutes in range(3):
        digest.run_digest_if_due(settings, store.db, SATURDAY + timedelta(minutes=minutes))
    [alert] = settled(clean_mail, "bob", 1)
    assert alert["Subject"].startswith("Hot lead #1: Jane Doe")
    assert "We need 40 racks." in parts(alert)[0]
    store.close()


def test_two_messages_from_one_prospect_make_one_lead_end_to_end(
    clean_mail: MailHarness, tmp_path: Path
) -> None:
    """Through the real daemon pass: two inquiries from alice@ → one hot lead with two messages;
    `triage digest --send` then delivers it to sales@."""
    base = tmp_path / "e2e"
    extra = (
        '\n[digest]\nrecipients = ["sales@example.test"]\nfrom_address = "noreply@example.test"\n'
    )
    config = config_for(clean_mail, base, extra)
    model = load_settings(config).classifier.model_path  # TRIAGE_CLASSIFIER__MODEL_PATH counts
    if not model.exists():
        pytest.skip(f"no trained model at {model} (triage train) for the daemon pass")
    assert triage(config, "once").returncode == 0  # first start: baseline
    alice = "alice@example.test"
    # Postfix may hand the two to Dovecot in either order: both carry the same name, so the
    # lead's name does not depend on which one arrives first.
    deliver(
        clean_mail,
        [
            (alice, inquiry(alice, HELLO, 40, "Alice Moreau")),
            (alice, inquiry(alice, HELLO, 60, "Alice Moreau")),
        ],
    )
    result = triage(config, "once")
    assert result.returncode == 0, result.stderr
    with db(base) as conn:
        decisions = [r[0] for r in conn.execute("SELECT decision FROM messages")]
        assert decisions == ["sales", "sales"], decisions
        leads = conn.execute("SELECT id, email, name, kind FROM leads").fetchall()
        assert [tuple(r)[1:] for r in leads] == [(alice, "Alice Moreau", "hot")]
        assert conn.execute("SELECT COUNT(*) FROM lead_messages").fetchone()[0] == 2

    sent = triage(config, "digest", "--send")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("digest 1 sent to sales@example.test: 1 new")
    [received] = settled(clean_mail, "sales", 1)
    text, _html = parts(received)
    assert text.count("alice@example.test") == 1
    assert "Alice Moreau" in text and "2 messages" in text


# A digest send in its own process, so that the test can SIGKILL it at a checkpoint.
DRIVER = """
import sys
from datetime import datetime
from pathlib import Path

from triage.sales import digest
from triage.core.settings import load_settings
from triage.store.db import Database

config, target, now = sys.argv[1:4]
settings = load_settings(Path(config), environ={})
db = Database(settings.store.path)

def checkpoint(name):
    print(name, flush=True)
    if name == target:
        sys.stdin.read()  # hold here until the test kills us

digest.run_digest_if_due(settings, db, datetime.fromisoformat(now), checkpoint=checkpoint)
print("finished", flush=True)
"""


def kill_at(config: Path, target: str) -> list[str]:
    """Run the digest step in a subprocess, SIGKILL it at checkpoint `target`; the checkpoints
    it passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config), target, MONDAY_8.isoformat()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if seen[-1] in (target, "finished"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()
    assert seen[-1] == target, seen
    return seen


@pytest.mark.parametrize(
    ("target", "arrives", "state"),
    [
        ("prepared", 1, "sent"),  # frozen, not sent: sent on rerun
        ("smtp_connected", 1, "sent"),  # nothing handed over yet
        ("smtp_data_sent", 1, "sent"),  # all but the final dot: the server discarded it
        ("smtp_sending", 0, "uncertain"),  # committed `sending`, dot not written: not resent
        ("smtp_accepted", 1, "uncertain"),  # the server has it, `sent` not recorded: not resent
    ],
)
def test_a_killed_digest_send_arrives_at_most_once(
    clean_mail: MailHarness,
    config: Path,
    settings: Settings,
    store: Store,
    target: str,
    arrives: int,
    state: str,
) -> None:
    """SIGKILL at each step of the send, then the daemon's next step: the digest arrives once
    (never twice), and no lead is reported new by a second digest."""
    seed_week(store)
    assert kill_at(config, target)[-1] == target
    # The next periodic step, after the dead process's `sending` has gone stale.
    rerun = digest.run_digest_if_due(settings, store.db, MONDAY_8 + timedelta(minutes=5))
    assert rerun.prepared is None  # the slot's digest exists: never a second one
    rows = store.db.reads.execute("SELECT state, message_id FROM digests").fetchall()
    assert [r["state"] for r in rows] == [state]
    received = settled(clean_mail, "sales", arrives)
    assert len(received) == arrives
    assert all(m["Message-ID"] == rows[0]["message_id"] for m in received)
    undigested = store.db.reads.execute(
        "SELECT COUNT(*) FROM leads WHERE kind = 'hot' AND digested_in IS NULL"
    ).fetchone()[0]
    assert undigested == 0
