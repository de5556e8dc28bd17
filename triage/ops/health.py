"""The health and metrics endpoint: a small HTTP server in a daemon thread.

- `GET /healthz` answers `200 ok` when every mailbox is connected and synced within
  `daemon.health_max_sync_age` seconds, else `503` with one line per failing mailbox, e.g.
  `default: not connected; last sync 412 s ago; last error: cannot connect …`, or
  `default: stopped: 10 passes in a row failed: OperationalError: database or disk is full`
  when the account's worker gave up (the store kept failing: the process is then on its way
  out, for systemd to restart it), or `sales: parked: 10 passes in a row failed: …` while one
  account's passes keep failing for another reason (it is retried at the longest backoff; the
  other accounts go on).
- `GET /metrics` answers the metrics registry in the Prometheus text format.

A client gets `REQUEST_DEADLINE` seconds to send its request and as long to take the answer; at
most `MAX_CONCURRENT` requests are served at once (further connections are closed), and a client
that goes away early is a debug line, never a traceback.

The server knows nothing of the daemon's internals: it calls `statuses()` on every request, which
returns the current `AccountStatus` of each account. It binds to `daemon.health_host` (loopback by
default: the endpoint has no authentication, so exposing it is a deliberate choice of the operator,
warned about at start).
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from triage.core.hosts import is_loopback
from triage.ops.metrics import Metrics

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from triage.core.settings import DaemonSettings
    from triage.ops.daemon import AccountStatus

log = logging.getLogger(__name__)

# `generate_latest` writes the classic text format, which every Prometheus version understands as
# 0.0.4 (prometheus-client's CONTENT_TYPE_LATEST names a newer version in recent releases).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Statuses = Callable[[], Sequence["AccountStatus"]]

# Every request must be answered within this many seconds from its connection, or is dropped:
# a scrape takes milliseconds, and a client trickling bytes must not hold a thread.
REQUEST_DEADLINE = 5.0
# Requests served at once; a connection beyond these is closed unanswered, so that a flood of
# connections costs a bounded number of threads.
MAX_CONCURRENT = 16
# A client that goes away mid-answer is its own business, not a fault of triage.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


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
        if status.fatal:
            faults.append(f"stopped: {_one_line(status.fatal)}")
        elif status.needs_reauth:
            faults.append(
                f"needs re-authorisation ({_one_line(status.needs_reauth)}):"
                f" run `triage auth login {status.name}`"
            )
        elif status.parked:
            faults.append(f"parked: {_one_line(status.parked)}")
        elif not status.connected:
            faults.append("not connected")
        if status.last_sync is None:
            faults.append("never synced")
        else:
            age = now - status.last_sync
            if age > max_age:
                faults.append(f"last sync {age:.0f} s ago (limit {max_age:g} s)")
        if faults:
            if status.last_error and not (status.fatal or status.parked or status.needs_reauth):
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
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._refused_logged = 0.0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Serve the connection in a thread if one of `MAX_CONCURRENT` slots is free, else close
        it at once."""
        if not self.slots.acquire(blocking=False):
            now = time.monotonic()
            if now - self._refused_logged > 60:
                self._refused_logged = now
                log.warning(
                    "health endpoint: %d requests in progress, closing further connections",
                    MAX_CONCURRENT,
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # no thread started to release it
            raise

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Serve one connection in its thread, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """A request that failed: a client that went away is a debug line, anything else an
        error in the log. Never socketserver's traceback on stderr, past the log handlers."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _GONE):
            log.debug("health client %s went away: %r", client_address, exc)
        else:
            log.error("health request from %s failed", client_address, exc_info=True)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (it can stall start-up)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    """Serves `/healthz` and `/metrics`; everything else is 404."""

    server: _Server
    server_version = "triage"
    # A client that connects and says nothing must not hold a thread forever; `setup` turns
    # this per-operation timeout into a deadline for the whole request.
    timeout = REQUEST_DEADLINE
    sys_version = ""

    def setup(self) -> None:
        """Read the request through a reader that enforces `REQUEST_DEADLINE` in total."""
        super().setup()
        # The socket's own reader would hold the socket open after the server closes it.
        self.rfile.close()
        deadline = time.monotonic() + REQUEST_DEADLINE
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        """Serve the request; a client that went away or ran out of time ends it quietly."""
        try:
            super().handle()
        except _GONE as exc:
            log.debug("health client %s went away: %r", self.client_address, exc)
            self.close_connection = True

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
        # Writing the answer gets its own deadline (sendall honours a timeout in total): time
        # spent here computing it is ours, not the client's.
        self.connection.settimeout(REQUEST_DEADLINE)
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


class _DeadlineReader(io.RawIOBase):
    """A socket's input that raises `TimeoutError` once `deadline` (monotonic) has passed,
    however slowly the bytes trickle in."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        """Always: this is an input stream."""
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Receive into `buffer`, waiting at most until the deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


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
    if not is_loopback(host):
        log.warning(
            "the health endpoint listens on %s, beyond loopback, without authentication: "
            "anyone who reaches it sees the mailbox names, errors and metrics; set "
            'daemon.health_host = "127.0.0.1" unless a firewall or proxy guards it',
            health.url,
        )
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
