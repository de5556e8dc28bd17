"""An account worker waits out a database that is unavailable (a PostgreSQL restart or
failover) or a transaction that lost a race, however many passes that takes: those never count
towards parking the account or stopping the service, unlike a store that is broken."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from triage.core.backoff import Backoff
from triage.core.errors import StoreConflict, StoreError, StoreUnavailable
from triage.core.settings import ImapAccount
from triage.ingest.sync import SyncResult
from triage.ops import daemon
from triage.ops.daemon import AccountStatus, AccountWorker, Control


class FakeMailbox:
    """The mailbox as the worker's loop sees it: always connects, offers no IDLE."""

    def __init__(self, account: ImapAccount, tokens: object = None) -> None:
        self.account = account
        self.connected = False
        self.session_lifetime = None
        self.has_idle = False

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def session_expires_in(self) -> float | None:
        return None


def run_worker(
    monkeypatch: pytest.MonkeyPatch, failures: list[Exception]
) -> tuple[AccountStatus, Control, int]:
    """Run one worker whose passes raise `failures` in turn, then succeed once (which stops
    it); returns its status, the control and how many passes ran."""
    monkeypatch.setattr(daemon, "ImapMailbox", FakeMailbox)
    monkeypatch.setattr(daemon, "SLICE", 0.01)
    account = ImapAccount(
        username="hello", password=SecretStr("pw"), security="plain", poll_interval=0.01
    )
    control = Control()
    passes = 0

    def make_syncs(_account: ImapAccount, _mailbox: Any) -> list[Callable[[], SyncResult]]:
        def sync() -> SyncResult:
            nonlocal passes
            passes += 1
            if failures:
                raise failures.pop(0)
            control.stop.set()
            return SyncResult()

        return [sync]

    status = AccountStatus("hello")
    worker = AccountWorker(
        account, make_syncs, control, Backoff(0.001, 0.002), status, max_failed_passes=3
    )
    worker.run()
    return status, control, passes


def test_an_unavailable_database_is_waited_out_without_giving_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten passes in a row fail because the database server is away or a transaction lost a
    race (more than `max_failed_passes` = 3): the worker keeps retrying, the service is not
    stopped, the account not parked, and the pass after it succeeds clears the error."""
    failures: list[Exception] = [
        StoreUnavailable("database 127.0.0.1:5432: connection refused") for _ in range(7)
    ]
    failures += [StoreConflict("could not serialize access") for _ in range(3)]
    status, control, passes = run_worker(monkeypatch, failures)
    assert passes == 11
    assert not control.failed.is_set()
    assert status.fatal is None and status.parked is None
    assert status.failed_passes == 0 and status.last_error is None


def test_a_broken_store_still_stops_the_service_after_max_failed_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store error that is not an outage (a corrupt file, a full disk) still gives up after
    `max_failed_passes`, for the supervisor to restart the service."""
    failures: list[Exception] = [StoreError("database disk image is malformed") for _ in range(5)]
    status, control, passes = run_worker(monkeypatch, failures)
    assert passes == 3
    assert control.failed.is_set()
    assert status.fatal is not None and "malformed" in status.fatal


def test_periodic_work_failing_unexpectedly_does_not_stop_the_service(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The main thread's periodic work (digest, alerts, sending) raises an error that is no
    TransientError, every round: the daemon logs it (its traceback once) and goes on, so the
    mailboxes keep being served; it stops only when told to."""
    from triage.core.settings import Settings
    from triage.ops.daemon import Daemon

    monkeypatch.setattr(daemon, "ImapMailbox", FakeMailbox)
    monkeypatch.setattr(daemon, "SLICE", 0.01)
    settings = Settings.model_validate(
        {"imap": {"username": "hello", "password": "pw", "security": "plain"}}
    )
    control = Control()
    rounds = 0

    def periodic() -> None:
        nonlocal rounds
        rounds += 1
        if rounds >= 4:
            control.stop.set()
        raise ValueError("unexpected answer from a library")

    def no_syncs(_account: ImapAccount, _mailbox: Any) -> list[Callable[[], SyncResult]]:
        return []

    Daemon(settings, no_syncs, periodic=periodic, control=control, period=0.01).run()
    assert rounds >= 4
    assert not control.failed.is_set()
    failures = [r for r in caplog.records if "periodic work failed" in r.getMessage()]
    assert len(failures) >= 3
    assert [bool(r.exc_info) for r in failures][:2] == [True, False]
