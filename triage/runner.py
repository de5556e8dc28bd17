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
from types import FrameType

from triage.compose import message_id_domain
from triage.daemon import Control, Daemon, SyncFactory, run_once
from triage.errors import ConfigError
from triage.mailbox import ImapMailbox
from triage.service import Service, Shared
from triage.settings import ImapAccount, Settings
from triage.sync import Checkpoint, SyncResult

log = logging.getLogger(__name__)


def _no_checkpoint(_name: str) -> None:
    """The default: no fault injection."""


def sync_factory(shared: Shared) -> SyncFactory:
    """A factory handing each thread its own Service (SQLite connections are per thread)."""
    local = threading.local()

    def make(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        service: Service | None = getattr(local, "service", None)
        if service is None:
            service = local.service = Service(shared)
        return service.folder_syncs(account, mailbox)

    return make


def prepare(settings: Settings, checkpoint: Checkpoint = _no_checkpoint) -> Shared:
    """Load the model and templates, and settle replies a crash left half-sent."""
    message_id_domain(settings.replies)  # a bad domain is a config error now, not per batch
    shared = Shared(settings, checkpoint)
    shared.model.get()  # fail now, with one line, if the model is unusable
    service = Service(shared)
    try:
        service.outbox.recover()  # logs its own warning for replies left half-sent
    finally:
        service.close()
    return shared


def run_once_command(settings: Settings, checkpoint: Checkpoint = _no_checkpoint) -> bool:
    """Sync every account once; True when every account succeeded."""
    shared = prepare(settings, checkpoint)
    errors = run_once(settings, sync_factory(shared))
    return all(e is None for e in errors.values())


def run_forever(
    settings: Settings,
    reload_settings: Callable[[], Settings],
    checkpoint: Checkpoint = _no_checkpoint,
    control: Control | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads settings and restarts the workers."""
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
    while True:
        shared = prepare(settings, checkpoint)
        Daemon(settings, sync_factory(shared), control=control).run()
        if not reload.is_set():
            return
        reload.clear()
        control.stop.clear()
        log.info("SIGHUP: reloading settings")
        try:
            settings = reload_settings()
        except ConfigError as exc:
            log.error("new settings are invalid, keeping the old ones: %s", exc)
