"""The web console's people and sessions: users, login sessions, failed logins, the signing secret.

Passwords arrive here already hashed (`triage.web.passwords`); the store never sees one in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from triage.store.db import Row, Tx, inserted_id, timestamp

ROLES = ("sales", "admin")


@dataclass(frozen=True, slots=True)
class User:
    """One person who may log in to the console."""

    id: int
    name: str
    role: str
    password_hash: str
    email: str
    created_at: str
    updated_at: str

    @property
    def is_admin(self) -> bool:
        """Admins may do everything; sales staff the lead and review pages."""
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: whose it is, its CSRF token, until when it holds."""

    id: str
    user: User
    csrf_token: str
    expires_at: str


def _user(r: Row) -> User:
    return User(
        int(r["id"]),
        r["name"],
        r["role"],
        r["password_hash"],
        r["email"],
        r["created_at"],
        r["updated_at"],
    )


def add_user(c: Tx, name: str, role: str, password_hash: str, email: str, now: datetime) -> int:
    """Insert a user; the caller checked that the role is known and (`name_taken`) that the
    name is free. Returns the new id, or 0 when another process took the name (in any case)
    since the check: the unique index of `lower(name)` made this insert wait for it."""
    at = timestamp(now)
    cur = c.execute(
        "INSERT INTO users (name, role, password_hash, email, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        (name, role, password_hash, email, at, at),
    )
    return inserted_id(cur)


def get_user(c: Tx, name: str) -> User | None:
    """The user called `name`, or None."""
    r = c.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    return _user(r) if r else None


def name_taken(c: Tx, name: str) -> bool:
    """Whether a user's name equals `name` ignoring case (`Sam` and `sam` would share one
    failed-login counter and confuse people, so they cannot both exist)."""
    r = c.execute("SELECT 1 FROM users WHERE lower(name) = lower(?)", (name,)).fetchone()
    return r is not None


def list_users(c: Tx) -> list[User]:
    """Every user, by name."""
    return [_user(r) for r in c.execute("SELECT * FROM users ORDER BY name")]


def set_password(c: Tx, user_id: int, password_hash: str, now: datetime) -> None:
    """Store a new hash; every session of the user ends (a changed password logs out)."""
    c.execute(
        "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
        (password_hash, timestamp(now), user_id),
    )
    c.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))


def set_role(c: Tx, user_id: int, role: str, now: datetime) -> None:
    """Change a user's role."""
    c.execute(
        "UPDATE users SET role = ?, updated_at = ? WHERE id = ?", (role, timestamp(now), user_id)
    )


def remove_user(c: Tx, user_id: int) -> None:
    """Delete a user and end their sessions at once."""
    c.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))
    c.execute("DELETE FROM users WHERE id = ?", (user_id,))


# --- sessions -------------------------------------------------------------------------------


def open_session(
    c: Tx, session_id: str, user_id: int, csrf_token: str, now: datetime, expires: datetime
) -> None:
    """Record a new login session (and drop the expired ones of everybody)."""
    c.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (timestamp(now),))
    c.execute(
        "INSERT INTO web_sessions (id, user_id, csrf_token, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (session_id, user_id, csrf_token, timestamp(now), timestamp(expires)),
    )


def find_session(c: Tx, session_id: str, now: datetime) -> Session | None:
    """The live session `session_id` with its user, or None (unknown, expired, user removed)."""
    r = c.execute(
        "SELECT s.id AS sid, s.csrf_token, s.expires_at, u.* FROM web_sessions s"
        " JOIN users u ON u.id = s.user_id WHERE s.id = ? AND s.expires_at > ?",
        (session_id, timestamp(now)),
    ).fetchone()
    if r is None:
        return None
    return Session(r["sid"], _user(r), r["csrf_token"], r["expires_at"])


def close_session(c: Tx, session_id: str) -> None:
    """End one session (logout)."""
    c.execute("DELETE FROM web_sessions WHERE id = ?", (session_id,))


# --- failed logins --------------------------------------------------------------------------


def record_failure(c: Tx, kind: str, key: str, now: datetime) -> int:
    """Count one failed login for `key` (a user name, kind "user", or an address, "address");
    returns its id."""
    cur = c.execute(
        "INSERT INTO login_failures (kind, key, at) VALUES (?, ?, ?) RETURNING id",
        (kind, key, timestamp(now)),
    )
    return inserted_id(cur)


def forget_failure(c: Tx, failure_id: int) -> None:
    """Take back one counted failure (a login counted before its check, that succeeded)."""
    c.execute("DELETE FROM login_failures WHERE id = ?", (failure_id,))


def failures_since(c: Tx, kind: str, key: str, since: datetime) -> int:
    """Failed logins for `key` since `since`."""
    r = c.execute(
        "SELECT count(*) FROM login_failures WHERE kind = ? AND key = ? AND at >= ?",
        (kind, key, timestamp(since)),
    ).fetchone()
    return int(r[0])


def clear_failures(c: Tx, kind: str, key: str) -> None:
    """Forget the failures of `key` (after a successful login)."""
    c.execute("DELETE FROM login_failures WHERE kind = ? AND key = ?", (kind, key))


def forget_failures_before(c: Tx, before: datetime) -> None:
    """Drop failures older than `before`, which no window counts any more."""
    c.execute("DELETE FROM login_failures WHERE at < ?", (timestamp(before),))


# --- the signing secret ---------------------------------------------------------------------


def secret(c: Tx, name: str, fresh: str, now: datetime) -> str:
    """The stored secret `name`; `fresh` is stored and returned when there is none yet (the
    first of several starting processes wins, the others read its value)."""
    c.execute(
        "INSERT INTO web_secrets (name, value, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO NOTHING",
        (name, fresh, timestamp(now)),
    )
    r = c.execute("SELECT value FROM web_secrets WHERE name = ?", (name,)).fetchone()
    return str(r[0])
