"""SIGKILL of the daemon at each step of a webhook delivery, then a restart: every event reaches
the receiver at least once, with one webhook-id, so a receiver that de-duplicates by it records
each exactly once; nothing is lost and nothing is left `sending`.

The daemon is the real `triage run` (its mailbox unreachable, which it retries meanwhile), with
its webhook threads started by housekeeping; the receiver verifies every request with the
reference `standardwebhooks` package.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_leads import JANE, ROOT, Store
from tests.test_leads_cli import write_config
from tests.webhook_receiver import Receiver, new_secret, running, secret_file
from triage.act.webhooks import sync_endpoints
from triage.core.models import Contact
from triage.core.settings import load_settings
from triage.sales.leads import claim

pytestmark = pytest.mark.timeout(180)

POINTS = ["webhook_claimed", "webhook_posted", "webhook_recorded"]
# Killed here, the receiver got the POST but `sent` was not recorded: the restart sends it
# again. (At webhook_claimed nothing was sent yet; at webhook_recorded `sent` is committed.)
POSTED = {"webhook_posted"}
DRIVER = ROOT / "tests" / "webhook_crash_driver.py"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running(Receiver(new_secret())) as r:
        yield r


def daemon(config: Path, point: str, nth: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(config), point, str(nth)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_step_then_restart_delivers_each_event_once(
    tmp_path: Path, receiver: Receiver, point: str, nth: int
) -> None:
    """Three claims queue three events; the daemon dies at `point` of the `nth` delivery; after
    a restart the receiver has recorded each event exactly once, every attempt verified, and
    the event being delivered when the daemon died was sent again only if it had been POSTed."""
    config = write_config(tmp_path)
    path = secret_file(tmp_path, receiver.secret)
    with config.open("a") as fh:
        fh.write(
            "\n[daemon]\nhealth_port = 0\n"
            f'\n[[webhooks]]\nname = "crm"\nurl = "{receiver.url}"\nsecret_file = "{path}"\n'
        )
    settings = load_settings(config, environ={})
    store = Store(settings)
    try:
        sync_endpoints(settings, store.db)
        for n, who in enumerate(["ann", "bob", "cid"]):
            contact = Contact(f"{who.title()} Doe", f"{who}@doe{n}.example", "", "", "")
            _row, lead_id = store.inquiry(contact if n else JANE)
            claim(store.db, lead_id, "sam")
        ids = [
            str(r[0])
            for r in store.db.reads.execute("SELECT event_id FROM webhook_events ORDER BY id")
        ]
    finally:
        store.close()
    assert len(ids) == 3

    crashed = daemon(config, point, nth)
    out, _ = crashed.communicate(timeout=120)
    assert crashed.returncode == -signal.SIGKILL, out
    before = receiver.ids_of_attempts()

    again = daemon(config, "none", 0)
    try:
        receiver.wait_for(3, timeout=60)
        time.sleep(0.5)  # anything sent a third time would show now
    finally:
        again.send_signal(signal.SIGTERM)
        out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out

    assert sorted(receiver.events) == sorted(ids)
    assert all(a.verified for a in receiver.attempts)
    attempts = receiver.ids_of_attempts()
    killed = ids[nth - 1]
    assert attempts.count(killed) == (2 if point in POSTED else 1), (before, attempts)
    assert all(attempts.count(i) == 1 for i in ids if i != killed), attempts
    db = Store(load_settings(config, environ={})).db
    try:
        states = db.reads.execute("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
        assert {str(r[0]): int(r[1]) for r in states} == {"sent": 3}
    finally:
        db.close()
