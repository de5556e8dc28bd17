"""A fleet under failure, end to end: three `triage run` instances on one real PostgreSQL share
twelve mailboxes of the real mail servers while inquiries arrive through Postfix. One instance
gets SIGKILL, another SIGSTOP for longer than the lease time and then SIGCONT, and PostgreSQL is
stopped for 10 s; afterwards every message is done exactly once, every prospect got exactly one
reply (counted in their own mailboxes), nothing was claimed for sending under a lease after it
was lost, and each digest went out once. Then the instances are restarted one by one while mail
arrives: nothing is lost, nothing is sent twice.

The leases are the defaults (renewed every 5 s, 20 s long): the takeover time printed is what an
operator gets."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from devtools.demo import accounts_toml, store_toml
from devtools.mailharness import DEFAULT_USERS, MailHarness
from devtools.pgharness import PgHarness
from tests.mailtools import DaemonStarter, inquiry, running_harness, wait_until
from triage.core.settings import StoreSettings
from triage.ops.fleet import LEADER, fleet_status
from triage.store.db import Database

pytestmark = [
    pytest.mark.postgresql,
    pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True),
]

INBOXES = tuple(f"inbox{n:02d}" for n in range(12))
CHAOS_PROSPECTS = tuple(f"p{n:03d}" for n in range(300))
ROLLING_PROSPECTS = tuple(f"r{n:03d}" for n in range(60))
LEASE_TIME = 20.0  # the default


@pytest.fixture(scope="module")
def fleet_mail() -> Iterator[MailHarness]:
    """Mail servers with the twelve watched mailboxes and a mailbox per prospect."""
    users = {
        **DEFAULT_USERS,
        **{name: f"pw-{name}" for name in (*INBOXES, *CHAOS_PROSPECTS, *ROLLING_PROSPECTS)},
    }
    yield from running_harness(users=users)


REST = """\
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"

{store}
[replies]
mode = "live"
from_address = "inbox00@{domain}"
envelope_sender = "noreply@{domain}"
our_addresses = [{ours}]
company_name = "Example Furniture Ltd"
max_per_hour = 2000
max_per_domain_per_hour = 2000

[digest]
recipients = ["sales@{domain}"]
schedule = "* * * * *"
from_address = "noreply@{domain}"

[daemon]
health_port = 0
backoff_initial = 0.5
backoff_max = 3
"""


def write_config(harness: MailHarness, base: Path, store: StoreSettings) -> Path:
    cfg = harness.config
    text = accounts_toml(harness, base, INBOXES, options="poll_interval = 10\n")
    ours = ", ".join(f'"{user}@{cfg.domain}"' for user in INBOXES)
    text += REST.format(
        smtp_port=cfg.smtp_port, store=store_toml(store), domain=cfg.domain, ours=ours
    )
    path = base / "triage.toml"
    path.write_text(text)
    return path


def held(store: StoreSettings) -> dict[str, str]:
    """{lease: instance id} of the leases held by live instances now."""
    return fleet_status(Database(store), LEASE_TIME).holders()


def pid_of(instance_id: str) -> int:
    return int(instance_id.split(":")[1])


def states(store: StoreSettings) -> Counter[str]:
    rows = Database(store).reads.execute("SELECT state FROM messages").fetchall()
    return Counter(str(r[0]) for r in rows)


def synced_accounts(store: StoreSettings) -> set[str]:
    rows = Database(store).reads.execute("SELECT DISTINCT account FROM mailbox_state").fetchall()
    return {str(r[0]) for r in rows}


class Sender(threading.Thread):
    """Sends one inquiry per prospect, each to a random watched mailbox, `rate` per second."""

    def __init__(self, harness: MailHarness, prospects: Sequence[str], rate: float) -> None:
        super().__init__(name="inquiries", daemon=True)
        self.harness = harness
        self.prospects = prospects
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        chooser = random.Random(17)
        try:
            for n, prospect in enumerate(self.prospects):
                to = self.harness.address(chooser.choice(INBOXES))
                sender = self.harness.address(prospect)
                self.harness.send(inquiry(sender, to, n), sender, to)
                self.sent += 1
                time.sleep(1 / self.rate)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def replies_to(harness: MailHarness, prospects: Sequence[str]) -> dict[str, int]:
    """How many mails each prospect's INBOX holds (the replies triage sent them)."""
    counts = {}
    for prospect in prospects:
        with harness.imap(prospect) as client:
            counts[prospect] = int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])
    return counts


def start_fleet(
    daemon_factory: DaemonStarter, config: Path, store: StoreSettings, count: int
) -> list[subprocess.Popen[str]]:
    procs = [daemon_factory(config) for _ in range(count)]
    accounts = set(INBOXES)
    share = len(INBOXES) // count

    def balanced() -> bool:
        owners = Counter(owner for name, owner in held(store).items() if name != LEADER)
        return len(owners) == count and set(owners.values()) == {share}

    wait_until(balanced, 120, interval=0.5)
    wait_until(lambda: synced_accounts(store) == accounts, 90, interval=0.5)
    return procs


def test_three_instances_survive_sigkill_sigstop_and_a_database_outage(
    fleet_mail: MailHarness,
    postgres: PgHarness,
    store: StoreSettings,
    daemon_factory: DaemonStarter,
    tmp_path: Path,
) -> None:
    """300 inquiries to 12 mailboxes over about a minute while the fleet is hit three times;
    every message done once, one reply per prospect, no claim under a lost lease, digests once.
    Prints the takeover time after the SIGKILL (goal: at most 30 s)."""
    config = write_config(fleet_mail, tmp_path, store)
    procs = start_fleet(daemon_factory, config, store, 3)
    by_pid = {proc.pid: proc for proc in procs}
    sender = Sender(fleet_mail, CHAOS_PROSPECTS, rate=5.0)
    sender.start()

    # 1. SIGKILL the instance holding the most accounts.
    time.sleep(8)
    owners = Counter(owner for name, owner in held(store).items() if name != LEADER)
    victim_id = owners.most_common(1)[0][0]
    orphans = {name for name, owner in held(store).items() if owner == victim_id}
    victim = by_pid.pop(pid_of(victim_id))
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    wait_until(
        lambda: all(held(store).get(name, victim_id) != victim_id for name in orphans), 60, 0.2
    )
    takeover = time.monotonic() - killed_at

    # 2. SIGSTOP another for longer than the lease time, then SIGCONT.
    paused_id = next(owner for owner in held(store).values() if pid_of(owner) in by_pid)
    paused = by_pid[pid_of(paused_id)]
    before_pause = {
        name for name, owner in held(store).items() if owner == paused_id and name != LEADER
    }
    generations = {
        lease.name: lease.generation
        for instance in fleet_status(Database(store), LEASE_TIME).instances
        if instance.instance.id == paused_id
        for lease in instance.leases
    }
    paused.send_signal(signal.SIGSTOP)
    stopped_wall = time.time()
    time.sleep(LEASE_TIME + 5)
    paused.send_signal(signal.SIGCONT)

    # 3. The database goes away for 10 s.
    time.sleep(3)
    postgres.stop_server()
    time.sleep(10)
    postgres.start_server()

    sender.join(300)
    assert sender.error is None, sender.error
    assert sender.sent == len(CHAOS_PROSPECTS)
    wait_until(lambda: states(store)["done"] >= len(CHAOS_PROSPECTS), 240, interval=1.0)
    time.sleep(5)  # anything that would go out twice has its chance
    print(
        f"\nfleet chaos: takeover after SIGKILL {takeover:.1f} s ({len(orphans)} mailboxes); "
        f"paused instance held {sorted(before_pause)}"
    )
    assert takeover <= 30.0

    # Every message once, done.
    assert states(store) == Counter({"done": len(CHAOS_PROSPECTS)})
    ids = Database(store).reads.execute("SELECT message_id FROM messages").fetchall()
    assert len({str(r[0]) for r in ids}) == len(CHAOS_PROSPECTS)
    # One reply per prospect, in their own mailboxes.
    counts = replies_to(fleet_mail, CHAOS_PROSPECTS)
    assert {p: c for p, c in counts.items() if c != 1} == {}
    # Nothing claimed for sending under the paused instance's old leases after it was paused.
    rows = (
        Database(store)
        .reads.execute("SELECT claimed_by, claimed_at FROM replies WHERE claimed_by IS NOT NULL")
        .fetchall()
    )
    old_fences = {f"{paused_id} {name}#{gen}" for name, gen in generations.items()}
    late = [
        (str(by), str(at))
        for by, at in rows
        if str(by) in old_fences and datetime.fromisoformat(str(at)).timestamp() > stopped_wall
    ]
    assert late == []
    # Each digest once: one row per slot (the database's own rule) and as many mails to sales@.
    digests = (
        Database(store)
        .reads.execute("SELECT slot, state FROM digests WHERE kind = 'digest'")
        .fetchall()
    )
    slots = Counter(str(r[0]) for r in digests)
    assert all(n == 1 for n in slots.values())
    sent_digests = sum(1 for r in digests if str(r[1]) == "sent")
    assert sent_digests >= 1
    # Every reply sent, but for what the killed instance had claimed when it died: those stay
    # `sending` (the leader marks them uncertain after 2 x smtp.timeout + 60 s: maybe delivered,
    # never resent), at most one per worker it ran. Nothing else is left unsettled.
    unsettled = (
        Database(store)
        .reads.execute("SELECT state, claimed_by FROM replies WHERE state <> 'sent'")
        .fetchall()
    )
    assert all(str(r[0]) in {"sending", "uncertain"} for r in unsettled), unsettled
    assert all(str(r[1]).startswith(f"{victim_id} ") for r in unsettled), unsettled
    assert len(unsettled) <= len(orphans) + 1
    with fleet_mail.imap("sales") as client:
        in_sales = int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])
    assert in_sales == sent_digests
    for proc in by_pid.values():
        assert proc.poll() is None, "a surviving instance exited"


def test_a_rolling_restart_loses_nothing_and_sends_nothing_twice(
    fleet_mail: MailHarness,
    store: StoreSettings,
    daemon_factory: DaemonStarter,
    tmp_path: Path,
) -> None:
    """Three instances restarted one by one (SIGTERM, then a new one) while 60 inquiries
    arrive: every message done once, every prospect answered once."""
    config = write_config(fleet_mail, tmp_path, store)
    procs = start_fleet(daemon_factory, config, store, 3)
    sender = Sender(fleet_mail, ROLLING_PROSPECTS, rate=2.0)
    sender.start()
    for proc in procs:
        time.sleep(6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        daemon_factory(config)
    sender.join(120)
    assert sender.error is None, sender.error
    wait_until(lambda: states(store)["done"] >= len(ROLLING_PROSPECTS), 180, interval=1.0)
    time.sleep(5)
    assert states(store) == Counter({"done": len(ROLLING_PROSPECTS)})
    reply_states = Counter(
        str(r[0]) for r in Database(store).reads.execute("SELECT state FROM replies").fetchall()
    )
    assert reply_states == Counter({"sent": len(ROLLING_PROSPECTS)})
    counts = replies_to(fleet_mail, ROLLING_PROSPECTS)
    assert {p: c for p, c in counts.items() if c != 1} == {}
