"""Prometheus metrics of the daemon, in a registry of their own.

`Metrics` owns a dedicated `CollectorRegistry` (never prometheus-client's global one), so two
daemons in one test process, or a test and the CLI, never share counters, and importing this module
registers nothing. The daemon creates one `Metrics`, calls its methods as work happens, calls
`refresh_from_store` from its periodic work, and hands it to the health server, which serves
`generate_latest(metrics.registry)` at `/metrics`.

Every metric name starts with `triage_`. Label values are bounded: decisions are the four
`triage.core.models.DECISIONS`, labels the three `LABELS`, drift windows `7d` and `28d`,
suppression reasons are rule names (see `rule_name`), accounts and folders come from the settings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

if TYPE_CHECKING:
    from triage.store.db import Database

# Per-message handling time (fetch → done): parsing and classifying take milliseconds, a reply
# sent over SMTP and filed over IMAP takes up to seconds; beyond a minute something is wrong.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The label drift gauges read 5 weeks of the ledger; they move over days, so the periodic work
# (every few seconds) reads them again at most this often.
DRIFT_REFRESH_SECONDS = 300.0

_RULE_CHARS = re.compile(r"[^a-z0-9_-]+")
_MAX_RULE_LEN = 40


def rule_name(reason: str) -> str:
    """The rule a suppression reason names: the text before the first `:`, as a label value.

    Reasons are written by `triage.decide.guards` and `triage.decide.dispose`
    as `rule: explanation`, with rule
    names like `auto-submitted` or `hourly-cap`. The value is lower-cased, other characters become
    `-`, and it is cut at 40 characters, so free text without a colon stays a tame label value.
    """
    head = reason.partition(":")[0].strip().lower()
    name = _RULE_CHARS.sub("-", head).strip("-_")[:_MAX_RULE_LEN]
    return name or "unknown"


def _age_seconds(iso_timestamp: str | None, now: float) -> float:
    """Seconds since an ISO 8601 timestamp of the store; 0 when there is none."""
    if not iso_timestamp:
        return 0.0
    try:
        moment = datetime.fromisoformat(iso_timestamp).timestamp()
    except ValueError:
        # A malformed row must not break every scrape; the gauge just reads "none".
        return 0.0
    return max(0.0, now - moment)


class Metrics:
    """The daemon's counters, gauges and histogram; thread-safe (prometheus-client locks)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create every metric in `registry` (a new, private one by default)."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_handled = Counter(
            "triage_messages_handled",
            "Messages handled to the end, by decision.",
            ["decision"],
            registry=r,
        )
        self.replies_sent = Counter(
            "triage_replies_sent", "Replies the SMTP server accepted.", registry=r
        )
        self.replies_capped = Counter(
            "triage_replies_capped",
            "Replies held back by a cap: deferred by the hourly or per-domain cap (`hourly`, "
            "`domain`) or dropped after waiting too long (`expired`).",
            ["cap"],
            registry=r,
        )
        self.replies_suppressed = Counter(
            "triage_replies_suppressed",
            "Replies not sent, by the rule that prevented them (a message may count for several).",
            ["reason"],
            registry=r,
        )
        self.quarantined_messages = Counter(
            "triage_quarantined",
            "Messages given up on after repeated failures and moved to quarantine.",
            registry=r,
        )
        self.review_queue = Gauge(
            "triage_review_queue_size",
            "Messages waiting for a person to decide (decision review, not yet reviewed).",
            registry=r,
        )
        self.oldest_hot_lead = Gauge(
            "triage_oldest_unclaimed_hot_lead_age_seconds",
            "Age of the oldest hot lead nobody has claimed yet; 0 when there is none.",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "triage_outbox_depth", "Replies queued for sending, not yet sent.", registry=r
        )
        self.last_sync = Gauge(
            "triage_last_sync_timestamp_seconds",
            "Unix time of the last successful sync of a folder.",
            ["account", "folder"],
            registry=r,
        )
        self.oauth2_needs_reauth = Gauge(
            "triage_oauth2_needs_reauth",
            "1 while an OAuth2 credential's grant no longer works and waits for"
            " `triage auth login`, else 0.",
            ["credential"],
            registry=r,
        )
        self.imap_errors = Counter(
            "triage_imap_errors", "IMAP connection or command failures.", ["account"], registry=r
        )
        # One SMTP server serves the whole deployment, so the counter carries no account label.
        self.smtp_errors = Counter(
            "triage_smtp_errors", "SMTP connection or sending failures.", registry=r
        )
        # Endpoints come from `[[webhooks]]`; outcomes are `triage.act.webhooks.OUTCOMES`.
        self.webhook_deliveries = Counter(
            "triage_webhook_deliveries",
            "Webhook delivery attempts by endpoint and outcome: sent (2xx), retry (429, 5xx, no"
            " answer), failed (for good), gone (410: endpoint disabled), refused (SSRF guard),"
            " taken (another sender had it).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.webhook_queue = Gauge(
            "triage_webhook_queue",
            "Webhook deliveries in the store by endpoint and state (queued, sending, sent,"
            " failed).",
            ["endpoint", "state"],
            registry=r,
        )
        self.latency = Histogram(
            "triage_handling_seconds",
            "Time from fetching a message to marking it done.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model = Info("triage_model", "The classifier model in use.", registry=r)
        self.label_messages = Gauge(
            "triage_label_messages",
            "Messages the classifier decided (review included, backfill not), by label, in the "
            "last 7 days (window 7d) or the 4 weeks before (28d).",
            ["label", "window"],
            registry=r,
        )
        self.label_share = Gauge(
            "triage_label_share",
            "Share (0-1) of the window's decided messages that got this label; 0 when none.",
            ["label", "window"],
            registry=r,
        )
        self.label_confidence = Gauge(
            "triage_label_confidence_mean",
            "Mean confidence of the window's decided messages with this label; NaN when none.",
            ["label", "window"],
            registry=r,
        )
        self.leases_held = Gauge(
            "triage_fleet_leases_held",
            "Leases this instance holds (fleet mode): its accounts, plus the leader lease.",
            registry=r,
        )
        self.lease_age = Gauge(
            "triage_fleet_lease_age_seconds",
            "Seconds since this instance last renewed each lease it holds (fleet mode).",
            ["lease"],
            registry=r,
        )
        self._drift_due = float("-inf")
        # The labelled child of a one-label counter, by metric and label value: `labels()` takes
        # a lock and checks its arguments on each call, several times per message in a backlog.
        self._children: dict[tuple[int, str], Any] = {}

    def _child(self, metric: Counter, value: str) -> Any:
        """`metric.labels(value)`, remembered (a child never changes once made)."""
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    # -- called by the daemon as work happens ----------------------------------------------------

    def observe_result(
        self,
        decision: str,
        *,
        replied: bool,
        reasons: Sequence[str] = (),
        seconds: float | None = None,
    ) -> None:
        """Count one handled message: its decision and, when no reply went out, each distinct
        rule among `reasons`; observe its handling time when `seconds` is given."""
        self._child(self.messages_handled, decision).inc()
        if not replied:
            for rule in sorted({rule_name(r) for r in reasons}):
                self._child(self.replies_suppressed, rule).inc()
        if seconds is not None:
            self.latency.observe(max(0.0, seconds))

    def observe_latency(self, seconds: float, count: int = 1) -> None:
        """Observe the handling time of a batch of `count` messages as `count` equal shares."""
        if count <= 0:
            return
        share = max(0.0, seconds) / count
        for _ in range(count):
            self.latency.observe(share)

    def reply_sent(self, count: int = 1) -> None:
        """Count replies the SMTP server accepted (the outbox's `deliver_due` result)."""
        if count > 0:
            self.replies_sent.inc(count)

    def reply_capped(self, cap: str) -> None:
        """Count one reply a cap deferred (`hourly`, `domain`) or dropped (`expired`)."""
        self.replies_capped.labels(cap=cap).inc()

    def quarantined(self, count: int = 1) -> None:
        """Count messages moved to quarantine."""
        if count > 0:
            self.quarantined_messages.inc(count)

    def imap_error(self, account: str) -> None:
        """Count one IMAP failure (connect, login or command) of `account`."""
        self.imap_errors.labels(account=account).inc()

    def smtp_error(self) -> None:
        """Count one SMTP failure (connect, login or a refused/broken send)."""
        self.smtp_errors.inc()

    def webhook_delivery(self, endpoint: str, outcome: str) -> None:
        """Count one webhook delivery attempt's outcome."""
        self.webhook_deliveries.labels(endpoint=endpoint, outcome=outcome).inc()

    def set_webhook_queue(
        self, counts: dict[tuple[str, str], int], endpoints: Sequence[str]
    ) -> None:
        """The webhook deliveries by (endpoint, state) of the configured `endpoints`."""
        for endpoint in endpoints:
            for state in ("queued", "sending", "sent", "failed"):
                value = counts.get((endpoint, state), 0)
                self.webhook_queue.labels(endpoint=endpoint, state=state).set(value)

    def clear_webhook_queue(self) -> None:
        """Drop the webhook queue's figures (an instance of a fleet that no longer leads: the
        leader publishes them, and two instances' figures would add up to twice the queue)."""
        self.webhook_queue.clear()

    def set_sync(self, account: str, folder: str, ts: float | None = None) -> None:
        """Record a successful sync of `account`/`folder` at unix time `ts` (default: now)."""
        self.last_sync.labels(account=account, folder=folder).set(time.time() if ts is None else ts)

    def set_needs_reauth(self, credential: str, waiting: bool) -> None:
        """Whether OAuth2 credential `credential` waits for a person to sign in again."""
        self.oauth2_needs_reauth.labels(credential=credential).set(1 if waiting else 0)

    def set_leases(self, renewed_ago: Mapping[str, float]) -> None:
        """Publish the leases held now with the seconds since each was renewed; leases no
        longer held disappear from the gauge."""
        self.leases_held.set(len(renewed_ago))
        self.lease_age.clear()
        for name, age in renewed_ago.items():
            self.lease_age.labels(lease=name).set(max(age, 0.0))

    def set_model_version(self, version: str) -> None:
        """Publish the version of the model in use (`Classifier.version`)."""
        self.model.info({"version": version})

    # -- read from the store ------------------------------------------------------------------

    def refresh_from_store(self, db: Database, now: float | None = None) -> None:
        """Set the review queue, oldest unclaimed hot lead and outbox depth from the database,
        and the label drift gauges when they are older than DRIFT_REFRESH_SECONDS.

        Indexed reads; call it from the thread that owns `db` (SQLite connections are
        per-thread), e.g. the daemon's periodic work, or from the health server's scrape hook
        with a connection of its own.
        """
        from triage.store.stats import queue_counts

        now = time.time() if now is None else now
        counts = queue_counts(db.reads)
        self.review_queue.set(counts.review)
        self.oldest_hot_lead.set(_age_seconds(counts.oldest_new_hot_lead, now))
        self.outbox_depth.set(counts.queued_replies)
        if now >= self._drift_due:
            self.refresh_drift(db, now)

    def refresh_drift(self, db: Database, now: float | None = None) -> None:
        """Set the per-label gauges of the last 7 days and the 4 weeks before from the database."""
        from triage.store.drift import label_windows

        now = time.time() if now is None else now
        found = label_windows(db.reads, datetime.fromtimestamp(now, UTC))
        for window in found.windows:
            for label, stats in window.labels.items():
                self.label_messages.labels(label=label, window=window.name).set(stats.count)
                self.label_share.labels(label=label, window=window.name).set(stats.share)
                mean = stats.confidence_mean
                self.label_confidence.labels(label=label, window=window.name).set(
                    float("nan") if mean is None else mean
                )
        self._drift_due = now + DRIFT_REFRESH_SECONDS

    # -- exposition ------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (what `/metrics` serves)."""
        return generate_latest(self.registry)
