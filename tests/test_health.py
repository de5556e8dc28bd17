"""The health endpoint: 200 `ok` only when every mailbox is connected and recently synced, 503
with one line per failing mailbox otherwise; `/metrics` serves the registry."""

from __future__ import annotations

import http.client
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from triage.core.settings import DaemonSettings
from triage.ops import health
from triage.ops.daemon import AccountStatus
from triage.ops.health import HealthServer, problems, start_from_settings, start_health_server
from triage.ops.metrics import Metrics

NOW = 1_700_000_000.0


def test_all_mailboxes_connected_and_fresh_means_no_problems() -> None:
    """Connected accounts synced within the limit are healthy."""
    statuses = [
        AccountStatus("default", connected=True, last_sync=NOW - 10),
        AccountStatus("other", connected=True, last_sync=NOW - 299),
    ]
    assert problems(statuses, max_age=300, now=NOW) == []


def test_each_failing_mailbox_gets_one_line_with_its_reasons() -> None:
    """A stale, a disconnected and a never-synced account each get one line naming what is wrong,
    with the last error on the same line (newlines in server errors are flattened)."""
    statuses = [
        AccountStatus("default", connected=True, last_sync=NOW - 5),
        AccountStatus("stale", connected=True, last_sync=NOW - 412),
        AccountStatus(
            "down",
            connected=False,
            last_sync=NOW - 412,
            last_error="cannot connect to down (mail:993):\nConnectionRefusedError",
        ),
        AccountStatus("new", connected=False),
    ]
    lines = problems(statuses, max_age=300, now=NOW)
    assert lines == [
        "stale: last sync 412 s ago (limit 300 s)",
        "down: not connected; last sync 412 s ago (limit 300 s); "
        "last error: cannot connect to down (mail:993): ConnectionRefusedError",
        "new: not connected; never synced",
    ]


def test_a_mailbox_whose_worker_gave_up_is_named_with_the_reason() -> None:
    """An account whose worker stopped for good is one line saying so, with the reason, even
    though its last sync was recent."""
    statuses = [
        AccountStatus("default", connected=True, last_sync=NOW - 5),
        AccountStatus(
            "sales",
            last_sync=NOW - 5,
            last_error="OperationalError: database or disk is full",
            failed_passes=10,
            fatal="10 passes in a row failed: OperationalError: database or disk is full",
        ),
    ]
    assert problems(statuses, 300, NOW) == [
        "sales: stopped: 10 passes in a row failed: OperationalError: database or disk is full"
    ]


def test_a_parked_mailbox_is_named_with_its_error_while_the_others_are_healthy() -> None:
    """An account parked after its passes kept failing is one line naming it and the error
    text; a healthy account beside it adds no line."""
    statuses = [
        AccountStatus("default", connected=True, last_sync=NOW - 5),
        AccountStatus(
            "sales",
            last_sync=NOW - 900,
            last_error="RuntimeError: injected fault",
            failed_passes=12,
            parked="12 passes in a row failed: RuntimeError: injected fault",
        ),
    ]
    assert problems(statuses, 300, NOW) == [
        "sales: parked: 12 passes in a row failed: RuntimeError: injected fault;"
        " last sync 900 s ago (limit 300 s)"
    ]


def test_a_mailbox_needing_re_authorisation_names_the_provider_error_and_the_command() -> None:
    """An OAuth2 account whose grant stopped working is one line with the provider and its
    error code and the command that restores it; its last error (which repeats them) is not
    added, and the other account stays healthy."""
    statuses = [
        AccountStatus("default", connected=True, last_sync=NOW - 5),
        AccountStatus(
            "sales",
            last_sync=NOW - 20,
            last_error="sales: needs re-authorisation (invalid_grant)",
            needs_reauth="generic: invalid_grant",
        ),
    ]
    assert problems(statuses, 300, NOW) == [
        "sales: needs re-authorisation (generic: invalid_grant): run `triage auth login sales`"
    ]


def test_no_mailbox_at_all_is_unhealthy() -> None:
    """A daemon watching nothing is not doing its job."""
    assert problems([], max_age=300, now=NOW) == ["no mailbox is being watched"]


def _get(server: HealthServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, content type and body of one request (the connection is always closed)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, response.getheader("Content-Type") or "", body
    finally:
        conn.close()


@pytest.fixture
def statuses() -> list[AccountStatus]:
    """The statuses the server under test reports; tests change them between requests."""
    return [AccountStatus("default", connected=True, last_sync=time.time())]


@pytest.fixture
def server(statuses: list[AccountStatus]) -> Iterator[HealthServer]:
    """A health server on an ephemeral loopback port, closed after the test."""
    metrics = Metrics()
    metrics.observe_result("sales", replied=True)
    with start_health_server("127.0.0.1", 0, lambda: statuses, metrics, 300) as running:
        yield running


def test_healthz_answers_200_ok_then_503_with_reasons(
    server: HealthServer, statuses: list[AccountStatus]
) -> None:
    """The server reads the statuses on every request: healthy gives `200 ok`, a stale mailbox
    gives 503 whose body names the mailbox and why."""
    assert server.port > 0
    assert _get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")

    statuses[0].last_sync = time.time() - 412
    statuses[0].last_error = "cannot connect to default (127.0.0.1:993): refused"
    status, _type, body = _get(server, "/healthz")
    assert status == 503
    assert body.startswith("default: last sync 41")
    assert "last error: cannot connect to default (127.0.0.1:993): refused" in body
    assert body.count("\n") == 1


def test_metrics_serves_the_registry_in_prometheus_text_format(server: HealthServer) -> None:
    """`/metrics` is the registry in the text format Prometheus scrapes."""
    status, content_type, body = _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'triage_messages_handled_total{decision="sales"} 1.0' in body


def test_head_and_unknown_paths(server: HealthServer) -> None:
    """HEAD answers like GET without a body; any other path is 404."""
    assert _get(server, "/healthz", "HEAD") == (200, "text/plain; charset=utf-8", "")
    assert _get(server, "/", "GET")[0] == 404
    assert _get(server, "/healthz/../etc/passwd", "GET")[0] == 404


def test_before_scrape_runs_on_each_scrape_and_its_failure_does_not_break_it() -> None:
    """The scrape hook refreshes gauges before `/metrics` answers; if it raises, the scrape still
    answers 200 with the other metrics (the failure is logged)."""
    metrics = Metrics()
    calls: list[int] = []

    def refresh() -> None:
        calls.append(1)
        metrics.outbox_depth.set(len(calls))
        if len(calls) == 2:
            raise RuntimeError("database is locked")

    with start_health_server("127.0.0.1", 0, list, metrics, 300, before_scrape=refresh) as srv:
        assert "triage_outbox_depth 1.0" in _get(srv, "/metrics")[2]
        status, _type, body = _get(srv, "/metrics")
    assert status == 200
    assert "triage_outbox_depth 2.0" in body
    assert len(calls) == 2


def test_close_frees_the_port_and_can_be_called_twice(statuses: list[AccountStatus]) -> None:
    """After close() nothing listens on the port any more."""
    srv = start_health_server("127.0.0.1", 0, lambda: statuses, Metrics(), 300)
    port = srv.port
    srv.close()
    srv.close()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


def test_port_zero_in_settings_switches_the_endpoint_off() -> None:
    """`daemon.health_port = 0` means no server at all (port 0 is ephemeral only for tests)."""
    assert start_from_settings(DaemonSettings(health_port=0), list, Metrics()) is None


def test_settings_host_port_and_max_age_are_used(statuses: list[AccountStatus]) -> None:
    """The server built from settings listens where configured and applies the max sync age."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    settings = DaemonSettings(
        health_host="127.0.0.1", health_port=free_port, health_max_sync_age=1.0
    )
    srv = start_from_settings(settings, lambda: statuses, Metrics())
    assert srv is not None
    with srv:
        assert srv.port == free_port
        statuses[0].last_sync = time.time() - 5
        assert _get(srv, "/healthz")[0] == 503


def test_a_client_that_goes_away_mid_answer_leaves_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client that resets the connection before the answer is written: nothing on stderr (no
    BrokenPipe/ConnectionReset traceback), and the server goes on answering."""
    gone = threading.Event()

    def answer_late() -> None:
        gone.wait(5)

    with start_health_server(
        "127.0.0.1", 0, list, Metrics(), 300, before_scrape=answer_late
    ) as srv:
        client = socket.create_connection((srv.host, srv.port), timeout=5)
        client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        time.sleep(0.3)  # the server has read the request and waits in before_scrape
        # SO_LINGER 0: close with a reset, as a client killed mid-request does.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        time.sleep(0.1)
        gone.set()  # now the server writes its answer into the reset connection
        time.sleep(0.3)
        assert _get(srv, "/metrics")[0] == 200
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert "Error" not in captured.err


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes `sock` (sending `trickle` a byte at a time meanwhile),
    or None when it is still open after `seconds`."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - start
            sent += 1
        readable, _w, _x = select.select([sock], [], [], 0.1)
        if readable:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - start
            except OSError:
                return time.monotonic() - start
    return None


def test_a_request_trickled_byte_by_byte_is_cut_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline is for the whole request, not for each read: a client sending one byte every
    0.1 s never reaches a per-read timeout, but is cut off once the deadline has passed."""
    monkeypatch.setattr(health, "REQUEST_DEADLINE", 1.0)
    with start_health_server("127.0.0.1", 0, list, Metrics(), 300) as srv:
        slow = socket.create_connection((srv.host, srv.port), timeout=5)
        with slow:
            trickle = b"GET /healthz HTTP/1.0\r\n" + b"X-Slow: " + b"a" * 200
            waited = _closed_within(slow, 4.0, trickle)
        assert waited is not None, "the server still waits for the trickling client"
        assert 0.8 < waited < 2.0
        assert _get(srv, "/healthz")[0] == 503  # no mailbox: served, after the slow one


def test_connections_beyond_the_cap_are_closed_and_the_slots_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every handler busy (clients that connect and say nothing), a further connection is
    closed at once instead of starting another thread; once they leave, requests are served."""
    monkeypatch.setattr(health, "MAX_CONCURRENT", 2)
    statuses = [AccountStatus("default", connected=True, last_sync=time.time())]
    with start_health_server("127.0.0.1", 0, lambda: statuses, Metrics(), 300) as srv:
        idle = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(2)]
        time.sleep(0.3)  # both accepted, each holding a handler thread
        extra = socket.create_connection((srv.host, srv.port), timeout=5)
        with extra:
            assert _closed_within(extra, 1.0) is not None
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        assert _get(srv, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


@pytest.mark.parametrize(
    ("host", "warned"),
    [("0.0.0.0", True), ("127.0.0.1", False)],  # noqa: S104 - the case under test
)
def test_binding_beyond_loopback_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, warned: bool
) -> None:
    """The endpoint has no authentication: listening on anything but loopback logs a WARNING
    that names the address and the setting."""
    with caplog.at_level(logging.WARNING, logger="triage.ops.health"):
        start_health_server(host, 0, list, Metrics(), 300).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        (message,) = warnings
        assert "beyond loopback" in message
        assert "daemon.health_host" in message
    else:
        assert warnings == []
