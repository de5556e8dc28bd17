"""Which backend the store tests of a module run on, without a fixture in every test.

A module that runs on both backends says `pytestmark = pytest.mark.usefixtures("store_backend")`
(tests/conftest.py): each of its tests then runs twice, `test_x[sqlite]` and
`test_x[postgresql]`, and while it runs, `store_section` / `store_settings` / `open_store` name
that backend's store. A store is named by the SQLite path it would have: on SQLite it is that
file, as before; on PostgreSQL each distinct path is a database of its own (the test's
`tmp_path / "triage.db"` the `store` fixture's, any other one created on first use), so a test
that opens two stores still gets two.

Outside such a module (no backend set) everything is SQLite, as it always was.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from triage.core.settings import StoreSettings
from triage.store.db import Database

if TYPE_CHECKING:
    from devtools.pgharness import PgHarness


class Backend:
    """The backend of the running test: `store` (the `store` fixture's settings) for the test's
    main store at `home / "triage.db"`, more PostgreSQL databases made by `harness` on demand
    (copies of the migrated `template` when given)."""

    def __init__(
        self,
        store: StoreSettings,
        home: Path,
        harness: PgHarness | None = None,
        template: str | None = None,
    ) -> None:
        self.store = store
        self.home = home
        self.harness = harness
        self.template = template
        self._databases: dict[Path, StoreSettings] = {}
        self._created: list[str] = []

    @property
    def name(self) -> str:
        """The backend's name: "sqlite" or "postgresql"."""
        return "postgresql" if self.store.is_postgresql else "sqlite"

    def settings(self, path: Path) -> StoreSettings:
        """The store that the SQLite file `path` stands for on this backend."""
        if not self.store.is_postgresql:
            return StoreSettings(path=path)
        key = Path(path).absolute()
        if key == (self.home / "triage.db").absolute():
            return self.store
        found = self._databases.get(key)
        if found is None:
            assert self.harness is not None and self.store.url
            name = f"test_{secrets.token_hex(6)}"
            self.harness.create_database(name, template=self.template)
            self._created.append(name)
            url = urlsplit(self.store.url)._replace(path=f"/{name}").geturl()
            found = StoreSettings(path=path, url=url, password_file=self.store.password_file)
            self._databases[key] = found
        return found

    def drop(self) -> None:
        """Drop the databases made on demand (after the pools are closed)."""
        assert self.harness is not None or not self._created
        for name in self._created:
            assert self.harness is not None
            self.harness.drop_database(name)
        self._created.clear()


_current: Backend | None = None


@contextmanager
def using(backend: Backend) -> Iterator[Backend]:
    """Make `backend` the one the helpers below use, for the block."""
    global _current  # noqa: PLW0603 - one test runs at a time; threads it starts see it too
    _current = backend
    try:
        yield backend
    finally:
        _current = None


def backend_name() -> str:
    """The running test's backend: "sqlite" unless a PostgreSQL one is set."""
    return "sqlite" if _current is None else _current.name


def store_settings(path: Path) -> StoreSettings:
    """The store the SQLite file `path` stands for on the running test's backend."""
    return StoreSettings(path=path) if _current is None else _current.settings(path)


def store_section(path: Path) -> dict[str, Any]:
    """`store_settings(path)` as the `[store]` section of a configuration. On PostgreSQL `path`
    stays too: unused by the store, it keeps what defaults to beside it (the OAuth2 key) in the
    test's folder."""
    store = store_settings(path)
    if not store.is_postgresql:
        return {"path": str(path)}
    return {"path": str(path), "url": store.url, "password_file": str(store.password_file)}


def open_store(path: Path | str) -> Database:
    """`Database(path)` on the running test's backend (":memory:" stays SQLite's)."""
    if str(path) == ":memory:":
        return Database(path)
    return Database(store_settings(Path(path)))
