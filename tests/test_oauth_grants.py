"""The grant store: grants encrypted at rest with the key file, their history, and the
needs-reauth state the daemon's alerts read."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.stores import backend_name, store_settings
from triage.core.errors import ConfigError
from triage.ingest.oauth.grants import GrantStore, create_key_file
from triage.store import oauth_grants as sql
from triage.store.db import Database

# Every test runs on SQLite and on PostgreSQL (tests.stores).
pytestmark = pytest.mark.usefixtures("store_backend")

TOKEN = "rt-very-secret-refresh-token"


@pytest.fixture
def grants(tmp_path: Path) -> GrantStore:
    return GrantStore(store_settings(tmp_path / "triage.db"), tmp_path / "keys" / "oauth2.key")


def test_grant_is_encrypted_at_rest_and_the_key_file_created_private(
    grants: GrantStore, tmp_path: Path
) -> None:
    grants.store("main", "generic", TOKEN)
    key = grants.key_file
    assert key.stat().st_mode & 0o777 == 0o600
    db = Database(grants.store_path)
    blob = db.reads.execute("SELECT grant_blob FROM oauth_grants").fetchone()[0]
    db.close()
    assert TOKEN.encode() not in bytes(blob)
    if backend_name() == "sqlite":
        assert TOKEN.encode() not in (tmp_path / "triage.db").read_bytes()
    stored = grants.read("main")
    assert stored is not None and stored.secret == TOKEN
    assert TOKEN not in repr(stored)


def test_an_existing_key_is_kept(tmp_path: Path) -> None:
    key = tmp_path / "oauth2.key"
    assert create_key_file(key)
    before = key.read_bytes()
    assert not create_key_file(key)
    assert key.read_bytes() == before


def test_wrong_missing_or_open_key_files_are_config_errors(
    grants: GrantStore, tmp_path: Path
) -> None:
    grants.store("main", "generic", TOKEN)
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(ConfigError, match="cannot be decrypted") as caught:
        GrantStore(grants.store_path, other).read("main")
    assert "triage auth login main" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        GrantStore(grants.store_path, tmp_path / "missing.key").read("main")
    grants.key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="open to other users"):
        GrantStore(grants.store_path, grants.key_file).read("main")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold a key"):
        GrantStore(grants.store_path, junk).read("main")


def test_rotation_history_and_a_login_winning_over_a_late_rotation(grants: GrantStore) -> None:
    grants.store("main", "generic", "one")
    row = grants.row("main")
    assert row is not None and row.rotations == 0 and row.rotated_at is None
    assert grants.rotate("main", row, "two")
    row2 = grants.row("main")
    assert row2 is not None and row2.rotations == 1 and row2.rotated_at is not None
    # A rotation computed from the old row arrives after a new login: the login's grant stays.
    grants.store("main", "generic", "fresh-login")
    assert not grants.rotate("main", row2, "three")
    stored = grants.read("main")
    assert stored is not None and stored.secret == "fresh-login"
    assert stored.row.rotations == 0


def test_needs_reauth_state_alert_bookkeeping_and_clearing(grants: GrantStore) -> None:
    """One episode: the first failure's time and the alert stay while it lasts; a stored grant
    ends it and the next failure is a new episode (alerted again)."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    grants.store("main", "generic", TOKEN)
    assert grants.mark_needs_reauth("main", "generic", "invalid_grant")
    first = grants.row("main")
    assert first is not None and first.state == "needs-reauth"
    assert first.error_code == "invalid_grant" and first.error_at
    db = Database(grants.store_path)
    try:
        with db.transaction() as tx:
            sql.mark_alerted(tx, "main", now)
            sql.mark_reminded(tx, "main", now)
    finally:
        db.close()
    grants.mark_needs_reauth("main", "generic", "invalid_client")
    again = grants.row("main")
    assert again is not None
    assert again.error_at == first.error_at and again.alerted_at is not None
    assert again.error_code == "invalid_client"
    grants.store("main", "generic", "new")
    cleared = grants.row("main")
    assert cleared is not None and cleared.state == "ok" and cleared.alerted_at is None
    assert cleared.error_code == "" and cleared.error_at is None and cleared.reminded_at is None


def test_state_without_a_grant_and_clear(grants: GrantStore) -> None:
    """Providers without a stored grant (microsoft-app) still have a state row."""
    grants.mark_needs_reauth("app", "microsoft-app", "AADSTS7000222")
    row = grants.row("app")
    assert row is not None and row.blob is None and row.state == "needs-reauth"
    assert grants.read("app") is None
    db = Database(grants.store_path)
    try:
        assert [g.name for g in sql.needing_reauth(db.reads)] == ["app"]
    finally:
        db.close()
    generation = grants.generation("app")
    assert grants.clear_needs_reauth("app")
    assert not grants.clear_needs_reauth("app")
    assert grants.generation("app") > generation
    # A failure observed before a login (older generation) is not recorded over it.
    grants.store("app", "microsoft-app", "x")
    assert not grants.mark_needs_reauth("app", "microsoft-app", "invalid_grant", generation)
    row = grants.row("app")
    assert row is not None and row.state == "ok"


def test_a_key_file_is_never_seen_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while creating the key file (or another process reading it at that
    moment, two first logins at once) must never find an empty key file: that would stop
    every later `triage auth login` until someone deleted it by hand."""
    real_write = os.write

    def killed(fd: int, data: bytes) -> int:
        monkeypatch.setattr(os, "write", real_write)
        raise OSError(errno.EIO, "killed while writing")

    monkeypatch.setattr(os, "write", killed)
    key = tmp_path / "oauth2.key"
    with pytest.raises(OSError, match="killed"):
        create_key_file(key)
    assert not key.exists()
    grants = GrantStore(store_settings(tmp_path / "triage.db"), key)
    grants.store("main", "generic", TOKEN)
    stored = grants.read("main")
    assert stored is not None and stored.secret == TOKEN
    assert key.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if "oauth2.key" in p.name] == ["oauth2.key"]
