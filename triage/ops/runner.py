"""Running the service: `once` for cron and tests, `forever` for systemd.

Signal handlers only set events; the main thread notices them within a second. SIGTERM and SIGINT
finish the message in hand, leave IDLE, close connections and return. SIGHUP reloads settings
(templates and the model reload by themselves when their files change).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType

from triage.act.compose import message_id_domain
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import ConfigError, StoreInUseError
from triage.core.settings import Settings
from triage.ops.daemon import Control, Daemon, Housekeeping, run_once
from triage.ops.fleet import LeaseManager, fleet_status, new_instance_id
from triage.ops.health import start_from_settings
from triage.ops.limits import check_limits
from triage.ops.logs import redact_settings_secrets
from triage.ops.metrics import Metrics
from triage.ops.service import Service, Shared, sync_factory
from triage.sales.digest import check_settings as check_digest_settings
from triage.store.db import Database
from triage.store.lock import exclusive

log = logging.getLogger(__name__)


def warn_unverified_certificates(settings: Settings) -> None:
    """A WARNING per connection whose TLS certificate is not checked (`verify_certificates =
    false`): anyone on the path can then read the password and the mail."""
    for account in settings.imap.all_accounts():
        if not account.verify_certificates and account.security != "plain":
            log.warning(
                "imap account %s: verify_certificates = false, the certificate of %s is not "
                "checked; set ca_file to the server's CA instead",
                account.name,
                account.host,
            )
    smtp = settings.smtp
    if not smtp.verify_certificates and smtp.security != "plain":
        log.warning(
            "smtp: verify_certificates = false, the certificate of %s is not checked; set "
            "smtp.ca_file to the server's CA instead",
            smtp.host,
        )


def prepare(
    settings: Settings,
    checkpoint: Checkpoint = no_checkpoint,
    metrics: Metrics | None = None,
    *,
    fleet: bool = False,
) -> Shared:
    """Load the model and templates, and settle replies a crash left half-sent (alone on the
    store; in a `fleet` other instances may be sending now, and the leader settles only stale
    claims, see `Housekeeping`)."""
    warn_unverified_certificates(settings)
    check_limits(
        len(settings.imap.all_accounts()),
        settings.ingest.workers,
        settings.store.pool_size,
        fleet=fleet,
    )
    # Mistakes that would otherwise surface per batch or per digest are config errors now.
    message_id_domain(settings.replies)
    check_digest_settings(settings)
    shared = Shared(settings, checkpoint, metrics)
    shared.model.get()  # fail now, with one line, if the model is unusable
    service = Service(shared)
    try:
        if not fleet:
            # In a fleet others may be sending right now: the leader settles stale claims and
            # rewrites the keys (`Housekeeping`).
            service.outbox.recover()  # logs its own warning for replies left half-sent
            service.outbox.rekey()  # the window recognises mailboxes by the current settings
    finally:
        service.close()
    # Forked here, before any account thread exists, sharing the loaded model.
    shared.start_workers()
    return shared


def run_once_command(settings: Settings, checkpoint: Checkpoint = no_checkpoint) -> bool:
    """Sync every account once; True when every account succeeded.

    Raises `StoreInUseError` before doing anything when another process holds the store.
    """
    with exclusive(settings.store):
        if settings.store.is_postgresql:
            _refuse_beside_a_fleet(settings)
        shared = prepare(settings, checkpoint)
        try:
            errors = run_once(settings, sync_factory(shared), shared.tokens)
        finally:
            shared.close()
    return all(e is None for e in errors.values())


def run_forever(
    settings: Settings,
    reload_settings: Callable[[], Settings],
    checkpoint: Checkpoint = no_checkpoint,
    control: Control | None = None,
) -> bool:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads settings and restarts the workers.

    Returns False when an account's worker gave up (the store kept failing, or the worker
    died): the caller exits non-zero, so systemd restarts the service. An account whose passes
    keep failing for another reason is parked instead (`AccountWorker`): the others go on. The
    metrics and the health endpoint live across reloads, so the port stays bound, and so does
    the store's lock (`StoreInUseError` at start when another process holds it).

    On PostgreSQL it runs in fleet mode: several instances share the database and its
    accounts by leases (`LeaseManager`), and hold the store's lock together.
    """
    with exclusive(settings.store, fleet=settings.store.is_postgresql):
        return _run_forever(settings, reload_settings, checkpoint, control)


def _run_forever(
    settings: Settings,
    reload_settings: Callable[[], Settings],
    checkpoint: Checkpoint,
    control: Control | None,
) -> bool:
    control = control or Control()
    reload = threading.Event()

    def on_stop(_signo: int, _frame: FrameType | None) -> None:
        control.stop.set()

    def on_hup(_signo: int, _frame: FrameType | None) -> None:
        reload.set()
        control.stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    metrics = Metrics()
    current: list[Daemon] = []
    health = start_from_settings(
        settings.daemon,
        lambda: current[-1].health_statuses() if current else [],
        metrics,
    )
    fleet = settings.store.is_postgresql
    try:
        while True:
            leases = _lease_manager(settings) if fleet else None
            shared = prepare(settings, checkpoint, metrics, fleet=fleet)
            housekeeping = Housekeeping(shared, leases)
            daemon = Daemon(
                settings,
                sync_factory(shared),
                periodic=housekeeping.run,
                control=control,
                on_result=lambda r: metrics.quarantined(r.quarantined) if r.quarantined else None,
                on_error=metrics.imap_error,
                tokens=shared.tokens,
                leases=leases,
                fenced_syncs=partial(sync_factory, shared),
                on_leases=metrics.set_leases,
                on_stop=housekeeping.stop_threads,
            )
            current.append(daemon)
            try:
                daemon.run()
            finally:
                housekeeping.close()
                shared.close()
            if control.failed.is_set():
                failed = [s for s in daemon.statuses.values() if s.fatal]
                for status in failed:
                    log.critical("stopping: account %s: %s", status.name, status.fatal)
                return False
            if not reload.is_set():
                return True
            reload.clear()
            control.stop.clear()
            log.info("SIGHUP: reloading settings")
            try:
                settings = _keep_store(settings, reload_settings())
                redact_settings_secrets(settings)
            except ConfigError as exc:
                log.error("new settings are invalid, keeping the old ones: %s", exc)
    finally:
        if health is not None:
            health.close()


def _refuse_beside_a_fleet(settings: Settings) -> None:
    """`triage once` serves every account without leases: refuse while a fleet instance is
    live. The store lock says so too, but a database restart ends the instances' lock sessions
    (they go on under their leases), so their heartbeats are asked as well."""
    db = Database(settings.store)
    try:
        status = fleet_status(db, settings.fleet.lease_time)
    finally:
        db.close()
    live = [i.instance.id for i in status.instances if i.state == "live"]
    if live:
        raise StoreInUseError(
            f"the store {settings.store.describe()} is served by {len(live)} triage run "
            f"instance(s) ({', '.join(live)}); `triage once` works alone"
        )


def _lease_manager(settings: Settings) -> LeaseManager:
    """This instance's leases on the fleet's database (a new instance id per start or reload:
    the previous one released its leases and shows as stopped)."""
    return LeaseManager(
        lambda: Database(settings.store),
        new_instance_id(),
        [a.name for a in settings.imap.all_accounts()],
        renew_every=settings.fleet.renew_every,
        ttl=settings.fleet.lease_time,
    )


def _keep_store(old: Settings, new: Settings) -> Settings:
    """`new`, but on the store this process has locked (its file, or its server's database by
    URL): another store needs a restart."""
    if new.store.describe() == old.store.describe():
        return new
    log.warning(
        "the store changed to %s; it takes effect at the next start, %s stays in use",
        new.store.describe(),
        old.store.describe(),
    )
    return new.model_copy(update={"store": old.store})
