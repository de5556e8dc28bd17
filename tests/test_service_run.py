"""`triage run` as an operator runs it: signals, reload, health, metrics, logs without secrets."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import (
    ROOT,
    DaemonStarter,
    config_for,
    done_count,
    inquiry,
    replies_in,
    states,
    synced,
    triage,
    wait_until,
)
from tests.test_ingest import HELLO

pytestmark = pytest.mark.mail


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:  # not listening (yet)
        return 0, str(exc)


@pytest.fixture
def base(mail_harness: MailHarness, clean_mail: None, tmp_path: Path) -> Path:
    """A store folder whose config has recorded its baseline on the empty mailbox."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    assert triage(config, "once").returncode == 0
    return base


def test_sigterm_exits_0_within_5_s_and_loses_nothing(
    mail_harness: MailHarness, base: Path, daemon_factory: DaemonStarter
) -> None:
    """SIGTERM while mail keeps arriving: exit 0 within 5 s; what arrived during shutdown is
    handled on the next start, each message once."""
    config = base / "triage.toml"
    proc = daemon_factory(config)
    wait_until(lambda: synced(base), 30)
    mail_harness.send(inquiry("alice@example.test", HELLO, 1), "alice@example.test", HELLO)
    wait_until(lambda: done_count(base) == 1, 20)
    for who in ("bob", "carol"):
        sender = f"{who}@example.test"
        mail_harness.send(inquiry(sender, HELLO, 2), sender, HELLO)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(10) == 0
    stop_seconds = time.monotonic() - started
    print(f"stopped {stop_seconds:.2f} s after SIGTERM")
    assert stop_seconds < 5

    mail_harness.wait_for_messages("hello", count=3, timeout=20)
    assert triage(config, "once").returncode == 0
    assert states(base) == {"done": 3}
    for who in ("alice", "bob", "carol"):
        mail_harness.wait_for_messages(who, count=1, timeout=20)
        assert len(replies_in(mail_harness, who)) == 1


def test_sighup_with_an_edited_template_changes_the_next_reply(
    mail_harness: MailHarness, base: Path, tmp_path: Path, daemon_factory: DaemonStarter
) -> None:
    """An admin edits the reply template and sends SIGHUP: the next reply uses the new text."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    env = {"TRIAGE_REPLIES__TEMPLATES_DIR": str(templates)}
    proc = daemon_factory(base / "triage.toml", env)
    wait_until(lambda: synced(base), 30)
    mail_harness.send(inquiry("alice@example.test", HELLO, 1), "alice@example.test", HELLO)
    mail_harness.wait_for_messages("alice", count=1, timeout=30)
    assert "Edited by the admin" not in replies_in(mail_harness, "alice")[0].as_string()

    for name in ("sales.txt", "marketing.txt"):
        path = templates / name
        path.write_text(path.read_text() + "\nEdited by the admin.\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    mail_harness.send(inquiry("bob@example.test", HELLO, 2), "bob@example.test", HELLO)
    mail_harness.wait_for_messages("bob", count=1, timeout=30)
    reply = replies_in(mail_harness, "bob")[0]
    body = reply.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Edited by the admin." in body.get_content()
    assert proc.poll() is None  # reloading did not stop the service


def metric(text: str, name: str) -> float:
    """The sum of every sample of metric `name` in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match:
            total += float(match.group(2))
    return total


def test_healthz_follows_dovecot_and_metrics_count_what_was_handled(
    mail_harness: MailHarness, base: Path, daemon_factory: DaemonStarter
) -> None:
    """/healthz is 200 while the mailbox syncs, 503 with a reason when Dovecot is down, 200 again
    after it returns; /metrics counts exactly the messages handled and replies sent."""
    port = free_port()
    env = {
        "TRIAGE_DAEMON__HEALTH_PORT": str(port),
        "TRIAGE_DAEMON__HEALTH_MAX_SYNC_AGE": "5",
        "TRIAGE_DAEMON__BACKOFF_INITIAL": "0.5",
        "TRIAGE_DAEMON__BACKOFF_MAX": "1",
        "TRIAGE_IMAP__IDLE": "false",
        "TRIAGE_IMAP__POLL_INTERVAL": "1",
    }
    daemon_factory(base / "triage.toml", env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(url + "/healthz")[0] == 200, 30, interval=0.2)

    for who in ("alice", "bob"):
        sender = f"{who}@example.test"
        mail_harness.send(inquiry(sender, HELLO, 3), sender, HELLO)
    wait_until(lambda: done_count(base) == 2, 20)
    for who in ("alice", "bob"):
        mail_harness.wait_for_messages(who, count=1, timeout=20)
    time.sleep(1.5)  # a pass after the sends has recorded them in the metrics
    _status, text = get(url + "/metrics")
    assert metric(text, "triage_messages_handled_total") == 2
    assert metric(text, "triage_replies_sent_total") == 2

    mail_harness.stop_dovecot()
    try:
        wait_until(lambda: get(url + "/healthz")[0] == 503, 20, interval=0.2)
        status, reason = get(url + "/healthz")
        assert status == 503 and "default" in reason
    finally:
        mail_harness.start_dovecot()
    wait_until(lambda: get(url + "/healthz")[0] == 200, 30, interval=0.2)


def test_logs_of_a_full_run_contain_no_password(mail_harness: MailHarness, base: Path) -> None:
    """A run at DEBUG level, in text and in JSON, never logs the mailbox password."""
    config = base / "triage.toml"
    for who in ("alice", "bob"):
        sender = f"{who}@example.test"
        mail_harness.send(inquiry(sender, HELLO, 4), sender, HELLO)
    mail_harness.wait_for_messages("hello", count=2, timeout=20)
    outputs = []
    for fmt in ("text", "json"):
        result = triage(config, "--log-level", "DEBUG", "--log-format", fmt, "once")
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert "uid" in text  # the outcome lines are there
    for user in mail_harness.config.users:
        assert mail_harness.password(user) not in text
