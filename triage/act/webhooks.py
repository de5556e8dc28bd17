"""Signed lead webhooks: POSTing the queued events to the CRMs' endpoints.

Every event (`triage.sales.leads.record_event`) is recorded in the transaction of the change it
reports, with one delivery row per endpoint that takes it (`triage.store.webhooks`). A delivery
walks the delivery queue's states, like a reply:

    queued ──▶ sending ──▶ sent        (2xx)
       ▲          ├──▶ queued          (429, 408, 5xx, no answer: jittered backoff, Retry-After)
       └──────────┤──▶ failed          (3xx — no redirect is followed —, other 4xx, or the last
                  │                     attempt of the `max_age_hours` window; the admin is
                  │                     alerted once per failure episode of the endpoint)
                  └──▶ failed + endpoint disabled   (410 Gone; the admin is alerted once)

Each attempt goes like this (checkpoint names in brackets, where the crash tests kill triage):
`sending` committed [webhook_claimed]; the POST and its answer [webhook_posted]; the outcome
committed [webhook_recorded]. Unlike a reply, a POST whose outcome is unknown (the process died
between claiming and recording) is simply sent again (`recover`): the body is signed with the same
`webhook-id`, the receiver's idempotency key, so a receiver that de-duplicates by it records each
event exactly once.

Signing follows the Standard Webhooks spec: `webhook-id`, `webhook-timestamp` (the attempt's,
seconds) and `webhook-signature`, `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under
each configured secret (several during a rotation), space-separated.

The SSRF guard resolves the endpoint's host once, refuses addresses that are not public (private,
link-local, loopback, reserved) unless `allow_private` — loopback is allowed when the url names
this machine itself —, and connects to the address it checked, so no second lookup can change
it in between. https certificates are verified (against `ca_file` when set).

Each endpoint has a thread of its own (`WebhookWorkers`), so a slow or dead receiver delays
neither the replies to prospects nor the other endpoints; one POST at a time per endpoint, each
bounded by the endpoint's `timeout`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from triage.core.backoff import delay
from triage.core.checkpoint import Checkpoint, no_checkpoint
from triage.core.errors import PermanentError, TransientError, TriageError
from triage.core.hosts import is_loopback, tls_context
from triage.core.settings import Settings, WebhookSettings
from triage.store import outbox as queue
from triage.store import webhooks as store
from triage.store.db import STORE_ERRORS, Database, Tx
from triage.store.outbox import Claim
from triage.store.webhooks import Delivery

log = logging.getLogger(__name__)

Outcome = Literal["sent", "retry", "failed", "gone", "refused", "taken"]
OUTCOMES: tuple[Outcome, ...] = ("sent", "retry", "failed", "gone", "refused", "taken")
RECOVERED = "triage stopped while posting: sent again (the receiver de-duplicates by webhook-id)"
# The bytes of an answer read (and thrown away) at most: a receiver cannot make us read forever.
MAX_ANSWER = 64 * 1024
USER_AGENT = "triage-webhooks/1"
# Statuses worth another attempt besides 5xx: the receiver asks us to wait, or timed out.
RETRY_STATUSES = frozenset({408, 425, 429})

Clock = Callable[[], datetime]
# Queue an alert to the administrators in the caller's transaction, under a slot that makes it
# once-only: (tx, slot, subject, lines).
Alert = Callable[[Tx, str, str, Sequence[str]], None]
OnOutcome = Callable[[str, Outcome], None]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WebhookRefused(PermanentError):
    """Raised when the SSRF guard refuses an endpoint's address; nothing was sent."""


class WebhookUnresolved(TransientError):
    """Raised when the endpoint's host name does not resolve right now (DNS down or the name
    gone): an attempt without an answer, retried like one."""


class WebhookError(TriageError):
    """Raised when a webhook command names an unknown endpoint or event, or asks what cannot
    be done (enable an endpoint that is not disabled). A user mistake."""


# --- signing -----------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret (the base64 after the prefix)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt: id, timestamp, one signature per secret, JSON."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def body_of(event: str, created: datetime, data: dict[str, Any]) -> bytes:
    """The JSON body: `type`, `timestamp` (the event's, ISO 8601 UTC) and `data`."""
    moment = created.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    document = {"type": event, "timestamp": moment, "data": data}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def delivery_body(d: Delivery, base_url: str) -> bytes:
    """The body of a stored delivery; its lead gets the link to its console page when
    `web.base_url` is set."""
    data = dict(d.data)
    lead = data.get("lead")
    if isinstance(lead, dict) and base_url and lead.get("id"):
        data["lead"] = {**lead, "url": f"{base_url}/leads/{lead['id']}"}
    return body_of(d.type, d.event_created_at, data)


# --- the SSRF guard and the POST ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one POST goes: the url's parts and the addresses checked for it (tried in order)."""

    https: bool
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        """The first address tried."""
        return self.addresses[0]


def _connect(target: Target, timeout: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers: never to any
    other, so no lookup after the check can change where the POST goes."""
    error: OSError | None = None
    for address in target.addresses:
        try:
            return socket.create_connection((address, target.port), timeout)
        except OSError as exc:
            error = exc
    assert error is not None  # a target has at least one address
    raise error


# IPv6 ranges that carry an IPv4 address a gateway or tunnel would reach: judged by that IPv4
# address (NAT64 of RFC 6052 and RFC 8215; 6to4 and Teredo by the ipaddress module).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# Global unicast IPv6: anything else (site-local fec0::/10, IPv4-compatible ::/96, ...) is
# refused whatever the ipaddress module thinks of it.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that `ip` wraps (mapped, NAT64, 6to4, Teredo's client), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of address `ip` is when it is not a public unicast one, else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            found = _refusal(inner)
            return None if found is None else f"{found} (inside {ip})"
    return _kind(ip)


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """`_refusal` of an address that wraps no other."""
    outside = isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST
    if outside and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
        return "private or reserved"
    if ip.is_unspecified or ip.is_multicast:
        return "unspecified or multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if not ip.is_global:
        return "private or reserved"
    return None


def resolve_target(endpoint: WebhookSettings) -> Target:
    """Resolve the endpoint's host once and check every address it has; raises WebhookRefused
    (naming the address and why) when one is not allowed, WebhookUnresolved when the name does
    not resolve."""
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    if not https and not endpoint.allow_http and not is_loopback(host):
        raise WebhookRefused(f"{endpoint.name}: http:// only to loopback (allow_http is off)")
    port = parts.port or (443 if https else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUnresolved(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookUnresolved(f"{host} has no address")
    for address in addresses:
        kind = _refusal(ipaddress.ip_address(address.partition("%")[0]))
        if kind is None or endpoint.allow_private:
            continue
        # The operator named this machine itself (127.0.0.1, ::1, localhost): no surprise.
        if kind == "loopback" and is_loopback(host):
            continue
        raise WebhookRefused(
            f"{endpoint.name}: {host} resolves to {address}, a {kind} address "
            "(set allow_private to allow it)"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(https, host, port, path, tuple(addresses))


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address (no second DNS lookup), Host header unchanged."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._target = target
        # The TCP socket as soon as it is connected (before any TLS): what `Poster` cuts.
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        self.sock = self.raw = _connect(self._target, self.timeout or 10.0)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The same over TLS: the certificate is verified for the url's host name."""

    def __init__(self, target: Target, timeout: float, context: Any) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._target = target
        self._tls = context
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        raw = self.raw = _connect(self._target, self.timeout or 10.0)
        try:
            # The TLS socket takes the descriptor over: it is `sock` before the handshake, so
            # that `Poster` can cut a handshake that never ends.
            self.sock = self._tls.wrap_socket(
                raw, server_hostname=self.host, do_handshake_on_connect=False
            )
            self.sock.do_handshake()
        except BaseException:
            raw.close()
            if self.sock is not None:
                self.sock.close()
            raise


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: the status (None: no answer) and Retry-After in seconds."""

    status: int | None
    retry_after: float | None = None
    error: str = ""


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks to wait (seconds, or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,10}", value, re.ASCII):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class Poster:
    """POSTs one body to one endpoint through the SSRF guard; `abort` ends a POST in flight
    from another thread (at shutdown)."""

    def __init__(self, endpoint: WebhookSettings, clock: Clock = _utcnow) -> None:
        self.endpoint = endpoint
        self._clock = clock
        self._lock = threading.Lock()
        self._current: http.client.HTTPConnection | None = None
        self._aborted = False

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body`; raises WebhookRefused when the guard refuses (nothing sent)."""
        try:
            target = resolve_target(self.endpoint)
        except WebhookUnresolved as exc:
            return Answer(None, error=str(exc))
        timeout = self.endpoint.timeout
        conn: http.client.HTTPConnection
        if target.https:
            context = tls_context(self.endpoint.ca_file, True)
            conn = _PinnedHTTPS(target, timeout, context)
        else:
            conn = _PinnedHTTP(target, timeout)
        with self._lock:
            if self._aborted:
                return Answer(None, error="stopping")
            self._current = conn
        # `timeout` bounds each socket operation; this bounds the whole attempt (a receiver
        # answering a byte at a time would hold it for ever): the connection is cut then.
        expired = threading.Event()
        timer = threading.Timer(timeout, self._cut, (conn, expired))
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            if self._stopping():  # stopped while connecting: nothing is sent
                return Answer(None, error="stopping")
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_ANSWER)
            if expired.is_set():
                # Cut mid-answer: whatever was parsed (a status line, say) is not an answer.
                return Answer(None, error=f"no answer from {target.host}: timed out")
            return Answer(
                response.status,
                retry_after(response.getheader("Retry-After"), self._clock()),
                f"HTTP {response.status} {response.reason}".strip(),
            )
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                what = "timed out"
            else:
                what = f"{type(exc).__name__}: {exc}"
            return Answer(None, error=f"no answer from {target.host}: {what}")
        finally:
            timer.cancel()
            with self._lock:
                self._current = None
            conn.close()

    def _stopping(self) -> bool:
        with self._lock:
            return self._aborted

    @staticmethod
    def _cut(conn: http.client.HTTPConnection, expired: threading.Event | None = None) -> None:
        """Shut the connection's socket down (TLS or not yet), ending what blocks on it."""
        if expired is not None:
            expired.set()
        sock = conn.sock or getattr(conn, "raw", None)
        if sock is not None:
            # The connection may be closing on its own meanwhile: nothing left to cut then.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        """End the POST in flight, if any (also during its TLS handshake), and refuse
        further ones."""
        with self._lock:
            self._aborted = True
            conn = self._current
        if conn is not None:
            self._cut(conn)


def ping(endpoint: WebhookSettings, msg_id: str, now: datetime | None = None) -> Answer:
    """Send a signed `ping` event to `endpoint` now, outside the queue (`triage webhooks test`)."""
    moment = now or _utcnow()
    body = body_of("ping", moment, {"endpoint": endpoint.name})
    headers = signed_headers(endpoint.secrets(), msg_id, int(moment.timestamp()), body)
    return Poster(endpoint).post(body, headers)


# --- one endpoint's sender ---------------------------------------------------------------------


def _no_alert(_tx: Tx, slot: str, subject: str, _lines: Sequence[str]) -> None:
    log.warning("no admin recipients for the alert %s: %s", slot, subject)


class WebhookSender:
    """Delivers one endpoint's queued events, one at a time, recording each step."""

    def __init__(
        self,
        db: Database,
        endpoint: WebhookSettings,
        *,
        base_url: str = "",
        clock: Clock = _utcnow,
        jitter: Callable[[], float] = random.random,
        checkpoint: Checkpoint = no_checkpoint,
        on_outcome: OnOutcome = lambda _name, _outcome: None,
        alert: Alert = _no_alert,
        poster: Poster | None = None,
    ) -> None:
        self.db = db
        self.endpoint = endpoint
        self.base_url = base_url
        self._clock = clock
        self._jitter = jitter
        self._checkpoint = checkpoint
        self._on_outcome = on_outcome
        self._alert = alert
        self.poster = poster or Poster(endpoint, clock)

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.endpoint.name

    def deliver_due(
        self, limit: int = 20, stop: threading.Event | None = None
    ) -> dict[int, Outcome]:
        """POST the endpoint's due deliveries, oldest first; returns id → outcome. Must not be
        called inside a transaction: each step commits on its own."""
        if self.db.in_transaction:
            raise RuntimeError("delivering commits each step; call it outside a transaction")
        outcomes: dict[int, Outcome] = {}
        for d in store.due(self.db.reads, self.name, self._clock(), limit):
            if stop is not None and stop.is_set():
                break
            outcome = self.deliver(d)
            outcomes[d.id] = outcome
            self._on_outcome(self.name, outcome)
            if outcome in ("gone", "refused"):
                break  # the rest would meet the same fate: next round
        return outcomes

    def deliver(self, d: Delivery) -> Outcome:
        """One attempt of one delivery (see the module).

        After the claim every record names this claim and is made whoever leads now (the
        store handle's guard is not asked): a lost lease must not leave the answer unrecorded.
        An unexpected error after the claim (a receiver's odd header, a bug) is recorded as a
        failed attempt, retried within the window like any other, never left in `sending`."""
        with self.db.transaction() as tx:
            moment = self._clock()  # after any wait for a connection: see `Delivery._send`
            by = None if self.db.guard is None else str(self.db.guard)
            mine = queue.claim(tx, store.TABLE, d.id, moment, d.attempts, by)
        if mine is None:
            return "taken"
        self._checkpoint("webhook_claimed")
        try:
            body = delivery_body(d, self.base_url)
            headers = signed_headers(
                self.endpoint.secrets(), d.event_id, int(moment.timestamp()), body
            )
            try:
                answer = self.poster.post(body, headers)
            except WebhookRefused as exc:
                self._give_up(d, mine, str(exc), None)
                log.error("webhook %s of %s refused: %s", d.event_id, self.name, exc)
                return "refused"
            self._checkpoint("webhook_posted")
            outcome = self._record(d, mine, answer)
        except Exception as exc:
            if isinstance(exc, STORE_ERRORS):
                raise  # the store is failing: the claim goes stale and is taken back
            log.exception("webhook %s to %s: unexpected error", d.event_id, self.name)
            return self._retry(d, mine, Answer(None, None, f"{type(exc).__name__}: {exc}"))
        self._checkpoint("webhook_recorded")
        return outcome

    def _record(self, d: Delivery, mine: Claim, answer: Answer) -> Outcome:
        status = answer.status
        what = f"{d.type} {d.event_id} to {self.name}"
        if status is not None and 200 <= status < 300:
            with self.db.transaction(guarded=False) as tx:
                recorded = queue.mark_sent(tx, store.TABLE, d.id, mine, self._clock(), None)
                store.set_status_code(tx, d.id, status)
                store.end_failing(tx, self.name)
            if not recorded:
                # Queued again meanwhile as a dead sender's (a stall longer than the stale-claim
                # limit): it goes out once more, and the receiver drops it by its webhook-id.
                log.warning("webhook %s delivered, but its row had moved on meanwhile", what)
            log.info("webhook %s delivered (%s)", what, answer.error)
            return "sent"
        if status == 410:
            self._gone(d, mine, answer)
            return "gone"
        if status is None or status >= 500 or status in RETRY_STATUSES:
            return self._retry(d, mine, answer)
        reason = answer.error
        if 300 <= status < 400:
            reason += " (redirects are not followed: configure the final url)"
        self._give_up(d, mine, reason, status)
        log.error("webhook %s failed: %s", what, reason)
        return "failed"

    def _retry(self, d: Delivery, mine: Claim, answer: Answer) -> Outcome:
        moment = self._clock()
        wait = delay(
            mine.attempts, self.endpoint.retry_initial, self.endpoint.retry_max, self._jitter
        )
        window = timedelta(hours=self.endpoint.max_age_hours)
        if answer.retry_after is not None:
            # Capped by the window: a receiver's huge value must not overflow the date.
            wait = max(wait, min(answer.retry_after, window.total_seconds() + 1))
        at = moment + timedelta(seconds=wait)
        start = max(d.event_created_at, d.queued_at or d.event_created_at)
        deadline = start + window
        if at > deadline:
            hours = f"{self.endpoint.max_age_hours:g}"
            reason = f"gave up after {mine.attempts} attempts over {hours} hours: {answer.error}"
            self._give_up(d, mine, reason, answer.status)
            log.error("webhook %s to %s failed: %s", d.event_id, self.name, reason)
            return "failed"
        with self.db.transaction(guarded=False) as tx:
            queue.retry_later(tx, store.TABLE, d.id, mine.attempts, answer.error, at, mine)
            store.set_status_code(tx, d.id, answer.status)
        log.warning(
            "webhook %s to %s not delivered (%s); next try in %.0f s",
            d.event_id,
            self.name,
            answer.error,
            wait,
        )
        return "retry"

    def _give_up(self, d: Delivery, mine: Claim, reason: str, status: int | None) -> None:
        """Failed for good, with the first such failure of an episode alerting the admin, in
        one transaction (so the alert is queued exactly once)."""
        moment = self._clock()
        with self.db.transaction(guarded=False) as tx:
            if not queue.fail(tx, store.TABLE, d.id, mine.attempts, reason, mine):
                return
            store.set_status_code(tx, d.id, status)
            if store.start_failing(tx, self.name, moment):
                since = store.failing_since(tx, self.name) or ""
                self._alert(
                    tx,
                    f"webhook-failed-{self.name}-{since}",
                    f"triage: webhook {self.name} is failing",
                    [
                        f"A {d.type} event ({d.event_id}) could not be delivered to the webhook"
                        f" endpoint {self.name} ({self.endpoint.url}):",
                        "",
                        f"    {reason}",
                        "",
                        "Further failures are not alerted until a delivery succeeds again.",
                        "See `triage webhooks list`; once the receiver works, send the event",
                        f"again with `triage webhooks replay {d.event_id}`.",
                    ],
                )

    def _gone(self, d: Delivery, mine: Claim, answer: Answer) -> None:
        moment = self._clock()
        reason = f"{answer.error}: the receiver says the endpoint is gone"
        with self.db.transaction(guarded=False) as tx:
            queue.fail(tx, store.TABLE, d.id, mine.attempts, reason, mine)
            store.set_status_code(tx, d.id, answer.status)
            failed = store.disable_endpoint(tx, self.name, reason, moment)
            if failed is None:
                return  # disabled already: alerted then
            self._alert(
                tx,
                f"webhook-gone-{self.name}-{moment.isoformat()}",
                f"triage: webhook {self.name} disabled (410 Gone)",
                [
                    f"The webhook endpoint {self.name} ({self.endpoint.url}) answered"
                    " 410 Gone: triage stopped sending to it.",
                    f"{len(failed) + 1} queued event(s) were not delivered.",
                    "",
                    "When the receiver is back (or the url changed), run",
                    "",
                    f"    triage webhooks enable {self.name}",
                    "",
                    "and `triage webhooks replay EVENT_ID` for events it should still get.",
                ],
            )
        log.error("webhook endpoint %s disabled: %s", self.name, reason)


def recover(db: Database, claimed_before: datetime, now: datetime) -> list[int]:
    """Deliveries left `sending` by a process that died (claimed before `claimed_before`) are
    queued again, due `now`: the receiver de-duplicates the second POST by its webhook-id."""
    if not store.any_sending(db.reads, claimed_before):
        return []
    with db.transaction() as tx:
        found = store.requeue_sending(tx, claimed_before, RECOVERED, now)
    if found:
        log.warning(
            "%d webhook deliveries were being posted when triage stopped; they are sent again",
            len(found),
        )
    return found


def stale_claims(settings: Settings, now: datetime) -> datetime:
    """Claims older than this belong to a dead sender: a live one waits one timeout at most."""
    longest = max((w.timeout for w in settings.webhooks), default=0.0)
    return now - timedelta(seconds=2 * longest + 60)


def sync_endpoints(settings: Settings, db: Database, now: datetime | None = None) -> None:
    """Record the configured endpoints in the store: changes made by any process queue their
    events for exactly these (see `triage.store.webhooks`)."""
    with db.transaction() as tx:
        store.sync_endpoints(
            tx, [(w.name, w.url, w.events) for w in settings.webhooks], now or _utcnow()
        )


# --- what a person does (`triage webhooks …`) ----------------------------------------------------


def configured_endpoint(settings: Settings, name: str) -> WebhookSettings:
    """The `[[webhooks]]` entry called `name`; WebhookError listing the names otherwise."""
    for endpoint in settings.webhooks:
        if endpoint.name == name:
            return endpoint
    names = ", ".join(w.name for w in settings.webhooks) or "none is configured"
    raise WebhookError(f"no webhook {name!r} ({names})")


def replay(
    db: Database, settings: Settings, event_id: str, who: str, now: datetime | None = None
) -> list[str]:
    """Queue the event `event_id` again, with its id, for every configured endpoint that takes
    its type (and is not disabled); returns those endpoints. The receiver de-duplicates by the
    id: a replay reaches a receiver that lost the event, not one that recorded it."""
    event_id = event_id.strip()
    configured = {w.name for w in settings.webhooks}
    with db.transaction() as tx:
        kind = store.event_type(tx, event_id)
        if not kind:
            raise WebhookError(f"no webhook event {event_id!r} (see triage webhooks list)")
        endpoints = [n for n in store.subscribers(tx, kind) if n in configured]
        if not endpoints:
            raise WebhookError(f"no enabled endpoint takes {kind} events")
        return store.replay(tx, event_id, endpoints, who, now or _utcnow())


def enable(db: Database, settings: Settings, name: str) -> None:
    """Enable an endpoint a 410 disabled; WebhookError when it is unknown or not disabled."""
    configured_endpoint(settings, name)
    with db.transaction() as tx:
        if not store.enable_endpoint(tx, name):
            raise WebhookError(f"webhook {name} is not disabled")


# --- the threads -------------------------------------------------------------------------------

# How often an idle endpoint's thread looks for due deliveries.
POLL = 0.5


class WebhookWorkers:
    """One thread per configured endpoint, each with its own store connection: a slow or
    dead receiver holds up nobody else. `stop` ends a POST in flight and joins the threads."""

    def __init__(
        self,
        settings: Settings,
        open_db: Callable[[], Database],
        *,
        checkpoint: Checkpoint = no_checkpoint,
        on_outcome: OnOutcome = lambda _name, _outcome: None,
        alert: Alert = _no_alert,
        poll: float = POLL,
    ) -> None:
        self.settings = settings
        self._open_db = open_db
        self._checkpoint = checkpoint
        self._on_outcome = on_outcome
        self._alert = alert
        self._poll = poll
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._posters: list[Poster] = []

    def start(self) -> None:
        """Start one thread per endpoint (none without `[[webhooks]]`)."""
        for endpoint in self.settings.webhooks:
            poster = Poster(endpoint)
            self._posters.append(poster)
            thread = threading.Thread(
                target=self._run, args=(endpoint, poster), name=f"webhook-{endpoint.name}"
            )
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every thread; a POST in flight is cut (and sent again later)."""
        self._stop.set()
        for poster in self._posters:
            poster.abort()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("%s did not stop within %.0f s", thread.name, timeout)

    def _run(self, endpoint: WebhookSettings, poster: Poster) -> None:
        seen: set[str] = set()
        db: Database | None = None
        while not self._stop.is_set():
            try:
                if db is None:
                    db = self._open_db()
                sender = WebhookSender(
                    db,
                    endpoint,
                    base_url=self.settings.web.base_url,
                    checkpoint=self._checkpoint,
                    on_outcome=self._on_outcome,
                    alert=self._alert,
                    poster=poster,
                )
                while not self._stop.is_set():
                    recover(db, stale_claims(self.settings, _utcnow()), _utcnow())
                    if not sender.deliver_due(stop=self._stop):
                        self._stop.wait(self._poll)
            except Exception as exc:
                # A store outage or a bug must neither end the thread silently nor spin.
                text = f"{type(exc).__name__}: {exc}"
                log.error(
                    "webhook %s: delivering failed, retrying: %s",
                    endpoint.name,
                    text,
                    exc_info=text not in seen,
                )
                if len(seen) > 100:
                    seen.clear()
                seen.add(text)
                self._stop.wait(min(30.0, 1.0 + self._poll * 10))
        if db is not None:
            db.close()


__all__ = [
    "OUTCOMES",
    "Answer",
    "Poster",
    "WebhookError",
    "WebhookRefused",
    "WebhookSender",
    "WebhookUnresolved",
    "WebhookWorkers",
    "body_of",
    "configured_endpoint",
    "delivery_body",
    "enable",
    "ping",
    "recover",
    "replay",
    "resolve_target",
    "sign",
    "signed_headers",
    "stale_claims",
    "sync_endpoints",
]
