"""Helpers for tests that drive triage against the harness's real mail servers."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from devtools.demo import write_config
from devtools.mailharness import HarnessConfig, MailHarness, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]

# Starts `triage run` with a config (and extra environment); the fixture stops it afterwards.
DaemonStarter = Callable[..., "subprocess.Popen[str]"]

# Plain, unambiguous inquiries: the tests are about delivery, not about the model's judgement.
SALES_BODY = (
    "Hello,\n\nwe need a quote for {n} pallets of your standard packaging, delivered to our"
    " warehouse in Rotterdam before the end of next month. Our budget is approved; could you"
    " call me to discuss pricing and delivery terms?\n\nKind regards,\n{name}\nPurchasing"
)


# The authserv-id the test configuration trusts (see `devtools.demo.CONFIG`).
OUR_MX = "mx.example.test"


def inquiry(
    sender: str, to: str, n: int, name: str = "Pat Buyer", *, authenticated: bool = False
) -> bytes:
    """A sales inquiry from `sender` with a unique Message-ID; `authenticated` adds the DMARC
    pass our own receiving server would stamp on it."""
    msg = EmailMessage()
    if authenticated:
        domain = sender.rpartition("@")[2]
        msg["Authentication-Results"] = f"{OUR_MX}; dmarc=pass header.from={domain}"
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"Quote request for {n} pallets"
    msg["Date"] = format_datetime(email.utils.localtime())
    msg["Message-ID"] = make_msgid(f"q{n}", domain="example.test")
    msg.set_content(SALES_BODY.format(n=n, name=name))
    return msg.as_bytes()


def config_for(harness: MailHarness, base: Path, extra: str = "", user: str = "hello") -> Path:
    """A triage config watching `user`@ of the harness, store under `base`."""
    base.mkdir(parents=True, exist_ok=True)
    return write_config(harness, base, extra, user)


def triage(
    config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `triage` command with this config."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def db(base: Path) -> sqlite3.Connection:
    """The test's triage store, read-only use."""
    conn = sqlite3.connect(base / "triage.db", timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def states(base: Path) -> dict[str, int]:
    """Ledger state counts."""
    with db(base) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM messages GROUP BY 1")}


def replies_in(harness: MailHarness, user: str) -> list[email.message.EmailMessage]:
    """Every message in `user`'s INBOX, parsed (the replies triage sent them)."""
    out = []
    with harness.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        for _uid, data in client.fetch(uids, [b"BODY.PEEK[]"]).items():
            parsed = email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            out.append(parsed)
    return out


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> float:
    """Poll `predicate()` until true; returns the seconds waited, raises on timeout."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def done_count(base: Path) -> int:
    """Messages in state done (0 while the store does not exist yet)."""
    if not (base / "triage.db").exists():
        return 0
    return states(base).get("done", 0)


def synced(base: Path) -> bool:
    """True once the daemon recorded its first sync."""
    if not (base / "triage.db").exists():
        return False
    with db(base) as conn:
        try:
            return bool(conn.execute("SELECT COUNT(*) FROM mailbox_state").fetchone()[0] > 0)
        except Exception:  # noqa: BLE001 - the schema may not exist yet
            return False


def running_harness(
    users: Mapping[str, str] | None = None,
    oauth2_introspection_url: str | None = None,
    oauth2_ca_file: str | None = None,
) -> Iterator[MailHarness]:
    """Start real Dovecot and Postfix in a temporary folder (with `users`, else the default
    ones; with XOAUTH2/OAUTHBEARER checked at `oauth2_introspection_url` when given), yield
    them, stop them; skips the test when the servers are not installed.

    Ports are chosen free at start (not the fixed defaults), so a demo harness or another
    test run on the same machine does not collide with this one.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's own temporary folder: another pytest run on the machine resets that to
    # mode 0700, and the mail daemons (users dovecot, postfix) must be able to walk into ours.
    base = Path(tempfile.mkdtemp(prefix="triage-mailservers-"))
    config = HarnessConfig(base_dir=base) if users is None else HarnessConfig(base, users=users)
    config = replace(
        config, oauth2_introspection_url=oauth2_introspection_url, oauth2_ca_file=oauth2_ca_file
    )
    harness = MailHarness(config.with_free_ports())
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
        shutil.rmtree(base, ignore_errors=True)
