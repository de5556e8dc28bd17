"""A claim in the web console queues its webhook event like the CLI's: delivered signed, and
verified by a receiver with the reference `standardwebhooks` package. On both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import web_support
from tests.test_leads import JANE
from tests.test_webhooks_store import hook_settings
from tests.web_support import ConsoleFixture
from tests.webhook_receiver import Receiver, new_secret, running, secret_file
from triage.act.webhooks import WebhookSender, sync_endpoints

pytestmark = pytest.mark.usefixtures("store_backend")

console = web_support.console  # the fixture


def test_a_claim_in_the_console_reaches_the_receiver(
    console: ConsoleFixture, tmp_path: Path
) -> None:
    """sam claims Jane's lead in the console: lead.status_changed, by sam, arrives verified."""
    with running(Receiver(new_secret())) as receiver:
        path = secret_file(tmp_path, receiver.secret, "console.secret")
        settings = hook_settings(
            tmp_path, [{"name": "crm", "url": receiver.url, "secret_file": str(path)}]
        )
        db = console.store.db
        sync_endpoints(settings, db)  # as the daemon does when it starts
        _row, jane = console.store.inquiry(JANE)
        response = console.post(f"/leads/{jane}/claim", {}, console.login("sam"))
        assert response.status_code == 303
        assert list(WebhookSender(db, settings.webhooks[0]).deliver_due().values()) == ["sent"]
        [event] = receiver.wait_for(1)
    assert event["type"] == "lead.status_changed"
    assert event["data"]["by"] == "sam" and event["data"]["to"] == "claimed"
    assert event["data"]["lead"]["email"] == "jane@doe.example"
