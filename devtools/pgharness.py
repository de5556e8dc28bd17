"""A private PostgreSQL from Debian's packages: the database of fleet tests, benchmarks and demo.

`PgHarness` runs `initdb` and `pg_ctl` from the newest PostgreSQL installed under
/usr/lib/postgresql/<major>/bin (or $TRIAGE_PG_BINDIR) on a folder of its own, and starts a server
that listens on 127.0.0.1 at a free port and on a Unix socket in its own folder. Nothing of the
system's cluster (`/etc/postgresql`, port 5432) is used or touched.

- A login role `triage` with a generated password, checked with scram-sha-256 over TCP, owns a
  database `triage`: `url` is what the application is given
  (`postgresql://triage:PASSWORD@127.0.0.1:PORT/triage`).
- The superuser `postgres` is reachable only through the Unix socket, whose folder only the
  server's user (and root) may enter; the harness administers the server that way (`psql`,
  `create_database`, `drop_database`).
- As root (CI), every server program runs as the `postgres` system user: PostgreSQL refuses to
  run as root. As any other user, they run as that user. The folder's parents must let the
  `postgres` user through (/tmp does; pytest's /tmp/pytest-of-root and /root do not).
- The server is tuned for tests (no fsync, see `_SERVER_SETTINGS`): never keep data in it that
  a crash of the machine must not lose.

Tests start one server per session (~2 s: initdb ~1.5 s, pg_ctl start ~0.2 s, role and database
~0.4 s) and take a fresh database per test (`create_database`: ~0.1 s as a copy of a migrated
template, 0.2-0.4 s empty). Outage tests use
`stop_server()`/`start_server()` (orderly, data kept), `kill()` (SIGKILL of every server
process, crash recovery at the next start) and `restart()`.

Command line::

    python -m devtools.pgharness start|stop|status [--dir DIR] [--port N] [--remove]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import quote

__all__ = [
    "PgDsn",
    "PgHarness",
    "PgHarnessError",
    "PgSettings",
    "default_dir",
    "find_bindir",
    "main",
    "unavailable_reason",
]

_PG_ROOT = Path("/usr/lib/postgresql")
# Programs the harness runs; Debian's postgresql-<major> package ships the first three,
# postgresql-client-<major> (a dependency of it) psql, all in the same folder.
_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
_SERVER_USER = "postgres"
_HOST = "127.0.0.1"
# Random ports come from below Linux's ephemeral range (32768-60999), so an outgoing connection
# cannot take one between choosing it and the server binding it (as devtools.mailharness does).
_FREE_PORT_RANGE = (20000, 32000)
_PORT_ATTEMPTS = 5
# Linux limits a Unix socket path to 107 bytes; the socket is `<socket_dir>/.s.PGSQL.<port>`.
_MAX_SOCKET_DIR_LEN = 90
_START_TIMEOUT = 30
_STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.02
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Written to postgresql.conf at every start (so a port chosen again takes effect).
# fsync and full_page_writes off make commits and checkpoints cheap but lose or corrupt data if
# the machine (not the server) crashes: acceptable for tests only, never for production. A
# SIGKILL of the server (`kill()`) stays safe: a commit has written its WAL to the page cache.
# synchronous_commit stays on for that reason: off, a commit returns before its WAL leaves the
# server's memory, so a SIGKILL loses the last ~0.6 s of "committed" transactions, and the chaos
# tests would see lost effects that a real crash with a real configuration never loses.
_SERVER_SETTINGS: Mapping[str, str] = {
    "listen_addresses": f"'{_HOST}'",
    "fsync": "off",
    "full_page_writes": "off",
    # Fleet tests run three instances, each with a pool, next to the tests' own connections.
    "max_connections": "200",
    "shared_buffers": "64MB",
    "password_encryption": "'scram-sha-256'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "log_min_messages": "warning",
    "log_connections": "off",
}
# Superuser only through the private socket folder; the application's role only over TCP from
# loopback with its password. Anything else (e.g. ::1) matches no line and is refused.
_PG_HBA = """\
# written by devtools.pgharness
local   all   all                 trust
host    all   all   127.0.0.1/32  scram-sha-256
"""


class PgHarnessError(RuntimeError):
    """The PostgreSQL harness could not do what was asked; the message is one line saying why."""


def default_dir() -> Path:
    """Folder of the command line's server: $TRIAGE_PG_DIR or <tmp>/triage-postgres."""
    env = os.environ.get("TRIAGE_PG_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "triage-postgres"


# --------------------------------------------------------------------------------------------
# Installation


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def find_bindir() -> Path | None:
    """The bin folder of the newest PostgreSQL with every program the harness needs, or None.

    $TRIAGE_PG_BINDIR wins when set (another layout, a self-built server).
    """
    env = os.environ.get("TRIAGE_PG_BINDIR")
    candidates = (
        [Path(env)]
        if env
        else [p / "bin" for p in sorted(_PG_ROOT.glob("*"), key=_version_key, reverse=True)]
    )
    for bindir in candidates:
        if all(os.access(bindir / prog, os.X_OK) for prog in _PROGRAMS):
            return bindir
    return None


def unavailable_reason() -> str | None:
    """Why the harness cannot run on this machine, or None when it can (used to skip tests)."""
    if find_bindir() is None:
        where = os.environ.get("TRIAGE_PG_BINDIR") or f"{_PG_ROOT}/<major>/bin"
        return (
            f"PostgreSQL harness needs {', '.join(_PROGRAMS)} in {where}: "
            "apt-get install --no-install-recommends postgresql"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return (
                f"PostgreSQL harness runs the server as the {_SERVER_USER!r} user when root, "
                "and there is none: reinstall postgresql-common"
            )
    return None


# --------------------------------------------------------------------------------------------
# Small helpers


def _port_free(port: int) -> bool:
    """True when nothing listens on the loopback port (SO_REUSEADDR ignores TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    while True:
        port = _FREE_PORT_RANGE[0] + secrets.randbelow(_FREE_PORT_RANGE[1] - _FREE_PORT_RANGE[0])
        if _port_free(port):
            return port


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields after the last ")" do not.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: this container's init does not reap the
    postmaster that pg_ctl leaves behind, so a stopped server stays a zombie."""
    info = _proc_stat(pid)
    return info is not None and info[0] != "Z"


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (the postmaster's backends and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _proc_stat(int(entry.name))
            if info is not None and info[1] == pid and info[0] != "Z":
                found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log joined into one line, or "" when there is no such log."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


class PgDsn(TypedDict):
    """Connection keywords of libpq (`psycopg.connect(**harness.dsn)`)."""

    host: str
    port: int
    user: str
    password: str
    dbname: str


@dataclass(frozen=True)
class PgSettings:
    """What a harness folder remembers between runs (harness.json): port and credentials."""

    port: int
    password: str
    user: str = "triage"
    database: str = "triage"


# --------------------------------------------------------------------------------------------
# The harness


class PgHarness:
    """One private PostgreSQL server in one folder, plus the helpers tests use."""

    def __init__(
        self, base_dir: Path | str | None = None, *, port: int | None = None, keep: bool = False
    ) -> None:
        """Prepare nothing yet: `start()` creates the folder, the cluster and the server.

        Without `base_dir`, a new folder under the system's temporary folder (not pytest's,
        which the `postgres` user cannot enter) that `stop()` removes unless `keep`; with one,
        the folder stays (the command line's `stop --remove` deletes it). `port` is chosen free
        when None, and remembered in the folder for later starts.
        """
        self._owns_dir = base_dir is None and not keep
        self._base: Path | None = None if base_dir is None else Path(base_dir).absolute()
        self._requested_port = port
        self._settings: PgSettings | None = None
        self._bindir: Path | None = None
        self._admin_conn: Any = None  # psycopg.Connection, when psycopg is installed

    # -- facts -------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The harness folder (data, socket, log, harness.json); made by `start()` if needed."""
        if self._base is None:
            # /tmp itself, not $TMPDIR: the postgres user must be able to enter every parent.
            self._base = Path(tempfile.mkdtemp(prefix="triage-pg-", dir="/tmp"))
        return self._base

    @property
    def data_dir(self) -> Path:
        """The cluster (PGDATA), mode 0700, owned by the server's user."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The folder of the Unix socket `.s.PGSQL.<port>`; only the server's user enters it."""
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        """The server's log (pg_ctl -l)."""
        return self.base_dir / "postgresql.log"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "harness.json"

    @property
    def settings(self) -> PgSettings:
        """Port and credentials: from harness.json when the folder has one, else chosen now."""
        if self._settings is None:
            saved = self._load_settings()
            if saved is None:
                saved = PgSettings(
                    port=self._requested_port or _free_port(),
                    password=secrets.token_urlsafe(18),
                )
            elif self._requested_port and self._requested_port != saved.port:
                saved = replace(saved, port=self._requested_port)
            self._settings = saved
        return self._settings

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (and the number in the socket's name)."""
        return self.settings.port

    @property
    def password(self) -> str:
        """The password of the application's role `user`."""
        return self.settings.password

    @property
    def user(self) -> str:
        return self.settings.user

    @property
    def database(self) -> str:
        return self.settings.database

    def url_for(self, database: str, *, with_password: bool = True) -> str:
        """postgresql://triage:PASSWORD@127.0.0.1:PORT/<database> (the password is URL-safe)."""
        cred = self.user + (f":{quote(self.password, safe='')}" if with_password else "")
        return f"postgresql://{cred}@{_HOST}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The application's URL, password included: `postgresql://triage:…@127.0.0.1:PORT/triage`."""
        return self.url_for(self.database)

    @property
    def url_without_password(self) -> str:
        """`url` without the password, as a config file holds it (the password goes elsewhere)."""
        return self.url_for(self.database, with_password=False)

    @property
    def dsn(self) -> PgDsn:
        """The URL's parts as keywords (`psycopg.connect(**harness.dsn)`)."""
        return {
            "host": _HOST,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.database,
        }

    @property
    def admin_url(self) -> str:
        """The superuser over the Unix socket (for the harness's own tests; root or postgres)."""
        return (
            f"postgresql://{_SERVER_USER}@/{self.database}?host={self.socket_dir}&port={self.port}"
        )

    def server_pid(self) -> int | None:
        """PID of the running postmaster, or None (a zombie or a stale postmaster.pid: None)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.server_pid() is not None

    def status(self) -> dict[str, Any]:
        """Everything a person or a script needs to use the server, as JSON-ready data."""
        return {
            "running": self.is_running(),
            "pid": self.server_pid(),
            "base_dir": str(self.base_dir),
            "bindir": str(self._programs_dir()),
            "url": self.url,
            "url_without_password": self.url_without_password,
            "password": self.password,
            "port": self.port,
            "socket_dir": str(self.socket_dir),
            "log": str(self.log_file),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster, role and database if the folder has none, and start the server.

        Idempotent: a server already running in this folder is left alone.
        """
        reason = unavailable_reason()
        if reason:
            raise PgHarnessError(reason)
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
            self.start_server()
            self._create_role_and_database()
        else:
            self.start_server()

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and remove a temporary folder."""
        if self._base is None:
            return
        self.stop_server()
        if self._owns_dir:
            self.remove()

    def remove(self) -> None:
        """Delete the harness folder, data included (the server must be stopped)."""
        if self.is_running():
            raise PgHarnessError(f"the server in {self.base_dir} is running: stop it first")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def start_server(self) -> None:
        """Start the server on the existing data; return once it accepts connections.

        A port chosen by the harness that another process took meanwhile is chosen again; a
        port given by the caller is an error.
        """
        if self.is_running():
            return
        # After kill() the zombie postmaster's pid is still in postmaster.pid and in the
        # socket's lock file, and PostgreSQL refuses to start while that pid exists (a zombie
        # does). No postmaster of ours is alive (checked above): the files are stale.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for leftover in self.socket_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)
        for attempt in range(_PORT_ATTEMPTS):
            if not _port_free(self.port):
                if self._requested_port or attempt == _PORT_ATTEMPTS - 1:
                    raise PgHarnessError(f"port {_HOST}:{self.port} is in use; choose another")
                self._set_settings(replace(self.settings, port=_free_port()))
                continue
            self._write_server_conf()
            try:
                self._run_as_server(
                    [
                        *(str(self._programs_dir() / "pg_ctl"), "start", "-w"),
                        *("-t", str(_START_TIMEOUT), "-D", str(self.data_dir)),
                        *("-l", str(self.log_file)),
                    ],
                    timeout=_START_TIMEOUT + 10,
                )
            except PgHarnessError:
                # Lost a race for the port between our check and the server's bind: again.
                if self._requested_port or _port_free(self.port) or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self._set_settings(replace(self.settings, port=_free_port()))
                continue
            return

    def stop_server(self) -> None:
        """Stop the server (fast: open sessions are ended), keeping its data for `start_server`."""
        self._close_admin()
        if not self.is_running():
            return
        self._run_as_server(
            [
                *(str(self._programs_dir() / "pg_ctl"), "stop", "-w", "-m", "fast"),
                *("-t", str(int(_STOP_TIMEOUT)), "-D", str(self.data_dir)),
            ],
            timeout=_STOP_TIMEOUT + 10,
        )

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once, as a crash would; the data
        stays and the next `start_server()` runs crash recovery."""
        self._close_admin()
        pid = self.server_pid()
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while any(_pid_alive(v) for v in victims):
            if time.monotonic() > deadline:
                raise PgHarnessError(f"PostgreSQL processes {victims} survived SIGKILL")
            time.sleep(_POLL_INTERVAL)

    def restart(self) -> None:
        """Stop the server (fast) and start it again on the same data and port."""
        self.stop_server()
        self.start_server()

    def __enter__(self) -> PgHarness:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL as the superuser through the socket; its rows, unaligned and `|`-separated.

        Raises PgHarnessError with psql's message when a statement fails.
        """
        cmd = [
            str(self._programs_dir() / "psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", str(self.socket_dir), "-p", str(self.port), "-U", _SERVER_USER),
            *("-d", database or self.database, "-c", sql),
        ]
        return _run(cmd, env=self._env(), cwd=self.base_dir).rstrip("\n")

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create a database owned by the application's role, empty or a copy of `template`
        (a database nobody is connected to); return its URL."""
        self._check_name(name)
        sql = f'CREATE DATABASE "{name}" OWNER "{self.user}"'
        if template is not None:
            self._check_name(template)
            sql += f' TEMPLATE "{template}"'
        self._admin(sql)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending the sessions still connected to it; absent is fine."""
        self._check_name(name)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        """Run one statement as the superuser on the `postgres` database.

        Through one kept psycopg connection on the socket when psycopg is installed (tests
        create and drop a database per test: a psql process each costs ~20 ms more), else psql.
        A connection the server closed meanwhile (a restart or kill) is opened again once.
        """
        try:
            import psycopg  # optional: the command line works without it
        except ImportError:
            self.psql(sql, database="postgres")
            return
        for attempt in (1, 2):
            conn = self._admin_conn
            if conn is None or conn.closed:
                try:
                    conn = psycopg.connect(
                        host=str(self.socket_dir),
                        port=self.port,
                        user=_SERVER_USER,
                        dbname="postgres",
                        autocommit=True,
                        connect_timeout=10,
                    )
                except psycopg.OperationalError as exc:
                    raise PgHarnessError(_one_line(str(exc))) from exc
                self._admin_conn = conn
            try:
                conn.execute(sql.encode())
                return
            except psycopg.OperationalError as exc:
                self._close_admin()
                if attempt == 2:
                    raise PgHarnessError(_one_line(str(exc))) from exc
            except psycopg.Error as exc:
                raise PgHarnessError(_one_line(str(exc))) from exc

    def _close_admin(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.fullmatch(name):
            raise PgHarnessError(f"database name {name!r} must match {_NAME_RE.pattern}")

    def _programs_dir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
            if self._bindir is None:
                raise PgHarnessError(unavailable_reason() or "no PostgreSQL found")
        return self._bindir

    def _server_ids(self) -> tuple[int, int] | None:
        """(uid, gid) to run server programs as, or None for "as ourselves" (not root)."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(_SERVER_USER)
        except KeyError as exc:
            raise PgHarnessError(f"system user {_SERVER_USER!r} is missing") from exc
        return entry.pw_uid, entry.pw_gid

    def _env(self) -> dict[str, str]:
        # A clean environment: no PG* variable of the caller may redirect a program elsewhere.
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.base_dir), "LC_ALL": "C.UTF-8"}

    def _run_as_server(self, cmd: Sequence[str], timeout: float = 60.0) -> str:
        ids = self._server_ids()
        return _run(cmd, env=self._env(), cwd=self.base_dir, ids=ids, timeout=timeout, log=self)

    def _prepare_dir(self) -> None:
        """Make the folder, owned by the server's user, mode 0700 (its parents must let the
        server's user through)."""
        if len(str(self.socket_dir)) > _MAX_SOCKET_DIR_LEN:
            raise PgHarnessError(f"harness folder {self.base_dir} is too long for a socket path")
        if any(ch.isspace() or ch in "'\"\\" for ch in str(self.base_dir)):
            raise PgHarnessError(f"harness folder {self.base_dir} must not hold spaces or quotes")
        ids = self._server_ids()
        if ids is not None:
            _check_traversal(self.base_dir.parent, ids[0])
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if ids is not None:
            for folder in (self.base_dir, self.socket_dir):
                os.chown(folder, *ids)
        for folder in (self.base_dir, self.socket_dir):
            folder.chmod(0o700)
        self._set_settings(self.settings)

    def _initdb(self) -> None:
        self._run_as_server(
            [
                str(self._programs_dir() / "initdb"),
                *("-D", str(self.data_dir), "-U", _SERVER_USER, "-E", "UTF8"),
                # Byte-order sorting, like SQLite's; Unicode-aware upper()/lower().
                *("--lc-collate=C", "--lc-ctype=C.UTF-8", "--lc-messages=C"),
                *("--lc-monetary=C", "--lc-numeric=C", "--lc-time=C"),
                # Skips initdb's own fsync of the new cluster (a second of I/O): test data only.
                "--no-sync",
            ],
            timeout=120,
        )
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_PG_HBA)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# devtools.pgharness: rewritten at every start\ninclude 'harness.conf'\n")

    def _write_server_conf(self) -> None:
        settings = {
            **_SERVER_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = self.data_dir / "harness.conf"
        path.write_text(text)
        ids = self._server_ids()
        if ids is not None:
            os.chown(path, *ids)

    def _create_role_and_database(self) -> None:
        # token_urlsafe passwords hold only [A-Za-z0-9_-]: no quoting to get wrong.
        self.psql(
            f"CREATE ROLE \"{self.user}\" LOGIN PASSWORD '{self.password}'", database="postgres"
        )
        self.psql(f'CREATE DATABASE "{self.database}" OWNER "{self.user}"', database="postgres")

    def _load_settings(self) -> PgSettings | None:
        if self._base is None or not self.config_file.exists():
            return None
        try:
            return PgSettings(**json.loads(self.config_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise PgHarnessError(f"{self.config_file} is unreadable ({exc}); delete it") from exc

    def _set_settings(self, settings: PgSettings) -> None:
        self._settings = settings
        self.config_file.write_text(json.dumps(asdict(settings), indent=2, sort_keys=True))
        # It holds the password: readable by the owner only.
        self.config_file.chmod(0o600)


def _one_line(message: str) -> str:
    """A server's (possibly multi-line) message as one line."""
    return " ".join(message.split()) or "PostgreSQL gave no reason"


def _check_traversal(folder: Path, uid: int) -> None:
    """Fail clearly unless the server's user can walk down to the harness folder.

    pytest's base temp folder (/tmp/pytest-of-root) and /root are mode 0700: the server could
    not reach its data there. Nothing is changed on the way (opening someone's home folder to
    all is not a test harness's call); the default folder under /tmp always works.
    """
    for parent in [folder, *folder.parents]:
        if not parent.exists():
            continue  # made below with the default mode (0755 under umask 022)
        info = parent.stat()
        if not (info.st_mode & stat.S_IXOTH or info.st_uid == uid):
            raise PgHarnessError(
                f"{parent} is not searchable by the {_SERVER_USER} user (mode "
                f"{stat.S_IMODE(info.st_mode):o}), so the server cannot reach its folder; "
                "choose another --dir (e.g. under /tmp)"
            )


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    ids: tuple[int, int] | None = None,
    timeout: float = 60.0,
    log: PgHarness | None = None,
) -> str:
    """Run a program (as uid/gid `ids` when given, with that user's groups only); return its
    output, or raise PgHarnessError with its last line and the server log's tail."""
    user_args: dict[str, Any] = {}
    if ids is not None:
        name = pwd.getpwuid(ids[0]).pw_name
        # Like `runuser -u postgres --`: the user's own groups, none of root's.
        user_args = {"user": ids[0], "group": ids[1], "extra_groups": os.getgrouplist(name, ids[1])}
    # Output goes to a file, not a pipe: pg_ctl's server keeps inherited pipes open and
    # subprocess.run would wait for them until the timeout.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                timeout=timeout,
                check=False,
                **user_args,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PgHarnessError(f"{Path(cmd[0]).name} could not run: {exc}") from exc
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        tail = _tail(log.log_file) if log is not None else ""
        suffix = f"; postgresql.log: {tail}" if tail else ""
        raise PgHarnessError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {last}{suffix}")
    return output


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devtools.pgharness start|stop|status [--dir DIR]`; status 3 = stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.pgharness",
        description="Run a private PostgreSQL for triage on 127.0.0.1 (tests, benchmarks, demo).",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="harness folder (default: $TRIAGE_PG_DIR or <tmp>/triage-postgres)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="start: TCP port (default: a free one, kept)"
    )
    parser.add_argument(
        "--remove", action="store_true", help="stop: also delete the folder and its data"
    )
    args = parser.parse_args(argv)
    harness = PgHarness(
        args.dir or default_dir(), port=args.port if args.command == "start" else None
    )
    try:
        if args.command == "start":
            began = time.monotonic()
            harness.start()
            seconds = time.monotonic() - began
            print(f"PostgreSQL running in {harness.base_dir} (ready in {seconds:.2f} s)")
            print(f"  url     {harness.url}")
            print(f"  socket  {harness.socket_dir} (superuser {_SERVER_USER}, no password)")
            print(f"  log     {harness.log_file}")
        elif args.command == "stop":
            if not harness.config_file.exists():
                print(f"no PostgreSQL harness in {harness.base_dir}")
                return 0
            harness.stop_server()
            if args.remove:
                harness.remove()
            kept = "removed" if args.remove else "data kept"
            print(f"PostgreSQL in {harness.base_dir} stopped ({kept})")
        else:
            if not harness.config_file.exists():
                print(json.dumps({"running": False, "base_dir": str(harness.base_dir)}))
                return 3
            info = harness.status()
            print(json.dumps(info, indent=2))
            return 0 if info["running"] else 3
    except PgHarnessError as exc:
        print(f"pgharness: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
