"""The one error hierarchy of triage.

Every error triage raises on purpose derives from `TriageError`. Callers decide what to do by the
class, never by matching message text:

- `ConfigError`: the operator's settings, templates or files are wrong; fix and restart.
- `TransientError`: a server or network hiccup; the same work is retried later with backoff.
- `PermanentError`: this item can never succeed (a poison message); it is quarantined, not retried.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base of every error triage raises deliberately; its message is one human-readable line."""


class ConfigError(TriageError):
    """Raised when settings, a template or a model file given by the operator are unusable."""


class TemplateError(ConfigError):
    """Raised when a reply template cannot be found, parsed or rendered."""


class ModelError(ConfigError):
    """Raised when the classifier model file is missing, unsafe or incompatible."""


class TransientError(TriageError):
    """Raised when a server or network failure may go away on its own; the caller retries."""


class MailboxError(TransientError):
    """Raised when the IMAP server cannot be reached or refuses a command."""


class AuthenticationError(MailboxError):
    """Raised when the IMAP or SMTP server rejects the configured credentials."""


class TokenUnavailable(TransientError):
    """Raised when an OAuth2 token endpoint cannot give a token right now (down, timeout)."""


class SendError(TransientError):
    """Raised when the SMTP server cannot take a message right now."""


class PermanentError(TriageError):
    """Raised when one item can never be handled; it is quarantined instead of retried."""


class ReauthorisationNeeded(TriageError):
    """Raised when an OAuth2 grant no longer works (`invalid_grant`, revoked consent, expired
    client secret): nothing retries it; a person runs `triage auth login` for the account.

    `account` names the credential and `code` is the provider's error code (never a token)."""

    def __init__(self, account: str, code: str, detail: str = "") -> None:
        self.account = account
        self.code = code
        self.detail = detail
        text = f"{account}: needs re-authorisation ({code})"
        super().__init__(f"{text}: {detail}" if detail else text)


class StoreError(TriageError):
    """Raised when the database file is unusable (locked, corrupt, newer schema than this code)."""


class StoreInUseError(StoreError):
    """Raised when another triage process holds the store's lock: one process per store."""


class StoreUnavailable(StoreError):
    """Raised when the database server cannot be reached or is restarting, or no pooled
    connection came in time: transient, the same work is retried later."""


class StoreConflict(StoreError):
    """Raised when a transaction lost a race (serialization failure, deadlock, lock timeout):
    nothing was written, and running the same work again may succeed."""


class LeaseLost(StoreError):
    """Raised when an effect would be recorded under a lease (an account's, or the leader's for
    periodic work) that this instance no longer holds: nothing was written. Not transient: the
    instance stops serving the account, whose new holder redoes the work."""


class StoreIntegrityError(StoreError):
    """Raised when a write breaks a unique or foreign-key constraint, e.g. a concurrent insert of
    the same row won."""
