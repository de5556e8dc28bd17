"""`triage webhooks list|replay|enable|test` as an operator runs them, and `triage leads claim`
queueing its event for the running service to send."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_leads import JANE, Store
from tests.test_leads_cli import one_line_error, triage, write_config
from tests.webhook_receiver import Receiver, new_secret, running, secret_file
from triage.act.webhooks import WebhookSender, sync_endpoints
from triage.core.settings import Settings, load_settings
from triage.store import webhooks as store


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running(Receiver(new_secret())) as r:
        yield r


def hook_config(tmp_path: Path, receiver: Receiver) -> Path:
    config = write_config(tmp_path)
    path = secret_file(tmp_path, receiver.secret)
    with config.open("a") as fh:
        fh.write(
            f'\n[[webhooks]]\nname = "crm"\nurl = "{receiver.url}"\nsecret_file = "{path}"\n'
            "retry_initial = 0.01\n"
        )
    return config


@pytest.fixture
def setup(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Path, Settings, Store]]:
    config = hook_config(tmp_path, receiver)
    settings = load_settings(config, environ={})
    s = Store(settings)
    sync_endpoints(settings, s.db)
    yield config, settings, s
    s.close()


def test_claim_list_deliver_replay(setup: tuple[Path, Settings, Store], receiver: Receiver) -> None:
    """A claim in the CLI queues lead.status_changed; `list` shows the queue; once delivered,
    `replay` queues it again with the same id, and the receiver records it once."""
    config, settings, s = setup
    _row, lead_id = s.inquiry(JANE)
    claimed = triage(config, "leads", "claim", str(lead_id), "--by", "sam")
    assert claimed.returncode == 0, claimed.stderr

    listed = triage(config, "webhooks", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[:3] == [
        f"crm  enabled  {receiver.url}",
        "    events: lead.created lead.updated lead.status_changed review.labelled",
        "    queue: 1 queued",
    ]
    sender = WebhookSender(s.db, settings.webhooks[0])
    assert list(sender.deliver_due().values()) == ["sent"]
    [event] = receiver.wait_for(1)
    assert event["type"] == "lead.status_changed"
    [d] = store.recent(s.db.reads, ["sent"], 1)

    replayed = triage(config, "webhooks", "replay", d.event_id, "--by", "ops")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == f"{d.event_id} queued again for crm"
    assert list(sender.deliver_due().values()) == ["sent"]
    assert receiver.ids_of_attempts() == [d.event_id, d.event_id]
    assert len(receiver.events) == 1


def test_failures_are_listed(setup: tuple[Path, Settings, Store], receiver: Receiver) -> None:
    """A delivery refused with 404 is listed under recent failures with its event id."""
    config, settings, s = setup
    _row, lead_id = s.inquiry(JANE)
    triage(config, "leads", "claim", str(lead_id), "--by", "sam")
    receiver.default = 404
    WebhookSender(s.db, settings.webhooks[0]).deliver_due()
    listed = triage(config, "webhooks", "list")
    [d] = store.recent(s.db.reads, ["failed"], 1)
    assert "recent failures:" in listed.stdout
    assert f"{d.event_id}  lead.status_changed  crm  tries 1  HTTP 404" in listed.stdout


def test_ping_and_mistakes(setup: tuple[Path, Settings, Store], receiver: Receiver) -> None:
    """`test crm` sends a verified ping; unknown names and events are one-line errors (2); an
    endpoint that does not answer 2xx exits 1; `enable` of an enabled endpoint is refused."""
    config, _settings, _s = setup
    pinged = triage(config, "webhooks", "test", "crm")
    assert pinged.returncode == 0, pinged.stderr
    assert pinged.stdout.startswith("crm: HTTP 200 OK (ping msg_")
    [event] = receiver.wait_for(1)
    assert event["type"] == "ping"
    one_line_error(triage(config, "webhooks", "test", "nope"), 2, "no webhook 'nope' (crm)")
    one_line_error(triage(config, "webhooks", "replay", "msg_x"), 2, "no webhook event 'msg_x'")
    one_line_error(triage(config, "webhooks", "enable", "crm"), 2, "webhook crm is not disabled")
    receiver.default = 503
    one_line_error(triage(config, "webhooks", "test", "crm"), 1, "crm: HTTP 503")


def test_a_missing_store_is_one_line_not_an_empty_list(tmp_path: Path) -> None:
    """A store.path with no file is a one-line error (exit 2): opening it would create an empty
    store, and `webhooks list` would then report no failures from the wrong place."""
    base = tmp_path / "elsewhere"
    base.mkdir()
    config = write_config(base)
    one_line_error(triage(config, "webhooks", "list"), 2, "no store at")
    assert not (base / "triage.db").exists()
