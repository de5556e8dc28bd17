"""Console accounts: adding and changing users, checking a login, throttling failed ones.

Used by `triage users …` and by the console's login page alike. Passwords are hashed with
Argon2id (argon2-cffi's defaults, RFC 9106's second recommended set); a hash made with older
parameters is upgraded at the next successful login. Every change is written to the audit log
in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from triage.core.errors import TriageError
from triage.store import audit
from triage.store import users as store
from triage.store.db import Database
from triage.store.users import ROLES, User

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # hashing is deliberately slow: no megabyte passwords
_HASHER = PasswordHasher()  # Argon2id
# A hash verified when the user does not exist, so that a wrong name takes as long as a wrong
# password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class AccountError(TriageError):
    """A refused account operation (unknown user, bad name, weak password, unknown role)."""


def hash_password(password: str) -> str:
    """The Argon2id hash of `password` (checked for length first)."""
    check_password(password)
    return _HASHER.hash(password)


def check_password(password: str) -> None:
    """Refuse a password too short to resist guessing, or too long to hash."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password may have at most {MAX_PASSWORD} characters")


def check_name(name: str) -> str:
    """A user name: letters, digits and . _ @ -, up to 64 characters."""
    if not NAME_RE.match(name):
        raise AccountError(
            f"invalid user name {name!r}: letters, digits and . _ @ - only, up to 64 characters"
        )
    return name


def check_role(role: str) -> str:
    """One of ROLES."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def add(
    db: Database,
    name: str,
    role: str,
    password: str,
    *,
    email: str = "",
    by: str = "",
    now: datetime | None = None,
) -> User:
    """Create a user; refused when the name is taken."""
    check_name(name)
    check_role(role)
    hashed = hash_password(password)
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        if store.name_taken(c, name) or not store.add_user(
            c, name, role, hashed, email.strip(), moment
        ):
            raise AccountError(f"user {name} exists already")
        audit.record(c, by or name, "user.add", "user", name, {"role": role}, now=moment)
        user = store.get_user(c, name)
    assert user is not None
    return user


def users(db: Database) -> list[User]:
    """Every user, by name."""
    return store.list_users(db.reads)


def staff_names(db: Database) -> list[str]:
    """The names leads may be assigned to: every console user."""
    return [u.name for u in store.list_users(db.reads)]


def set_password(
    db: Database, name: str, password: str, *, by: str = "", now: datetime | None = None
) -> None:
    """Give `name` a new password; their sessions end, and their failed logins are forgotten
    (how an admin lets in someone locked out by guessers)."""
    hashed = hash_password(password)
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        user = store.get_user(c, name)
        if user is None:
            raise AccountError(f"no user {name}")
        store.set_password(c, user.id, hashed, moment)
        store.clear_failures(c, "user", name.lower())
        audit.record(c, by or name, "user.password", "user", name, now=moment)


def set_role(
    db: Database, name: str, role: str, *, by: str = "", now: datetime | None = None
) -> None:
    """Change the role of `name`."""
    check_role(role)
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        user = store.get_user(c, name)
        if user is None:
            raise AccountError(f"no user {name}")
        store.set_role(c, user.id, role, moment)
        audit.record(c, by or name, "user.role", "user", name, {"role": role}, now=moment)


def remove(db: Database, name: str, *, by: str = "", now: datetime | None = None) -> None:
    """Delete `name` and end their sessions."""
    moment = now or datetime.now(UTC)
    with db.transaction() as c:
        user = store.get_user(c, name)
        if user is None:
            raise AccountError(f"no user {name}")
        store.remove_user(c, user.id)
        audit.record(c, by or name, "user.remove", "user", name, now=moment)


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """How many failed logins a user name or an address may have in `window`."""

    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)


def login(
    db: Database,
    name: str,
    password: str,
    address: str,
    policy: LoginPolicy,
    now: datetime | None = None,
) -> User:
    """The user when `password` is theirs; AccountError otherwise, with one message for a wrong
    name and a wrong password. After `policy.max_failures` failures for the name or for the
    client address within the window, every try is refused until the window has passed."""
    moment = now or datetime.now(UTC)
    since = moment - policy.window
    name = name.strip()[:64]
    password = password[:MAX_PASSWORD]
    with db.transaction() as c:
        # One check-and-count at a time per name and per address: SQLite's single writer does
        # that by itself, PostgreSQL's concurrent transactions would all count the same past.
        # Always the name first, so that two logins never wait for each other in a cycle.
        c.dialect.lock(c, "login-user", name.lower())
        c.dialect.lock(c, "login-address", address)
        store.forget_failures_before(c, moment - 4 * policy.window)
        locked = max(
            store.failures_since(c, "user", name.lower(), since),
            store.failures_since(c, "address", address, since),
        )
        if locked >= policy.max_failures:
            raise AccountError("too many failed logins; try again later")
        # Counted as a failure now, in the transaction that checked the limit, and taken back
        # on success: tries sent at once would otherwise all pass the check during the slow
        # hash below, and the limit would be the size of the thread pool.
        store.record_failure(c, "user", name.lower(), moment)
        address_failure = store.record_failure(c, "address", address, moment)
        user = store.get_user(c, name)
    try:
        _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = user is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None:
        raise AccountError("wrong user name or password")
    with db.transaction() as c:
        store.clear_failures(c, "user", name.lower())
        store.forget_failure(c, address_failure)
        if _HASHER.check_needs_rehash(user.password_hash):
            store.set_password(c, user.id, _HASHER.hash(password), moment)
    return user
