"""The service loop: one worker thread per IMAP account, plus periodic work in the main thread
(`Housekeeping`).

Each account worker owns its IMAP connection and its own database handle (connections are pooled
per process). It syncs its folders, then waits for news (IDLE when offered, else polling): blocked
in poll() on its IMAP socket and on the control's pipe, which is readable while a stop request or
a wake-up is pending, so an idle account costs no CPU between passes and a stop is noticed at
once. Any network or server error closes the connection and waits a jittered exponential
backoff before reconnecting; the error is logged once per backoff step. One account failing never
stalls another: an account whose passes keep failing is parked (retried at the longest backoff)
while the others go on; only a store that keeps failing, or a dead worker, stops the service.
Signal handlers only set the stop event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from triage.act.outbox import recover, stale_claims
from triage.core.backoff import Backoff
from triage.core.errors import (
    AuthenticationError,
    ConfigError,
    LeaseLost,
    ReauthorisationNeeded,
    StoreConflict,
    StoreUnavailable,
    TransientError,
)
from triage.core.settings import ImapAccount, Settings
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.oauth.tokens import TokenProvider
from triage.ingest.sync import SyncResult
from triage.ops.alerts import prepare_admin_alerts
from triage.ops.fleet import LEADER, LeaseGuard, LeaseManager
from triage.ops.service import Service, Shared
from triage.ops.webhooks import WebhookService
from triage.sales.digest import run_digest_if_due
from triage.sales.leads import apply_retention
from triage.store.db import STORE_ERRORS
from triage.store.leases import Fence
from triage.store.outbox import TABLES

log = logging.getLogger(__name__)


# The slice in which a waiting worker checks for a stop request or a wake-up when the control's
# events cannot ring its pipe (plain `threading.Event`s put there by a caller); otherwise a wait
# blocks until news, a stop or a wake-up, or its deadline.
SLICE = 1.0
# How often an account waiting for re-authorisation looks again: the provider asks the token
# endpoint only when a new grant was stored (`triage auth login`), so this costs nothing.
REAUTH_CHECK = 5.0
# An OAuth2 session is renewed (logged in again with a fresh token) this long before its
# token expires, or after three quarters of a short token's life, whichever comes first.
SESSION_RENEW = 60.0


@dataclass
class AccountStatus:
    """What the health endpoint and metrics report about one account."""

    name: str
    connected: bool = False
    last_sync: float | None = None
    last_error: str | None = None
    handled: int = 0
    # Passes in a row that failed with an error that is not a server's or the network's.
    failed_passes: int = 0
    # Set while the account's passes keep failing (`max_failed_passes` in a row, not the
    # store's fault): the account is parked, retried at the longest backoff while the other
    # accounts go on; the text is the last error. Cleared by the next pass that succeeds.
    parked: str | None = None
    # Why the account's worker stopped for good (the store kept failing, or the worker died):
    # the process then exits non-zero.
    fatal: str | None = None
    # Set while the account's OAuth2 grant no longer works: "<provider>: <error code>". The
    # account waits for `triage auth login`; cleared by the next pass that succeeds.
    needs_reauth: str | None = None


class Doorbell:
    """A pipe that is readable while any event ringing it is set: a worker blocked in poll() on
    its IMAP socket and this pipe learns of a stop request or a wake-up at once, without waking
    up every second to look. Two file descriptors per process, whatever the number of accounts.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Held while an event changes and the pipe follows it. Reentrant: a signal handler (run
        # in the main thread) may set an event while the main thread itself holds it.
        self.lock = threading.RLock()
        self._events: list[threading.Event] = []

    def fileno(self) -> int:
        """The descriptor to poll for reading."""
        return self._read

    def watch(self, event: threading.Event) -> None:
        """Count `event` among those that keep the pipe readable while set."""
        self._events.append(event)

    def ring(self) -> None:
        """Make the pipe readable (an event was set)."""
        with self.lock, contextlib.suppress(BlockingIOError):
            if self._write >= 0:  # closed: nobody waits on it any more
                os.write(self._write, b"!")  # a full pipe is readable already

    def settle(self) -> None:
        """Empty the pipe unless one of the events is still set (an event was cleared)."""
        with self.lock:
            if self._read < 0:
                return
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 4096):
                    pass
            if any(event.is_set() for event in self._events):
                self.ring()

    def close(self) -> None:
        """Close the pipe (a fleet worker's own doorbell, once its thread has ended); once only:
        a descriptor closed twice may by then be another file's (a socket, the store)."""
        with self.lock:
            fds, (self._read, self._write) = (self._read, self._write), (-1, -1)
            self._events.clear()  # no cycle left for the collector: nothing to close later
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds until the pipe is readable; True when it is."""
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        return bool(poller.poll(max(timeout, 0.0) * 1000))

    def __del__(self) -> None:
        for fd in (getattr(self, "_read", -1), getattr(self, "_write", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class RingingEvent(threading.Event):
    """A `threading.Event` that also rings a `Doorbell` while set, and counts how often it was
    set (`generation`): a worker that saw the pipe ring knows a wake-up happened even when
    another worker cleared the event before it looked."""

    def __init__(self, doorbell: Doorbell) -> None:
        super().__init__()
        self.doorbell = doorbell
        self.generation = 0
        doorbell.watch(self)

    def set(self) -> None:
        # Under the doorbell's lock, as `clear`: the pipe is readable exactly while an event
        # is set, whatever the order in which threads set and clear.
        with self.doorbell.lock:
            self.generation += 1
            super().set()
            self.doorbell.ring()

    def clear(self) -> None:
        with self.doorbell.lock:
            super().clear()
            self.doorbell.settle()


@dataclass
class Control:
    """Shared flags between signal handlers, the main thread and the workers. `stop` and `wake`
    ring `doorbell`, on which waiting workers block."""

    doorbell: Doorbell = field(default_factory=Doorbell)
    stop: threading.Event = field(init=False)
    wake: threading.Event = field(init=False)
    # Set with `stop` when an account's worker gave up: the service exits non-zero.
    failed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.stop = RingingEvent(self.doorbell)
        self.wake = RingingEvent(self.doorbell)


SyncFactory = Callable[[ImapAccount, ImapMailbox], Sequence[Callable[[], SyncResult]]]


class AccountWorker:
    """Keeps one account's folders in sync until told to stop."""

    def __init__(
        self,
        account: ImapAccount,
        make_syncs: SyncFactory,
        control: Control,
        backoff: Backoff,
        status: AccountStatus,
        on_result: Callable[[SyncResult], None] = lambda _r: None,
        on_error: Callable[[str], None] = lambda _account: None,
        max_failed_passes: int = 10,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.account = account
        self.tokens = tokens
        self.make_syncs = make_syncs
        self.control = control
        self.backoff = backoff
        self.status = status
        self.on_result = on_result
        self.on_error = on_error
        self.max_failed_passes = max_failed_passes
        # UIDNEXT of each folder when its last pass began (see `_wait`).
        self.uidnext: dict[str, int] = {}

    def sync_once(self, mailbox: ImapMailbox) -> None:
        """Connect if needed and sync every folder once."""
        if mailbox.connected and self._renew_due(mailbox) <= 0:
            # Log in again with a fresh token before the session's one expires (servers such
            # as Exchange Online end a session whose token has expired).
            log.info("%s: renewing the session before its access token expires", self.account.name)
            mailbox.close()
            # With a new token: the cached one may be the expiring one (a refresh_margin
            # shorter than the renewal lead), and the session would be renewed again at once.
            mailbox.connect(fresh_token=True)
        if not mailbox.connected:
            mailbox.connect()
            self.status.connected = True
            log.info("%s: connected", self.account.name)
        for sync in self.make_syncs(self.account, mailbox):
            result = sync()
            if result.folder:
                self.uidnext[result.folder] = result.uidnext
            self.status.handled += sum(result.decided.values())
            self.on_result(result)
        self.status.last_sync = time.time()
        self.status.last_error = None
        self.status.failed_passes = 0
        if self.status.needs_reauth is not None:
            log.warning("%s: signed in again; re-authorisation done", self.account.name)
            self.status.needs_reauth = None
        if self.status.parked is not None:
            log.warning("%s: a pass succeeded again; the account is back", self.account.name)
        self.status.parked = None
        self.backoff.reset()

    def run(self) -> None:
        """Sync, wait for news, repeat; reconnect with backoff after errors. Never raises: an
        account whose worker gives up (the store keeps failing) or dies is reported in its
        status and stops the service (`control.failed`), for the supervisor to restart it; an
        account whose passes keep failing otherwise is parked (see `_pass_failed`)."""
        try:
            self._run()
        except BaseException as exc:
            # Whatever it was, the thread must not end silently while the others carry on.
            self._give_up(f"the account's worker died: {type(exc).__name__}: {exc}")
            log.critical("%s: worker died", self.account.name, exc_info=True)
            if not isinstance(exc, Exception):
                raise

    def _renew_due(self, mailbox: ImapMailbox) -> float:
        """Seconds until this connection must be renewed for its token (inf: never)."""
        left = mailbox.session_expires_in()
        if left is None:
            return float("inf")
        lifetime = mailbox.session_lifetime or left
        return left - min(SESSION_RENEW, lifetime / 4)

    def _run(self) -> None:
        mailbox = ImapMailbox(self.account, self.tokens)
        try:
            while not self.control.stop.is_set():
                try:
                    self.sync_once(mailbox)
                    self._wait(mailbox)
                except ReauthorisationNeeded as exc:
                    self._reauth_needed(mailbox, exc)
                except LeaseLost as exc:
                    # Fleet mode: another instance serves the account now (this one was
                    # paused, or cut off from the database, past the lease's end). Nothing
                    # was recorded; the new holder redoes the message in hand.
                    log.warning("%s: %s; no longer serving it here", self.account.name, exc)
                    return
                except (StoreUnavailable, StoreConflict) as exc:
                    # The database server is restarting or failing over, or a transaction lost
                    # a race: like a mail server's outage, retried with backoff for as long as
                    # it lasts, never counted towards giving up.
                    self._failed(mailbox, str(exc))
                    delay = self.backoff.next_delay()
                    log.warning("%s: %s; retrying in %.0f s", self.account.name, exc, delay)
                    self.control.stop.wait(delay)
                except TransientError as exc:
                    self._failed(mailbox, str(exc))
                    level = (
                        logging.ERROR if isinstance(exc, AuthenticationError) else logging.WARNING
                    )
                    delay = self.backoff.next_delay()
                    log.log(level, "%s; retrying in %.0f s", exc, delay)
                    self.control.stop.wait(delay)
                except Exception as exc:  # noqa: BLE001 - parked or given up in `_pass_failed`
                    # Not a server's hiccup (those are TransientError): a full disk under the
                    # store, say, or a bug. Retried with backoff like one.
                    if not self._pass_failed(mailbox, exc):
                        return
        finally:
            mailbox.close()
            self.status.connected = False

    def _pass_failed(self, mailbox: ImapMailbox, exc: Exception) -> bool:
        """A pass failed with an error that is not a server's or the network's; False when the
        worker gives up.

        After `max_failed_passes` in a row: a store error (the store is shared by every
        account, so none can be served) stops the service, for the supervisor to restart it;
        any other error parks this account, retried at the longest backoff while the other
        accounts go on.
        """
        text = f"{type(exc).__name__}: {exc}"
        self._failed(mailbox, text)
        self.status.failed_passes += 1
        n = self.status.failed_passes
        if n < self.max_failed_passes:
            delay = self.backoff.next_delay()
            log.error(
                "%s: pass failed (%d of %d): %s; retrying in %.0f s",
                self.account.name,
                n,
                self.max_failed_passes,
                text,
                delay,
                exc_info=True,
            )
            self.control.stop.wait(delay)
            return True
        if isinstance(exc, STORE_ERRORS):
            log.critical(
                "%s: %d passes in a row failed, giving up: %s",
                self.account.name,
                n,
                text,
                exc_info=True,
            )
            self._give_up(f"{n} passes in a row failed: {text}")
            return False
        if self.status.parked is None:
            log.critical(
                "%s: %d passes in a row failed, account parked (retried every %.0f s, the"
                " other accounts go on): %s",
                self.account.name,
                n,
                self.backoff.maximum,
                text,
                exc_info=True,
            )
        else:
            log.error("%s: parked account's pass failed again: %s", self.account.name, text)
        self.status.parked = f"{n} passes in a row failed: {text}"
        self.control.stop.wait(self.backoff.maximum)
        return True

    def _reauth_needed(self, mailbox: ImapMailbox, exc: ReauthorisationNeeded) -> None:
        """The account's grant no longer works: report it (once) and look again shortly; the
        other accounts go on. A new grant stored by `triage auth login` ends the wait."""
        provider = self.tokens.provider if self.tokens is not None else "oauth2"
        reason = f"{provider}: {exc.code}"
        if self.status.needs_reauth != reason:
            log.error(
                "%s: the OAuth2 grant no longer works (%s); run `triage auth login %s`",
                self.account.name,
                exc,
                self.account.name,
            )
        self._failed(mailbox, str(exc))
        self.status.needs_reauth = reason
        self.control.stop.wait(REAUTH_CHECK)

    def _failed(self, mailbox: ImapMailbox, text: str) -> None:
        """A pass failed: drop the connection (it may be in any state) and report why."""
        mailbox.close()
        self.on_error(self.account.name)
        self.status.connected = False
        self.status.last_error = text

    def _give_up(self, reason: str) -> None:
        """Stop the service: this account cannot be served by this process any more."""
        self.status.fatal = reason
        self.status.connected = False
        self.control.failed.set()
        self.control.stop.set()

    def _wait(self, mailbox: ImapMailbox) -> None:
        """Wait for new mail, a wake-up or a stop request."""
        acc = self.account
        use_idle = acc.idle and mailbox.has_idle
        # Even with IDLE, sync at the poll interval: other folders, queued replies to file and
        # retries get their turn, and IDLE is renewed long before the server's 30-minute limit
        # (and an OAuth2 session before its token expires).
        wait = min(acc.poll_interval, acc.idle_renew, max(self._renew_due(mailbox), 0.0))
        deadline = time.monotonic() + wait
        woken = self._wake_generation()
        if use_idle:
            # IDLE watches the last folder synced; select the first so it is the watched one.
            info = mailbox.select(acc.folders[0])
            if info.uidnext > self.uidnext.get(info.name, info.uidnext):
                # Mail arrived while the pass was busy: SELECT counts it as already there, so
                # IDLE would never announce it and it would wait for the poll interval.
                return
            self._idle(mailbox, deadline, woken)
        else:
            self._sleep(deadline, woken)
        self._clear_wake()

    def _sleep(self, deadline: float, woken: int) -> None:
        """Polling: block until the deadline, a stop request or a wake-up."""
        bell = self._doorbell()
        while not self._interrupted(woken) and (left := deadline - time.monotonic()) > 0:
            if bell is None:
                self.control.stop.wait(min(left, SLICE))
            elif bell.wait(left) and not self._interrupted(woken):
                bell.settle()  # never spin on a ring that no event explains

    def _idle(self, mailbox: ImapMailbox, deadline: float, woken: int) -> None:
        """One IDLE command stays open until the server announces news, the deadline, a stop
        request or a wake-up (a reply to file): blocked on the socket and the doorbell."""
        bell = self._doorbell()
        mailbox.idle_start()
        try:
            while not self._interrupted(woken) and (left := deadline - time.monotonic()) > 0:
                if bell is None:
                    if mailbox.idle_poll(min(left, SLICE)):
                        break
                elif mailbox.idle_poll(left, interrupt=bell.fileno()):
                    break
                elif not self._interrupted(woken) and bell.wait(0):
                    bell.settle()  # never spin on a ring that no event explains
        finally:
            if self.control.stop.is_set():
                mailbox.drop()  # the service stops: no DONE and LOGOUT round trips
            else:
                mailbox.idle_stop()

    def _clear_wake(self) -> None:
        """The wake-up was seen. Cleared only when set: clearing takes the event's lock, and a
        thousand workers leaving their wait at once (a stop) would queue on it one GIL switch
        interval at a time, for seconds."""
        if self.control.wake.is_set():
            self.control.wake.clear()

    def _doorbell(self) -> Doorbell | None:
        """The pipe that `stop` and `wake` both ring, or None when they are plain events."""
        stop, wake = self.control.stop, self.control.wake
        if (
            isinstance(stop, RingingEvent)
            and isinstance(wake, RingingEvent)
            and stop.doorbell is wake.doorbell
        ):
            return stop.doorbell
        return None

    def _wake_generation(self) -> int:
        return getattr(self.control.wake, "generation", 0)

    def _interrupted(self, woken: int) -> bool:
        """A stop request, or a wake-up since the wait began (`woken`: the generation then)."""
        wake = self.control.wake
        return self.control.stop.is_set() or wake.is_set() or self._wake_generation() != woken


@dataclass
class _Running:
    """An account worker of fleet mode: its thread, its own control (stop flag and doorbell),
    the lease generation it records under, and its status."""

    thread: threading.Thread
    control: Control
    generation: int
    status: AccountStatus


class Daemon:
    """Starts the account workers and runs periodic work until stopped.

    Alone on its store it serves every account. In fleet mode (`leases` given: a PostgreSQL
    store shared with other instances) a thread of its own renews the leases every
    `leases.renew_every` seconds and serves exactly the accounts whose lease this instance holds:
    a worker per lease generation, whose store handle is fenced by it (`fenced_syncs`), started
    when a lease is gained and stopped when it is lost or given to another instance.
    """

    def __init__(
        self,
        settings: Settings,
        make_syncs: SyncFactory,
        periodic: Callable[[], None] = lambda: None,
        control: Control | None = None,
        period: float = 5.0,
        on_result: Callable[[SyncResult], None] = lambda _r: None,
        on_error: Callable[[str], None] = lambda _account: None,
        tokens: Mapping[str, TokenProvider] | None = None,
        leases: LeaseManager | None = None,
        fenced_syncs: Callable[[LeaseGuard], SyncFactory] | None = None,
        on_leases: Callable[[Mapping[str, float]], None] = lambda _ages: None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        # OAuth2 token providers by account name (accounts that sign in with a password have none).
        self.tokens = dict(tokens or {})
        self.make_syncs = make_syncs
        self.periodic = periodic
        self.control = control or Control()
        self.period = period
        self.on_result = on_result
        self.on_error = on_error
        self.leases = leases
        self.fenced_syncs = fenced_syncs
        # Told {lease: seconds since renewed} after every lease tick (the metrics' gauges).
        self.on_leases = on_leases
        # Called once every worker and the periodic work have stopped, before the leases are
        # released: what still works under the leader lease in threads of its own stops here.
        self.on_stop = on_stop
        self._accounts = {a.name: a for a in settings.imap.all_accounts()}
        if leases is None:
            self.statuses = {name: AccountStatus(name) for name in self._accounts}
        else:
            # Replaced, never changed in place: the health endpoint iterates it from its thread.
            self.statuses = {}
            self._lease_status = AccountStatus("leases")
        self._running: dict[str, _Running] = {}
        # Workers told to stop (their lease lost, or being handed over) until their thread ends.
        self._retired: list[tuple[str, threading.Thread, Control]] = []
        if leases is not None:
            leases.idle = self._idle

    def sender_statuses(self) -> list[AccountStatus]:
        """The SMTP login's own OAuth2 credential (`[smtp.oauth2]`), as a status line for
        `/healthz` while it needs re-authorisation; nothing otherwise (a credential shared
        with an account shows on that account's line)."""
        provider = self.tokens.get("smtp")
        if provider is None or any(provider is self.tokens.get(n) for n in self.statuses):
            return []
        error = provider.needs_reauth
        if error is None:
            return []
        status = AccountStatus(provider.name, connected=True, last_sync=time.time())
        status.needs_reauth = f"{provider.provider}: {error.code}"
        return [status]

    def health_statuses(self) -> list[AccountStatus]:
        """What `/healthz` judges: the accounts served here, in fleet mode the lease renewal
        (healthy while it succeeds: an instance holding no account is a healthy standby), and
        the SMTP login's own credential while it needs re-authorisation."""
        fleet = [self._lease_status] if self.leases is not None else []
        return [*fleet, *self.statuses.values(), *self.sender_statuses()]

    def _worker(
        self, account: ImapAccount, control: Control, status: AccountStatus, syncs: SyncFactory
    ) -> threading.Thread:
        worker = AccountWorker(
            account,
            syncs,
            control,
            Backoff(self.settings.daemon.backoff_initial, self.settings.daemon.backoff_max),
            status,
            self.on_result,
            self.on_error,
            self.settings.daemon.max_failed_passes,
            self.tokens.get(account.name),
        )
        return threading.Thread(target=worker.run, name=f"account-{account.name}")

    def run(self) -> None:
        """Run until `control.stop` is set; returns after every worker has finished."""
        threads = []
        if self.leases is None:
            for account in self._accounts.values():
                thread = self._worker(
                    account, self.control, self.statuses[account.name], self.make_syncs
                )
                thread.start()
                threads.append(thread)
            log.info("triage running: %d account(s)", len(threads))
        else:
            lease_thread = threading.Thread(target=self._hold_leases, name="leases")
            lease_thread.start()
            threads.append(lease_thread)
            log.info(
                "triage running in fleet mode as %s: %d account(s) shared by the instances",
                self.leases.instance_id,
                len(self._accounts),
            )
        seen: set[str] = set()
        try:
            while not self.control.stop.wait(self.period):
                if self.control.failed.is_set():
                    break  # a fleet worker gave up (its own stop flag is set, not ours)
                try:
                    self.periodic()
                except TransientError as exc:
                    log.warning("periodic work failed, will retry: %s", exc)
                except Exception as exc:
                    # A bug or an unexpected library error in the digest, alerts or sending:
                    # the account threads keep reading and deciding mail meanwhile. The first
                    # time with its traceback, then one line each round.
                    text = f"{type(exc).__name__}: {exc}"
                    log.error(
                        "periodic work failed, will retry: %s", text, exc_info=text not in seen
                    )
                    if len(seen) >= 100:
                        seen.clear()  # bounded: error texts may carry ids
                    seen.add(text)
        finally:
            self.control.stop.set()
            for thread in threads:
                thread.join()
            self._finish()
            log.info("triage stopped")

    def _finish(self) -> None:
        """After every worker and the periodic work stopped: stop what runs beside them
        (`on_stop`), then give the leases up."""
        try:
            self.on_stop()
        except Exception:
            log.exception("stopping the periodic work's threads failed")
        if self.leases is not None:
            # Only now: the account workers have stopped (the lease thread joined them), and so
            # has the periodic work under the leader lease, webhook senders included.
            released = self.leases.release_all()
            if released:
                log.info("leases released: %s", ", ".join(released))

    def _idle(self, name: str) -> bool:
        """Whether no worker of this instance runs for account `name` (the lease manager hands
        a lease over only then)."""
        return name not in self._running and not any(
            n == name and t.is_alive() for n, t, _c in self._retired
        )

    # -- fleet mode ------------------------------------------------------------------------------

    def _hold_leases(self) -> None:
        """The lease thread: tick, serve what is held, until stopped; then stop every worker
        and give the leases up at once, so that the other instances take them over."""
        leases = self.leases
        assert leases is not None
        try:
            while not self.control.stop.is_set():
                started = time.monotonic()
                try:
                    self._lease_round(leases)
                except Exception as exc:  # the next round tries again
                    self._lease_status.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("lease renewal failed")
                spent = time.monotonic() - started
                self.control.stop.wait(max(leases.renew_every - spent, 0.0))
        except BaseException as exc:
            # Without this thread no lease is renewed and no account served, while the process
            # would look alive: stop it, for the supervisor to restart it.
            self._lease_status.fatal = f"the lease thread died: {type(exc).__name__}: {exc}"
            log.critical("the lease thread died", exc_info=True)
            self.control.failed.set()
            self.control.stop.set()
            raise
        finally:
            self._serve({})
            for _name, thread, control in self._retired:
                thread.join()
                control.doorbell.close()
            self._retired = []

    def _lease_round(self, leases: LeaseManager) -> None:
        """One tick, then the workers to match, then the metrics."""
        changes = leases.tick()
        if changes.error is None:
            self._lease_status.connected = True
            self._lease_status.last_sync = time.time()
            self._lease_status.last_error = None
        else:
            self._lease_status.last_error = changes.error
        self._serve(leases.current())
        now = time.monotonic()
        self.on_leases({h.name: now - h.renewed_at for h in leases.held()})

    def _serve(self, held: Mapping[str, int]) -> None:
        """Run exactly one worker per account lease in `held` ({name: generation}): stop those
        whose lease is gone or changed generation, start the missing ones (and any whose
        thread ended: it saw its lease lost before this instance did, or gave up)."""
        wanted = {n: g for n, g in held.items() if n != LEADER and n in self._accounts}
        for name, running in list(self._running.items()):
            if running.status.fatal:
                continue  # it gave up: the process is stopping (`control.failed`)
            if wanted.get(name) != running.generation or not running.thread.is_alive():
                running.control.stop.set()
                self._retired.append((name, running.thread, running.control))
                del self._running[name]
        ended = [(n, t, c) for n, t, c in self._retired if not t.is_alive()]
        for _name, _thread, control in ended:
            control.doorbell.close()  # a worker's pipe lives as long as its thread
        self._retired = [(n, t, c) for n, t, c in self._retired if t.is_alive()]
        assert self.fenced_syncs is not None and self.leases is not None
        for name, generation in wanted.items():
            if name in self._running or self.control.stop.is_set():
                continue
            if any(n == name for n, _t, _c in self._retired):
                # Its previous worker (a hand-over called off, or a generation lost and won
                # again) is still ending its pass: one worker per account, the next round.
                continue
            fence = Fence(name, self.leases.instance_id, generation)
            guard = LeaseGuard(fence, self.leases)
            # Its own stop (and doorbell: a stopped worker's stop stays set, and a shared pipe
            # would stay readable for the others), the service's `failed`.
            control = Control(failed=self.control.failed)
            status = AccountStatus(name)
            thread = self._worker(self._accounts[name], control, status, self.fenced_syncs(guard))
            self._running[name] = _Running(thread, control, generation, status)
            thread.start()
            log.info("%s: serving it here (lease generation %d)", name, generation)
        self.statuses = {name: r.status for name, r in sorted(self._running.items())}


def run_once(
    settings: Settings,
    make_syncs: SyncFactory,
    tokens: Mapping[str, TokenProvider] | None = None,
) -> dict[str, str | None]:
    """Sync every account once; returns each account's error (None when it succeeded)."""
    errors: dict[str, str | None] = {}
    for account in settings.imap.all_accounts():
        provider = (tokens or {}).get(account.name)
        mailbox = ImapMailbox(account, provider)
        worker = AccountWorker(
            account,
            make_syncs,
            Control(),
            Backoff(),
            AccountStatus(account.name),
            tokens=provider,
        )
        try:
            worker.sync_once(mailbox)
            errors[account.name] = None
        except (TransientError, ReauthorisationNeeded) as exc:
            log.error("%s", exc)
            errors[account.name] = str(exc)
        except Exception as exc:
            log.exception("%s: pass failed", account.name)
            errors[account.name] = f"{type(exc).__name__}: {exc}"
        finally:
            mailbox.close()
    return errors


RETENTION_PERIOD = 24 * 3600.0


class Housekeeping:
    """The main thread's periodic work: replies due for a retry, the digest and alerts when
    due, daily retention, store-derived metrics.

    In fleet mode (`leases` given) only the leader does it, under the leader lease's fence, and
    also marks `uncertain` what a dead instance left in `sending` (`stale_claims`); every
    instance refreshes its metrics."""

    def __init__(self, shared: Shared, leases: LeaseManager | None = None) -> None:
        self.shared = shared
        self.leases = leases
        self.service = Service(shared)
        # Fleet mode: the Service fenced by the leader lease, with that lease's generation.
        self._leading: tuple[int, Service] | None = None
        self._next_retention = 0.0
        # Webhooks go out in threads of their own, never inline in `run`: a slow receiver
        # must not delay replies to prospects. In a fleet only the leader runs them (one POST
        # at a time per endpoint across the fleet), from when it leads until it no longer does.
        self.webhooks: WebhookService | None = None
        if leases is None:
            self.webhooks = WebhookService(shared, self.service.db)
            self.webhooks.start()

    def run(self) -> None:
        """One round; called every few seconds by the daemon."""
        service = self._leader_service()
        if service is not None:
            try:
                self._periodic(service)
            except LeaseLost as exc:
                log.warning("periodic work stopped, another instance leads now: %s", exc)
        self.shared.metrics.refresh_from_store(self.service.db)
        if self.webhooks is not None:
            self.webhooks.publish_metrics(self.service.db)
        self._publish_reauth()

    def _leader_service(self) -> Service | None:
        """The Service to do the periodic work with: the plain one alone on the store; in
        fleet mode one fenced by the leader lease while this instance leads, else None."""
        if self.leases is None:
            return self.service
        guard = self.leases.guard(LEADER)
        if self._leading is not None and (guard is None or guard.generation != self._leading[0]):
            self._stop_leading()
        if guard is None:
            return None
        if self._leading is None:
            service = Service(self.shared, guard)
            try:
                # The reply window's keys follow the settings; in a fleet the leader rewrites
                # them (alone on the store, `prepare` does at start-up).
                service.outbox.rekey()
                # Deliveries other instances are sending now are theirs: only stale claims are
                # taken back (`alone=False`). The senders' store handles carry the leader's
                # guard: an instance that no longer leads claims no delivery.
                webhooks = WebhookService(self.shared, service.db, alone=False, guard=guard)
            except BaseException:
                # Not leading yet: the next round tries all of it again.
                service.close()
                raise
            webhooks.start()
            self.webhooks = webhooks
            self._leading = (guard.generation, service)
            log.info("leading the fleet's periodic work (generation %d)", guard.generation)
        return self._leading[1]

    def stop_threads(self) -> None:
        """Stop the webhook senders (at shutdown, before the leases are released)."""
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None

    def _stop_leading(self) -> None:
        """Leave the leader's work: its webhook threads and its fenced store handle."""
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
            self.shared.metrics.clear_webhook_queue()
        if self._leading is not None:
            self._leading[1].close()
            self._leading = None

    def _periodic(self, service: Service) -> None:
        settings = self.shared.settings
        if self.leases is not None:
            # A sender holds `sending` for one SMTP answer at most: older claims are a dead
            # (or long paused) instance's, maybe delivered, never resent automatically.
            recover(service.db, stale_claims(settings.smtp, datetime.now(UTC)), TABLES)
        try:
            prepare_admin_alerts(settings, service.db, datetime.now(UTC))
        except ConfigError as exc:
            log.error("cannot prepare an administrators' alert: %s", exc)
        service.deliver()
        run_digest_if_due(settings, service.db, connector=self.shared.smtp_connect)
        now = time.monotonic()
        if now >= self._next_retention:
            apply_retention(settings.leads, service.db)
            self._next_retention = now + RETENTION_PERIOD

    def _publish_reauth(self) -> None:
        tokens = self.shared.tokens
        for name, provider in tokens.items():
            if any(provider is other for n, other in tokens.items() if n not in {name, "smtp"}):
                continue  # SMTP signs in with an account's grant: that account's gauge says it
            waiting = provider.needs_reauth is not None
            self.shared.metrics.set_needs_reauth(name, waiting)

    def close(self) -> None:
        """Stop the webhook threads and release the store connections."""
        self._stop_leading()
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
        self.service.close()


__all__ = [
    "AccountWorker",
    "Control",
    "Daemon",
    "Doorbell",
    "Housekeeping",
    "RingingEvent",
    "run_once",
]
