"""A small real OAuth2 authorisation server on 127.0.0.1, for the tests and the demo.

`OAuthServer` plays the identity provider of a mailbox: it issues access tokens that live
`access_ttl` seconds, rotates the refresh token on every use (as Microsoft and Google may), and
answers token introspection (RFC 7662) for the harness's Dovecot, whose `oauth2` passdb asks it
whether an XOAUTH2/OAUTHBEARER token is valid and whose it is. It is served from a background
thread, over http or, with `https=True`, over https with a throwaway test CA (`ca_file`), which
is what msal needs: it refuses `http://` authorities.

Typical use::

    with OAuthServer(access_ttl=30) as server:
        server.register_client("triage", "s3cret")
        refresh = server.grant("triage", "hello", scope="imap smtp")   # the user's consent
        # the code under test: POST {server.token_url} grant_type=refresh_token ...
        token = server.issue_access_token("hello")   # or mint one directly for a login test

Endpoints (all JSON, errors as RFC 6749 `{"error": ..., "error_description": ...}`):

- `POST /token`: grant types `refresh_token` (rotated: the old one is refused with
  `invalid_grant` from then on), `client_credentials` (for a mailbox given by `grant_app`),
  `authorization_code` (PKCE S256/plain checked when a challenge was given),
  `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628) and
  `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523, Google service accounts: the token's
  user is the JWT's `sub`). Client authentication by form fields, HTTP Basic, or a signed
  `client_assertion` (msal's certificate credential).
- `POST /introspect`: form `token=...` -> `{"active": true, "username", "exp", "scope", ...}` or
  `{"active": false}` (what Dovecot calls with `introspection_mode = post`).
- `GET /authorize`: the authorisation-code flow with a loopback redirect; answers 302 to
  `redirect_uri?code=...&state=...` once a test called `approve_next(user)` (or `auto_approve`
  names a user), 403 otherwise.
- `POST /device`: RFC 8628 device authorisation; a test approves with `approve_device`.
- Microsoft-shaped, for msal 1.x (`authority=server.authority("contoso")`,
  `instance_discovery=False`, `validate_authority=False`, and `REQUESTS_CA_BUNDLE` = `ca_file`:
  requests lets that variable, when set, override msal's `verify=`):
  `/{tenant}/v2.0/.well-known/openid-configuration`, `/{tenant}/oauth2/v2.0/token`,
  `/{tenant}/oauth2/v2.0/devicecode`, `/{tenant}/oauth2/v2.0/authorize`; plus RFC 8414 metadata
  at `/.well-known/oauth-authorization-server`.

Users are the harness's (`hello`, or `hello@example.test`: Dovecot compares local parts). A
client-credentials token names no user until `grant_app` gave its app a mailbox; Dovecot refuses
a token whose introspection has no `username`.

In the tests (tests/conftest.py): `oauth_server` is one session-wide http server (30 s tokens)
whose /introspect the session's `mail_harness` Dovecot uses, so any test can log a harness user in
with `oauth.issue_access_token("hello")` or through a real grant; `oauth` is the same server with
its switches reset around the test.

Test switches: `fail_grants(user_or_client, error)` / `clear_failures()`, `set_down(True)` (503 on
every token endpoint; introspection keeps answering), `set_introspection_down(True)` (503 on
/introspect), `revoke_all(user)`, the refresh tokens
issued per user in order (`refresh_tokens_issued`, `latest_refresh_token`), per-endpoint call
counters (`calls("introspect")`) and `reset()` of the switches between tests.

Tokens are random (`secrets.token_urlsafe`) and never logged: the request log is off.

By hand, for the demo (serves until Ctrl-C; the harness then checks tokens there)::

    python -m devtools.oauthserver --port 10080 --client triage:s3cret --grant hello
    python -m devtools.mailharness start --oauth2-introspection-url http://127.0.0.1:10080/introspect
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["GrantError", "OAuthServer"]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Device codes and authorisation codes live this long (RFC 8628 suggests minutes).
_CODE_TTL = 600.0
# How often a device-flow client may poll; msal sleeps this long between polls.
_DEVICE_INTERVAL = 1
# A JWT's exp/iat may be off by this much (clock skew).
_JWT_LEEWAY = 60.0
_MAX_BODY = 1 << 20


class GrantError(Exception):
    """An RFC 6749 error answer: `error` code, description and HTTP status."""

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


@dataclass
class _Client:
    secret: str | None
    public_key: Any = None  # a cryptography public key, for client_assertion
    app_user: str | None = None  # the mailbox its client-credentials tokens act for


@dataclass
class _Refresh:
    client_id: str
    username: str
    scope: str
    valid: bool = True


@dataclass
class _Access:
    client_id: str
    username: str | None
    scope: str
    expires_at: float  # epoch seconds
    valid: bool = True


@dataclass
class _Code:
    client_id: str
    username: str
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str
    expires_at: float


@dataclass
class _Device:
    client_id: str
    user_code: str
    scope: str
    expires_at: float
    username: str | None = None
    used: bool = False


@dataclass
class _State:
    clients: dict[str, _Client] = field(default_factory=dict)
    issuers: dict[str, Any] = field(default_factory=dict)  # service-account email -> public key
    refresh: dict[str, _Refresh] = field(default_factory=dict)
    access: dict[str, _Access] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    devices: dict[str, _Device] = field(default_factory=dict)  # device_code -> record
    history: dict[str, list[str]] = field(default_factory=dict)  # user -> refresh tokens
    approvals: list[str] = field(default_factory=list)  # approve_next queue
    failures: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    introspections: list[tuple[str | None, bool]] = field(default_factory=list)


class OAuthServer:
    """The authorisation server; see the module docstring. Thread-safe."""

    def __init__(
        self,
        *,
        https: bool = False,
        access_ttl: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
        auto_approve: str | None = None,
    ) -> None:
        """Prepare (nothing listens yet): `start()` or `with OAuthServer() as server:`."""
        self.https = https
        #: Lifetime of access tokens issued from now on, in seconds (tests may change it).
        self.access_ttl = access_ttl
        #: When set, /authorize and /device approve at once for this user.
        self.auto_approve = auto_approve
        self.host = host
        self._port = port  # 0: a free one
        self._default_ttl = access_ttl
        self._lock = threading.RLock()
        self._state = _State()
        self._down = False
        self._introspection_down = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tls_dir: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OAuthServer:
        """Listen on a free port of `host` and serve from a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self._port), _handler_for(self))
        httpd.daemon_threads = True
        if self.https:
            self._tls_dir = Path(tempfile.mkdtemp(prefix="triage-oauth-tls-"))
            # Others (Dovecot's auth process runs as user dovecot) must read ca.pem; the key
            # stays 0600.
            self._tls_dir.chmod(0o755)
            cert, key = _make_test_pki(self._tls_dir, self.host)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="oauth-server", kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and delete the test CA files (no-op when stopped)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it is -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (after start)."""
        if self._httpd is None:
            raise RuntimeError("the OAuth server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`."""
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def device_authorization_url(self) -> str:
        return f"{self.url}/device"

    def authority(self, tenant: str = "contoso") -> str:
        """An msal `authority` served here: `{url}/{tenant}`."""
        return f"{self.url}/{tenant}"

    @property
    def ca_file(self) -> Path:
        """The test CA certificate (PEM) that signed the https certificate; https only."""
        if self._tls_dir is None:
            raise RuntimeError("ca_file exists only for a started OAuthServer(https=True)")
        return self._tls_dir / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting `ca_file` (None for http)."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.https else None

    # -- registration (tests) ----------------------------------------------------------------

    def register_client(
        self, client_id: str, secret: str | None = None, *, public_key_pem: bytes | None = None
    ) -> None:
        """Register a client: confidential with `secret`, public without one, or one that
        authenticates with a `client_assertion` JWT signed by the key of `public_key_pem`
        (a PEM public key or certificate: msal's certificate credential)."""
        key = _load_public_key(public_key_pem) if public_key_pem is not None else None
        with self._lock:
            self._state.clients[client_id] = _Client(secret, key)

    def register_service_account(self, email: str, public_key_pem: bytes) -> None:
        """Accept RFC 7523 JWT-bearer assertions with `iss = email` signed by this key; the
        service account may act for any user (domain-wide delegation)."""
        key = _load_public_key(public_key_pem)
        with self._lock:
            self._state.issuers[email] = key

    def make_service_account(self, email: str) -> dict[str, str]:
        """Create an RSA key, register it for `email`, and return a Google-shaped service
        account key file's content (`private_key`, `client_email`, `token_uri` = this server)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.register_service_account(email, public)
        return {
            "type": "service_account",
            "project_id": "triage-tests",
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": str(10**20 + secrets.randbelow(10**20)),
            "token_uri": self.token_url,
        }

    def grant(self, client_id: str, username: str, scope: str = "") -> str:
        """A user's consent to `client_id`: returns a first refresh token bound to `username`."""
        with self._lock:
            self._client(client_id)
            return self._new_refresh(client_id, username, scope)

    def grant_app(self, client_id: str, username: str) -> None:
        """Client-credentials tokens of `client_id` act for mailbox `username` (one mailbox per
        app here: the introspection answer names one user). Replaces an earlier grant_app."""
        with self._lock:
            self._client(client_id).app_user = username

    def issue_access_token(
        self, username: str, *, client_id: str = "test", scope: str = "", ttl: float | None = None
    ) -> str:
        """Mint an access token for `username` without any grant (for login tests); a `ttl` of
        0 or less gives one that is already expired."""
        with self._lock:
            return self._new_access(client_id, username, scope, ttl)

    def approve_next(self, username: str) -> None:
        """The next GET /authorize is consented to by `username` (one approval per call)."""
        with self._lock:
            self._state.approvals.append(username)

    def approve_device(self, user_code: str, username: str) -> None:
        """`username` enters `user_code` and consents: the device flow's next poll succeeds."""
        with self._lock:
            for device in self._state.devices.values():
                if device.user_code == user_code and not device.used:
                    device.username = username
                    return
        raise KeyError(f"no pending device authorisation with user code {user_code!r}")

    def pending_user_codes(self) -> list[str]:
        """User codes of device authorisations nobody approved yet, oldest first."""
        with self._lock:
            return [
                d.user_code
                for d in self._state.devices.values()
                if d.username is None and not d.used and d.expires_at > time.time()
            ]

    # -- switches (tests) --------------------------------------------------------------------

    def fail_grants(self, who: str, error: str = "invalid_grant") -> None:
        """Every token request for user or client `who` answers `error` from now on."""
        with self._lock:
            self._state.failures[who] = error

    def clear_failures(self) -> None:
        with self._lock:
            self._state.failures.clear()

    def set_down(self, down: bool = True) -> None:
        """While down, every token endpoint answers 503 (introspection keeps working)."""
        with self._lock:
            self._down = down

    def set_introspection_down(self, down: bool = True) -> None:
        """While down, /introspect answers 503: Dovecot then fails logins temporarily."""
        with self._lock:
            self._introspection_down = down

    def revoke_all(self, username: str) -> None:
        """Invalidate every refresh and access token of `username` (a revoked consent)."""
        with self._lock:
            records: list[_Refresh | _Access] = [
                *self._state.refresh.values(),
                *self._state.access.values(),
            ]
            for record in records:
                if record.username == username:
                    record.valid = False

    def reset(self) -> None:
        """Undo the switches (failures, down, approvals, auto_approve, access_ttl); tokens,
        clients and counters stay."""
        with self._lock:
            self._state.failures.clear()
            self._state.approvals.clear()
            self._down = False
            self._introspection_down = False
            self.auto_approve = None
            self.access_ttl = self._default_ttl

    # -- what happened (tests) ---------------------------------------------------------------

    def refresh_tokens_issued(self, username: str) -> list[str]:
        """Every refresh token issued for `username`, oldest first."""
        with self._lock:
            return list(self._state.history.get(username, []))

    def latest_refresh_token(self, username: str) -> str | None:
        with self._lock:
            issued = self._state.history.get(username)
            return issued[-1] if issued else None

    def calls(self, endpoint: str) -> int:
        """Requests seen by an endpoint: token, introspect, authorize, device, discovery."""
        with self._lock:
            return self._state.calls[endpoint]

    def introspections(self) -> list[tuple[str | None, bool]]:
        """(username or None, active) of every introspection answered, oldest first."""
        with self._lock:
            return list(self._state.introspections)

    # -- test client -------------------------------------------------------------------------

    def post(
        self, path: str, form: Mapping[str, str], *, basic: tuple[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST a form to `path` on this server; returns (HTTP status, JSON answer)."""
        request = urllib.request.Request(  # noqa: S310 - our own http(s) URL
            self.url + path, data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        if basic is not None:
            request.add_header("Authorization", _basic(*basic))
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body.startswith(b"{") else {}

    # -- the protocol (called by the request handler) -----------------------------------------

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self._state.calls[endpoint] += 1

    def _client(self, client_id: str) -> _Client:
        client = self._state.clients.get(client_id)
        if client is None:
            raise GrantError("invalid_client", "unknown client", 401)
        return client

    def _new_refresh(self, client_id: str, username: str, scope: str) -> str:
        token = secrets.token_urlsafe(32)
        self._state.refresh[token] = _Refresh(client_id, username, scope)
        self._state.history.setdefault(username, []).append(token)
        return token

    def _new_access(
        self, client_id: str, username: str | None, scope: str, ttl: float | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        life = self.access_ttl if ttl is None else ttl
        self._state.access[token] = _Access(client_id, username, scope, time.time() + life)
        return token

    def _check_failure(self, *who: str | None) -> None:
        for name in who:
            if name is not None and name in self._state.failures:
                error = self._state.failures[name]
                raise GrantError(
                    error, "refused by a test switch", 401 if error == "invalid_client" else 400
                )

    def _authenticate(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> str:
        """The authenticated client's id (RFC 6749 2.3), or GrantError invalid_client."""
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        if basic is not None:
            client_id, secret = basic
        assertion = form.get("client_assertion")
        if assertion is not None:
            if form.get("client_assertion_type") != JWT_CLIENT_ASSERTION:
                raise GrantError("invalid_client", "unsupported client_assertion_type", 401)
            claims = _verify_jwt(assertion, lambda iss: self._client(iss).public_key)
            client_id = str(claims.get("iss", ""))
            if claims.get("sub") != client_id or (client_id != form.get("client_id", client_id)):
                raise GrantError("invalid_client", "client assertion iss/sub mismatch", 401)
            if not self._for_us(claims.get("aud")):
                raise GrantError("invalid_client", "client assertion audience is not us", 401)
            return client_id
        client = self._client(client_id)
        if client.secret is not None and not (
            secret is not None and secrets.compare_digest(secret, client.secret)
        ):
            raise GrantError("invalid_client", "client authentication failed", 401)
        return client_id

    def _token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        """POST /token: one grant, or GrantError."""
        grant_type = form.get("grant_type", "")
        with self._lock:
            if self._down:
                raise GrantError("temporarily_unavailable", "token endpoint down", 503)
            if grant_type == JWT_BEARER_GRANT:
                return self._jwt_bearer(form)
            client_id = self._authenticate(form, basic)
            self._check_failure(client_id)
            if grant_type == "refresh_token":
                record = self._state.refresh.get(form.get("refresh_token", ""))
                if record is None or not record.valid or record.client_id != client_id:
                    raise GrantError("invalid_grant", "refresh token invalid, used or revoked")
                self._check_failure(record.username)
                record.valid = False  # rotation: the old token is dead from now on
                return self._answer(client_id, record.username, form.get("scope") or record.scope)
            if grant_type == "client_credentials":
                user = self._state.clients[client_id].app_user
                self._check_failure(user)
                access = self._new_access(client_id, user, form.get("scope", ""))
                return self._bearer(access, form.get("scope", ""))
            if grant_type == "authorization_code":
                return self._authorization_code(client_id, form)
            if grant_type == DEVICE_CODE_GRANT:
                return self._device_code(client_id, form)
        raise GrantError("unsupported_grant_type", f"grant_type {grant_type!r}")

    def _answer(self, client_id: str, username: str, scope: str) -> dict[str, Any]:
        """An access token and a new refresh token for a user."""
        answer = self._bearer(self._new_access(client_id, username, scope), scope)
        answer["refresh_token"] = self._new_refresh(client_id, username, scope)
        return answer

    def _bearer(self, access: str, scope: str) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": max(0, math.ceil(self._state.access[access].expires_at - time.time())),
        }
        if scope:
            answer["scope"] = scope
        return answer

    def _authorization_code(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        code = self._state.codes.pop(form.get("code", ""), None)
        if code is None or code.client_id != client_id or code.expires_at < time.time():
            raise GrantError("invalid_grant", "authorization code invalid, used or expired")
        if form.get("redirect_uri", code.redirect_uri) != code.redirect_uri:
            raise GrantError("invalid_grant", "redirect_uri differs from the authorization request")
        if code.challenge is not None:
            verifier = form.get("code_verifier", "")
            if code.method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            else:
                computed = verifier
            if not verifier or not secrets.compare_digest(computed, code.challenge):
                raise GrantError("invalid_grant", "PKCE verification failed")
        self._check_failure(code.username)
        return self._answer(client_id, code.username, form.get("scope") or code.scope)

    def _device_code(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        device = self._state.devices.get(form.get("device_code", ""))
        if device is None or device.used or device.client_id != client_id:
            raise GrantError("invalid_grant", "unknown or used device code")
        if device.expires_at < time.time():
            raise GrantError("expired_token", "device code expired")
        if device.username is None:
            raise GrantError("authorization_pending", "the user has not approved yet")
        self._check_failure(device.username)
        device.used = True
        return self._answer(client_id, device.username, device.scope)

    def _jwt_bearer(self, form: Mapping[str, str]) -> dict[str, Any]:
        def key_of(issuer: str) -> Any:
            key = self._state.issuers.get(issuer)
            if key is None:
                raise GrantError("invalid_grant", "unknown assertion issuer")
            return key

        claims = _verify_jwt(form.get("assertion", ""), key_of, error="invalid_grant")
        issuer = str(claims["iss"])
        user = str(claims.get("sub") or issuer)
        if not self._for_us(claims.get("aud")):
            raise GrantError("invalid_grant", "assertion audience is not this server")
        self._check_failure(issuer, user)
        scope = str(claims.get("scope", form.get("scope", "")))
        return self._bearer(self._new_access(issuer, user, scope), scope)

    def _for_us(self, audience: object) -> bool:
        """True when a JWT's `aud` (a string or a list) names an endpoint of this server."""
        audiences = audience if isinstance(audience, list) else [audience]
        return any(isinstance(a, str) and a.startswith(self.url + "/") for a in audiences)

    def _introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            if self._introspection_down:
                raise GrantError("temporarily_unavailable", "introspection endpoint down", 503)
            record = self._state.access.get(token)
            active = record is not None and record.valid and record.expires_at > time.time()
            username = record.username if record is not None and active else None
            self._state.introspections.append((username, active))
            if not active or record is None:
                return {"active": False}
            answer: dict[str, Any] = {
                "active": True,
                "token_type": "Bearer",
                "client_id": record.client_id,
                "exp": int(record.expires_at),
                "scope": record.scope,
            }
            if record.username is not None:
                answer["username"] = record.username
                answer["sub"] = record.username
            return answer

    def _authorize(self, query: Mapping[str, str]) -> str:
        """GET /authorize: the redirect location, or GrantError (shown as an error page)."""
        with self._lock:
            if query.get("response_type") != "code":
                raise GrantError("unsupported_response_type", "only response_type=code")
            client_id = query.get("client_id", "")
            self._client(client_id)
            redirect_uri = query.get("redirect_uri", "")
            if not redirect_uri:
                raise GrantError("invalid_request", "redirect_uri missing")
            if self._state.approvals:
                username = self._state.approvals.pop(0)
            elif self.auto_approve is not None:
                username = self.auto_approve
            else:
                raise GrantError("access_denied", "no user approved this request", 403)
            code = secrets.token_urlsafe(24)
            self._state.codes[code] = _Code(
                client_id,
                username,
                redirect_uri,
                query.get("scope", ""),
                query.get("code_challenge"),
                query.get("code_challenge_method", "plain"),
                time.time() + _CODE_TTL,
            )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        separator = "&" if urllib.parse.urlsplit(redirect_uri).query else "?"
        return redirect_uri + separator + urllib.parse.urlencode(params)

    def _device(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        with self._lock:
            if self._down:
                raise GrantError("temporarily_unavailable", "device endpoint down", 503)
            client_id = basic[0] if basic is not None else form.get("client_id", "")
            self._client(client_id)
            device_code = secrets.token_urlsafe(32)
            letters = "BCDFGHJKLMNPQRSTVWXZ"
            user_code = "".join(secrets.choice(letters) for _ in range(8))
            user_code = f"{user_code[:4]}-{user_code[4:]}"
            self._state.devices[device_code] = _Device(
                client_id,
                user_code,
                form.get("scope", ""),
                time.time() + _CODE_TTL,
                username=self.auto_approve,
            )
        verify = f"{self.url}/device/verify"
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verify,
            "verification_uri_complete": f"{verify}?user_code={user_code}",
            "expires_in": int(_CODE_TTL),
            "interval": _DEVICE_INTERVAL,
            "message": f"To sign in, open {verify} and enter the code {user_code}.",
        }

    def _discovery(self, tenant: str | None) -> dict[str, Any]:
        if tenant is None:
            return {
                "issuer": self.url,
                "authorization_endpoint": self.authorize_url,
                "token_endpoint": self.token_url,
                "device_authorization_endpoint": self.device_authorization_url,
                "introspection_endpoint": self.introspection_url,
                "grant_types_supported": [
                    "refresh_token",
                    "client_credentials",
                    "authorization_code",
                    DEVICE_CODE_GRANT,
                    JWT_BEARER_GRANT,
                ],
                "code_challenge_methods_supported": ["S256", "plain"],
            }
        base = f"{self.url}/{tenant}"
        return {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "introspection_endpoint": self.introspection_url,
            "response_types_supported": ["code"],
            "tenant_region_scope": "EU",
        }


# --------------------------------------------------------------------------------------------
# HTTP


def _handler_for(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "triage-oauth-test"

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: request lines may carry codes, and tests need no access log."""

        def do_GET(self) -> None:
            path, _, raw_query = self.path.partition("?")
            query = dict(urllib.parse.parse_qsl(raw_query))
            parts = [p for p in path.split("/") if p]
            if path in (
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
            ):
                server._count("discovery")
                self._json(200, server._discovery(None))
            elif parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                server._count("discovery")
                self._json(200, server._discovery(parts[0]))
            elif path == "/authorize" or parts[1:] == ["oauth2", "v2.0", "authorize"]:
                server._count("authorize")
                try:
                    location = server._authorize(query)
                except GrantError as exc:
                    self._text(exc.status, f"authorization refused: {exc.error}\n")
                    return
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/device/verify":
                self._text(
                    200, "Device approval is done by the test (OAuthServer.approve_device).\n"
                )
            else:
                self._text(404, "not found\n")

        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            parts = [p for p in path.split("/") if p]
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._text(413, "too large\n")
                return
            body = self.rfile.read(length).decode("utf-8", "replace")
            form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
            basic = _parse_basic(self.headers.get("Authorization"))
            try:
                if path == "/token" or parts[1:] == ["oauth2", "v2.0", "token"]:
                    server._count("token")
                    self._json(200, server._token(form, basic))
                elif path == "/introspect":
                    server._count("introspect")
                    self._json(200, server._introspect(form.get("token", "")))
                elif path == "/device" or parts[1:] == ["oauth2", "v2.0", "devicecode"]:
                    server._count("device")
                    self._json(200, server._device(form, basic))
                else:
                    self._text(404, "not found\n")
            except GrantError as exc:
                answer = {"error": exc.error, "error_description": exc.description}
                self._json(exc.status, answer)

        def _json(self, status: int, data: Mapping[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(payload)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="token"')
            self.end_headers()
            self.wfile.write(payload)

        def _text(self, status: int, text: str) -> None:
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _basic(user: str, password: str) -> str:
    pair = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    """(client_id, secret) from `Authorization: Basic` (form-urlencoded parts, RFC 6749 2.3.1)."""
    if not header or not header.lower().startswith("basic "):
        return None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        return urllib.parse.unquote(user), urllib.parse.unquote(password)
    return None


# --------------------------------------------------------------------------------------------
# JWT (RS256/PS256) and the test PKI, with the `cryptography` package (imported when needed)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_public_key(pem: bytes) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"BEGIN CERTIFICATE" in pem:
        return x509.load_pem_x509_certificate(pem).public_key()
    return serialization.load_pem_public_key(pem)


def _verify_jwt(token: str, key_of: Any, error: str = "invalid_client") -> dict[str, Any]:
    """The claims of a JWT signed RS256/PS256 by `key_of(iss)`, with exp/nbf checked."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    status = 401 if error == "invalid_client" else 400
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(sig_b64)
    except ValueError as exc:
        raise GrantError(error, "malformed JWT", status) from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise GrantError(error, "JWT without iss", status)
    key = key_of(claims["iss"])
    if key is None:
        raise GrantError(error, "no key registered for the JWT issuer", status)
    alg = header.get("alg") if isinstance(header, dict) else None
    if alg == "RS256":
        pad: Any = padding.PKCS1v15()
    elif alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        raise GrantError(error, f"unsupported JWT alg {alg!r}", status)
    try:
        key.verify(signature, f"{head_b64}.{claims_b64}".encode(), pad, hashes.SHA256())
    except (InvalidSignature, TypeError, AttributeError) as exc:
        raise GrantError(error, "JWT signature invalid", status) from exc
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + _JWT_LEEWAY < now:
        raise GrantError(error, "JWT expired or without exp", status)
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - _JWT_LEEWAY > now:
        raise GrantError(error, "JWT not yet valid", status)
    return claims


def _make_test_pki(folder: Path, host: str) -> tuple[Path, Path]:
    """A throwaway CA (folder/ca.pem) and a server certificate it signs for `host`, 127.0.0.1
    and localhost; returns (certificate, key) paths. EC P-256: made in milliseconds."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"triage OAuth test CA {secrets.token_hex(4)}")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for address in {host, "127.0.0.1"}:
        with contextlib.suppress(ValueError):
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (folder / "ca.pem").chmod(0o644)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    """`python -m devtools.oauthserver`: serve in the foreground until interrupted."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m devtools.oauthserver",
        description="A local OAuth2 authorisation server for the triage demo and tests.",
    )
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--https", action="store_true", help="with a throwaway test CA")
    parser.add_argument("--access-ttl", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument(
        "--client", action="append", default=[], metavar="ID[:SECRET]", help="register a client"
    )
    parser.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="USER",
        help="consent of USER to the first client: prints a first refresh token",
    )
    parser.add_argument("--auto-approve", metavar="USER", help="approve /authorize and /device")
    args = parser.parse_args(argv)
    server = OAuthServer(
        https=args.https,
        access_ttl=args.access_ttl,
        port=args.port,
        auto_approve=args.auto_approve,
    )
    with server:
        clients = [client.partition(":") for client in args.client]
        for client_id, _, secret in clients:
            server.register_client(client_id, secret or None)
        print(f"OAuth2 server on {server.url}  (token {server.token_url})")
        print(f"  introspection {server.introspection_url}")
        if args.https:
            print(f"  CA {server.ca_file}")
        for user in args.grant:
            if not clients:
                parser.error("--grant needs a --client")
            # A demo's own throwaway grant, printed on purpose so it can be imported.
            print(f"  refresh token of {user}: {server.grant(clients[0][0], user)}")
        sys.stdout.flush()

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        # SIGTERM too ends it through `with`, which deletes the test CA's folder.
        signal.signal(signal.SIGTERM, interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
