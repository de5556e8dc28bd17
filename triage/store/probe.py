"""Proving the store writable without changing it, for `triage doctor`."""

from __future__ import annotations

from contextlib import suppress

from triage.core.errors import StoreError
from triage.store.db import STORE_ERRORS, Database


class _Undo(Exception):
    """Raised inside the probe's transaction so that `transaction()` rolls it back."""


def probe_write(db: Database) -> int:
    """Take the write lock and write a row, then roll back; returns the schema version.
    StoreError if the database refuses.

    Nothing is left behind; a daemon holding the lock makes this wait up to the busy timeout.
    """
    try:
        with suppress(_Undo), db.transaction() as tx:
            tx.execute(
                "INSERT INTO kv (key, value) VALUES ('doctor', 'write test')"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )
            raise _Undo
        return db.schema_version
    except STORE_ERRORS as exc:
        raise StoreError(f"{db.name} is not writable: {exc}") from None
