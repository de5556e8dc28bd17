"""Waiting for news blocks instead of polling every second.

An idle account's worker waits in one poll() on its IMAP socket and the control's pipe until the
server announces mail, the poll interval ends, or a stop request or wake-up arrives: no CPU in
between, and still a stop (SIGTERM) or a wake-up is noticed at once. Against the harness's real
Dovecot over IMAPS.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from devtools.mailharness import MailHarness
from tests.mailtools import inquiry
from triage.core.backoff import Backoff
from triage.core.settings import ImapAccount
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.sync import SyncResult
from triage.ops import daemon
from triage.ops.daemon import AccountStatus, AccountWorker, Control, Doorbell, RingingEvent


def readable(bell: Doorbell) -> bool:
    return bell.wait(0)


def test_the_doorbell_is_readable_exactly_while_an_event_is_set() -> None:
    """Set rings, clear silences unless the other event is still set; a set is counted."""
    control = Control()
    bell = control.doorbell
    assert not readable(bell)
    control.wake.set()
    control.wake.set()
    assert readable(bell)
    assert isinstance(control.wake, RingingEvent) and control.wake.generation == 2
    control.stop.set()
    control.wake.clear()
    assert readable(bell)  # stop is still set
    control.stop.clear()
    assert not readable(bell)


def test_the_pipe_follows_the_events_whatever_the_interleaving() -> None:
    """Threads setting and clearing the wake-up at once: afterwards the pipe is readable
    exactly when an event is set (a stale ring would make every waiting worker spin)."""
    control = Control()

    def toggle() -> None:
        for _ in range(300):
            control.wake.set()
            control.wake.clear()

    threads = [threading.Thread(target=toggle) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not control.wake.is_set()
    assert not readable(control.doorbell)
    control.wake.set()
    assert readable(control.doorbell)


def test_a_blocked_waiter_is_woken_by_a_set_from_another_thread() -> None:
    control = Control()
    timer = threading.Timer(0.2, control.stop.set)
    started = time.monotonic()
    timer.start()
    assert control.doorbell.wait(10)
    assert time.monotonic() - started < 2
    timer.join()


class Recorder:
    """Counts the worker's passes and its IDLE waits on a real mailbox."""

    def __init__(self) -> None:
        self.passes = 0
        self.polls: list[float] = []
        self.lock = threading.Lock()

    def syncs(self, account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        def sync() -> SyncResult:
            info = mailbox.select(account.folders[0])
            with self.lock:
                self.passes += 1
            return SyncResult(folder=info.name, uidnext=info.uidnext)

        return [sync]


@pytest.fixture
def worker(
    mail_harness: MailHarness, clean_mail: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[AccountWorker, Recorder, threading.Thread]]:
    """An account worker on hello@ (IMAPS, IDLE, a 60 s poll interval), running."""
    cfg = mail_harness.config
    account = ImapAccount(
        name="hello",
        host=cfg.host,
        port=cfg.imaps_port,
        security="tls",
        ca_file=mail_harness.ca_file,
        username="hello",
        password=SecretStr(mail_harness.password("hello")),
        poll_interval=60.0,
    )
    recorder = Recorder()
    original = ImapMailbox.idle_poll

    def counted(self: ImapMailbox, timeout: float, interrupt: int | None = None) -> bool:
        with recorder.lock:
            recorder.polls.append(timeout)
        return original(self, timeout, interrupt)

    monkeypatch.setattr(ImapMailbox, "idle_poll", counted)
    status = AccountStatus("hello")
    w = AccountWorker(account, recorder.syncs, Control(), Backoff(), status)
    thread = threading.Thread(target=w.run)
    thread.start()
    try:
        yield w, recorder, thread
    finally:
        w.control.stop.set()
        thread.join(30)


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.mark.mail
def test_an_idle_account_blocks_in_one_wait_and_stops_at_once(
    worker: tuple[AccountWorker, Recorder, threading.Thread],
) -> None:
    """Idle for 3 s: one IDLE wait (the 1 s slices made three), then a stop request ends it
    within half a second."""
    w, recorder, thread = worker
    wait_for(lambda: recorder.polls)
    time.sleep(3.0)
    assert recorder.passes == 1
    assert len(recorder.polls) == 1
    assert recorder.polls[0] > 50  # the whole poll interval, not a slice
    started = time.monotonic()
    w.control.stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 0.5
    assert not w.status.connected


@pytest.mark.mail
def test_a_wake_up_starts_a_pass_at_once(
    worker: tuple[AccountWorker, Recorder, threading.Thread],
) -> None:
    """A wake-up (a reply to file) ends the IDLE wait: the next pass starts within half a
    second, then the worker waits again."""
    w, recorder, _thread = worker
    wait_for(lambda: recorder.polls)
    started = time.monotonic()
    w.control.wake.set()
    wait_for(lambda: recorder.passes == 2, timeout=5)
    assert time.monotonic() - started < 0.5
    wait_for(lambda: len(recorder.polls) == 2, timeout=5)
    assert not w.control.wake.is_set()


@pytest.mark.mail
def test_new_mail_still_ends_the_wait(
    mail_harness: MailHarness, worker: tuple[AccountWorker, Recorder, threading.Thread]
) -> None:
    """Mail delivered while the worker waits in IDLE starts a pass (Dovecot announces it
    after about half a second)."""
    _w, recorder, _thread = worker
    wait_for(lambda: recorder.polls)
    cfg = mail_harness.config
    raw = inquiry("alice@example.test", "hello@example.test", 3, "Alice Moreau")
    with smtplib.SMTP(cfg.host, cfg.smtp_port, timeout=30) as smtp:
        smtp.sendmail("alice@example.test", ["hello@example.test"], raw)
    wait_for(lambda: recorder.passes >= 2, timeout=10)


def test_plain_events_fall_back_to_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A control whose events were replaced by plain ones (no pipe) still stops the polling
    wait, in slices."""
    monkeypatch.setattr(daemon, "SLICE", 0.01)

    class NoIdle:
        has_idle = False

        def session_expires_in(self) -> None:
            return None

    control = Control()
    control.stop = threading.Event()
    control.wake = threading.Event()
    account = ImapAccount(username="u", password=SecretStr("p"), security="plain")
    w = AccountWorker(account, lambda _a, _m: [], control, Backoff(), AccountStatus("u"))
    threading.Timer(0.1, control.stop.set).start()
    started = time.monotonic()
    w._wait(NoIdle())  # type: ignore[arg-type]
    assert time.monotonic() - started < 2


def test_a_closed_doorbell_never_closes_its_descriptors_again() -> None:
    """A fleet worker's doorbell is closed when its thread ends; the descriptor numbers go to
    the next pipe (or socket, or store file) opened. The old doorbell, collected later, must not
    close them a second time: the new doorbell still rings."""
    import gc

    from triage.ops.daemon import Doorbell, RingingEvent

    old = Doorbell()
    numbers = {old.fileno()}
    old.close()
    new = Doorbell()
    assert new.fileno() in numbers  # the numbers were reused, as they would be in the daemon
    del old
    gc.collect()
    event = RingingEvent(new)
    event.set()
    assert new.wait(0.1)
    new.close()
