"""Webhook delivery against a receiver on 127.0.0.1 that verifies every request with the
reference `standardwebhooks` package: retries keep the webhook-id, 2xx ends them, 410 disables
the endpoint and alerts once, 3xx and other 4xx fail without following anything, Retry-After is
honoured, the SSRF guard refuses what it must and connects to the address it checked, and a slow
receiver holds up no other endpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.test_leads import JANE, Store
from tests.test_webhooks_store import hook_settings
from tests.webhook_receiver import Receiver, new_secret, running, secret_file, self_signed
from triage.act import webhooks
from triage.act.webhooks import (
    WebhookRefused,
    WebhookSender,
    WebhookWorkers,
    resolve_target,
    sign,
    signed_headers,
    sync_endpoints,
)
from triage.core.settings import Settings, WebhookSettings
from triage.ops.alerts import queue_admin_alert
from triage.sales.leads import claim, record_event
from triage.store import webhooks as store
from triage.store.db import Database, Tx

pytestmark = pytest.mark.timeout(120)

FAST = {"retry_initial": 0.01, "retry_max": 0.05}


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    with running(Receiver(secret)) as r:
        yield r


def configured(tmp_path: Path, secret: str, hooks: list[dict[str, Any]], **extra: Any) -> Settings:
    """Settings whose webhooks all sign with `secret`; admin alerts to admin@."""
    path = secret_file(tmp_path, secret, "receiver.secret")
    values = [{"secret_file": str(path), **h} for h in hooks]
    return hook_settings(
        tmp_path, values, daemon={"admin_recipients": ["admin@example.test"]}, **extra
    )


class Setup:
    """A store with synced endpoints, a hot lead, and senders that alert into the queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings)
        self.db = self.store.db
        sync_endpoints(settings, self.db)
        _row, self.lead_id = self.store.inquiry(JANE)
        self.outcomes: list[tuple[str, str]] = []

    def event(self, kind: str = "lead.updated") -> str:
        with self.db.transaction() as c:
            event_id = record_event(c, kind, lead_id=self.lead_id)
        assert event_id is not None
        return event_id

    def alert(self, tx: Tx, slot: str, subject: str, lines: Sequence[str]) -> None:
        queue_admin_alert(tx, slot, subject, lines, self.settings, datetime.now(UTC))

    def sender(self, name: str, **kwargs: Any) -> WebhookSender:
        endpoint = next(w for w in self.settings.webhooks if w.name == name)
        return WebhookSender(
            self.db,
            endpoint,
            base_url=self.settings.web.base_url,
            alert=self.alert,
            on_outcome=kwargs.pop("on_outcome", lambda n, o: self.outcomes.append((n, o))),
            **kwargs,
        )

    def alerts(self) -> list[str]:
        rows = self.db.reads.execute(
            "SELECT slot FROM digests WHERE kind = 'admin' ORDER BY id"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def states(self, name: str) -> list[tuple[str, int]]:
        rows = self.db.reads.execute(
            "SELECT state, attempts FROM webhook_deliveries WHERE endpoint = ? ORDER BY id",
            (name,),
        ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]


@pytest.fixture
def setup_for(tmp_path: Path, secret: str) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(hooks: list[dict[str, Any]], **extra: Any) -> Setup:
        s = Setup(configured(tmp_path, secret, hooks, **extra))
        made.append(s)
        return s

    yield make
    for s in made:
        s.store.close()


def until(condition: Callable[[], bool], step: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        step()
        time.sleep(0.02)


# --- signing -----------------------------------------------------------------------------------


def test_signatures_verify_with_the_reference_package_for_each_rotated_secret() -> None:
    """Our signature is what `standardwebhooks` expects; with two secrets configured, a receiver
    that knows either one verifies the request."""
    old, new = new_secret(), new_secret()
    body = b'{"type":"lead.created","timestamp":"2026-12-05T10:00:00Z","data":{}}'
    now = int(time.time())
    headers = signed_headers([old, new], "msg_1", now, body)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["type"] == "lead.created"
    # And the other way round: the reference package's signature is ours.
    ref = Webhook(old).sign("msg_1", datetime.fromtimestamp(now, UTC), body.decode())
    assert ref == sign(old, "msg_1", now, body)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


# --- outcomes ----------------------------------------------------------------------------------


def test_three_500s_then_200_deliver_one_event_with_one_webhook_id(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """500, 500, 500, then 200: four verified attempts with the same webhook-id, one event
    recorded by the receiver, the delivery `sent` after 4 attempts, no alert."""
    s = setup_for(
        [{"name": "crm", "url": receiver.url, **FAST}], web={"base_url": "https://t.example"}
    )
    receiver.answers = [500, 500, 500]
    event_id = s.event("lead.updated")
    sender = s.sender("crm")
    until(lambda: s.states("crm") == [("sent", 4)], sender.deliver_due)
    [event] = receiver.wait_for(1)
    assert receiver.ids_of_attempts() == [event_id] * 4
    assert all(a.verified for a in receiver.attempts)
    assert event["type"] == "lead.updated"
    assert event["data"]["lead"]["email"] == "jane@doe.example"
    assert event["data"]["lead"]["url"] == f"https://t.example/leads/{s.lead_id}"
    assert event["timestamp"].endswith("Z")
    assert [o for _n, o in s.outcomes] == ["retry", "retry", "retry", "sent"]
    assert s.alerts() == []


def test_retry_after_is_honoured(setup_for: Callable[..., Setup], receiver: Receiver) -> None:
    """429 with Retry-After: 120 puts the next attempt two minutes out, not at the backoff's."""
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST}])
    receiver.answers = [(429, {"Retry-After": "120"})]
    s.event()
    before = datetime.now(UTC)
    assert list(s.sender("crm").deliver_due().values()) == ["retry"]
    [d] = store.recent(s.db.reads, ["queued"], 5)
    assert datetime.fromisoformat(d.next_attempt) >= before + timedelta(seconds=119)
    assert d.status_code == 429
    assert webhooks.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", before) == 0.0


def test_410_disables_the_endpoint_and_alerts_once(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """410 Gone: the delivery and the rest of the endpoint's queue fail, the endpoint takes no
    new events, and the admin gets exactly one alert; `enable` brings it back."""
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST}])
    receiver.default = 410
    s.event()
    s.event()
    assert list(s.sender("crm").deliver_due().values()) == ["gone"]
    assert s.states("crm") == [("failed", 1), ("failed", 0)]
    with s.db.transaction() as c:
        assert record_event(c, "lead.updated", lead_id=s.lead_id) is None
    assert s.sender("crm").deliver_due() == {}
    assert len(receiver.attempts) == 1
    [slot] = s.alerts()
    assert slot.startswith("webhook-gone-crm-")
    with s.db.transaction() as c:
        assert store.enable_endpoint(c, "crm")
    receiver.default = 200
    s.event()
    assert list(s.sender("crm").deliver_due().values()) == ["sent"]


def test_redirects_are_not_followed_and_failures_alert_once_per_episode(
    setup_for: Callable[..., Setup], receiver: Receiver, secret: str
) -> None:
    """A 302 fails the delivery (its Location is never asked), as does a 404; the admin is
    alerted for the first only; a success ends the episode, so the next failure alerts again."""
    with running(Receiver(secret)) as elsewhere:
        s = setup_for([{"name": "crm", "url": receiver.url, **FAST}])
        receiver.answers = [(302, {"Location": elsewhere.url}), 404, 200, 400]
        for _ in range(4):
            s.event()
        outcomes = s.sender("crm").deliver_due()
        assert list(outcomes.values()) == ["failed", "failed", "sent", "failed"]
        assert elsewhere.attempts == []
    [d] = [x for x in store.recent(s.db.reads, ["failed"], 5) if x.status_code == 302]
    assert "redirects are not followed" in (d.error or "")
    slots = s.alerts()
    assert len(slots) == 2 and all(x.startswith("webhook-failed-crm-") for x in slots)


def test_the_last_attempt_of_the_window_fails_and_alerts(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """An event older than `max_age_hours` whose attempt fails is given up, with an alert."""
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST, "max_age_hours": 1}])
    receiver.default = 503
    event_id = s.event()
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="microseconds")
    s.db.reads.execute("UPDATE webhook_events SET created_at = ?", (two_hours_ago,))
    s.db.reads.execute("UPDATE webhook_deliveries SET created_at = ?", (two_hours_ago,))
    assert list(s.sender("crm").deliver_due().values()) == ["failed"]
    [d] = store.recent(s.db.reads, ["failed"], 5)
    assert "gave up after 1 attempts over 1 hours" in (d.error or "")
    assert len(s.alerts()) == 1
    # A replay (what the alert suggests) starts the window afresh: failing, it is retried.
    with s.db.transaction() as tx:
        assert store.replay(tx, event_id, ["crm"], "admin", datetime.now(UTC)) == ["crm"]
    assert list(s.sender("crm").deliver_due().values()) == ["retry"]


def test_odd_retry_after_values_are_read_safely(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """Retry-After as a receiver may send it: a huge number waits no longer than the window
    (no overflow), a non-ASCII digit is ignored; each attempt is recorded, none left sending."""
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST, "max_age_hours": 1}])
    # An earlier event's retry may fall due within the loop (FAST backoff): it fails too.
    receiver.default = 503
    for value in ("99999999999999999999", "\u00b2", "Wed, 21 Oct 2099 07:28:00 GMT"):
        receiver.answers = [(503, {"Retry-After": value})]
        s.event()
        outcomes = list(s.sender("crm").deliver_due().values())
        assert outcomes and set(outcomes) <= {"retry", "failed"}, (value, outcomes)
    states = {state for state, _n in s.states("crm")}
    assert "sending" not in states


# --- the SSRF guard ----------------------------------------------------------------------------


def endpoint(tmp_path: Path, url: str, **flags: Any) -> WebhookSettings:
    path = secret_file(tmp_path, new_secret(), "guard.secret")
    return WebhookSettings(name="x", url=url, secret_file=path, **flags)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names → addresses for getaddrinfo (others resolve as usual); counts the lookups."""
    table: dict[str, list[str]] = {"lookups": []}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            table["lookups"].append(host)
            if not table[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            family = socket.AF_INET6 if ":" in table[host][0] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse
        # IPv6 that wraps an IPv4 address a gateway or tunnel reaches: NAT64, 6to4, and forms
        # outside global unicast (IPv4-compatible, site-local).
        ("64:ff9b::a00:5", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("::7f00:1", "private"),
        ("fec0::1", "private"),
    ],
)
def test_the_guard_refuses_addresses_that_are_not_public(
    tmp_path: Path, dns: dict[str, list[str]], address: str, kind: str
) -> None:
    """A name that resolves to a private, link-local or loopback address, also wrapped in
    IPv6, is refused; allow_private lets private ranges through."""
    dns["crm.example"] = [address]
    with pytest.raises(WebhookRefused, match=kind):
        resolve_target(endpoint(tmp_path, "https://crm.example/hook"))
    if kind != "unspecified":
        target = resolve_target(endpoint(tmp_path, "https://crm.example/hook", allow_private=True))
        assert target.address == address


def test_the_guard_refuses_a_name_with_any_bad_address_and_allows_loopback_by_name(
    tmp_path: Path, dns: dict[str, list[str]]
) -> None:
    """One private address among public ones is enough to refuse; a url naming this machine
    (127.0.0.1, localhost) is allowed, over http too; http elsewhere needs allow_http."""
    dns["crm.example"] = ["93.184.216.34", "10.0.0.1"]
    with pytest.raises(WebhookRefused, match=r"10\.0\.0\.1"):
        resolve_target(endpoint(tmp_path, "https://crm.example/hook"))
    dns["crm.example"] = ["93.184.216.34"]
    assert resolve_target(endpoint(tmp_path, "https://crm.example/h?a=1")).path == "/h?a=1"
    assert resolve_target(endpoint(tmp_path, "http://127.0.0.1:8080/h")).address == "127.0.0.1"
    with pytest.raises(ValueError, match="allow_http"):
        endpoint(tmp_path, "http://crm.example/hook")
    target = resolve_target(endpoint(tmp_path, "http://crm.example/hook", allow_http=True))
    assert (target.https, target.port) == (False, 80)


def test_the_connection_goes_to_the_address_checked(
    tmp_path: Path, dns: dict[str, list[str]], secret: str, receiver: Receiver
) -> None:
    """The host is looked up once; the POST goes to that address with the url's Host."""
    dns["crm.example"] = ["127.0.0.1"]
    path = secret_file(tmp_path, secret, "pinned.secret")
    hook = WebhookSettings(
        name="pinned",
        url=f"http://crm.example:{receiver.port}/hook",
        secret_file=path,
        allow_http=True,
        allow_private=True,
    )
    answer = webhooks.ping(hook, "msg_ping")
    assert answer.status == 200
    assert dns["lookups"] == ["crm.example"]
    [event] = receiver.wait_for(1)
    assert event["type"] == "ping" and event["data"] == {"endpoint": "pinned"}


# --- isolation ---------------------------------------------------------------------------------


def test_a_slow_receiver_holds_up_neither_other_endpoints_nor_stopping(
    setup_for: Callable[..., Setup], receiver: Receiver, secret: str
) -> None:
    """An endpoint whose receiver sleeps 60 s: the other endpoint's event arrives at once, the
    slow one's attempt ends at its timeout and is retried, and stopping does not wait."""
    with running(Receiver(secret, delay=60)) as slow:
        s = setup_for(
            [
                {"name": "slow", "url": slow.url, "timeout": 2, **FAST},
                {"name": "fast", "url": receiver.url, **FAST},
            ]
        )
        outcomes: list[tuple[str, str]] = []
        workers = WebhookWorkers(
            s.settings,
            lambda: Database(s.settings.store),
            on_outcome=lambda n, o: outcomes.append((n, o)),
            poll=0.05,
        )
        workers.start()
        try:
            started = time.monotonic()
            for _ in range(3):
                s.event()
            receiver.wait_for(3, timeout=5)
            assert time.monotonic() - started < 5
            until(lambda: ("slow", "retry") in outcomes, lambda: None, timeout=10)
        finally:
            stopping = time.monotonic()
            workers.stop()
            assert time.monotonic() - stopping < 5
    assert all(o == "sent" for n, o in outcomes if n == "fast")


def test_a_claim_in_the_cli_reaches_the_receiver_verified(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """The claim's lead.status_changed arrives signed, the lead as the CSV export has it."""
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST}])
    claim(s.db, s.lead_id, "sam")
    s.sender("crm").deliver_due()
    [event] = receiver.wait_for(1)
    assert event["type"] == "lead.status_changed"
    assert event["data"]["to"] == "claimed" and event["data"]["lead"]["owner"] == "sam"


def test_stopping_cuts_a_post_in_flight(tmp_path: Path, secret: str) -> None:
    """`Poster.abort` ends a POST waiting for a slow answer: the attempt has no answer."""
    with running(Receiver(secret, delay=60)) as slow:
        path = secret_file(tmp_path, secret, "abort.secret")
        poster = webhooks.Poster(
            WebhookSettings(name="s", url=slow.url, secret_file=path, timeout=60)
        )
        result: list[webhooks.Answer] = []
        thread = threading.Thread(target=lambda: result.append(poster.post(b"{}", {})))
        thread.start()
        time.sleep(0.5)
        poster.abort()
        thread.join(5)
        assert not thread.is_alive()
        assert result[0].status is None


class Silent:
    """A TCP server on 127.0.0.1 that accepts and then only trickles a byte every 0.2 s (or
    says nothing at all): a TLS handshake or an HTTP answer that never ends."""

    def __init__(self, trickle: bool) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.trickle = trickle
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            if self.trickle:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self.stop.wait(0.2):
                if self.trickle:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"X-Slow: y\r\n")

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_timeout_bounds_the_whole_attempt(tmp_path: Path, secret: str) -> None:
    """A receiver that answers a header line every 0.2 s never lets one read wait `timeout`:
    the attempt is cut after `timeout` seconds all the same, with no answer."""
    silent = Silent(trickle=True)
    try:
        path = secret_file(tmp_path, secret, "drip.secret")
        url = f"http://127.0.0.1:{silent.port}/hook"
        poster = webhooks.Poster(WebhookSettings(name="d", url=url, secret_file=path, timeout=1))
        started = time.monotonic()
        answer = poster.post(b"{}", {})
        assert time.monotonic() - started < 5
        assert answer.status is None and "timed out" in answer.error
    finally:
        silent.close()


def test_stopping_cuts_a_post_during_its_tls_handshake(tmp_path: Path, secret: str) -> None:
    """`Poster.abort` while the server has not answered the TLS ClientHello: the attempt ends
    at once, and nothing is sent afterwards."""
    silent = Silent(trickle=False)
    try:
        path = secret_file(tmp_path, secret, "tls.secret")
        url = f"https://localhost:{silent.port}/hook"
        poster = webhooks.Poster(
            WebhookSettings(name="t", url=url, secret_file=path, timeout=60, allow_private=True)
        )
        result: list[webhooks.Answer] = []
        thread = threading.Thread(target=lambda: result.append(poster.post(b"{}", {})))
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        poster.abort()
        thread.join(5)
        assert not thread.is_alive()
        assert time.monotonic() - started < 5
        assert result[0].status is None
    finally:
        silent.close()


# --- https -------------------------------------------------------------------------------------


def test_https_is_verified_against_the_ca_file_for_the_urls_name(
    tmp_path: Path, secret: str
) -> None:
    """https to `localhost` with the receiver's certificate as ca_file: delivered (whichever of
    localhost's addresses answers). Without it, or with a certificate for another name: no
    answer, the certificate is refused, nothing reaches the receiver."""
    cert, key = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_cert, other_key = self_signed(other, "DNS:crm.example")
    path = secret_file(tmp_path, secret, "tls.secret")
    with running(Receiver(secret, tls=(cert, key), host="localhost")) as good:
        hook = WebhookSettings(name="tls", url=good.url, secret_file=path, ca_file=cert)
        assert webhooks.ping(hook, "msg_tls").status == 200
        [event] = good.wait_for(1)
        assert event["type"] == "ping"
        unverified = WebhookSettings(name="tls", url=good.url, secret_file=path)
        answer = webhooks.ping(unverified, "msg_tls2")
        assert answer.status is None and "CERTIFICATE_VERIFY_FAILED" in answer.error
    with running(Receiver(secret, tls=(other_cert, other_key))) as wrong:
        hook = WebhookSettings(name="tls", url=wrong.url, secret_file=path, ca_file=other_cert)
        answer = webhooks.ping(hook, "msg_tls3")
        assert answer.status is None and "certificate" in answer.error.lower()
        assert wrong.attempts == []


def test_metrics_count_deliveries_by_outcome_and_the_queue_by_state(
    setup_for: Callable[..., Setup], receiver: Receiver
) -> None:
    """`/metrics`: triage_webhook_deliveries_total by endpoint and outcome, and the queue."""
    from triage.ops.metrics import Metrics

    metrics = Metrics()
    s = setup_for([{"name": "crm", "url": receiver.url, **FAST}])
    receiver.answers = [500]
    s.event()
    sender = s.sender("crm", on_outcome=metrics.webhook_delivery)
    until(lambda: s.states("crm") == [("sent", 2)], sender.deliver_due)
    metrics.set_webhook_queue(store.queue_counts(s.db.reads), ["crm"])
    text = metrics.exposition().decode()
    assert 'triage_webhook_deliveries_total{endpoint="crm",outcome="retry"} 1.0' in text
    assert 'triage_webhook_deliveries_total{endpoint="crm",outcome="sent"} 1.0' in text
    assert 'triage_webhook_queue{endpoint="crm",state="sent"} 1.0' in text
    assert 'triage_webhook_queue{endpoint="crm",state="queued"} 0.0' in text


def test_a_name_that_does_not_resolve_is_retried_not_refused(
    setup_for: Callable[..., Setup], dns: dict[str, list[str]]
) -> None:
    """DNS down (or the name gone) is an attempt without an answer: queued again with backoff."""
    dns["nowhere.invalid"] = []
    s = setup_for([{"name": "crm", "url": "https://nowhere.invalid/hook", **FAST}])
    s.event()
    assert list(s.sender("crm").deliver_due().values()) == ["retry"]
    [d] = store.recent(s.db.reads, ["queued"], 5)
    assert "cannot resolve nowhere.invalid" in (d.error or "")
