"""The encrypted grant store: OAuth2 grants kept in the store, encrypted with a key from a file.

A grant (a refresh token, or msal's serialised token cache) is encrypted with Fernet (AES-128-CBC
and HMAC-SHA256) under the key in `[oauth2] key_file` before it reaches the store, so a copy of the
database alone gives no access to the mailboxes. The key file is created (0600) by the commands
that store a grant (`triage auth login`, `triage auth import`); the daemon only reads it.

Every method opens the store for its one statement or transaction and closes it again: providers
are shared by the IMAP and SMTP threads, and a SQLite connection belongs to one thread.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock

from cryptography.fernet import Fernet, InvalidToken

from triage.core.errors import ConfigError
from triage.core.settings import StoreSettings, read_secret_file
from triage.store import oauth_grants as sql
from triage.store.db import Database
from triage.store.oauth_grants import StoredGrant

KEY_MODE = 0o600


def create_key_file(path: Path) -> bool:
    """Write a new random key to `path` (mode 0600) unless the file exists; True when created.

    The key is written to a private temporary file first and linked into place (which fails
    when the file exists): no process ever sees the key file empty or half written, and a
    process killed meanwhile leaves at most a stray temporary file, never an empty key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot create oauth2.key_file {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, KEY_MODE)  # whatever the umask
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot create oauth2.key_file {path}: {exc.strerror}") from None
        _sync_directory(path.parent)  # the key outlives a power cut, as the grants it encrypts
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _sync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Grant:
    """A stored grant in clear (for a provider, never printed) with its row."""

    row: StoredGrant
    secret: str

    def __repr__(self) -> str:
        return f"Grant(name={self.row.name!r}, generation={self.row.generation})"


class GrantStore:
    """Reads and writes the grants of the store at `store_path`, encrypted with `key_file`."""

    def __init__(self, store_path: StoreSettings | Path, key_file: Path) -> None:
        self.store_path = store_path
        self.key_file = key_file
        self._fernet: Fernet | None = None
        self._guard = Lock()

    @contextmanager
    def _db(self) -> Iterator[Database]:
        db = Database(self.store_path)
        try:
            yield db
        finally:
            db.close()

    def _cipher(self, *, create: bool = False) -> Fernet:
        with self._guard:
            if self._fernet is None:
                if create:
                    create_key_file(self.key_file)
                elif not self.key_file.exists():
                    raise ConfigError(
                        f"oauth2.key_file {self.key_file} does not exist: the stored grants "
                        "cannot be read; restore it, or run `triage auth login` for each account"
                    )
                key = read_secret_file(self.key_file, "oauth2.key_file").get_secret_value()
                try:
                    self._fernet = Fernet(key.encode("ascii"))
                except (ValueError, UnicodeEncodeError):
                    raise ConfigError(
                        f"oauth2.key_file {self.key_file} does not hold a key (32 bytes in "
                        "url-safe base64)"
                    ) from None
            return self._fernet

    def _encrypt(self, secret: str) -> bytes:
        return self._cipher(create=True).encrypt(secret.encode("utf-8"))

    def _decrypt(self, row: StoredGrant) -> str:
        fernet = self._cipher()
        assert row.blob is not None
        try:
            return fernet.decrypt(row.blob).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            raise ConfigError(
                f"the stored grant of {row.name} cannot be decrypted with oauth2.key_file "
                f"{self.key_file} (another key encrypted it): restore that key file, or run "
                f"`triage auth login {row.name}`"
            ) from None

    # --- reading ----------------------------------------------------------------------------

    def row(self, name: str) -> StoredGrant | None:
        """The row of credential `name` (state, dates; the grant still encrypted), or None."""
        with self._db() as db:
            return sql.get_grant(db.reads, name)

    def rows(self) -> list[StoredGrant]:
        """Every credential's row."""
        with self._db() as db:
            return sql.list_grants(db.reads)

    def generation(self, name: str) -> int:
        """How often the row of `name` changed: compared to notice another process's login."""
        with self._db() as db:
            return sql.generation(db.reads, name)

    def read(self, name: str) -> Grant | None:
        """The grant of `name` in clear, or None when none was stored."""
        row = self.row(name)
        if row is None or row.blob is None:
            return None
        return Grant(row, self._decrypt(row))

    # --- writing ----------------------------------------------------------------------------

    def store(self, name: str, provider: str, secret: str, now: datetime | None = None) -> None:
        """Store a new grant (login, import; creates the key file if missing) and clear the
        needs-reauth state."""
        blob = self._encrypt(secret)
        with self._db() as db, db.transaction() as tx:
            sql.store_grant(tx, name, provider, blob, now or datetime.now(UTC))

    def rotate(
        self, name: str, previous: StoredGrant, secret: str, now: datetime | None = None
    ) -> bool:
        """Save a rotated grant at once, in one transaction, unless the grant read as
        `previous` was replaced since (see `triage.store.oauth_grants.rotate_grant`)."""
        assert previous.blob is not None
        blob = self._encrypt(secret)
        with self._db() as db, db.transaction() as tx:
            return sql.rotate_grant(tx, name, previous.blob, blob, now or datetime.now(UTC))

    def mark_needs_reauth(
        self, name: str, provider: str, code: str, expected_generation: int | None = None
    ) -> bool:
        """Record that `name` needs a new login, unless its row changed since
        `expected_generation` (a login meanwhile: the failure was the old grant's). True when
        recorded (or already recorded)."""
        with self._db() as db, db.transaction() as tx:
            if expected_generation is not None and sql.generation(tx, name) != expected_generation:
                return False
            sql.set_needs_reauth(tx, name, provider, code, datetime.now(UTC))
            return True

    def clear_needs_reauth(self, name: str) -> bool:
        """Back to ok; True when `name` was in needs-reauth."""
        with self._db() as db, db.transaction() as tx:
            return sql.clear_needs_reauth(tx, name)


class CheckingGrantStore(GrantStore):
    """A grant store for checks (`triage doctor`): rotated grants are saved as always (the
    endpoint already replaced the old one), but a failure is only reported, never recorded as
    needs-reauth, so a check run with other permissions or files than the daemon's cannot alert
    the administrators about a mailbox that works."""

    def mark_needs_reauth(
        self, name: str, provider: str, code: str, expected_generation: int | None = None
    ) -> bool:
        """Nothing recorded; the failure is the check's to report."""
        return True

    def clear_needs_reauth(self, name: str) -> bool:
        """Nothing recorded: the daemon's own next token clears a stored state."""
        return False
