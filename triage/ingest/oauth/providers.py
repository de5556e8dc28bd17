"""Token providers: one per configured credential, behind the `TokenProvider` port.

Every provider caches its access token until `refresh_margin` seconds before it expires and is
safe to share between threads (the IMAP and SMTP threads use one credential when
`smtp.oauth2_account` names an IMAP account). Providers with a stored grant re-read it from the
store before each refresh, so a `triage auth login` by another process takes effect without a
restart, and save a rotated grant in one transaction the moment the token response arrives,
before the access token is handed out.

A provider that failed with `ReauthorisationNeeded` records it in the store (state
`needs-reauth` with the error code) and does not contact the endpoint again until something a
person changes: the stored row (a login, an import) or one of the credential's files (a new client
secret). Until then every call raises the same error at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.core.errors import ConfigError, ReauthorisationNeeded, TokenUnavailable, TriageError
from triage.core.settings import (
    GOOGLE_TOKEN_URL,
    OAuth2Settings,
    check_endpoint_url,
    read_secret_file,
)
from triage.ingest.oauth.endpoint import (
    REAUTH_ERRORS,
    Endpoint,
    expires_in,
    http_session,
    post_form,
    safe_code,
)
from triage.ingest.oauth.grants import GrantStore
from triage.ingest.oauth.tokens import AccessToken, TokenProvider

if TYPE_CHECKING:
    from triage.core.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: The error code of a credential that never had a grant stored.
NO_GRANT = "no_grant"
#: The error code when the credential's files or the key file are unusable (see the detail).
CONFIG_ERROR = "config_error"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Failure:
    """Why the last attempt needed a person, and what the world looked like then."""

    error: ReauthorisationNeeded
    fingerprint: tuple[int | None, ...]


class BaseProvider:
    """The caching, locking and needs-reauth bookkeeping every provider shares; subclasses
    implement `_fetch` (one round trip to the token endpoint)."""

    kind = ""

    def __init__(
        self,
        name: str,
        settings: OAuth2Settings,
        grants: GrantStore,
        username: str = "",
        clock: Clock = _now,
    ) -> None:
        self._name = name
        self.settings = settings
        self.grants = grants
        self.username = username
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self._margin = settings.refresh_margin
        self._failure: _Failure | None = None

    @property
    def name(self) -> str:
        """The credential's name: the IMAP account name, or `smtp`."""
        return self._name

    @property
    def provider(self) -> str:
        """The configured provider kind."""
        return self.settings.provider

    @property
    def needs_reauth(self) -> ReauthorisationNeeded | None:
        """The error this provider is stuck on until a person acts, or None (also once a person
        acted: a new login, a changed file; the next use tries again). A credential used only
        when there is mail to send may not be used for hours after the login."""
        failure = self._failure
        if failure is None:
            return None
        try:
            changed = self._fingerprint() != failure.fingerprint
        except TriageError:
            changed = False  # the store cannot be read now: still what we last knew
        return None if changed else failure.error

    def access_token(self, *, force: bool = False) -> AccessToken:
        """A token valid for at least `refresh_margin` seconds; `force` fetches a new one."""
        with self._lock:
            cached = self._cached
            if (
                not force
                and cached is not None
                and cached.seconds_left(self._clock()) > self._margin
            ):
                return cached
            self._cached = None
            token = self._attempt(force)
            # After every fetch (once per token's life), not only after this provider's own
            # failure: another process sharing the store (`triage doctor`) may have recorded
            # needs-reauth meanwhile, and a grant that gives tokens is ok.
            if self.grants.clear_needs_reauth(self.name):
                log.info("%s: OAuth2 token obtained again", self.name)
            self._cached = token
            return token

    def _attempt(self, force: bool) -> AccessToken:
        # At most twice: when a login replaced the grant while the first try failed, the
        # failure was the old grant's and the new one is tried at once.
        for _ in range(2):
            generation = self.grants.generation(self.name)
            fingerprint = (generation, *self._file_stamps())
            if self._failure is not None:
                if fingerprint == self._failure.fingerprint:
                    raise self._failure.error
                self._failure = None
            try:
                return self._fetch_or_explain(force)
            except ReauthorisationNeeded as exc:
                if not self.grants.mark_needs_reauth(
                    self.name, self.provider, exc.code, generation
                ):
                    continue
                self._failure = _Failure(exc, self._fingerprint())
                log.warning("%s: OAuth2 needs re-authorisation (%s)", self.name, exc.code)
                raise
        raise TokenUnavailable(f"{self.name}: the stored grant keeps changing; try again")

    def _fetch_or_explain(self, force: bool) -> AccessToken:
        try:
            return self._fetch(force=force)
        except ConfigError as exc:
            # An unreadable secret file, a key file that does not fit: a person must act, for
            # this credential only; the other accounts go on (the port's second kind).
            raise ReauthorisationNeeded(self.name, CONFIG_ERROR, str(exc)) from exc

    def _fingerprint(self) -> tuple[int | None, ...]:
        """What a person may change to cure a failure: the stored row's generation first, then
        the credential files' change times."""
        return (self.grants.generation(self.name), *self._file_stamps())

    def _file_stamps(self) -> tuple[int | None, ...]:
        stamps: list[int | None] = []
        for path in self._files():
            try:
                # ctime: changes with the content and with a chmod (a fixed mode counts).
                stamps.append(path.stat().st_ctime_ns)
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _files(self) -> list[Path]:
        s = self.settings
        files = (s.client_secret_file, s.certificate_file, s.certificate_key_file)
        return [p for p in (*files, s.service_account_file) if p is not None]

    def _fetch(self, *, force: bool) -> AccessToken:
        raise NotImplementedError

    def _token(self, access_token: str, lifetime: float) -> AccessToken:
        # Refreshed `refresh_margin` before expiry, or at half its life for a token shorter
        # than twice the margin (else every call would fetch a new one).
        self._margin = min(self.settings.refresh_margin, lifetime / 2)
        return AccessToken(access_token, self._clock() + timedelta(seconds=lifetime))


class RefreshTokenProvider(BaseProvider):
    """`generic` and `google`: the refresh-token grant (RFC 6749 §6) against a token endpoint,
    client authentication by `client_secret_post`; the refresh token lives in the grant store."""

    kind = "refresh-token"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self.endpoint = Endpoint(s.effective_token_url(), s.ca_file, s.timeout)

    def _fetch(self, *, force: bool) -> AccessToken:
        grant = self.grants.read(self.name)
        if grant is None:
            raise ReauthorisationNeeded(self.name, NO_GRANT, f"run `triage auth login {self.name}`")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": grant.secret,
            "client_id": self.settings.client_id,
        }
        secret = self.settings.client_secret()
        if secret:
            form["client_secret"] = secret
        scope = self.settings.effective_scope()
        if scope:
            form["scope"] = " ".join(scope)
        body = post_form(self.name, self.endpoint, form)
        rotated = body.get("refresh_token")
        fresh = isinstance(rotated, str) and rotated and rotated != grant.secret
        # Saved before the access token is handed out: a crash after this line loses only an
        # access token, while the endpoint may already have revoked the old refresh token.
        if fresh and not self.grants.rotate(self.name, grant.row, str(rotated)):
            log.info("%s: a newer grant was stored meanwhile; keeping it", self.name)
        return self._token(str(body["access_token"]), expires_in(body))


# --- Microsoft (msal) ---------------------------------------------------------------------------

#: AADSTS codes after which only a person helps: an expired or wrong client secret, an expired or
#: revoked grant, missing consent, a disabled or deleted app or user, MFA or a policy required.
REAUTH_AADSTS = frozenset(
    {
        7000222,  # the client secret expired
        7000215,  # an invalid client secret
        700027,  # the certificate's signature did not verify
        70008,  # the refresh token expired or was revoked
        700082,  # the refresh token expired for inactivity
        50173,  # the grant expired (password changed)
        65001,  # consent required
        50076,  # MFA required
        50079,  # MFA enrolment required
        53003,  # blocked by a conditional access policy
        700016,  # the application was not found in the tenant
        50034,  # the user does not exist
        50057,  # the user is disabled
        90002,  # the tenant does not exist
    }
)


def msal_error(name: str, result: Mapping[str, Any]) -> ReauthorisationNeeded | TokenUnavailable:
    """The port's error for msal's error dict (`error`, `error_codes`, `error_description`);
    never includes the description (it may quote a request)."""
    error = safe_code(result.get("error", ""))
    codes = [c for c in result.get("error_codes") or () if isinstance(c, int)]
    code = f"AADSTS{codes[0]}" if codes else error
    if error in REAUTH_ERRORS or any(c in REAUTH_AADSTS for c in codes):
        return ReauthorisationNeeded(name, code)
    return TokenUnavailable(f"{name}: Microsoft token endpoint answered {code}")


def _msal_kwargs(settings: OAuth2Settings, session: Any = None) -> dict[str, Any]:
    """The options both msal applications take: the authority, and the HTTP session that
    verifies TLS (`ca_file`) and times out (a new one unless given)."""
    authority = settings.effective_authority()
    return {
        "authority": authority,
        # Instance discovery asks login.microsoftonline.com about the authority's host; only
        # meaningful (and only reachable) for Microsoft's own hosts.
        "instance_discovery": authority.startswith("https://login.microsoftonline.com/"),
        "http_client": session or http_session(settings.ca_file, settings.timeout),
    }


def _msal_call(name: str, call: Callable[[], Any]) -> Any:
    """Run an msal call, turning its network and discovery failures into TokenUnavailable."""
    import requests

    try:
        return call()
    except requests.RequestException as exc:
        raise TokenUnavailable(
            f"{name}: Microsoft token endpoint unreachable ({type(exc).__name__})"
        ) from None
    except ValueError as exc:
        # msal raises ValueError when the authority's metadata cannot be fetched or read.
        raise TokenUnavailable(
            f"{name}: Microsoft authority unusable ({type(exc).__name__})"
        ) from None


def _check_private_key(key: str, path: Path) -> None:
    """A ConfigError unless `key` is an unencrypted PEM private key: msal would only fail when
    signing, with an exception of PyJWT's that neither of the port's errors covers."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(key.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"certificate_key_file {path} does not hold an unencrypted PEM private key"
        ) from None


class MicrosoftAppProvider(BaseProvider):
    """`microsoft-app`: the client-credentials grant for an app granted IMAP.AccessAsApp /
    SMTP.SendAsApp; client secret or certificate from files, read at every fetch (a replaced
    secret file is used without a restart). No refresh token, nothing stored."""

    kind = "client-credentials"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One session for the applications made at each fetch: connections are reused.
        self._session = http_session(self.settings.ca_file, self.settings.timeout)

    def _credential(self) -> str | dict[str, str]:
        s = self.settings
        if s.certificate_key_file is None:
            return s.client_secret()
        key = read_secret_file(s.certificate_key_file, "certificate_key_file").get_secret_value()
        _check_private_key(key, s.certificate_key_file)
        credential = {"private_key": key}
        if s.certificate_thumbprint:
            credential["thumbprint"] = s.certificate_thumbprint
        if s.certificate_file is not None:
            try:
                credential["public_certificate"] = s.certificate_file.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read certificate_file {s.certificate_file}: {exc.strerror}"
                ) from None
        return credential

    def _fetch(self, *, force: bool) -> AccessToken:
        import msal

        s = self.settings
        credential = self._credential()
        # A new application each time: msal's own cache would hand back the token a server
        # just rejected; ours (BaseProvider) already avoids needless round trips.
        app = _msal_call(
            self.name,
            lambda: msal.ConfidentialClientApplication(
                s.client_id, client_credential=credential, **_msal_kwargs(s, self._session)
            ),
        )
        result = _msal_call(
            self.name, lambda: app.acquire_token_for_client(scopes=list(s.effective_scope()))
        )
        if not isinstance(result, dict):
            raise TokenUnavailable(f"{self.name}: Microsoft token endpoint gave no answer")
        if "access_token" not in result:
            raise msal_error(self.name, result)
        return self._token(str(result["access_token"]), expires_in(result))


def delegated_scopes(settings: OAuth2Settings) -> list[str]:
    # msal adds openid, profile and offline_access itself and refuses them when given.
    reserved = {"openid", "profile", "offline_access"}
    return [s for s in settings.effective_scope() if s not in reserved]


def public_client(settings: OAuth2Settings, cache: Any) -> Any:
    """The msal application of a `microsoft-delegated` credential with `cache` as token cache
    (also used by `triage auth login`)."""
    import msal

    return msal.PublicClientApplication(
        settings.client_id, token_cache=cache, **_msal_kwargs(settings)
    )


def _cached_refresh_token(cache: Any) -> str | None:
    """The refresh token in an msal token cache, when there is one."""
    found = cache.search(cache.CredentialType.REFRESH_TOKEN)
    for entry in found:
        secret = entry.get("secret")
        if isinstance(secret, str) and secret:
            return secret
    return None


class MicrosoftDelegatedProvider(BaseProvider):
    """`microsoft-delegated`: a user's grant obtained by `triage auth login` (device code);
    msal's serialised token cache (holding the refresh token) is the stored grant, loaded before
    every refresh and saved the moment msal changed it (a rotated refresh token)."""

    kind = "delegated"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app: Any = None
        self._cache: Any = None

    def _fetch(self, *, force: bool) -> AccessToken:
        import msal

        grant = self.grants.read(self.name)
        if grant is None:
            raise ReauthorisationNeeded(self.name, NO_GRANT, f"run `triage auth login {self.name}`")
        if self._app is None:
            self._cache = msal.SerializableTokenCache()
            self._app = _msal_call(self.name, lambda: public_client(self.settings, self._cache))
        try:
            self._cache.deserialize(grant.secret)
        except ValueError:
            # Not msal's cache (a grant stored while the credential had another provider):
            # only a new sign-in helps; the text of the grant is not repeated.
            raise ReauthorisationNeeded(
                self.name, "unusable_grant", f"run `triage auth login {self.name}`"
            ) from None
        scopes = delegated_scopes(self.settings)
        app = self._app
        accounts = app.get_accounts(username=self.username or None) or app.get_accounts()
        if accounts:
            result = _msal_call(
                self.name,
                lambda: app.acquire_token_silent_with_error(
                    scopes, account=accounts[0], force_refresh=force
                ),
            )
        else:
            # A cache whose token responses named no account (no client_info: a grant imported
            # from elsewhere, or a server that is not Azure AD) holds the refresh token alone.
            result = self._refresh_without_account(app, scopes)
        if self._cache.has_state_changed:  # a rotated refresh token: saved before returning
            self.grants.rotate(self.name, grant.row, self._cache.serialize())
            self._cache.has_state_changed = False
        if result is None:
            raise ReauthorisationNeeded(self.name, NO_GRANT, f"run `triage auth login {self.name}`")
        if "access_token" not in result:
            raise msal_error(self.name, result)
        return self._token(str(result["access_token"]), expires_in(result))

    def _refresh_without_account(self, app: Any, scopes: list[str]) -> Any:
        refresh_token = _cached_refresh_token(self._cache)
        if refresh_token is None:
            return None
        return _msal_call(
            self.name, lambda: app.acquire_token_by_refresh_token(refresh_token, scopes)
        )


# --- Google service account ---------------------------------------------------------------------


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: How long an assertion is valid (Google accepts at most an hour).
ASSERTION_LIFETIME = 3600


class GoogleServiceAccountProvider(BaseProvider):
    """`google-service-account`: the JWT-bearer grant (RFC 7523) signed with a service account's
    key (domain-wide delegation), impersonating `subject` or the mailbox's user. The key file is
    read at every fetch (checked private; a replaced key is used without a restart); its
    `token_uri` (or `token_url`) is the endpoint and the assertion's audience, as Google asks."""

    kind = "jwt-bearer"

    def _fetch(self, *, force: bool) -> AccessToken:
        import jwt

        s = self.settings
        assert s.service_account_file is not None
        where = f"service_account_file {s.service_account_file}"
        text = read_secret_file(s.service_account_file, "service_account_file").get_secret_value()
        try:
            info = json.loads(text)
            issuer = str(info["client_email"])
            key = str(info["private_key"])
            key_id = str(info.get("private_key_id", ""))
            token_uri = s.token_url or str(info.get("token_uri") or GOOGLE_TOKEN_URL)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{where} is not a service-account key (JSON)") from None
        try:
            check_endpoint_url(token_uri, f"the token_uri of {where}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        now = int(self._clock().timestamp())
        claims = {
            "iss": issuer,
            "sub": s.subject or self.username,
            "scope": " ".join(s.effective_scope()),
            "aud": token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        try:
            assertion = jwt.encode(
                claims, key, algorithm="RS256", headers={"kid": key_id} if key_id else None
            )
        except (ValueError, TypeError, jwt.PyJWTError):
            raise ConfigError(f"the private_key of {where} cannot sign (not an RSA key)") from None
        endpoint = Endpoint(token_uri, s.ca_file, s.timeout)
        body = post_form(
            self.name, endpoint, {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        )
        return self._token(str(body["access_token"]), expires_in(body))


# --- the factory --------------------------------------------------------------------------------

_KINDS: dict[str, type[BaseProvider]] = {
    "generic": RefreshTokenProvider,
    "google": RefreshTokenProvider,
    "microsoft-app": MicrosoftAppProvider,
    "microsoft-delegated": MicrosoftDelegatedProvider,
    "google-service-account": GoogleServiceAccountProvider,
}


def make_provider(
    name: str,
    settings: OAuth2Settings,
    grants: GrantStore,
    username: str = "",
    clock: Clock = _now,
) -> BaseProvider:
    """The provider for credential `name` configured by `settings`; `username` is the mailbox
    login (the service account's default subject, msal's account)."""
    return _KINDS[settings.provider](name, settings, grants, username, clock)


def grant_store(settings: Settings) -> GrantStore:
    """The grant store of these settings: the store's database, the `[oauth2] key_file`."""
    return GrantStore(settings.store, settings.oauth2_key_file())


@dataclass(frozen=True)
class Credential:
    """One OAuth2 credential of the settings: its name, settings and login user."""

    name: str
    settings: OAuth2Settings
    username: str


SMTP = "smtp"


def credentials(settings: Settings) -> dict[str, Credential]:
    """Every OAuth2 credential the settings configure, by name: each IMAP account with
    auth = "oauth2", and `smtp` when SMTP has its own `[smtp.oauth2]` table."""
    found = {
        a.name: Credential(a.name, a.oauth2, a.username)
        for a in settings.imap.all_accounts()
        if a.auth == "oauth2" and a.oauth2 is not None
    }
    if settings.smtp.auth == "oauth2" and settings.smtp.oauth2 is not None:
        found[SMTP] = Credential(SMTP, settings.smtp.oauth2, settings.smtp.username)
    return found


def smtp_credential_name(settings: Settings) -> str | None:
    """The credential SMTP logs in with: `smtp`, the IMAP account of `oauth2_account`, or None
    with a password login."""
    if settings.smtp.auth != "oauth2":
        return None
    return settings.smtp.oauth2_account or SMTP


def build_providers(
    settings: Settings, grants: GrantStore | None = None, clock: Clock = _now
) -> dict[str, TokenProvider]:
    """A provider for every IMAP account with OAuth2 (by account name) and, under the key
    `smtp`, the one SMTP logs in with: the same object as its IMAP account's with
    `oauth2_account` (one cache, one lock, one stored grant), else its own."""
    grants = grants or grant_store(settings)
    providers: dict[str, TokenProvider] = {
        c.name: make_provider(c.name, c.settings, grants, c.username, clock)
        for c in credentials(settings).values()
    }
    shared = smtp_credential_name(settings)
    if shared is not None and shared != SMTP:
        providers[SMTP] = providers[shared]
    return providers
