"""A tiny OAuth2 token endpoint for the provider and `triage auth` tests: a real HTTP(S) server
on 127.0.0.1 in a thread (stdlib only), not a mock of the HTTP client.

It issues access tokens and rotates the refresh token on every use (the old one stops working),
serves the authorisation-code flow with PKCE (`/authorize` redirects at once, as if the person had
signed in), the device flow, the JWT-bearer grant, and Microsoft-shaped metadata, device-code and
token endpoints under `/{tenant}/` for msal. Switches: `fail_with` (an RFC 6749 error for every
token request), `status` (e.g. 503), `garbage` (a non-JSON answer).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

CLIENT_ID = "triage-test"
CLIENT_SECRET = "client-s3cret-value"
TENANT = "contoso"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class FakeTokenServer:
    """State and switches of the fake endpoint; `url` once started."""

    access_ttl: int = 3600
    client_secret: str = CLIENT_SECRET
    url: str = ""
    fail_with: str = ""
    status: int = 0
    garbage: bool = False
    # Every refresh token issued, in order; only the last one is accepted.
    issued_refresh: list[str] = field(default_factory=list)
    issued_access: list[str] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    issued_codes: list[str] = field(default_factory=list)
    device_codes: dict[str, bool] = field(default_factory=dict)
    # Called with the form of every token request before it is answered (a test's probe).
    on_request: Callable[[dict[str, str]], None] | None = None
    # The public key that signs JWT-bearer assertions (PEM), for the service-account test.
    assertion_key: bytes = b""
    assertions: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- issuing ---------------------------------------------------------------------------

    def new_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        self.issued_refresh.append(token)
        return token

    def _tokens(
        self, *, refresh: bool = True, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(16)
        self.issued_access.append(access)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
        }
        if refresh:
            body["refresh_token"] = self.new_refresh_token()
        return body | (extra or {})

    def token(self, form: dict[str, str], path: str) -> tuple[int, Any]:  # noqa: PLR0911, PLR0912
        """The answer to one token request."""
        with self.lock:
            self.token_requests.append(form)
            if self.on_request is not None:
                self.on_request(form)
            if self.status:
                return self.status, {"error": "temporarily_unavailable"}
            if self.garbage:
                return 200, "<html>oops</html>"
            if self.fail_with:
                return 400, {"error": self.fail_with, "error_description": "refused"}
            grant = form.get("grant_type", "")
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return self._jwt_bearer(form)
            if form.get("client_id") != CLIENT_ID:
                return 401, {"error": "invalid_client"}
            if "client_secret" in form and form["client_secret"] != self.client_secret:
                return 401, {"error": "invalid_client"}
            extra = _ms_extra() if path.startswith(f"/{TENANT}/") else None
            if grant == "client_credentials":
                return 200, self._tokens(refresh=False)
            if grant == "refresh_token":
                if not self.issued_refresh or form.get("refresh_token") != self.issued_refresh[-1]:
                    return 400, {"error": "invalid_grant"}
                return 200, self._tokens(extra=extra)
            if grant == "authorization_code":
                issued = self.codes.pop(form.get("code", ""), None)
                if issued is None or issued["redirect_uri"] != form.get("redirect_uri"):
                    return 400, {"error": "invalid_grant"}
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                if _b64url(digest) != issued["code_challenge"]:
                    return 400, {"error": "invalid_grant"}
                return 200, self._tokens()
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                approved = self.device_codes.get(form.get("device_code", ""))
                if approved is None:
                    return 400, {"error": "expired_token"}
                if not approved:
                    return 400, {"error": "authorization_pending"}
                return 200, self._tokens(extra=extra)
            return 400, {"error": "unsupported_grant_type"}

    def _jwt_bearer(self, form: dict[str, str]) -> tuple[int, Any]:
        import jwt

        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.assertion_key,
                algorithms=["RS256"],
                audience=f"{self.url}/token",
            )
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant"}
        self.assertions.append(claims)
        return 200, self._tokens(refresh=False)

    def authorize(self, query: dict[str, str]) -> str:
        """Where /authorize redirects: back to the client with a code and its state."""
        code = "code-" + secrets.token_urlsafe(12)
        with self.lock:
            self.issued_codes.append(code)
            self.codes[code] = {
                "redirect_uri": query["redirect_uri"],
                "code_challenge": query.get("code_challenge", ""),
            }
        sep = "&" if "?" in query["redirect_uri"] else "?"
        return (
            query["redirect_uri"] + sep + urlencode({"code": code, "state": query.get("state", "")})
        )

    def device(self, ms: bool) -> dict[str, Any]:
        code = "dc-" + secrets.token_urlsafe(12)
        with self.lock:
            self.device_codes[code] = False
        body = {
            "device_code": code,
            "user_code": "ABCD-EFGH",
            "verification_uri": f"{self.url}/device/verify",
            "expires_in": 600,
            "interval": 1,
        }
        if ms:
            body["message"] = f"To sign in, open {self.url}/device/verify and enter ABCD-EFGH"
        return body

    def approve_devices(self) -> None:
        with self.lock:
            for code in self.device_codes:
                self.device_codes[code] = True


def _ms_extra() -> dict[str, Any]:
    """What Microsoft adds to a user's token response: client_info and an id_token (msal builds
    its account from them; msal does not check the id_token's signature)."""
    uid, utid = "user-oid", "tenant-id"
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "iss": f"https://login.example/{utid}/v2.0",
        "aud": CLIENT_ID,
        "sub": "subject",
        "oid": uid,
        "tid": utid,
        "preferred_username": "hello@contoso.example",
        "iat": now,
        "exp": now + 3600,
    }
    id_token = f"{header}.{_b64url(json.dumps(claims).encode())}."
    client_info = _b64url(json.dumps({"uid": uid, "utid": utid}).encode())
    return {
        "id_token": id_token,
        "client_info": client_info,
        "scope": "https://outlook.office365.com/IMAP.AccessAsUser.All openid profile",
    }


def _handler(server: FakeTokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            ctype = "text/html" if isinstance(body, str) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/authorize":
                self._send(302, "", {"Location": server.authorize(query)})
            elif parts.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
                base = f"{server.url}/{TENANT}"
                self._send(
                    200,
                    {
                        "issuer": f"{base}/v2.0",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    },
                )
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            path = urlsplit(self.path).path
            if path in ("/token", f"/{TENANT}/oauth2/v2.0/token"):
                status, body = server.token(form, path)
                self._send(status, body)
            elif path in ("/device", f"/{TENANT}/oauth2/v2.0/devicecode"):
                self._send(200, server.device(ms=path != "/device"))
            else:
                self._send(404, {"error": "not_found"})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running(
    fake: FakeTokenServer, tls: tuple[Path, Path] | None = None
) -> Iterator[FakeTokenServer]:
    """Serve `fake` on 127.0.0.1 (https with `tls` = (certificate, key) files) until the block
    ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.daemon_threads = True
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    fake.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca file, certificate, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triage test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file
