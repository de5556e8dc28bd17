"""A webhook receiver for the tests: an HTTP server on 127.0.0.1 that verifies every delivery
with the reference `standardwebhooks` package (never triage's own signing code) and records
each event once by its `webhook-id`, as a CRM's receiver should.

Its answers are scripted: `answers` is consumed one per request (a status, or a (status,
headers) pair); when it is empty, `default` answers. `delay` makes it sleep before answering.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    """A fresh Standard Webhooks secret (`whsec_` and 32 random bytes in base64)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_file(directory: Path, secret: str, name: str = "webhook.secret") -> Path:
    """`secret` in a file of mode 0600 under `directory`."""
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Attempt:
    """One request the receiver got: its id, whether it verified, what it answered."""

    webhook_id: str
    verified: bool
    status: int
    body: dict[str, Any] | None
    at: float


@dataclass
class Receiver:
    """The recorded state of a receiver (see the module)."""

    secret: str
    port: int = 0
    answers: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    # (certificate, key) files: serve https
    tls: tuple[Path, Path] | None = None
    host: str = "127.0.0.1"
    attempts: list[Attempt] = field(default_factory=list)
    # Events recorded once each, by webhook-id (de-duplicated), in arrival order.
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The address to configure."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until `count` distinct events arrived; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= count:
                    return list(self.events.values())
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len(self.events)} events arrived, not {count}: {self.attempts}")

    def ids_of_attempts(self) -> list[str]:
        """The webhook-id of every request, in order."""
        with self.lock:
            return [a.webhook_id for a in self.attempts]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = Webhook(receiver.secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                payload, verified = None, False
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                if not verified:
                    status, extra = 401, {}
                hook_id = headers.get("webhook-id", "")
                receiver.attempts.append(
                    Attempt(hook_id, verified, status, payload, time.monotonic())
                )
                if verified and 200 <= status < 300 and hook_id not in receiver.events:
                    receiver.events[hook_id] = payload
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    """Serve `receiver` on 127.0.0.1 (a free port) for the block."""
    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    if receiver.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*receiver.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def self_signed(directory: Path, names: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `names` (subjectAltName) and its key, as files."""
    cert, key = directory / "receiver.crt", directory / "receiver.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=receiver",
            "-addext",
            f"subjectAltName={names}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def event_types(events: list[dict[str, Any]]) -> list[str]:
    """The `type` of each event."""
    return [str(e["type"]) for e in events]


def dumps(events: list[dict[str, Any]]) -> str:
    """Events as text, for assertion messages."""
    return json.dumps(events, indent=1)[:2000]
