"""Settings: the only place that reads the environment and configuration files.

Values come, highest priority first, from `TRIAGE_…` environment variables (nested with `__`, e.g.
`TRIAGE_IMAP__PASSWORD`), the TOML file (`--config FILE` or `TRIAGE_CONFIG`), and the defaults here.
Secrets may also come from files (`password_file = "/etc/triage/imap.pass"`). Everything is
validated once into typed, frozen objects that are passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from triage.core.errors import ConfigError
from triage.core.hosts import is_loopback
from triage.core.models import LABELS

CONFIG_ENV = "TRIAGE_CONFIG"
#: The model and reply templates that come with triage, installed as package data; the defaults
#: of `classifier.model_path` and `replies.templates_dir`, so triage works from any directory
#: without configuration. (In the repository these are symlinks to classifiers/ and templates/.)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"
SHIPPED_MODEL = SHIPPED_DIR / "model.skops"
SHIPPED_TEMPLATES = SHIPPED_DIR / "templates"
Security = Literal["tls", "starttls", "plain"]
Port = Annotated[int, Field(ge=1, le=65535)]


def default_data_dir() -> Path:
    """Where the store lives unless configured: the user's data directory (XDG on Linux)."""
    from platformdirs import user_data_dir  # local: keeps `import triage.core.settings` cheap

    return Path(user_data_dir("triage", appauthor=False))


class _Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: Path, setting: str) -> SecretStr:
    try:
        with path.open("rb") as fh:
            # The mode of the file read, not of a path that may have changed meanwhile.
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read {setting} {path}: {exc.strerror}") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        raise ValueError(
            f"{setting} {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {setting} {path}: not UTF-8 text") from None
    if not value:
        raise ValueError(f"{setting} {path} is empty")
    return SecretStr(value)


def read_secret_file(path: Path, setting: str) -> SecretStr:
    """A secret from a file readable by its owner only, for secrets read when first needed (an
    OAuth2 client secret): raises `ConfigError` naming the setting instead of `ValueError`."""
    try:
        return _read_secret_file(path, setting)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


AuthKind = Literal["password", "oauth2"]
OAuth2Provider = Literal[
    "generic", "microsoft-app", "microsoft-delegated", "google", "google-service-account"
]
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (an address)
GOOGLE_AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_DEVICE_URL = "https://oauth2.googleapis.com/device/code"
GOOGLE_SCOPE = ("https://mail.google.com/",)
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com/{tenant}"
MICROSOFT_APP_SCOPE = ("https://outlook.office365.com/.default",)
MICROSOFT_DELEGATED_SCOPE = (
    "https://outlook.office365.com/IMAP.AccessAsUser.All",
    "https://outlook.office365.com/SMTP.Send",
)


# Separates the mistakes one validator finds; each becomes its own line (describe_validation_error).
_MISTAKES = "\n"


def check_endpoint_url(value: str, setting: str) -> None:
    """An endpoint that receives secrets: https, or http to this machine only (tests)."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ValueError(f"{setting} must be an https:// address (http only to loopback)")


class OAuth2Settings(_Section):
    """How one credential gets OAuth2 access tokens (`[imap.oauth2]`, `[imap.accounts.oauth2]`,
    `[smtp.oauth2]`).

    Only file paths are held here; the secrets in them (client secret, certificate key,
    service-account key) are read when a token is first needed, so a process that never logs in
    to the mailbox (the console) does not need them.
    """

    provider: OAuth2Provider
    # The SASL mechanism the mailbox logins use: XOAUTH2 (Google's and Microsoft's) or the
    # standard OAUTHBEARER (RFC 7628).
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    client_id: str = ""
    client_secret_file: Path | None = None
    token_url: str = ""
    authorize_url: str = ""
    device_authorization_url: str = ""
    authority: str = ""
    tenant: str = ""
    certificate_file: Path | None = None
    certificate_key_file: Path | None = None
    certificate_thumbprint: str = ""
    service_account_file: Path | None = None
    subject: str = ""
    scope: tuple[str, ...] = ()
    client_secret_expires: date | None = None
    # Days after a sign-in at which the provider ends its refresh token whatever the use (a
    # Google app in "Testing" publishing status: 7); warned about 2 days ahead.
    grant_lifetime_days: Annotated[int, Field(ge=1)] | None = None
    ca_file: Path | None = None
    refresh_margin: Annotated[float, Field(ge=0, le=3600)] = 300.0
    timeout: Annotated[float, Field(gt=0, le=300)] = 30.0

    @model_validator(mode="after")
    def _check_provider_fields(self) -> Self:
        problems = self._missing()
        for setting in ("token_url", "authorize_url", "device_authorization_url", "authority"):
            value = getattr(self, setting)
            if value:
                try:
                    check_endpoint_url(value, setting)
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise ValueError(_MISTAKES.join(problems))
        return self

    def _missing(self) -> list[str]:
        need: tuple[str, ...] = ()
        problems = []
        match self.provider:
            case "generic":
                need = ("token_url", "client_id")
            case "microsoft-app":
                need = ("tenant", "client_id")
                if not self.client_secret_file and not self.certificate_key_file:
                    problems.append(
                        "provider microsoft-app needs client_secret_file or certificate_key_file"
                    )
                if self.certificate_key_file and not (
                    self.certificate_file or self.certificate_thumbprint
                ):
                    problems.append(
                        "certificate_key_file needs certificate_file or certificate_thumbprint"
                    )
            case "microsoft-delegated":
                need = ("tenant", "client_id")
            case "google":
                need = ("client_id", "client_secret_file")
            case "google-service-account":
                need = ("service_account_file",)
        problems[:0] = [
            f"provider {self.provider} needs {setting}"
            for setting in need
            if not getattr(self, setting)
        ]
        return problems

    def effective_token_url(self) -> str:
        """The token endpoint of a refresh-token provider (generic, google)."""
        if self.provider == "google":
            return self.token_url or GOOGLE_TOKEN_URL
        return self.token_url

    def effective_authorize_url(self) -> str:
        """Where a person signs in during `triage auth login` (generic, google)."""
        if self.provider == "google":
            return self.authorize_url or GOOGLE_AUTHORIZE_URL
        return self.authorize_url

    def effective_authority(self) -> str:
        """The Microsoft authority (`https://login.microsoftonline.com/{tenant}` by default)."""
        return (self.authority or MICROSOFT_AUTHORITY).replace("{tenant}", self.tenant)

    def effective_scope(self) -> tuple[str, ...]:
        """The scopes asked for: the configured ones, else the provider's default."""
        if self.scope:
            return self.scope
        match self.provider:
            case "google" | "google-service-account":
                return GOOGLE_SCOPE
            case "microsoft-app":
                return MICROSOFT_APP_SCOPE
            case "microsoft-delegated":
                return MICROSOFT_DELEGATED_SCOPE
            case _:
                return ()

    def client_secret(self) -> str:
        """The client secret from `client_secret_file` ("" when none is configured); read now,
        checked to be private (raises ConfigError)."""
        if self.client_secret_file is None:
            return ""
        return read_secret_file(self.client_secret_file, "client_secret_file").get_secret_value()


class _Credentials(_Section):
    """A login with a password given directly (env) or in a file (`password_file`), or with
    OAuth2 (`auth = "oauth2"` and an `oauth2` table)."""

    username: str = ""
    password: SecretStr | None = None
    password_file: Path | None = None
    auth: AuthKind = "password"
    oauth2: OAuth2Settings | None = None

    @model_validator(mode="after")
    def _load_password_file(self) -> Self:
        # With OAuth2 a password is refused (below), not read.
        if self.auth == "password" and self.password is None and self.password_file is not None:
            secret = _read_secret_file(self.password_file, "password_file")
            object.__setattr__(self, "password", secret)
        return self

    def secret(self) -> str:
        """The password in clear, for the login call only."""
        return self.password.get_secret_value() if self.password else ""

    def _auth_problems(self, own_table: bool = True) -> list[str]:
        """What is wrong with the auth settings; `own_table` False when the credential may come
        from elsewhere (SMTP's `oauth2_account`)."""
        if self.auth == "password":
            if self.oauth2 is not None:
                return ["an oauth2 table needs auth = 'oauth2'"]
            return []
        problems = []
        if self.oauth2 is None and own_table:
            problems.append("auth = 'oauth2' needs an oauth2 table (provider = ...)")
        # A password next to OAuth2 would never be used: refused, so that nobody believes it
        # is a fallback, and no unused secret lies around.
        if self.password is not None or self.password_file is not None:
            problems.append("password and password_file are not used with auth = 'oauth2'")
        return problems


class ImapAccount(_Credentials):
    """One IMAP mailbox account watched by the daemon."""

    name: str = "default"
    host: str = "127.0.0.1"
    port: Port = 993
    security: Security = "tls"
    ca_file: Path | None = None
    verify_certificates: bool = True
    allow_plain: bool = False
    folders: tuple[str, ...] = ("INBOX",)
    idle: bool = True
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 60.0
    timeout: Annotated[float, Field(gt=0)] = 30.0
    # Dovecot and most servers drop an idle client after 30 minutes (RFC 2177): renew before.
    idle_renew: Annotated[float, Field(gt=0, le=29 * 60)] = 25 * 60.0

    @model_validator(mode="after")
    def _check_login(self) -> Self:
        problems = self._auth_problems()
        if not self.username:
            problems.append("username is required")
        if self.auth == "password" and self.password is None:
            problems.append("password is missing: set password_file or TRIAGE_IMAP__PASSWORD")
        if self.security == "plain" and not self.allow_plain and not is_loopback(self.host):
            what = "the password" if self.auth == "password" else "the access token"
            problems.append(
                f"security = 'plain' sends {what} in clear to {self.host}; "
                "use tls/starttls or set allow_plain = true"
            )
        if problems:
            raise ValueError(_MISTAKES.join(problems))
        return self


class ImapSettings(ImapAccount):
    """The primary IMAP account plus any further accounts in `[[imap.accounts]]`."""

    accounts: tuple[ImapAccount, ...] = ()

    def all_accounts(self) -> tuple[ImapAccount, ...]:
        """Every configured account, the primary first; names are unique."""
        primary = ImapAccount.model_validate(
            self.model_dump(exclude={"accounts"}) | {"password": self.password}
        )
        return (primary, *self.accounts)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [self.name, *(a.name for a in self.accounts)]
        if len(set(names)) != len(names):
            raise ValueError(f"account names must be unique, got {names}")
        return self


class SmtpSettings(_Credentials):
    """The SMTP server replies and digests are sent through."""

    host: str = "127.0.0.1"
    port: Port = 587
    security: Security = "starttls"
    ca_file: Path | None = None
    verify_certificates: bool = True
    allow_plain: bool = False
    timeout: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1)] = 50
    retry_initial: Annotated[float, Field(gt=0)] = 5.0
    retry_max: Annotated[float, Field(gt=0)] = 900.0
    # Log in with this IMAP account's OAuth2 credential (one Microsoft or Google grant covers
    # IMAP and SMTP) instead of an own `[smtp.oauth2]` table; username defaults to its username.
    oauth2_account: str = ""

    @model_validator(mode="after")
    def _check_plain(self) -> Self:
        problems = self._auth_problems(own_table=not self.oauth2_account)
        if self.security == "plain" and not self.allow_plain and not is_loopback(self.host):
            problems.append(
                f"security = 'plain' to {self.host} is unencrypted; "
                "use tls/starttls or set allow_plain = true"
            )
        if self.auth == "password":
            if self.username and self.password is None:
                problems.append("username is set but password is missing")
            if self.oauth2_account:
                problems.append("oauth2_account needs auth = 'oauth2'")
        else:
            if self.oauth2 is not None and self.oauth2_account:
                problems.append("set either an oauth2 table or oauth2_account, not both")
            if self.oauth2 is not None and not self.username:
                problems.append("username is required with auth = 'oauth2'")
        if problems:
            raise ValueError(_MISTAKES.join(problems))
        return self


class GrantStoreSettings(_Section):
    """`[oauth2]`: the key that encrypts the OAuth2 grants (refresh tokens) kept in the store."""

    # A Fernet key; default `oauth2.key` next to the store. Created (0600) by the first
    # `triage auth login` or `triage auth import`.
    key_file: Path | None = None


class StoreSettings(_Section):
    """Where the store lives: a SQLite file (`path`, the embedded default), or a PostgreSQL
    database (`url`, for several instances sharing the mailboxes)."""

    path: Path = Field(default_factory=lambda: default_data_dir() / "triage.db")
    # postgresql://user@host:5432/dbname; the password from `password_file` (or libpq's
    # PGPASSWORD / ~/.pgpass), never in this file. Set: `path` is not used.
    url: str = ""
    password_file: Path | None = None
    # Connections this process keeps open at most (every thread borrows one per transaction).
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 10
    # Seconds a thread waits for a free connection before the attempt counts as an outage.
    pool_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            raise ValueError(
                "url must look like postgresql://user@host:5432/dbname (only PostgreSQL)"
            )
        if parts.password:
            raise ValueError("url holds a password: put it in password_file (mode 0600) instead")
        return value

    @property
    def is_postgresql(self) -> bool:
        """True when the store is a PostgreSQL database (`url` is set)."""
        return bool(self.url)

    def password(self) -> str | None:
        """The PostgreSQL password from `password_file` (None: libpq's own sources); read now,
        checked to be private (raises ConfigError)."""
        if self.password_file is None:
            return None
        return read_secret_file(self.password_file, "store.password_file").get_secret_value()

    def describe(self) -> str:
        """The store as messages name it: the file, or the URL (which holds no password)."""
        return self.url or str(self.path)


class RepliesSettings(_Section):
    """How and whether replies are sent."""

    mode: Literal["live", "draft", "dry-run"] = "dry-run"
    templates_dir: Path = SHIPPED_TEMPLATES
    from_address: str = "hello@example.com"
    from_name: str = "Example Ltd"
    envelope_sender: str = "no-reply@example.com"
    subject_prefix: str = "Re: "
    message_id_domain: str = ""
    our_addresses: tuple[str, ...] = ()
    require_addressed_to_us: bool = True
    window_days: Annotated[float, Field(ge=1)] = 7.0
    max_per_hour: Annotated[int, Field(ge=0)] = 60
    max_per_domain_per_hour: Annotated[int, Field(ge=0)] = 10
    max_defer_hours: Annotated[float, Field(gt=0)] = 24.0
    dotless_domains: tuple[str, ...] = ("gmail.com", "googlemail.com")
    trusted_authserv_ids: tuple[str, ...] = ()
    unauthenticated: Literal["fixed", "none"] = "fixed"
    form_senders: tuple[str, ...] = ()
    sent_folder: str = ""
    drafts_folder: str = ""
    company_name: str = "Example Ltd"
    signature: str = "The Example team"
    business_hours_promise: str = "within one business day"
    default_language: str = "en"

    @model_validator(mode="after")
    def _forms_need_authentication(self) -> Self:
        # A form relay's notification names the address we write to; unless our server vouches
        # that it came from the relay, anyone could pose as the form (docs/security.md).
        if any(s.strip() for s in self.form_senders) and not any(
            t.strip() for t in self.trusted_authserv_ids
        ):
            raise ValueError(
                "form_senders needs trusted_authserv_ids: a form notification is answered only "
                "when our own server authenticated the relay"
            )
        return self


# The spam-verdict headers `triage.decide.spam` can read (lower-case).
SPAM_VERDICT_HEADERS = (
    "x-spam-flag",  # SpamAssassin: "YES"
    "x-spam-status",  # SpamAssassin: "Yes, score=7.1 required=5.0 ..."
    "x-spam",  # rspamd milter: "Yes"
    "x-spamd-result",  # rspamd: "default: True [12.30 / 15.00]; ..."
    "x-rspamd-action",  # rspamd: "add header", "rewrite subject", "reject"
    "x-ms-exchange-organization-scl",  # Exchange Online: spam confidence level 5..9
    "x-spam-verdict",  # generic gateways: "spam"
)


class ClassifierSettings(_Section):
    """Which model to load and how sure it must be before acting."""

    model_path: Path = SHIPPED_MODEL
    # Per-label overrides; a label not given uses the threshold the model card suggests
    # (chosen on cross-validation when the model was trained).
    thresholds: Mapping[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    # Drift, reported in the digest: a label's share of the decisions of the last 7 days moved by
    # more than this (absolute) from the 4 weeks before, or its mean confidence fell by more.
    drift_share_threshold: Annotated[float, Field(ge=0, le=1)] = 0.15
    drift_confidence_threshold: Annotated[float, Field(ge=0, le=1)] = 0.10
    # Spam-verdict headers that OUR receiving server adds (and strips from incoming mail):
    # a message they call spam is `other` without asking the model (triage.decide.spam).
    trusted_spam_headers: tuple[str, ...] = ()

    @field_validator("trusted_spam_headers", mode="after")
    @classmethod
    def _readable_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = [h.strip().lower() for h in value]
        unread = [h for h in names if h not in SPAM_VERDICT_HEADERS]
        if unread:
            raise ValueError(
                f"cannot read {', '.join(unread)}; known: {', '.join(SPAM_VERDICT_HEADERS)}"
            )
        return tuple(dict.fromkeys(names))

    @model_validator(mode="after")
    def _known_labels(self) -> Self:
        unknown = set(self.thresholds) - set(LABELS)
        if unknown:
            raise ValueError(f"thresholds for unknown labels: {sorted(unknown)}")
        return self


class IngestSettings(_Section):
    """How mail is taken from the mailboxes and marked there."""

    backfill_days: Annotated[float, Field(ge=0)] = 0.0
    backfill_classify: bool = False
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 200
    max_attempts: Annotated[int, Field(ge=1)] = 3
    keywords: bool = True
    move_to_folders: bool = False
    folder_prefix: str = "Triage"
    corrections: bool = True
    max_message_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    # The bytes of mail one FETCH may bring into memory (by RFC822.SIZE, asked first); a
    # message larger than this is fetched on its own. Bounds memory as batch_size bounds count.
    batch_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # Worker processes that parse and classify while the account thread fetches and records
    # (triage.ingest.workers); 0 keeps everything in the account thread. 1 uses a second core.
    workers: Annotated[int, Field(ge=0, le=16)] = 0


class LeadsSettings(_Section):
    """How leads are assigned and how fast they must be answered."""

    staff: tuple[str, ...] = ()
    assignment: Literal["none", "round-robin", "least-busy"] = "none"
    response_target_hours: Annotated[float, Field(gt=0)] = 4.0
    business_hours: tuple[int, int] = (9, 17)
    business_days: tuple[int, ...] = (0, 1, 2, 3, 4)
    retention_days: Annotated[int, Field(ge=0)] = 0
    alert_hot: bool = False
    alert_recipients: tuple[str, ...] = ()


class DigestSettings(_Section):
    """The sales digest: to whom, when, from where."""

    recipients: tuple[str, ...] = ()
    schedule: str = "0 8 * * 1-5"
    timezone: str = "UTC"
    from_address: str = ""
    subject: str = "triage digest: {new} new hot leads"


class DaemonSettings(_Section):
    """The service loop, health endpoint and logging."""

    health_host: str = "127.0.0.1"
    health_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    health_max_sync_age: Annotated[float, Field(gt=0)] = 300.0
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    backoff_initial: Annotated[float, Field(gt=0)] = 1.0
    backoff_max: Annotated[float, Field(gt=0)] = 300.0
    # Passes of one account in a row that fail with an error that is not a server's or the
    # network's (the store's disk is full, say) before `triage run` gives up and exits non-zero,
    # for systemd to restart it. With the default backoff: about ten minutes of failures.
    max_failed_passes: Annotated[int, Field(ge=1)] = 10
    # Who is told when the service needs a person (a mailbox whose OAuth2 sign-in stopped
    # working, a client secret about to expire); empty: the digest's recipients.
    admin_recipients: tuple[str, ...] = ()


class FleetSettings(_Section):
    """Fleet mode (a PostgreSQL store): how this instance holds its mailboxes' leases. Every
    instance of a fleet should use the same values."""

    # How often the instance renews its leases and balances the accounts with the others.
    renew_every: Annotated[float, Field(gt=0)] = 5.0
    # How long a lease lasts after its last renewal: an instance that stops renewing (dead,
    # paused, cut off from the database) loses its accounts to the others after this long.
    lease_time: Annotated[float, Field(gt=0)] = 20.0

    @model_validator(mode="after")
    def _check_renewals(self) -> Self:
        if self.renew_every * 3 > self.lease_time:
            raise ValueError(
                f"renew_every ({self.renew_every:g} s) must be at most a third of lease_time "
                f"({self.lease_time:g} s): a lease must survive two missed renewals"
            )
        return self


class WebSettings(_Section):
    """The web console (`triage web`): where it listens, how it links and keeps sessions."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8025
    # The console's address as people reach it (behind a reverse proxy, say), e.g.
    # "https://triage.example.com": the digest links each lead to its page there; an https
    # address makes the session cookie Secure. Empty: no links, cookies for plain http.
    base_url: str = ""
    # A file holding the secret that signs session cookies; empty: one generated into the store.
    session_secret_file: Path | None = None
    session_hours: Annotated[float, Field(gt=0)] = 12.0
    # Failed logins for one user name or one client address before further tries are refused.
    max_failed_logins: Annotated[int, Field(ge=1)] = 5
    lockout_minutes: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.match(r"https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http:// or https:// address without query or fragment")
        return value


#: The events a webhook endpoint may subscribe to (`[[webhooks]] events`).
WEBHOOK_EVENTS = ("lead.created", "lead.updated", "lead.status_changed", "review.labelled")
_WEBHOOK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}$")
# A Standard Webhooks secret: `whsec_` and the base64 of the key (24 to 64 bytes).
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/]{32,88}={0,2}$")


class WebhookSettings(_Section):
    """One `[[webhooks]]` endpoint: where lead events are POSTed, signed per Standard Webhooks.

    The secrets (`whsec_…`, one per file, mode 0600) are read and checked when the settings are
    loaded. Several files sign every delivery with each secret (several `v1,` signatures), so a
    receiver can move to a new secret without losing a delivery: add the new file, let the
    receiver accept both, then remove the old one.
    """

    name: str
    url: str
    secret_file: Path | None = None
    secret_files: tuple[Path, ...] = ()
    events: tuple[str, ...] = WEBHOOK_EVENTS
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    # http:// to a host that is not a loopback address (the body is signed, not encrypted).
    allow_http: bool = False
    # Addresses in private, link-local, loopback or otherwise reserved ranges (an intranet CRM);
    # refused by default so that a URL never reaches the cloud's metadata service or a LAN host.
    allow_private: bool = False
    ca_file: Path | None = None
    # Jittered exponential backoff between attempts, over at most `max_age_hours` per event.
    retry_initial: Annotated[float, Field(gt=0)] = 30.0
    retry_max: Annotated[float, Field(gt=0)] = 6 * 3600.0
    max_age_hours: Annotated[float, Field(gt=0, le=30 * 24)] = 72.0
    _secrets: tuple[SecretStr, ...] = PrivateAttr(default=())

    @field_validator("events", mode="after")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in value if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(
                f"unknown events {', '.join(unknown)}; known: {', '.join(WEBHOOK_EVENTS)}"
            )
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems = []
        if not _WEBHOOK_NAME.match(self.name):
            problems.append("name must be 1-40 of a-z, 0-9, - and _ (starting with a letter/digit)")
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            problems.append("url must be an https:// address")
        elif parts.username or parts.password:
            problems.append("url must not hold a user name or password")
        elif parts.scheme == "http" and not self.allow_http and not is_loopback(parts.hostname):
            problems.append("url is http:// to another host: use https:// or set allow_http")
        files = (*((self.secret_file,) if self.secret_file else ()), *self.secret_files)
        if not files:
            problems.append("secret_file (or secret_files) is required: a whsec_... secret")
        secrets = []
        for path in files:
            try:
                secret = _read_secret_file(path, "secret_file")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if not _WHSEC.match(secret.get_secret_value()):
                problems.append(f"secret_file {path} does not hold a whsec_... secret")
                continue
            secrets.append(secret)
        if problems:
            raise ValueError(_MISTAKES.join(problems))
        self._secrets = tuple(secrets)
        return self

    def secrets(self) -> tuple[str, ...]:
        """The `whsec_…` secrets in clear, for signing only."""
        return tuple(s.get_secret_value() for s in self._secrets)

    def subscribes(self, event: str) -> bool:
        """Whether this endpoint receives events of type `event`."""
        return event in self.events


class Settings(BaseSettings):
    """Every setting of triage, validated. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    imap: ImapSettings
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    replies: RepliesSettings = Field(default_factory=RepliesSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    leads: LeadsSettings = Field(default_factory=LeadsSettings)
    digest: DigestSettings = Field(default_factory=DigestSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    oauth2: GrantStoreSettings = Field(default_factory=GrantStoreSettings)
    webhooks: tuple[WebhookSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_webhooks(self) -> Self:
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _check_oauth2_account(self) -> Self:
        name = self.smtp.oauth2_account
        if self.smtp.oauth2 is not None and any(a.name == "smtp" for a in self.imap.all_accounts()):
            # Credentials are named by account, and `smtp` is [smtp.oauth2]'s: one grant each.
            raise ValueError("an IMAP account named 'smtp' cannot be used with [smtp.oauth2]")
        if name:
            account = next((a for a in self.imap.all_accounts() if a.name == name), None)
            if account is None:
                raise ValueError(f"smtp.oauth2_account {name!r} is not an IMAP account")
            if account.auth != "oauth2":
                raise ValueError(f"smtp.oauth2_account {name!r} does not use auth = 'oauth2'")
        return self

    def oauth2_key_file(self) -> Path:
        """The file of the key that encrypts stored OAuth2 grants."""
        return self.oauth2.key_file or self.store.path.parent / "oauth2.key"

    def smtp_oauth2(self) -> OAuth2Settings | None:
        """The OAuth2 settings SMTP signs in with: `[smtp.oauth2]`, else (with `oauth2_account`)
        that account's (its mechanism too)."""
        if not self.smtp.oauth2_account:
            return self.smtp.oauth2
        account = next(a for a in self.imap.all_accounts() if a.name == self.smtp.oauth2_account)
        return account.oauth2

    def smtp_username(self) -> str:
        """The SMTP login name: `smtp.username`, else (with `oauth2_account`) that account's."""
        if self.smtp.username or not self.smtp.oauth2_account:
            return self.smtp.username
        account = next(a for a in self.imap.all_accounts() if a.name == self.smtp.oauth2_account)
        return account.username


def _without_config_var(environ: Mapping[str, str]) -> dict[str, str]:
    # TRIAGE_CONFIG names the file; it is not a setting and must not trip `extra = forbid`.
    return {k: v for k, v in environ.items() if k.upper() != CONFIG_ENV}


def load_settings(
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read and validate settings; raise `ConfigError` whose message lists every problem.

    `config` wins over `TRIAGE_CONFIG`. `environ` defaults to the process environment (tests pass
    their own). `overrides` are applied above everything (used by the demo and tests).
    """
    env = dict(os.environ if environ is None else environ)
    path = config or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_toml(path)

    given = _without_config_var(env)

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Priority: explicit overrides, then TRIAGE_* variables, then the TOML file.
            return (
                init_settings,
                _GivenEnvironment(settings_cls, given),
                InitSettingsSource(settings_cls, file_values),
            )

    try:
        return _Loaded(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_validation_error(exc, path))) from None


class _GivenEnvironment(EnvSettingsSource):
    """pydantic-settings' environment source, reading the mapping it is given instead of
    `os.environ`: loading settings never writes to the process environment, which other threads
    (and the tests' own environments) share."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def describe_validation_error(exc: ValidationError, path: Path | None) -> list[str]:
    """One line per problem, naming the setting as the operator writes it (`imap.port`)."""
    where = f" ({path})" if path else ""
    lines: list[str] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        msg = msg.removeprefix("Value error, ")
        lines.extend(
            f"setting {loc or '(top level)'}: {part}{where}" for part in msg.split(_MISTAKES)
        )
    return lines


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with every secret replaced by `********`."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "********"
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, Mapping):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, Sequence) and not isinstance(value, str):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result = walk(settings)
    assert isinstance(result, dict)
    return result
