"""The health endpoint: 200 `ok` only when every mailbox is connected and recently synced, 503
with one line per failing mailbox otherwise; `/metrics` serves the registry."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from triage.daemon import AccountStatus
from triage.health import HealthServer, problems, start_from_settings, start_health_server
from triage.metrics import Metrics
from triage.settings import DaemonSettings

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
