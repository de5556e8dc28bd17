"""OAuth2 grants: the encrypted refresh token (or msal token cache) of each credential, and its
re-authorisation state.

The store never sees a grant in clear: callers pass and receive the encrypted blob
(`triage.ingest.oauth.grants` encrypts). A row exists once a grant was stored or a failure was
recorded; `generation` grows with every change, so a process can tell cheaply that another one
(`triage auth login`) replaced the grant or cleared the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from triage.store.db import Row, Tx, timestamp

OK = "ok"
NEEDS_REAUTH = "needs-reauth"


@dataclass(frozen=True, slots=True)
class StoredGrant:
    """One credential's row. `blob` is the encrypted grant (None before any login)."""

    name: str
    provider: str
    blob: bytes | None = None
    obtained_at: str | None = None
    rotated_at: str | None = None
    rotations: int = 0
    generation: int = 0
    state: str = OK
    error_code: str = ""
    error_at: str | None = None
    alerted_at: str | None = None
    reminded_at: str | None = None


def _grant(r: Row) -> StoredGrant:
    blob = r["grant_blob"]
    return StoredGrant(
        name=r["name"],
        provider=r["provider"],
        blob=bytes(blob) if blob is not None else None,
        obtained_at=r["obtained_at"],
        rotated_at=r["rotated_at"],
        rotations=int(r["rotations"]),
        generation=int(r["generation"]),
        state=r["state"],
        error_code=r["error_code"],
        error_at=r["error_at"],
        alerted_at=r["alerted_at"],
        reminded_at=r["reminded_at"],
    )


def get_grant(c: Tx, name: str) -> StoredGrant | None:
    """The row of credential `name`, or None."""
    r = c.execute("SELECT * FROM oauth_grants WHERE name = ?", (name,)).fetchone()
    return _grant(r) if r else None


def list_grants(c: Tx) -> list[StoredGrant]:
    """Every credential's row, by name."""
    return [_grant(r) for r in c.execute("SELECT * FROM oauth_grants ORDER BY name")]


def needing_reauth(c: Tx) -> list[StoredGrant]:
    """The credentials in state needs-reauth, the longest-failing first (for /healthz, alerts
    and reminders)."""
    return [
        _grant(r)
        for r in c.execute(
            "SELECT * FROM oauth_grants WHERE state = 'needs-reauth' ORDER BY error_at, name"
        )
    ]


def generation(c: Tx, name: str) -> int:
    """How often the row of `name` changed (0 when there is none)."""
    r = c.execute("SELECT generation FROM oauth_grants WHERE name = ?", (name,)).fetchone()
    return int(r[0]) if r else 0


def store_grant(c: Tx, name: str, provider: str, blob: bytes, now: datetime) -> None:
    """Store a new grant from a login or an import: replaces any earlier one, restarts its
    history and clears the needs-reauth state (a person just signed in)."""
    at = timestamp(now)
    c.execute(
        "INSERT INTO oauth_grants (name, provider, grant_blob, obtained_at, generation)"
        " VALUES (?, ?, ?, ?, 1)"
        " ON CONFLICT (name) DO UPDATE SET provider = excluded.provider,"
        " grant_blob = excluded.grant_blob, obtained_at = excluded.obtained_at,"
        " rotated_at = NULL, rotations = 0, generation = oauth_grants.generation + 1,"
        " state = 'ok', error_code = '', error_at = NULL, alerted_at = NULL, reminded_at = NULL",
        (name, provider, blob, at),
    )


def rotate_grant(c: Tx, name: str, previous: bytes, blob: bytes, now: datetime) -> bool:
    """Replace the grant of `name` by the rotated one the token endpoint just returned, unless
    the grant changed since the caller read it as `previous` (a login, or another process's
    rotation, stored a newer grant meanwhile, which wins). A change of the state alone does not
    count: another process that used the old refresh token after the endpoint had rotated it
    records needs-reauth, yet the rotated token is the only one that still works. True when
    saved; the grant just gave a token, so the credential is ok again."""
    cur = c.execute(
        "UPDATE oauth_grants SET grant_blob = ?, rotated_at = ?, rotations = rotations + 1,"
        " generation = generation + 1, state = 'ok', error_code = '', error_at = NULL,"
        " alerted_at = NULL, reminded_at = NULL WHERE name = ? AND grant_blob = ?",
        (blob, timestamp(now), name, previous),
    )
    return cur.rowcount == 1


def set_needs_reauth(c: Tx, name: str, provider: str, code: str, now: datetime) -> bool:
    """Record that credential `name` needs a person to sign in again, with the provider's error
    code. The first failure's time and any alert already sent are kept (one alert per episode);
    the code is updated. True when the state changed from ok."""
    at = timestamp(now)
    # Two processes may see the same failure at once. A first row: the later insert waits for
    # the earlier one's commit, then does nothing. An existing row: FOR UPDATE makes the later
    # one wait and then read the state the earlier one wrote, so the episode starts once.
    created = c.execute(
        "INSERT INTO oauth_grants (name, provider, generation, state, error_code, error_at)"
        " VALUES (?, ?, 1, 'needs-reauth', ?, ?) ON CONFLICT (name) DO NOTHING RETURNING name",
        (name, provider, code, at),
    ).fetchone()
    if created is not None:
        return True
    r = c.execute(
        f"SELECT state FROM oauth_grants WHERE name = ?{c.dialect.for_update()}",  # noqa: S608
        (name,),
    ).fetchone()
    if r is None or r["state"] == NEEDS_REAUTH:  # None: forgotten meanwhile
        c.execute("UPDATE oauth_grants SET error_code = ? WHERE name = ?", (code, name))
        return False
    c.execute(
        "UPDATE oauth_grants SET state = 'needs-reauth', error_code = ?, error_at = ?,"
        " alerted_at = NULL, reminded_at = NULL, generation = generation + 1 WHERE name = ?",
        (code, at, name),
    )
    return True


def clear_needs_reauth(c: Tx, name: str) -> bool:
    """Back to ok (a token was obtained again); True when it was needs-reauth."""
    cur = c.execute(
        "UPDATE oauth_grants SET state = 'ok', error_code = '', error_at = NULL,"
        " alerted_at = NULL, reminded_at = NULL, generation = generation + 1"
        " WHERE name = ? AND state = 'needs-reauth'",
        (name,),
    )
    return cur.rowcount == 1


def mark_alerted(c: Tx, name: str, now: datetime) -> None:
    """The admin alert about the current needs-reauth episode was queued."""
    c.execute("UPDATE oauth_grants SET alerted_at = ? WHERE name = ?", (timestamp(now), name))


def mark_reminded(c: Tx, name: str, now: datetime) -> None:
    """A reminder about the current needs-reauth episode was queued."""
    c.execute("UPDATE oauth_grants SET reminded_at = ? WHERE name = ?", (timestamp(now), name))


def forget_grant(c: Tx, name: str) -> None:
    """Delete the row of `name` (a credential removed from the settings)."""
    c.execute("DELETE FROM oauth_grants WHERE name = ?", (name,))
