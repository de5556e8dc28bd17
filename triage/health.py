"""The health and metrics endpoint: a small HTTP server in a daemon thread.

- `GET /healthz` answers `200 ok` when every mailbox is connected and synced within
  `daemon.health_max_sync_age` seconds, else `503` with one line per failing mailbox, e.g.
  `default: not connected; last sync 412 s ago; last error: cannot connect …`.
- `GET /metrics` answers the metrics registry in the Prometheus text format.

The server knows nothing of the daemon's internals: it calls `statuses()` on every request, which
returns the current `AccountStatus` of each account. It binds to `daemon.health_host` (loopback by
default: the endpoint has no authentication, so exposing it is a deliberate choice of the operator).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from triage.metrics import Metrics

if TYPE_CHECKING:
    from triage.daemon import AccountStatus
    from triage.settings import DaemonSettings

log = logging.getLogger(__name__)

# `generate_latest` writes the classic text format, which every Prometheus version understands as
# 0.0.4 (prometheus-client's CONTENT_TYPE_LATEST names a newer version in recent releases).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Statuses = Callable[[], Sequence["AccountStatus"]]


def _one_line(text: str) -> str:
    # Error texts come from servers; keep each mailbox on exactly one line of the response.
    return " ".join(text.split())


def problems(
    statuses: Sequence[AccountStatus], max_age: float, now: float | None = None
) -> list[str]:
    """One line per mailbox that is not healthy; empty when all are (pure: used by `/healthz`)."""
    now = time.time() if now is None else now
    if not statuses:
        return ["no mailbox is being watched"]
    lines = []
    for status in statuses:
        faults = []
        if not status.connected:
            faults.append("not connected")
        if status.last_sync is None:
            faults.append("never synced")
        else:
            age = now - status.last_sync
            if age > max_age:
                faults.append(f"last sync {age:.0f} s ago (limit {max_age:g} s)")
        if faults:
            if status.last_error:
                faults.append(f"last error: {_one_line(status.last_error)}")
            lines.append(f"{status.name}: {'; '.join(faults)}")
    return lines


class _Server(ThreadingHTTPServer):
    """The HTTP server with what its request handlers need."""

    # Request threads never outlive the process nor block close(): a scrape is short and a
    # stuck client must not hold up the daemon's shutdown.
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        statuses: Statuses,
        metrics: Metrics,
        max_age: float,
        before_scrape: Callable[[], None] | None,
    ) -> None:
        self.statuses = statuses
        self.metrics = metrics
        self.max_age = max_age
        self.before_scrape = before_scrape
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (it can stall start-up)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    """Serves `/healthz` and `/metrics`; everything else is 404."""

    server: _Server
    server_version = "triage"
    # A client that connects and says nothing must not hold a thread forever.
    timeout = 10.0
    sys_version = ""

    def do_GET(self) -> None:
        """Answer a GET request."""
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        """Answer a HEAD request (same status and headers, no body)."""
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, content_type, body = self._health()
        elif path == "/metrics":
            status, content_type, body = self._metrics()
        else:
            status, content_type, body = HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _health(self) -> tuple[HTTPStatus, str, bytes]:
        lines = problems(self.server.statuses(), self.server.max_age)
        if not lines:
            return HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n"
        text = "".join(f"{line}\n" for line in lines)
        return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", text.encode()

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        hook = self.server.before_scrape
        if hook is not None:
            try:
                hook()
            except Exception:
                # A failing refresh must not stop the scrape: the other metrics are still worth
                # serving, the store-derived gauges keep their last values, the log shows why.
                log.exception("refreshing metrics before a scrape failed")
        return HTTPStatus.OK, METRICS_CONTENT_TYPE, self.server.metrics.exposition()

    def log_message(self, format: str, *args: object) -> None:  # `format`: stdlib's name
        """Requests go to the debug log, not to stderr: scrapes every 15 s are not news."""
        log.debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """A running health/metrics server; `close()` stops it and frees the port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="health", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the ephemeral one when started with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://host:port`, for tests and log lines."""
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving, close the listening socket and wait for the thread; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start_health_server(
    host: str,
    port: int,
    statuses: Statuses,
    metrics: Metrics,
    max_age: float,
    before_scrape: Callable[[], None] | None = None,
) -> HealthServer:
    """Start serving `/healthz` and `/metrics` on host:port (port 0: an ephemeral port).

    `statuses` is called on every health request. `before_scrape`, when given, is called before
    every `/metrics` answer (e.g. to refresh the store-derived gauges). Raises `OSError` when the
    address cannot be bound.
    """
    server = _Server((host, port), statuses, metrics, max_age, before_scrape)
    health = HealthServer(server)
    log.info("health and metrics on %s (/healthz, /metrics)", health.url)
    return health


def start_from_settings(
    settings: DaemonSettings,
    statuses: Statuses,
    metrics: Metrics,
    before_scrape: Callable[[], None] | None = None,
) -> HealthServer | None:
    """Start the server as `[daemon]` configures it; None when `health_port = 0` (switched off)."""
    if settings.health_port == 0:
        log.info("health endpoint off (daemon.health_port = 0)")
        return None
    return start_health_server(
        settings.health_host,
        settings.health_port,
        statuses,
        metrics,
        settings.health_max_sync_age,
        before_scrape,
    )
