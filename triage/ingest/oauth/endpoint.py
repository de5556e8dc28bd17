"""Talking to an OAuth2 token endpoint (RFC 6749 §5): one form POST, its answer mapped to a token
response or to one of the two errors of the port.

TLS is verified (against `ca_file` when given), every call has a timeout and no redirect is
followed (a token endpoint that redirects is misconfigured, and the form carries secrets). No
message built here contains a token, secret, code or assertion: only the endpoint's host, the
HTTP status and the RFC 6749 error code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from triage.core.errors import ReauthorisationNeeded, TokenUnavailable

#: RFC 6749 §5.2 errors that no retry will cure: a person must sign in again (or fix the app).
REAUTH_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "access_denied",
        "consent_required",
        "interaction_required",
        "login_required",
    }
)
_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def safe_code(value: object) -> str:
    """An error code as printable, short text: codes are ASCII words (RFC 6749 §5.2); anything
    else is not repeated (it might echo what was sent)."""
    text = str(value)[:64]
    return text if text and set(text) <= _CODE_CHARS else "unknown_error"


def http_session(ca_file: Path | None, timeout: float) -> requests.Session:
    """A requests session that verifies TLS against `ca_file` (the system store without one)
    and times out, for libraries that take a session (msal). The two are bound to
    every request: a session-wide `verify` loses to REQUESTS_CA_BUNDLE in the environment."""
    session = requests.Session()
    verify: str | bool = str(ca_file) if ca_file else True
    session.request = functools.partial(  # type: ignore[method-assign]
        session.request, verify=verify, timeout=timeout
    )
    return session


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one token endpoint."""

    url: str
    ca_file: Path | None = None
    timeout: float = 30.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def host(self) -> str:
        """The endpoint's host, for messages."""
        return urlsplit(self.url).netloc


def call(name: str, endpoint: Endpoint, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST `form` to the endpoint: the HTTP status and the JSON object answered. Raises
    TokenUnavailable when there is no such answer (down, timeout, TLS, not JSON)."""
    where = f"{name}: token endpoint {endpoint.host}"
    try:
        response = endpoint.session.post(
            endpoint.url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=endpoint.timeout,
            verify=str(endpoint.ca_file) if endpoint.ca_file else True,
            allow_redirects=False,
        )
    except requests.Timeout:
        raise TokenUnavailable(f"{where} did not answer in {endpoint.timeout:g} s") from None
    except requests.exceptions.SSLError:
        raise TokenUnavailable(f"{where}: TLS certificate not trusted") from None
    except requests.RequestException as exc:
        raise TokenUnavailable(f"{where} unreachable ({type(exc).__name__})") from None
    with response:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
    if not isinstance(body, dict):
        raise TokenUnavailable(f"{where} answered HTTP {status} without a JSON object")
    return status, body


def post_form(name: str, endpoint: Endpoint, form: dict[str, str]) -> dict[str, Any]:
    """POST `form` to the endpoint; the JSON answer of a 200 with an access token. Raises
    ReauthorisationNeeded for the errors in REAUTH_ERRORS, TokenUnavailable for everything else
    (down, 5xx, garbage)."""
    status, body = call(name, endpoint, form)
    where = f"{name}: token endpoint {endpoint.host}"
    if status == 200:
        if not isinstance(body.get("access_token"), str) or not body["access_token"]:
            raise TokenUnavailable(f"{where} answered without an access_token")
        return body
    code = error_code(body)
    if status in (400, 401, 403) and code in REAUTH_ERRORS:
        raise ReauthorisationNeeded(name, code)
    raise TokenUnavailable(f"{where} answered HTTP {status} ({code})")


def error_code(body: dict[str, Any]) -> str:
    """The RFC 6749 `error` of an error answer, safe to print."""
    return safe_code(body.get("error", ""))


def expires_in(body: dict[str, Any], default: float = 3600.0) -> float:
    """The lifetime of the token in a token response, in seconds (default when absent/odd)."""
    try:
        value = float(body.get("expires_in", default))
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default
