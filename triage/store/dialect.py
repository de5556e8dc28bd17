"""The few pieces of SQL that differ between database backends, in one place.

The store's modules write one SQL text for every backend, with `?` placeholders (`:name` for
named ones). What cannot be written once comes from the transaction's dialect (`tx.dialect`):
lists of values to match, a case-insensitive LIKE, the review queue's uncertainty, row locks,
transaction-scoped locks and the database's clock. `SQLITE` returns the SQL the store has always
run on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from triage.store.db import Tx


class Dialect(Protocol):
    """What a backend says about SQL; stateless, one object per backend."""

    @property
    def name(self) -> str:
        """The backend: "sqlite" or "postgresql"."""
        ...

    @property
    def ci_like(self) -> str:
        """The operator for a LIKE that ignores (ASCII) case, as the search box needs."""
        ...

    @property
    def uncertainty(self) -> str:
        """An expression over `m.probabilities` (a JSON object of label → probability) for
        1 - (p_top - p_second), rounded to six places (a single probability counts as
        p_second = 0); NULL when none is stored or the text is not such an object."""
        ...

    @property
    def now_epoch(self) -> str:
        """An expression for the database server's current time in seconds since the epoch (a
        float, read anew by every statement): leases expire by this one clock, not by the
        clocks of the hosts that hold them."""
        ...

    def translate(self, sql: str, named: bool = False) -> str:
        """`sql` as written in the store (`?`, or `:name` when `named`) in the driver's
        placeholder style."""
        ...

    def in_list(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        """A condition "`column` is one of `values`" and its parameters, for a bounded list
        (callers split long lists into chunks of a few hundred)."""
        ...

    def in_many(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        """The same condition for a list of any length, bound as one parameter; the values
        must be ints or strings."""
        ...

    def for_update(self, *, skip_locked: bool = False, keep_key: bool = False) -> str:
        """The clause that ends a SELECT to lock the rows it returns until the transaction
        ends (skipping rows another transaction holds, with `skip_locked`); "" when the
        backend's write transactions are serialised anyway. `keep_key`: the transaction will
        not change the rows' keys, so rows held `for_share(key_only=True)` are not waited for."""
        ...

    def for_share(self, *, key_only: bool = False) -> str:
        """The clause that ends a SELECT to keep the rows it returns from being changed or
        locked for update by others until the transaction ends (readers may share them); ""
        when the backend's write transactions are serialised anyway. `key_only`: changes that
        keep the key (`for_update(keep_key=True)`, a plain UPDATE of other columns) go on;
        only `for_update()` (and deletes) wait."""
        ...

    def lock(self, tx: Tx, namespace: str, key: str) -> None:
        """Within `tx`: wait for, then hold until the transaction ends, the lock named by
        (`namespace`, `key`); nothing when the backend's write transactions are serialised."""
        ...


# The values of a JSON object that are numbers, for the uncertainty below.
_NUMBERS = "SELECT value FROM json_each(m.probabilities) WHERE type IN ('real', 'integer')"


class _SQLite:
    """SQLite: every write transaction holds the database's one write lock (BEGIN IMMEDIATE),
    so row and named locks are implicit, and LIKE already ignores ASCII case."""

    __slots__ = ()

    name = "sqlite"
    ci_like = "LIKE"
    # julianday('now') is UTC with millisecond precision, the same within one statement.
    now_epoch = "((julianday('now') - 2440587.5) * 86400.0)"
    # Rounded so that equal margins tie despite float error (the queue's order then goes to the
    # oldest message). The nested CASE keeps json_each away from text that is not a JSON object.
    uncertainty = (
        "CASE WHEN json_valid(m.probabilities) THEN"
        " CASE WHEN json_type(m.probabilities) = 'object'"
        f" AND EXISTS ({_NUMBERS}) THEN"
        f" ROUND(1 - (({_NUMBERS} ORDER BY value DESC LIMIT 1)"
        f" - COALESCE(({_NUMBERS} ORDER BY value DESC LIMIT 1 OFFSET 1), 0)), 6)"
        " END END"
    )

    def translate(self, sql: str, named: bool = False) -> str:
        return sql

    def in_list(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        # An empty list gives `IN ()`, which SQLite accepts and which matches nothing.
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def in_many(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        # One JSON array, not one parameter per value: SQLite limits the parameters of a
        # statement (32,766), and a search may match more rows than that.
        condition = f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608
        return condition, [json.dumps(list(values))]

    def for_update(self, *, skip_locked: bool = False, keep_key: bool = False) -> str:
        return ""

    def for_share(self, *, key_only: bool = False) -> str:
        return ""

    def lock(self, tx: Tx, namespace: str, key: str) -> None:
        return None


SQLITE: Dialect = _SQLite()
