"""The port between mailbox logins and OAuth2 token providers.

IMAP and SMTP code asks a `TokenProvider` for an `AccessToken` and never sees how it was obtained.
A provider refreshes ahead of expiry by itself; after the server rejects a token, the caller asks
again with `force=True`. Two kinds of failure reach the caller, by class:

- `TokenUnavailable` (transient): the token endpoint is down or answered garbage; retry with
  backoff, as for an IMAP outage.
- `ReauthorisationNeeded` (permanent until a person acts): `invalid_grant`, a revoked consent, an
  expired client secret. The account stops until `triage auth login` (or `auth import`) stores a
  new grant; the provider notices the new grant in the store without a restart.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from triage.core.errors import ReauthorisationNeeded, TokenUnavailable

__all__ = [
    "AccessToken",
    "ReauthorisationNeeded",
    "TokenProvider",
    "TokenUnavailable",
    "oauthbearer_response",
    "xoauth2_response",
]


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it stops working. The token never appears in repr or logs."""

    token: str = field(repr=False)
    expires_at: datetime

    def seconds_left(self, now: datetime | None = None) -> float:
        """Seconds until expiry (negative once expired)."""
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()


class TokenProvider(Protocol):
    """Gives access tokens for one configured credential (an IMAP account or the SMTP login)."""

    @property
    def name(self) -> str:
        """The credential's name: the IMAP account name, or `smtp`."""
        ...

    @property
    def provider(self) -> str:
        """The configured provider kind, e.g. `generic` or `microsoft-app`."""
        ...

    def access_token(self, *, force: bool = False) -> AccessToken:
        """A token valid for at least the refresh margin; `force` skips any cached token (after
        the server rejected it). Raises TokenUnavailable or ReauthorisationNeeded."""
        ...

    @property
    def needs_reauth(self) -> ReauthorisationNeeded | None:
        """The error of a grant that stopped working (a person must sign in again), else None."""
        ...


def xoauth2_response(user: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format), unencoded."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer_response(user: str, token: str, host: str = "", port: int = 0) -> bytes:
    """The SASL OAUTHBEARER initial response of RFC 7628, unencoded."""
    gs2 = f"n,a={user},"
    fields = [gs2]
    if host:
        fields.append(f"host={host}")
    if port:
        fields.append(f"port={port}")
    fields.append(f"auth=Bearer {token}")
    return ("\x01".join(fields) + "\x01\x01").encode()


def b64(data: bytes) -> str:
    """Base64 text of `data`, for SMTP AUTH lines."""
    return base64.b64encode(data).decode("ascii")
