"""The acceptance run with real mail: a hot lead made by an inquiry through Postfix and Dovecot
and then claimed in the CLI reaches a receiver on 127.0.0.1 that verifies every delivery with the
reference `standardwebhooks` package, while a second endpoint whose receiver sleeps 60 s delays
neither the reply to the prospect nor the first endpoint."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import (
    DaemonStarter,
    config_for,
    db,
    inquiry,
    replies_in,
    synced,
    triage,
    wait_until,
)
from tests.test_ingest import HELLO
from tests.webhook_receiver import Receiver, new_secret, running, secret_file

pytestmark = [pytest.mark.mail, pytest.mark.timeout(240)]


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    secret = new_secret()
    with running(Receiver(secret)) as crm, running(Receiver(secret, delay=60)) as slow:
        yield crm, slow


def test_a_hot_lead_by_mail_then_claimed_reaches_the_crm_verified(
    mail_harness: MailHarness,
    clean_mail: None,
    tmp_path: Path,
    daemon_factory: DaemonStarter,
    receivers: tuple[Receiver, Receiver],
) -> None:
    """lead.created arrives within seconds of the inquiry, with the lead as the CSV export has
    it and its console link; the prospect's reply is not held up by the slow endpoint; the CLI
    claim arrives as lead.status_changed; each event once, every request verified."""
    crm, slow = receivers
    base = tmp_path / "triage"
    base.mkdir()
    path = secret_file(tmp_path, crm.secret)
    extra = (
        '\n[web]\nbase_url = "https://triage.example.test"\n'
        f'\n[[webhooks]]\nname = "crm"\nurl = "{crm.url}"\nsecret_file = "{path}"\n'
        f'\n[[webhooks]]\nname = "slow"\nurl = "{slow.url}"\nsecret_file = "{path}"\n'
        "timeout = 30\n"
    )
    config = config_for(mail_harness, base, extra)
    assert triage(config, "once").returncode == 0  # the baseline
    proc = daemon_factory(config)
    wait_until(lambda: synced(base), 30)

    sent = time.monotonic()
    raw = inquiry("alice@example.test", HELLO, 40, "Alice Moreau", authenticated=True)
    mail_harness.send(raw, "alice@example.test", HELLO)
    [created] = crm.wait_for(1, timeout=30)
    created_after = time.monotonic() - sent
    mail_harness.wait_for_messages("alice", count=1, timeout=30)
    replied_after = time.monotonic() - sent
    print(f"lead.created after {created_after:.1f} s, reply after {replied_after:.1f} s")
    # The slow receiver holds its request for 60 s (and its endpoint's timeout is 30 s).
    assert created_after < 20 and replied_after < 20
    assert len(replies_in(mail_harness, "alice")) == 1

    assert created["type"] == "lead.created"
    lead = created["data"]["lead"]
    assert lead["email"] == "alice@example.test"
    assert lead["kind"] == "hot" and lead["status"] == "new"
    assert lead["first_subject"] == "Quote request for 40 pallets"
    assert "40" in lead["first_message"]
    assert lead["subjects"] == ["Quote request for 40 pallets"]
    assert lead["url"] == f"https://triage.example.test/leads/{lead['id']}"

    claimed = triage(config, "leads", "claim", str(lead["id"]), "--by", "sam")
    assert claimed.returncode == 0, claimed.stderr
    events = crm.wait_for(2, timeout=30)
    assert [e["type"] for e in events] == ["lead.created", "lead.status_changed"]
    assert events[1]["data"]["lead"]["owner"] == "sam"
    assert all(a.verified for a in crm.attempts)
    assert len(crm.attempts) == 2  # one POST each: nothing resent

    listed = triage(config, "webhooks", "list")
    assert "crm  enabled" in listed.stdout and "slow  enabled" in listed.stdout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0  # the slow POST in flight does not hold the stop up
    with db(base) as conn:
        states = dict(
            conn.execute(
                "SELECT state, count(*) FROM webhook_deliveries WHERE endpoint = 'crm'"
                " GROUP BY state"
            ).fetchall()
        )
    assert states == {"sent": 2}
