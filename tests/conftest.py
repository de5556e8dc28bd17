"""Shared pytest fixtures. Keep each one small; add new ones below the existing ones."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devtools.mailharness import MailHarness
from devtools.oauthserver import OAuthServer
from devtools.pgharness import PgHarness, PgHarnessError, unavailable_reason

# The console's browser fixtures (browser, page, web_server), defined once for the session: a
# second definition per module would start a second Playwright in the same thread.
from tests.browser import browser_fixture, page_fixture, web_server_fixture  # noqa: F401
from tests.mailtools import DaemonStarter, running_harness
from tests.stores import Backend, using
from triage.core.settings import StoreSettings
from triage.store.db import Database


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    """The session's OAuth2 server (http, 30 s access tokens): the token endpoint of OAuth
    tests, and the introspection endpoint `mail_harness`'s Dovecot checks tokens with."""
    with OAuthServer(access_ttl=30.0) as server:
        yield server


@pytest.fixture(scope="session")
def mail_harness(oauth_server: OAuthServer) -> Iterator[MailHarness]:
    """Real Dovecot and Postfix for the whole session, in a temporary folder. Passwords work
    as always; XOAUTH2/OAUTHBEARER tokens of `oauth_server` work too (IMAP and submission)."""
    yield from running_harness(oauth2_introspection_url=oauth_server.introspection_url)


@pytest.fixture
def clean_mail(mail_harness: MailHarness) -> MailHarness:
    """The session's harness with every user's mailbox emptied before the test."""
    mail_harness.clear_all_mailboxes()
    return mail_harness


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonStarter]:
    """Starts `triage run` subprocesses and stops them after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = open(tmp_path / f"daemon-{len(procs)}.log", "w")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    """A templates directory with a minimal `sales` set."""
    from tests.templating import write

    directory = tmp_path / "templates"
    directory.mkdir()
    write(directory, "sales.subject", "{{ original_subject }}\n")
    write(directory, "sales.txt", "Hello {{ contact.name }}\n")
    return directory


@pytest.fixture
def oauth(oauth_server: OAuthServer) -> Iterator[OAuthServer]:
    """The session's OAuth2 server with its test switches (failures, down, approvals, TTL)
    reset before and after the test; tokens and clients of earlier tests stay valid."""
    oauth_server.reset()
    yield oauth_server
    oauth_server.reset()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgHarness]:
    """A private PostgreSQL for the whole session (devtools.pgharness), removed afterwards;
    skips the test with the reason when this machine cannot run one."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    harness = PgHarness()
    try:
        harness.start()
    except PgHarnessError as exc:
        harness.stop()
        pytest.fail(f"PostgreSQL harness did not start: {exc}")
    yield harness
    harness.stop()


@pytest.fixture
def pg_url(postgres: PgHarness) -> Iterator[str]:
    """URL (role `triage`, with password) of an empty database of its own, dropped afterwards."""
    name = f"test_{secrets.token_hex(6)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def pg_template(postgres: PgHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of a database migrated to the newest schema once per session, that `migrated_pg_url`
    copies: a copy takes ~0.1 s, a new database and every migration ~0.6 s, per test."""
    from triage.store.postgres.backend import close_pools

    name = "store_template"
    postgres.drop_database(name)
    url = urlsplit(postgres.create_database(name))
    secret = tmp_path_factory.mktemp("pg_template") / "pg.password"
    secret.write_text(f"{url.password}\n")
    secret.chmod(0o600)
    bare = url._replace(netloc=f"{url.username}@{url.hostname}:{url.port}").geturl()
    store = StoreSettings(path=secret.parent / "triage.db", url=bare, password_file=secret)
    Database(store).close()
    close_pools()  # a template must have no sessions when it is copied
    return name


@pytest.fixture
def migrated_pg_url(postgres: PgHarness, pg_template: str) -> Iterator[str]:
    """URL (role `triage`, with password) of a database of its own at the newest schema version,
    with no rows, dropped afterwards."""
    name = f"test_{secrets.token_hex(6)}"
    url = postgres.create_database(name, template=pg_template)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSettings]:
    """The store settings of a test that runs on both backends: a SQLite file in `tmp_path`,
    then a PostgreSQL database of its own, already migrated (the password in a 0600 file, as an
    operator configures it). Tests ask for `store` (or `store_backend`); this name is the one
    that test modules with a `store` fixture of their own do not hide."""
    if request.param == "sqlite":
        yield StoreSettings(path=tmp_path / "triage.db")
        return
    from triage.store.postgres.backend import close_pools

    url = urlsplit(request.getfixturevalue("migrated_pg_url"))
    secret = tmp_path / "pg.password"
    secret.write_text(f"{url.password}\n")
    secret.chmod(0o600)
    bare = url._replace(netloc=f"{url.username}@{url.hostname}:{url.port}").geturl()
    # `path` is unused with a url; set, anything that wrongly falls back to it stays in tmp_path.
    yield StoreSettings(path=tmp_path / "triage.db", url=bare, password_file=secret)
    close_pools()  # before `migrated_pg_url` drops the database under the pool's connections


@pytest.fixture
def store(backend_store: StoreSettings) -> StoreSettings:
    """The store settings of a test that runs on both backends (see `backend_store`)."""
    return backend_store


@pytest.fixture
def store_backend(
    backend_store: StoreSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Backend]:
    """Runs the test on both backends without a fixture in its signature: while it runs,
    tests.stores (`make_settings`, `open_store`) name the backend of `backend_store`. A module
    opts in with `pytestmark = pytest.mark.usefixtures("store_backend")`."""
    harness = request.getfixturevalue("postgres") if backend_store.is_postgresql else None
    template = request.getfixturevalue("pg_template") if backend_store.is_postgresql else None
    backend = Backend(backend_store, tmp_path, harness, template)
    with using(backend):
        yield backend
    if harness is not None:
        from triage.store.postgres.backend import close_pools

        close_pools()
        backend.drop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `sqlite_only` in a module that runs on both backends keeps only its
    SQLite half (what it checks does not exist on PostgreSQL: files, modes, PRAGMAs)."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgresql = (
            callspec is not None and callspec.params.get("backend_store") == "postgresql"
        )
        if on_postgresql and item.get_closest_marker("sqlite_only"):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
