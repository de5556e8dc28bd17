"""Obtaining a grant once, with a person: the flows behind `triage auth login` and `auth import`.

- `generic` and `google`: the device flow (RFC 8628) when `device_authorization_url` is set, else
  the authorisation-code flow with PKCE (RFC 7636) and a loopback redirect (RFC 8252 §7.3): a
  listener on 127.0.0.1 on a free port takes the browser's redirect, `state` is checked, the code
  exchanged for a refresh token.
- `microsoft-delegated`: msal's device-code flow; msal's token cache is the grant.
- `microsoft-app`, `google-service-account`: nothing to sign in to; a token is fetched to prove
  that the configuration works.

Storing a new grant clears the credential's needs-reauth state; a running daemon notices it at its
next attempt. Nothing here prints or raises a token, code, verifier or secret.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

from triage.core.errors import ReauthorisationNeeded, TriageError
from triage.core.settings import OAuth2Settings
from triage.ingest.oauth.endpoint import Endpoint, call, error_code, post_form
from triage.ingest.oauth.grants import GrantStore
from triage.ingest.oauth.providers import (
    delegated_scopes,
    make_provider,
    msal_error,
    public_client,
)

Say = Callable[[str], None]
REFRESH_TOKEN_PROVIDERS = ("generic", "google")
NO_LOGIN_PROVIDERS = ("microsoft-app", "google-service-account")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginFailed(TriageError):
    """Raised when signing in did not give a grant (refused, timed out, state mismatch)."""


def login(
    name: str,
    settings: OAuth2Settings,
    grants: GrantStore,
    say: Say,
    *,
    username: str = "",
    timeout: float = 300.0,
) -> str:
    """Sign credential `name` in and store its grant; returns a one-line summary."""
    if settings.provider in NO_LOGIN_PROVIDERS:
        token = make_provider(name, settings, grants, username).access_token(force=True)
        return (
            f"{name}: {settings.provider} needs no login; a token was obtained "
            f"(valid {token.seconds_left():.0f} s)"
        )
    if settings.provider == "microsoft-delegated":
        _microsoft_device_flow(name, settings, grants, say, timeout)
    elif settings.device_authorization_url:
        _store_refresh_token(name, settings, grants, _device_flow(name, settings, say, timeout))
    else:
        _store_refresh_token(name, settings, grants, _loopback_flow(name, settings, say, timeout))
    return f"{name}: signed in; the grant is stored"


def import_refresh_token(
    name: str, settings: OAuth2Settings, grants: GrantStore, refresh_token: str
) -> str:
    """Store a refresh token obtained elsewhere; returns a one-line summary."""
    if settings.provider in REFRESH_TOKEN_PROVIDERS:
        grants.store(name, settings.provider, refresh_token)
    elif settings.provider == "microsoft-delegated":
        import msal

        cache = msal.SerializableTokenCache()
        app = public_client(settings, cache)
        result = app.acquire_token_by_refresh_token(refresh_token, delegated_scopes(settings))
        if "access_token" not in result:
            raise LoginFailed(f"{name}: the refresh token was refused ({msal_error(name, result)})")
        grants.store(name, settings.provider, cache.serialize())
    else:
        raise LoginFailed(f"{name}: provider {settings.provider} uses no refresh token")
    return f"{name}: refresh token imported; the grant is stored"


def _store_refresh_token(
    name: str, settings: OAuth2Settings, grants: GrantStore, body: dict[str, Any]
) -> None:
    token = body.get("refresh_token")
    if not isinstance(token, str) or not token:
        hint = " (Google gives one with access_type=offline and prompt=consent)"
        raise LoginFailed(f"{name}: the token endpoint gave no refresh token{hint}")
    grants.store(name, settings.provider, token)


def _endpoint(settings: OAuth2Settings) -> Endpoint:
    return Endpoint(settings.effective_token_url(), settings.ca_file, settings.timeout)


def _client_form(settings: OAuth2Settings) -> dict[str, str]:
    form = {"client_id": settings.client_id}
    secret = settings.client_secret()
    if secret:
        form["client_secret"] = secret
    return form


def _exchange(name: str, settings: OAuth2Settings, form: dict[str, str]) -> dict[str, Any]:
    try:
        return post_form(name, _endpoint(settings), form | _client_form(settings))
    except ReauthorisationNeeded as exc:
        raise LoginFailed(f"{name}: the token endpoint refused the sign-in ({exc.code})") from None


# --- authorisation code + PKCE, loopback redirect ----------------------------------------------


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Redirect(BaseHTTPRequestHandler):
    """Takes the browser's redirect: remembers its query and says the tab may be closed."""

    received: ClassVar[dict[str, str]]  # set per listener (a subclass each)
    timeout = 10  # a connection that sends nothing cannot hold the login past its deadline

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        if "code" not in query and "error" not in query:
            self.send_error(404)
            return
        if not self.received:
            self.received.update({k: v[0] for k, v in query.items()})
        text = "Signed in: you can close this window." if "code" in query else "Sign-in failed."
        data = f"<!doctype html><title>triage</title><p>{text}</p>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line holds the authorisation code."""


def _loopback_flow(name: str, settings: OAuth2Settings, say: Say, timeout: float) -> dict[str, Any]:
    if not settings.effective_authorize_url():
        raise LoginFailed(f"{name}: set authorize_url (or device_authorization_url) to sign in")
    received: dict[str, str] = {}
    handler = type("Redirect", (_Redirect,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/"
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        params = {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        scope = settings.effective_scope()
        if scope:
            params["scope"] = " ".join(scope)
        if settings.provider == "google":
            # A refresh token only comes with offline access, and again only with consent.
            params |= {"access_type": "offline", "prompt": "consent"}
        url = settings.effective_authorize_url()
        url += ("&" if "?" in url else "?") + urlencode(params)
        say(f"Open this address in a browser and sign in as the mailbox's user:\n{url}")
        say(f"Waiting up to {timeout:g} s for the browser to come back to {redirect_uri} ...")
        deadline = time.monotonic() + timeout
        while not received:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoginFailed(f"{name}: no sign-in within {timeout:g} s")
            server.timeout = min(left, 1.0)
            server.handle_request()
    finally:
        server.server_close()
    if not secrets.compare_digest(received.get("state", ""), state):
        raise LoginFailed(f"{name}: the redirect's state does not match this login; try again")
    if "error" in received:
        raise LoginFailed(f"{name}: the sign-in was refused ({error_code(received)})")
    form = {
        "grant_type": "authorization_code",
        "code": received["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return _exchange(name, settings, form)


# --- device flow (RFC 8628) ---------------------------------------------------------------------


def _device_flow(name: str, settings: OAuth2Settings, say: Say, timeout: float) -> dict[str, Any]:
    device = Endpoint(settings.device_authorization_url, settings.ca_file, settings.timeout)
    form = _client_form(settings)
    scope = settings.effective_scope()
    if scope:
        form["scope"] = " ".join(scope)
    status, body = call(name, device, form)
    if status != 200 or not isinstance(body.get("device_code"), str):
        raise LoginFailed(f"{name}: the device authorisation failed ({error_code(body)})")
    uri = body.get("verification_uri_complete") or body.get("verification_uri", "")
    say(f"Open {uri} in a browser and enter the code {body.get('user_code', '')}")
    interval = float(body.get("interval", 5))
    deadline = time.monotonic() + min(timeout, float(body.get("expires_in", timeout)))
    poll = {"grant_type": DEVICE_GRANT, "device_code": body["device_code"]} | _client_form(settings)
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, answer = call(name, _endpoint(settings), poll)
        if status == 200 and isinstance(answer.get("access_token"), str):
            return answer
        code = error_code(answer)
        if code == "slow_down":
            interval += 5
        elif code != "authorization_pending":
            raise LoginFailed(f"{name}: the sign-in was not completed ({code})")
    raise LoginFailed(f"{name}: no sign-in within {timeout:g} s")


def _microsoft_device_flow(
    name: str, settings: OAuth2Settings, grants: GrantStore, say: Say, timeout: float
) -> None:
    import msal

    cache = msal.SerializableTokenCache()
    app = public_client(settings, cache)
    flow = app.initiate_device_flow(scopes=delegated_scopes(settings))
    if "user_code" not in flow:
        raise LoginFailed(
            f"{name}: the device-code sign-in could not start ({msal_error(name, flow)})"
        )
    say(str(flow.get("message", "")))
    flow["expires_at"] = min(
        float(flow.get("expires_at", 0)) or time.time() + timeout, time.time() + timeout
    )
    result = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result:
        raise LoginFailed(f"{name}: the sign-in was not completed ({msal_error(name, result)})")
    grants.store(name, settings.provider, cache.serialize())
