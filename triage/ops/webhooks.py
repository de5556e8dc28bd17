"""The service's webhook senders: `triage.act.webhooks` wired to the daemon's store, metrics
and administrators' alerts.

`Housekeeping` makes one `WebhookService` when the service (re)starts: the configured endpoints
are recorded in the store (every process queues its events for exactly those), deliveries a
crash left `sending` are taken back, and one thread per endpoint sends — never the main
thread's periodic work, so a slow receiver delays no reply to a prospect.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from triage.act import webhooks
from triage.ops.alerts import queue_admin_alert
from triage.ops.service import Shared
from triage.store import webhooks as store
from triage.store.db import Database, Guard, Tx


class WebhookService:
    """The webhook threads of one run of the service (see the module)."""

    def __init__(
        self, shared: Shared, db: Database, *, alone: bool = True, guard: Guard | None = None
    ) -> None:
        """Record the endpoints with `db` and take back what a crash left `sending`: every such
        delivery when this process is `alone` on the store (no other one sends webhooks), else
        only claims older than `webhooks.stale_claims` (which the threads also do as they go).
        `guard` (fleet mode: the leader lease's) guards the senders' store handles, so that an
        instance that no longer leads claims no delivery."""
        self.shared = shared
        settings = shared.settings
        now = datetime.now(UTC)
        webhooks.sync_endpoints(settings, db, now)
        webhooks.recover(db, now if alone else webhooks.stale_claims(settings, now), now)

        def open_db() -> Database:
            handle = Database(settings.store)
            handle.guard = guard
            return handle

        self.workers = webhooks.WebhookWorkers(
            settings,
            open_db,
            checkpoint=shared.checkpoint,
            on_outcome=shared.metrics.webhook_delivery,
            alert=self._alert,
        )

    def _alert(self, tx: Tx, slot: str, subject: str, lines: Sequence[str]) -> None:
        queue_admin_alert(tx, slot, subject, lines, self.shared.settings, datetime.now(UTC))

    def start(self) -> None:
        """Start one thread per configured endpoint."""
        self.workers.start()

    def stop(self) -> None:
        """Stop the threads (a POST in flight is cut, and sent again later)."""
        self.workers.stop()

    def publish_metrics(self, db: Database) -> None:
        """The deliveries in the store by endpoint and state, for `/metrics`."""
        hooks = self.shared.settings.webhooks
        if hooks:
            self.shared.metrics.set_webhook_queue(
                store.queue_counts(db.reads), [w.name for w in hooks]
            )


__all__ = ["WebhookService"]
