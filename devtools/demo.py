"""The demo: real local mail servers, a few sample inquiries through SMTP, one triage pass.

Run with `bash scripts/demo` (which installs everything first). It starts the project's Dovecot
and Postfix on loopback, empties the demo mailboxes, runs `triage once` on the empty mailbox (the
first start records a baseline), delivers the messages in `config/demo/` through SMTP, runs
`triage once` again and shows what happened: each message's decision and reasons, the replies
that arrived in the senders' mailboxes, and the queued leads.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devtools.mailharness import MailHarness
from triage.store.db import Database
from triage.store.leads import STATUSES, find_leads
from triage.store.stats import handled_messages

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "config" / "demo"
PROSPECTS = ("alice", "bob", "carol")

CONFIG = """\
[imap]
host = "127.0.0.1"
port = {imaps_port}
security = "tls"
ca_file = "{ca_file}"
username = "{user}"
password_file = "{base}/{user}.password"
idle = true
poll_interval = 5

# The harness Postfix's inbound port, a local relay on loopback: no login (SMTP AUTH is on its
# submission port, which depends on Dovecot being up).
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"

[store]
path = "{base}/triage.db"

[replies]
mode = "live"
# No templates_dir: the templates shipped with triage.
from_address = "{user}@{domain}"
from_name = "Example Furniture"
envelope_sender = "noreply@{domain}"
our_addresses = ["{user}@{domain}"]
# The demo's first sample carries the Authentication-Results header that the company's own MX
# (mx.example.test) would add after checking DMARC: that sender is answered by name, the others
# with fixed text (docs/security.md).
trusted_authserv_ids = ["mx.example.test"]
company_name = "Example Furniture Ltd"
signature = "The Example Furniture team"

# No [classifier] model_path: the model shipped with triage.

[daemon]
health_port = 0
"""


def write_config(harness: MailHarness, base: Path, extra: str = "", user: str = "hello") -> Path:
    """Settings for watching `user@example.test` of the harness; `extra` TOML is appended."""
    cfg = harness.config
    secret = base / f"{user}.password"
    secret.write_text(harness.password(user))
    secret.chmod(0o600)
    path = base / "triage.toml"
    path.write_text(
        CONFIG.format(
            imaps_port=cfg.imaps_port,
            smtp_port=cfg.smtp_port,
            ca_file=harness.ca_file,
            base=base,
            domain=cfg.domain,
            user=user,
        )
        + extra
    )
    return path


def triage_once(config: Path) -> None:
    """Run the real command, as an operator or cron would."""
    subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "once"],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "triage-demo")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 130))
    base: Path = args.dir
    base.mkdir(parents=True, exist_ok=True)

    harness = MailHarness.for_dir(base / "mailservers")
    console.rule("1. local mail servers")
    harness.start()
    harness.clear_all_mailboxes()
    cfg = harness.config
    console.print(
        f"Dovecot IMAP {cfg.host}:{cfg.imap_port} (IMAPS {cfg.imaps_port}), "
        f"Postfix SMTP {cfg.host}:{cfg.smtp_port}, domain {cfg.domain}"
    )
    for stale in base.glob("triage.db*"):
        stale.unlink()
    config = write_config(harness, base)

    console.rule("2. first start on the empty mailbox (records the baseline)")
    triage_once(config)

    console.rule("3. sample inquiries delivered through SMTP")
    samples = sorted(SAMPLES.glob("*.eml"))
    for path in samples:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        sender = str(msg["From"].addresses[0].addr_spec)
        harness.send(raw, sender, harness.address("hello"))
        console.print(f"  {sender:<22} {msg['Subject']}")
    harness.wait_for_messages("hello", count=len(samples), timeout=20)

    console.rule("4. triage once")
    started = time.monotonic()
    triage_once(config)
    console.print(f"handled in {time.monotonic() - started:.1f} s (including start-up)")

    db = Database(base / "triage.db")
    show_outcomes(console, db)
    show_replies(console, harness)
    show_leads(console, db)
    db.close()
    console.rule()
    console.print(f"Settings: {config}  ·  store: {base / 'triage.db'}")
    console.print(
        "Stop the mail servers with: scripts/mailservers stop --dir " + str(base / "mailservers")
    )
    return 0


def show_outcomes(console: Console, db: Database) -> None:
    """One row per handled message: decision, confidence, reply, reasons."""
    table = Table(title="5. what triage decided", show_lines=True)
    for col in ("from", "subject", "decision", "confidence", "reply", "reasons / explanation"):
        table.add_column(col, overflow="fold")
    for m in handled_messages(db.reads):
        why = "; ".join(m.reasons) or (
            "terms: " + ", ".join(m.explanation[:5]) if m.explanation else ""
        )
        confidence = f"{m.confidence:.2f}" if m.confidence is not None else ""
        table.add_row(m.sender, m.subject, m.decision, confidence, m.reply_state or "none", why)
    console.print(table)


def show_replies(console: Console, harness: MailHarness) -> None:
    """The replies as they arrived in the prospects' own mailboxes."""
    table = Table(title="6. replies in the senders' mailboxes")
    for col in ("mailbox", "To", "subject", "Auto-Submitted", "In-Reply-To"):
        table.add_column(col, overflow="fold")
    deadline = time.monotonic() + 5
    for user in PROSPECTS:
        with harness.imap(user) as client:
            client.select_folder("INBOX", readonly=True)
            uids = client.search("ALL")
            while not uids and time.monotonic() < deadline:
                time.sleep(0.2)
                client.noop()
                uids = client.search("ALL")
            for _uid, data in client.fetch(uids, [b"BODY.PEEK[HEADER]"]).items():
                head = email.message_from_bytes(data[b"BODY[HEADER]"], policy=email.policy.default)
                table.add_row(
                    harness.address(user),
                    str(head["To"]),
                    str(head["Subject"]),
                    str(head["Auto-Submitted"]),
                    str(head["In-Reply-To"]),
                )
    console.print(table)


def show_leads(console: Console, db: Database) -> None:
    """The lead queue sales staff work from."""
    table = Table(title="7. leads queued for sales staff")
    for col in ("id", "kind", "status", "name", "email", "company", "phone", "messages"):
        table.add_column(col, overflow="fold")
    for lead in sorted(find_leads(db.reads, STATUSES), key=lambda lead: (lead.kind, lead.id)):
        table.add_row(
            str(lead.id),
            lead.kind,
            lead.status,
            lead.name,
            lead.email,
            lead.company,
            lead.phone,
            str(lead.message_count),
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
