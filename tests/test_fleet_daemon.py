"""Fleet mode in the daemon (triage.ops.daemon with a LeaseManager, on a real PostgreSQL): each
account is served by exactly one instance, under a fence that makes an instance that lost the
lease record nothing; a stopped or killed instance's accounts are served again by the others;
two real `triage run` processes share two mailboxes of the real mail servers and answer every
inquiry exactly once, also across a SIGKILL of one of them."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from devtools.demo import accounts_toml, store_toml
from devtools.mailharness import MailHarness
from tests.fleet_support import FleetInstance, OfflineMailbox, Syncs
from tests.mailtools import DaemonStarter, inquiry, replies_in, wait_until
from triage.core.errors import LeaseLost, StoreInUseError
from triage.core.settings import ImapAccount, ImapSettings, Settings, StoreSettings
from triage.ingest.sync import SyncResult
from triage.ops.fleet import LEADER, LeaseGuard, LeaseManager, fleet_status
from triage.ops.runner import run_once_command
from triage.store import leases
from triage.store.db import Database
from triage.store.leases import Fence

pytestmark = [
    pytest.mark.postgresql,
    pytest.mark.parametrize("backend_store", ["postgresql"], indirect=True),
]

TTL = 1.0
RENEW = 0.25


# --- the fence on a store handle --------------------------------------------------------------


def test_a_handle_fenced_by_a_lost_lease_records_nothing(store: StoreSettings) -> None:
    """`Database.guard` set to a lease's fence: while the lease is held a transaction commits;
    once another instance took the lease over, every transaction of the handle raises LeaseLost
    before its first statement and nothing of it is written."""
    admin = Database(store)
    with admin.transaction() as tx:
        leases.ensure(tx, ["hello"])
        mine = leases.acquire_any(tx, ["hello"], "a", 0.3, 1)
    fenced = Database(store)
    fenced.guard = Fence("hello", "a", mine["hello"])
    with fenced.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('held', '1')")
    time.sleep(0.4)  # expired; another instance takes it
    with admin.transaction() as tx:
        assert leases.acquire_any(tx, ["hello"], "b", 10.0, 1)
    with pytest.raises(LeaseLost), fenced.transaction() as tx:
        tx.execute("INSERT INTO kv (key, value) VALUES ('lost', '1')")
    keys = {r[0] for r in admin.reads.execute("SELECT key FROM kv WHERE key IN ('held', 'lost')")}
    assert keys == {"held"}


# --- two daemons in one process, with syncs that only report who served what ------------------


class Instance(FleetInstance):
    """An instance whose workers record (account, generation) per pass."""

    def __init__(self, store: StoreSettings, name: str, accounts: Sequence[str]) -> None:
        self.passes: list[tuple[str, int]] = []
        super().__init__(store, name, accounts, renew=RENEW, ttl=TTL)

    def syncs(self, guard: LeaseGuard) -> Syncs:
        def make(account: ImapAccount, _mailbox: Any) -> list[Callable[[], SyncResult]]:
            def sync() -> SyncResult:
                self.passes.append((account.name, guard.generation))
                return SyncResult()

            return [sync]

        return make

    def __enter__(self) -> Instance:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture
def no_mailbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers whose IMAP connection is a stand-in: these tests are about who serves what."""
    monkeypatch.setattr("triage.ops.daemon.ImapMailbox", OfflineMailbox)


@pytest.fixture
def instances(store: StoreSettings, no_mailbox: None) -> Iterator[Callable[[str], Instance]]:
    started: list[Instance] = []

    def start(name: str) -> Instance:
        instance = Instance(store, name, ["hello", "other", "sales", "info"])
        started.append(instance.__enter__())
        return instance

    yield start
    for instance in started:
        instance.__exit__()


def test_two_instances_split_the_accounts_and_one_leads(
    instances: Callable[[str], Instance],
) -> None:
    """Two instances of four accounts: each serves two, none serves an account the other does,
    exactly one holds the leader lease, and both report healthy lease renewal."""
    a, b = instances("a"), instances("b")
    wait_until(lambda: len(a.serving()) == 2 and len(b.serving()) == 2, 15)
    assert a.serving().isdisjoint(b.serving())
    assert a.serving() | b.serving() == {"hello", "other", "sales", "info"}
    assert [a.leases.is_leader, b.leases.is_leader].count(True) == 1
    # `a` started first and served all four until `b` joined: from now on, only its share.
    a.passes.clear()
    b.passes.clear()
    time.sleep(1.0)
    for instance in (a, b):
        lease_line = instance.daemon.health_statuses()[0]
        assert lease_line.name == "leases" and lease_line.last_error is None
        served = {name for name, _generation in instance.passes}
        assert served == instance.serving()


def test_a_stopping_instance_hands_its_accounts_over_at_once(
    instances: Callable[[str], Instance], store: StoreSettings
) -> None:
    """SIGTERM's path (control.stop): the instance stops its workers and releases its leases,
    and the other instance serves every account well before the leases would have expired."""
    a, b = instances("a"), instances("b")
    wait_until(lambda: len(a.serving()) == 2 and len(b.serving()) == 2, 15)
    a.__exit__()
    # Released at once (no owner), not left to expire.
    rows = (
        Database(store).reads.execute("SELECT name FROM leases WHERE owner = 'host:a'").fetchall()
    )
    assert rows == []
    wait_until(lambda: len(b.serving()) == 4, 10)
    assert b.leases.is_leader
    passes_after = Counter(name for name, _g in b.passes)
    wait_until(lambda: set(Counter(n for n, _g in b.passes) - passes_after) == b.serving(), 10)


def test_a_paused_instance_loses_its_accounts_and_records_nothing_when_it_wakes(
    instances: Callable[[str], Instance], store: StoreSettings
) -> None:
    """An instance whose lease thread stops renewing (a paused process) loses its accounts to
    the other after the lease time; the workers it still runs are stopped as soon as it notices,
    and a transaction under its old fence is refused."""
    a, b = instances("a"), instances("b")
    wait_until(lambda: len(a.serving()) == 2 and len(b.serving()) == 2, 15)
    old = {name: gen for name, gen in a.leases.current().items() if name != LEADER}
    real_tick = a.leases.tick
    paused = threading.Event()

    def frozen_tick() -> Any:
        paused.wait()
        return real_tick()

    a.leases.tick = frozen_tick  # type: ignore[method-assign]
    wait_until(lambda: len(b.serving()) == 4, 15)
    holders = fleet_status(Database(store), TTL).holders()
    assert all(holders.get(name) == "host:b" for name in old)
    for name, generation in old.items():
        fenced = Database(store)
        fenced.guard = Fence(name, "host:a", generation)
        with pytest.raises(LeaseLost), fenced.transaction():
            pass
    paused.set()
    wait_until(lambda: not a.serving() or a.serving().isdisjoint(old), 10)


# --- two real `triage run` processes on the real mail servers ---------------------------------

PROSPECTS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")

CONFIG = """\
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"

{store}
[replies]
mode = "live"
from_address = "hello@{domain}"
envelope_sender = "noreply@{domain}"
our_addresses = ["hello@{domain}", "other@{domain}"]
company_name = "Example Furniture Ltd"

[daemon]
health_port = 0
backoff_max = 2

[fleet]
renew_every = 1
lease_time = 4
"""


def fleet_config(harness: MailHarness, base: Path, store: StoreSettings) -> Path:
    path = base / "triage.toml"
    cfg = harness.config
    accounts = accounts_toml(harness, base, ["hello", "other"], options="poll_interval = 5\n")
    path.write_text(
        accounts
        + CONFIG.format(smtp_port=cfg.smtp_port, domain=cfg.domain, store=store_toml(store))
    )
    return path


def served_by(store: StoreSettings) -> dict[str, str]:
    """{account: instance id} of the account leases held now."""
    return fleet_status(Database(store), 4.0).holders(accounts_only=True)


def synced_accounts(store: StoreSettings) -> set[str]:
    rows = Database(store).reads.execute("SELECT DISTINCT account FROM mailbox_state").fetchall()
    return {str(r[0]) for r in rows}


def message_states(store: StoreSettings) -> Counter[str]:
    rows = Database(store).reads.execute("SELECT state FROM messages").fetchall()
    return Counter(str(r[0]) for r in rows)


def test_two_instances_answer_every_inquiry_once_across_a_sigkill(
    clean_mail: MailHarness,
    store: StoreSettings,
    daemon_factory: DaemonStarter,
    tmp_path: Path,
) -> None:
    """Two `triage run` on one PostgreSQL share the mailboxes hello@ and other@ (one each).
    Five prospects write to both; then the instance serving hello@ gets SIGKILL, and ten more
    more arrive at hello@. The survivor takes hello@ over within the lease time and a few
    seconds (reported), every message is done once, and every prospect got exactly one reply."""
    config = fleet_config(clean_mail, tmp_path, store)
    first = daemon_factory(config)
    second = daemon_factory(config)
    wait_until(lambda: len(set(served_by(store).values())) == 2, 60)
    wait_until(lambda: synced_accounts(store) == {"hello", "other"}, 60)

    def write(prospect: str, to: str) -> None:
        sender = clean_mail.address(prospect)
        to_address = clean_mail.address(to)
        clean_mail.send(inquiry(sender, to_address, PROSPECTS.index(prospect)), sender, to_address)

    # One inquiry per prospect: a second one within the etiquette's window gets no reply.
    for prospect, to in zip(PROSPECTS[:5], ("hello",) * 3 + ("other",) * 2, strict=True):
        write(prospect, to)
    wait_until(lambda: message_states(store)["done"] == 5, 90)

    victim_id = served_by(store)["hello"]
    victim = first if f":{first.pid}:" in victim_id else second
    survivor = second if victim is first else first
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    for prospect in PROSPECTS[5:]:
        write(prospect, "hello")
    wait_until(lambda: f":{survivor.pid}:" in served_by(store).get("hello", ""), 30)
    takeover = time.monotonic() - killed_at
    wait_until(lambda: message_states(store)["done"] == 10, 120)
    print(f"takeover after SIGKILL: {takeover:.1f} s (lease time 4 s, renewed every 1 s)")
    assert survivor.poll() is None
    assert takeover < 4 + 2 * 1 + 5  # lease time, two renewals, the survivor's new session
    assert message_states(store) == Counter({"done": 10})
    # Every reply was claimed for sending under a lease of the instance that sent it.
    claims = Database(store).reads.execute("SELECT state, claimed_by FROM replies").fetchall()
    assert len(claims) == 10
    pids = {str(first.pid), str(second.pid)}
    for state, by in claims:
        assert state == "sent"
        owner, lease = str(by).split(" ")
        assert owner.split(":")[1] in pids
        assert lease.split("#")[0] in {"hello", "other", LEADER}
    for prospect in PROSPECTS:
        replies = replies_in(clean_mail, prospect)
        assert len(replies) == 1, (prospect, [r["Subject"] for r in replies])


def test_triage_once_is_refused_while_a_fleet_instance_is_live(
    instances: Callable[[str], Instance],
) -> None:
    """`triage once` serves every account without leases: while an instance beats its
    heartbeat it is refused with one line naming the instance, even without the store lock
    (a database restart ends the instances' lock sessions)."""
    a = instances("a")
    wait_until(lambda: len(a.serving()) == 4, 15)
    with pytest.raises(StoreInUseError, match=r"served by 1 triage run instance\(s\) \(host:a\)"):
        run_once_command(a.settings)


def test_only_the_leader_runs_the_webhook_threads(
    store: StoreSettings, tmp_path: Path, no_mailbox: None
) -> None:
    """In a fleet the webhook senders run on the leader alone (one POST at a time per endpoint
    across the fleet): an instance's Housekeeping starts them when it becomes the leader and
    stops them when it no longer is."""
    from tests.webhook_receiver import new_secret, secret_file
    from triage.core.settings import WebhookSettings
    from triage.ops.daemon import Housekeeping
    from triage.ops.service import Shared

    hook = WebhookSettings(
        name="crm",
        url="http://127.0.0.1:9/hooks",
        secret_file=secret_file(tmp_path, new_secret(), "crm.secret"),
    )
    settings = Settings(
        imap=ImapSettings(name="hello", username="hello", password=SecretStr("x")),
        store=store,
        webhooks=(hook,),
    )
    follower = LeaseManager(
        lambda: Database(store), "host:b", ["hello"], renew_every=RENEW, ttl=TTL
    )
    leader = LeaseManager(lambda: Database(store), "host:a", ["hello"], renew_every=RENEW, ttl=TTL)
    leader.tick()
    follower.tick()
    assert leader.is_leader and not follower.is_leader
    shared = Shared(settings)
    leading, following = Housekeeping(shared, leader), Housekeeping(shared, follower)
    try:
        following.run()
        leading.run()
        assert following.webhooks is None
        assert leading.webhooks is not None
        senders = [t for t in threading.enumerate() if t.name == "webhook-crm"]
        assert len(senders) == 1
        leader.release_all()
        leading.run()
        assert not senders[0].is_alive()
        assert leading.webhooks is None
    finally:
        leading.close()
        following.close()


def _pipes() -> int:
    """Pipe descriptors this process has open."""
    found = 0
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/self/fd/{entry}").startswith("pipe:")
    return found


def test_a_fleet_workers_doorbell_is_closed_when_it_ends(
    instances: Callable[[str], Instance],
) -> None:
    """Each fleet worker has a doorbell pipe of its own; once the instance stopped (every
    worker ended), none of those pipes is left open: hand-overs do not leak descriptors."""
    gc.collect()  # doorbells of earlier tests' instances (reference cycles) are closed now
    before = _pipes()
    a = instances("a")
    wait_until(lambda: len(a.serving()) == 4, 15)
    assert _pipes() >= before + 2 * 4
    a.__exit__()
    gc.collect()
    assert _pipes() <= before + 2  # the instance's own Control, which `a` still holds
