"""The demo: real local mail servers, a few sample inquiries through SMTP, one triage pass.

Run with `bash scripts/demo` (which installs everything first). It starts the project's Dovecot
and Postfix on loopback, empties the demo mailboxes, runs `triage once` on the empty mailbox (the
first start records a baseline), delivers the messages in `config/demo/` through SMTP, runs
`triage once` again and shows what happened: each message's decision and reasons, the replies
that arrived in the senders' mailboxes, and the queued leads. It then leaves the web console
(`triage web`) running over the demo's store on 127.0.0.1:8025 (or a free port when that one is
busy), with an admin user `demo` whose password is made for this run and printed; the command
that stops the demo's mail servers stops the console too.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devtools.mailharness import MailHarness
from triage.core.settings import StoreSettings
from triage.store.db import Database
from triage.store.leads import STATUSES, find_leads
from triage.store.stats import handled_messages

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "config" / "demo"
PROSPECTS = ("alice", "bob", "carol")
WEB_HOST = "127.0.0.1"
WEB_PORT = 8025
DEMO_USER = "demo"

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


def accounts_toml(
    harness: MailHarness,
    base: Path,
    names: Sequence[str],
    *,
    options: str = "",
    password_file: Path | None = None,
) -> str:
    """`[imap]` for the first of `names` and `[[imap.accounts]]` for each other one, each
    watching that harness user's INBOX over IMAPS, with `options` (TOML lines) in every table.
    Each user's password goes to a 0600 file in `base`, unless all share `password_file`."""
    cfg = harness.config
    tables = []
    for index, user in enumerate(names):
        secret = password_file
        if secret is None:
            secret = base / f"{user}.password"
            secret.write_text(harness.password(user))
            secret.chmod(0o600)
        tables.append(
            f"{'[imap]' if index == 0 else '[[imap.accounts]]'}\n"
            f'name = "{user}"\nhost = "127.0.0.1"\nport = {cfg.imaps_port}\nsecurity = "tls"\n'
            f'ca_file = "{harness.ca_file}"\nusername = "{user}"\npassword_file = "{secret}"\n'
            f"{options}\n"
        )
    return "\n".join(tables)


def store_toml(store: StoreSettings) -> str:
    """The `[store]` section of a TOML configuration naming `store` (path, and a server's URL
    and password file)."""
    lines = ["[store]", f'path = "{store.path}"']
    if store.is_postgresql:
        lines += [f'url = "{store.url}"', f'password_file = "{store.password_file}"']
    return "\n".join(lines) + "\n"


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
    # A console left running by an earlier demo has the store open that is made anew below.
    harness.stop_attached()
    harness.start()
    harness.clear_all_mailboxes()
    cfg = harness.config
    console.print(
        f"Dovecot IMAP {cfg.host}:{cfg.imap_port} (IMAPS {cfg.imaps_port}), "
        f"Postfix SMTP {cfg.host}:{cfg.smtp_port}, domain {cfg.domain}"
    )
    for stale in base.glob("triage.db*"):
        stale.unlink()
    web_port = WEB_PORT if port_free(WEB_HOST, WEB_PORT) else free_port(WEB_HOST)
    web_url = f"http://{WEB_HOST}:{web_port}"
    config = write_config(
        harness, base, extra=f'\n[web]\nport = {web_port}\nbase_url = "{web_url}"\n'
    )

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

    console.rule("8. the web console")
    password = add_demo_user(config, base)
    start_console(harness, config, base, web_port)
    console.print(
        f"Open {web_url}/ and log in as [bold]{DEMO_USER}[/] with password [bold]{password}[/]"
    )
    console.print(
        "  (an admin login made for this demo run only; the password is in "
        f"{base / 'web-demo.password'})"
    )
    console.print(f"  console log: {base / 'web.log'}")
    console.rule()
    console.print(f"Settings: {config}  ·  store: {base / 'triage.db'}")
    console.print(
        "Stop the mail servers and the console with: scripts/mailservers stop --dir "
        + str(base / "mailservers")
    )
    return 0


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port of `host` nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def add_demo_user(config: Path, base: Path) -> str:
    """The console's admin user `demo` with a password made now (in a 0600 file); returns it."""
    password = secrets.token_urlsafe(12)
    secret = base / "web-demo.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(config), "users", "add", DEMO_USER,
         "--role", "admin", "--email", f"{DEMO_USER}@example.test",
         "--password-file", str(secret)],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return password


def start_console(harness: MailHarness, config: Path, base: Path, port: int) -> None:
    """`triage web` in the background, in a session of its own (so it outlives the demo and a
    Ctrl-C in this terminal), attached to the harness: stopping the mail servers stops it."""
    log_path = base / "web.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "web",
             "--host", WEB_HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    harness.attach("web", process.pid)
    deadline = time.monotonic() + 30
    while not answers(f"http://{WEB_HOST}:{port}/login"):
        if process.poll() is not None or time.monotonic() > deadline:
            harness.stop_attached()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"demo: the web console did not start:\n{tail}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    """True when `url` answers 200."""
    try:
        # Straight to loopback, whatever proxy the environment names.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


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
