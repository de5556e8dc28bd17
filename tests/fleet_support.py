"""Fleet mode without mail servers: a Daemon in fleet mode in a thread of the test, over
accounts whose IMAP connection is a stand-in, on a real store. Subclasses say what a pass of an
account's worker does (`syncs`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import SecretStr

from triage.core.settings import ImapAccount, ImapSettings, Settings, StoreSettings
from triage.ingest.sync import SyncResult
from triage.ops.daemon import Control, Daemon
from triage.ops.fleet import LeaseGuard, LeaseManager
from triage.store.db import Database

Syncs = Callable[[ImapAccount, Any], list[Callable[[], SyncResult]]]


class OfflineMailbox:
    """An IMAP connection that is always there and never has news (no IDLE): patch it over
    `triage.ops.daemon.ImapMailbox`."""

    connected = True
    has_idle = False
    session_lifetime = None

    def __init__(self, account: ImapAccount, tokens: object = None) -> None:
        self.account = account

    def connect(self, fresh_token: bool = False) -> None:
        self.connected = True

    def close(self) -> None:
        pass

    def session_expires_in(self) -> float | None:
        return None


def offline_settings(store: StoreSettings, accounts: Sequence[str]) -> Settings:
    """Settings with `accounts` (a pass every 0.1 s each) on `store`."""
    primary, *more = accounts
    return Settings(
        imap=ImapSettings(
            name=primary,
            username=primary,
            password=SecretStr("x"),
            accounts=tuple(
                ImapAccount(name=n, username=n, password=SecretStr("x"), poll_interval=0.1)
                for n in more
            ),
            poll_interval=0.1,
        ),
        store=store,
    )


class FleetInstance:
    """One instance: its leases (`host:<name>`, renewed every `renew` s, `ttl` s long) and its
    Daemon, run in a thread by `start()` until `stop()`."""

    def __init__(
        self,
        store: StoreSettings,
        name: str,
        accounts: Sequence[str],
        renew: float = 0.25,
        ttl: float = 1.0,
    ) -> None:
        self.store = store
        self.name = name
        self.settings = offline_settings(store, accounts)
        self.leases = LeaseManager(
            lambda: Database(store), f"host:{name}", accounts, renew_every=renew, ttl=ttl
        )
        self.control = Control()
        self.daemon = Daemon(
            self.settings,
            lambda _a, _m: [],
            control=self.control,
            period=0.1,
            leases=self.leases,
            fenced_syncs=self.syncs,
        )
        self.thread = threading.Thread(target=self.daemon.run, name=f"daemon-{name}")

    def syncs(self, guard: LeaseGuard) -> Syncs:
        """What the workers of one lease generation do each pass."""
        raise NotImplementedError

    def serving(self) -> set[str]:
        """The accounts this instance's workers serve now."""
        return set(self.daemon.statuses)

    def start(self) -> FleetInstance:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.control.stop.set()
        self.thread.join(10)
