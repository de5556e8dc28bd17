"""Real Dovecot and Postfix on loopback: the mail servers of the demo, the tests and the benchmarks.

`MailHarness` writes every configuration file, certificate, queue, maildir and log under one folder
(`HarnessConfig.base_dir`), starts Dovecot (IMAP, IMAPS, LMTP) and Postfix (SMTP, submission) on
127.0.0.1 and non-default ports, and offers the helpers that tests need: send a message over SMTP,
log in over IMAP, wait for a delivery, empty the mailboxes, stop and start either server for outage
tests.

Postfix listens twice, like a production MX with a submission service:

- `smtp_port` (port 25's role): inbound mail and unauthenticated sending from loopback, optional
  STARTTLS, no SMTP AUTH. It never asks Dovecot anything at connect time, so it keeps accepting
  (and queueing) mail while Dovecot is stopped, whichever smtpd process answers.
- `submission_port` (port 587's role): STARTTLS required, then SMTP AUTH against Dovecot's users
  through Dovecot's auth socket. An smtpd process there fetches the SASL mechanisms from that
  socket right after STARTTLS and exits if Dovecot is down, as in production: while Dovecot is
  stopped, a submission session is dropped after STARTTLS (unless an older smtpd that already
  holds the mechanisms happens to answer).

OAuth2 (off unless `HarnessConfig.oauth2_introspection_url` is set): Dovecot then offers XOAUTH2
and OAUTHBEARER beside PLAIN and LOGIN, and checks every token by RFC 7662 introspection at that
URL (a second passdb, `driver = oauth2`, `introspection_mode = post`, `force_introspection = yes`;
passwords stay with the passwd-file passdb, which handles only PLAIN and LOGIN). The endpoint must
answer `{"active": true, "username": ...}` with the user's local part or address (compared on the
local part, case-insensitively); `devtools.oauthserver.OAuthServer` does.
Postfix's submission service offers the same mechanisms, since it lists what Dovecot's auth
offers. With no auth cache, each login is one introspection request; a refused token is answered
after Dovecot's ~0.5 s failure tick (IMAP `[AUTHENTICATIONFAILED]`; SMTP a 334 error challenge,
then 535 once answered). An introspection endpoint that is down or answers 503 gives IMAP
`[UNAVAILABLE] Temporary authentication failure` instead, and SMTP an immediate `535 5.7.8 ...
(reason unavailable)` without the challenge; Dovecot logs `oauth2 failed: Introspection failed:
...` as an error (it logs nothing for a refused token, auth_verbose being off).

Postfix delivers only the harness domain (to Dovecot over LMTP) and refuses every other
destination, so nothing ever leaves the machine. Both servers run as root-started daemons, as
they do in production; see /work/shared/MAILSERVERS.md for the measured facts this module
relies on.

Command line::

    python -m devtools.mailharness start|stop|status [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import grp
import json
import os
import pwd
import secrets
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from email.message import EmailMessage
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from imapclient import IMAPClient

__all__ = [
    "DEFAULT_USERS",
    "HarnessConfig",
    "HarnessError",
    "MailHarness",
    "default_dir",
    "ensure_installed",
    "main",
    "unavailable_reason",
]

#: Local part -> password of the accounts every harness has. `hello` is the mailbox triage
#: watches, `other` a second watched mailbox, `sales` the team list that receives digests,
#: `alice`/`bob`/`carol` (and `dave` … `judy` for longer runs) are prospects writing in, `noreply`
#: the sender of automatic mail.
DEFAULT_USERS: Mapping[str, str] = MappingProxyType(
    {
        name: f"pw-{name}"
        for name in (
            *("hello", "sales", "alice", "bob", "carol", "other", "noreply"),
            *("dave", "erin", "frank", "grace", "heidi", "ivan", "judy"),
        )
    }
)

#: Special-use folders (RFC 6154) that Dovecot creates and subscribes for every user.
SPECIAL_USE_FOLDERS: Mapping[str, str] = MappingProxyType(
    {"Drafts": "\\Drafts", "Sent": "\\Sent", "Junk": "\\Junk", "Trash": "\\Trash"}
)

# Debian packages and a file each one installs: presence of the file means the package is there.
_REQUIRED_FILES: Mapping[str, str] = MappingProxyType(
    {
        "dovecot-imapd": "/usr/lib/dovecot/imap",
        "dovecot-lmtpd": "/usr/lib/dovecot/lmtp",
        "postfix": "/usr/lib/postfix/sbin/master",  # = _POSTFIX_MASTER
        "openssl": "/usr/bin/openssl",
    }
)
_POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
# Queue folders as /etc/postfix/postfix-files lists them: name -> (group postdrop?, mode), all
# owned by postfix except `pid` (root). Made here because `postfix check` takes ~2.5 s to.
_POSTFIX_QUEUE_DIRS: Mapping[str, tuple[bool, int]] = MappingProxyType(
    {
        **dict.fromkeys(
            ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming"),
            (False, 0o700),
        ),
        **dict.fromkeys(
            ("private", "saved", "trace"),
            (False, 0o700),
        ),
        "maildrop": (True, 0o730),
        "public": (True, 0o710),
        "pid": (False, 0o755),
    }
)
_APT_PACKAGES = ("dovecot-imapd", "dovecot-lmtpd", "postfix", "openssl")
# Without this answer the postfix package writes /etc/postfix/main.cf and may try to start a
# system-wide Postfix; the harness needs neither.
_POSTFIX_PRESEED = "postfix postfix/main_mailer_type select No configuration\n"
# Non-root shells often lack the sbin directories in PATH, where both servers live.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
# Linux limits a unix socket path to 107 bytes; Dovecot's longest socket name below its
# base_dir is about 30 bytes.
_MAX_RUN_DIR_LEN = 75
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01
# How long Dovecot's master gets to start an orderly shutdown before its process group is
# signalled too (see _stop_master).
_HURRY_AFTER = 0.05
# Random fixed ports for `with_free_ports` come from below Linux's ephemeral range
# (32768-60999) so an outgoing connection cannot grab one between choosing and binding.
_FREE_PORT_RANGE = (20000, 32000)


class HarnessError(RuntimeError):
    """The mail harness could not do what was asked; the message is one line saying why."""


def default_dir() -> Path:
    """Folder of the harness when none is given: $TRIAGE_HARNESS_DIR or <tmp>/triage-mailservers."""
    env = os.environ.get("TRIAGE_HARNESS_DIR")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "triage-mailservers"


@dataclass(frozen=True)
class HarnessConfig:
    """Where the harness lives, the ports it listens on, its domain and its users."""

    base_dir: Path
    host: str = "127.0.0.1"
    imap_port: int = 10143
    imaps_port: int = 10993
    lmtp_port: int = 10024
    smtp_port: int = 10025
    submission_port: int = 10587
    domain: str = "example.test"
    users: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    #: When set, Dovecot (and through it Postfix's submission service) also accepts XOAUTH2
    #: and OAUTHBEARER logins, checking each token at this RFC 7662 introspection endpoint
    #: (e.g. `devtools.oauthserver.OAuthServer.introspection_url`); password logins stay.
    oauth2_introspection_url: str | None = None
    #: CA certificate (PEM) to verify an https introspection endpoint against.
    oauth2_ca_file: str | None = None
    #: IMAP sessions one Dovecot `imap` process serves (Dovecot's default: 1). Every session in
    #: IDLE holds an inotify instance of its process, and the kernel allows 128 per user
    #: (fs.inotify.max_user_instances; all harness users are the `mail` user): past that,
    #: Dovecot checks the mailbox only every 30 s. Hundreds of sessions in IDLE (the
    #: mailbox-count benchmark) share processes instead, without changing the kernel's limit.
    imap_sessions_per_process: int = 1

    def ports(self) -> dict[str, int]:
        """Service name -> port, in start order."""
        return {
            "imap": self.imap_port,
            "imaps": self.imaps_port,
            "lmtp": self.lmtp_port,
            "smtp": self.smtp_port,
            "submission": self.submission_port,
        }

    def with_free_ports(self) -> HarnessConfig:
        """A copy whose ports are currently free, so parallel harnesses never collide."""
        chosen: set[int] = set()
        while len(chosen) < len(self.ports()):
            port = _FREE_PORT_RANGE[0] + secrets.randbelow(
                _FREE_PORT_RANGE[1] - _FREE_PORT_RANGE[0]
            )
            if port not in chosen and _port_free(self.host, port):
                chosen.add(port)
        imap, imaps, lmtp, smtp, submission = sorted(chosen)
        return replace(
            self,
            imap_port=imap,
            imaps_port=imaps,
            lmtp_port=lmtp,
            smtp_port=smtp,
            submission_port=submission,
        )

    def to_json(self) -> str:
        """The configuration as JSON, saved in base_dir so `stop`/`status` find the ports."""
        data: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["base_dir"] = str(self.base_dir)
        data["users"] = dict(self.users)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HarnessConfig:
        """Inverse of `to_json`; a port missing from an older file takes its default."""
        data = json.loads(text)
        data["base_dir"] = Path(data["base_dir"])
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Installation


def missing_packages() -> list[str]:
    """Debian packages the harness needs that are not installed."""
    return [pkg for pkg, path in _REQUIRED_FILES.items() if not Path(path).exists()]


def unavailable_reason() -> str | None:
    """Why the harness cannot run on this machine, or None when it can (used to skip tests)."""
    if os.geteuid() != 0:
        missing = missing_packages()
        if missing:
            return f"mail harness needs {', '.join(missing)} installed (or root to install them)"
        return "mail harness needs root: Postfix's master process runs only as root"
    return None


def ensure_installed() -> None:
    """Install Dovecot and Postfix with apt when they are missing (as root); else explain."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(
            f"missing packages {' '.join(missing)}: run as root, or install them with "
            f"`sudo apt-get install -y --no-install-recommends {' '.join(_APT_PACKAGES)}`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["debconf-set-selections"], input_text=_POSTFIX_PRESEED, env=env)
    install = ["apt-get", "install", "-y", "--no-install-recommends", *_APT_PACKAGES]
    try:
        _run(install, env=env, timeout=600)
    except HarnessError:
        # A fresh machine has no package lists (or stale ones): refresh once and retry.
        _run(["apt-get", "update"], env=env, timeout=600)
        _run(install, env=env, timeout=600)
    still = missing_packages()
    if still:
        raise HarnessError(f"apt-get install finished but {' '.join(still)} is still missing")


# --------------------------------------------------------------------------------------------
# Small helpers


def _run(
    cmd: Sequence[str],
    *,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    log: Path | None = None,
) -> str:
    """Run a command; on failure raise HarnessError with its last output line and log tail."""
    # Output goes to a file, not a pipe: a daemon that forks off keeps the pipe open and
    # subprocess.run would wait for it until the timeout.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                list(cmd),
                input=None if input_text is None else input_text.encode(),
                stdin=subprocess.DEVNULL if input_text is None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HarnessError(f"{cmd[0]} could not run: {exc}{_tail_suffix(log)}") from exc
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        lines = output.strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise HarnessError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {last}{_tail_suffix(log)}"
        )
    return output


def _tail(path: Path | None, lines: int = 5) -> str:
    """The last lines of a log joined into one line, or "" when there is no such log."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        # Logs can grow large over a benchmark; only the end matters.
        fh.seek(max(0, path.stat().st_size - 8192))
        text = fh.read().decode("utf-8", "replace")
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _tail_suffix(path: Path | None) -> str:
    tail = _tail(path)
    return f"; {path.name}: {tail}" if path is not None and tail else ""


def _port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (SO_REUSEADDR ignores our own TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_from_file(path: Path, comm: str) -> int | None:
    """PID in a pid file if that process is alive and is `comm` (guards against PID reuse)."""
    try:
        pid = int(path.read_text().split()[0])
        actual = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if actual == comm and _pid_alive(pid) else None


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: this container's init does not reap
    the daemons' exited masters, so they stay zombies forever."""
    fields = _proc_fields(pid)
    return fields is not None and fields[0] != "Z"


class _Proc(NamedTuple):
    """A process, identified by PID and start time so a reused PID is never mistaken for it."""

    pid: int
    start: str
    argv0: str


def _proc_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live_children(pid: int) -> list[_Proc]:
    """The live (non-zombie) child processes of `pid`."""
    children = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        fields = _proc_fields(int(proc.name))
        try:
            if fields is None or int(fields[1]) != pid or fields[0] == "Z":
                continue
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue  # the process ended while we looked
        children.append(_Proc(int(proc.name), fields[19], argv0.decode(errors="replace")))
    return children


def _still_running(proc: _Proc) -> bool:
    fields = _proc_fields(proc.pid)
    return fields is not None and fields[0] != "Z" and fields[19] == proc.start


def _stop_master(pid: int, deadline: float, hurry: bool, pid_file: Path | None) -> list[_Proc]:
    """SIGTERM a master and wait until it is gone; return every child seen meanwhile.

    `hurry` (Dovecot): once the master has begun its shutdown, SIGTERM its whole process
    group. Left alone, Dovecot's master waits out timers for processes that still have
    clients (auth serving Postfix's smtpd, stats, the log process): a second or more, which
    would make every stop and restart_dovecot() that slow. Its processes exit cleanly on
    SIGTERM, and maildir deliveries are atomic renames. A master that then lingers without
    children (it sometimes sleeps out a last 1 s timer) is killed and its pid file removed:
    killed, it stays a zombie here, which Dovecot would take for a running instance.
    """
    children = {child.pid: child for child in _live_children(pid)}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    began = time.monotonic()
    hurried_at: float | None = None
    while _pid_alive(pid) and time.monotonic() < deadline:
        live = _live_children(pid)
        children.update((child.pid, child) for child in live)
        now = time.monotonic()
        if hurry and hurried_at is None and now - began > _HURRY_AFTER:
            hurried_at = now
            # The master leads its own session and process group (it daemonised).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        elif hurried_at is not None and not live and now - hurried_at > _HURRY_AFTER * 2:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
        time.sleep(_POLL_INTERVAL)
    if _pid_alive(pid):
        # Same last resort as postfix-script: kill the whole process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return list(children.values())


@functools.cache
def _dovecot_version() -> tuple[int, ...]:
    """Dovecot's version as numbers, e.g. (2, 3, 19, 1), from `dovecot --version`."""
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)
    out = _run(["dovecot", "--version"], env=env)
    try:
        return tuple(int(part) for part in out.split()[0].split("."))
    except (IndexError, ValueError) as exc:
        raise HarnessError(f"cannot read Dovecot's version from {out.strip()!r}") from exc


def _allow_traversal(path: Path) -> None:
    """Let the unprivileged daemon users (mail, postfix) walk down to `path`.

    pytest's base temp dir (/tmp/pytest-of-root) is mode 0700, which stops the imap process
    (uid mail) from reaching the maildirs and Postfix (uid postfix) from reaching its queue.
    Adding only the search bit (o+x) to folders we own opens no listing; folders owned by
    someone else must already allow it, or we say which one blocks.
    """
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if folder.stat().st_uid == os.geteuid():
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        else:
            raise HarnessError(
                f"{folder} is not searchable by other users (chmod o+x), so the mail daemons "
                "cannot reach the harness folder; choose another --dir"
            )


def _ids(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise HarnessError(f"system user {name!r} is missing: reinstall dovecot/postfix") from exc
    return entry.pw_uid, entry.pw_gid


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError as exc:
        raise HarnessError(f"system group {name!r} is missing: reinstall postfix") from exc


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file only when its content changed, so a second start() touches nothing."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        # Postfix re-reads a configuration file modified within the last couple of seconds
        # until it looks stable (~2 s of 300 ms naps on a fresh harness); we wrote it whole.
        past = time.time() - 60
        os.utime(path, (past, past))
    path.chmod(mode)


# --------------------------------------------------------------------------------------------
# The harness


class MailHarness:
    """Dovecot and Postfix for one `HarnessConfig`, plus the helpers tests use."""

    def __init__(self, config: HarnessConfig) -> None:
        """Prepare nothing yet: `start()` writes the files and starts the servers."""
        base = config.base_dir.expanduser().absolute()
        self.config = replace(config, base_dir=base)
        if any(ch.isspace() or ch in "%$\"'#<" for ch in str(base)):
            # Both servers' config syntaxes would need quoting rules we do not want to get wrong.
            raise HarnessError(f"harness folder {base} must not contain spaces or %$\"'#<")
        self.base_dir = base
        self.dovecot_dir = base / "dovecot"
        self.dovecot_conf = self.dovecot_dir / "dovecot.conf"
        self.passwd_file = self.dovecot_dir / "passwd"
        self.dovecot_run = self.dovecot_dir / "run"
        # Postfix's config folder must hold only root-owned files (`postfix check` warns about
        # anything else), so its queue and data folders sit beside it, not inside.
        self.postfix_dir = base / "postfix" / "etc"
        self.queue_dir = base / "postfix" / "spool"
        self.data_dir = base / "postfix" / "lib"
        self.mail_dir = base / "mail"
        self.tls_dir = base / "tls"
        self.log_dir = base / "log"
        self.dovecot_log = self.log_dir / "dovecot.log"
        self.postfix_log = self.log_dir / "postfix.log"
        self.config_file = base / "harness.json"
        if len(str(self.dovecot_run)) > _MAX_RUN_DIR_LEN:
            raise HarnessError(f"harness folder {base} is too long for unix socket paths")

    @classmethod
    def for_dir(cls, base_dir: Path | str | None = None) -> MailHarness:
        """The harness in `base_dir` (default: `default_dir()`), with the ports it last used."""
        base = Path(base_dir) if base_dir is not None else default_dir()
        saved = base / "harness.json"
        if saved.exists():
            try:
                return cls(replace(HarnessConfig.from_json(saved.read_text()), base_dir=base))
            except (ValueError, TypeError, KeyError) as exc:
                raise HarnessError(f"{saved} is unreadable ({exc}); delete it") from exc
        return cls(HarnessConfig(base_dir=base))

    # -- facts -------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The harness CA certificate: verify IMAPS/STARTTLS against it."""
        return self.base_dir / "ca.pem"

    def address(self, user: str) -> str:
        """Email address of a harness user: `address("hello") == "hello@example.test"`."""
        self._check_user(user)
        return f"{user}@{self.config.domain}"

    def password(self, user: str) -> str:
        """Password of a harness user."""
        self._check_user(user)
        return self.config.users[user]

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client TLS context that trusts only the harness CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _check_user(self, user: str) -> None:
        if user not in self.config.users:
            raise HarnessError(f"unknown harness user {user!r}; known: {sorted(self.config.users)}")

    def dovecot_pid(self) -> int | None:
        """PID of Dovecot's master process, or None when it is not running."""
        return _pid_from_file(self.dovecot_run / "master.pid", "dovecot")

    def postfix_pid(self) -> int | None:
        """PID of Postfix's master process, or None when it is not running."""
        return _pid_from_file(self.queue_dir / "pid" / "master.pid", "master")

    def is_running(self) -> bool:
        """True when both servers' master processes are alive."""
        return self.dovecot_pid() is not None and self.postfix_pid() is not None

    def status(self) -> dict[str, Any]:
        """Everything a person or a script needs to use the harness, as JSON-ready data."""
        cfg = self.config
        return {
            "running": self.is_running(),
            "base_dir": str(self.base_dir),
            "host": cfg.host,
            "domain": cfg.domain,
            "ports": cfg.ports(),
            "ca_file": str(self.ca_file),
            "oauth2_introspection_url": cfg.oauth2_introspection_url,
            "dovecot": {
                "pid": self.dovecot_pid(),
                "config": str(self.dovecot_conf),
                "log": str(self.dovecot_log),
            },
            "postfix": {
                "pid": self.postfix_pid(),
                "config": str(self.postfix_dir),
                "log": str(self.postfix_log),
            },
            "users": {self.address(u): pw for u, pw in cfg.users.items()},
            "attached": self.attached(),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write all files and start both servers; return once every port accepts connections.

        Idempotent: servers already running with this configuration are left alone; if the
        folder last ran with another configuration, or with server configuration files that
        another version of this module wrote, that instance is stopped first.
        """
        if self.config_file.exists() and (self.dovecot_pid() or self.postfix_pid()):
            try:
                previous = HarnessConfig.from_json(self.config_file.read_text())
            except (ValueError, TypeError, KeyError):
                previous = None
            if (
                previous is None
                or replace(previous, base_dir=self.base_dir) != self.config
                or self._server_files_stale()
            ):
                self.stop()
        self.start_dovecot()
        self.start_postfix()

    def stop(self) -> None:
        """Stop the attached processes, then both servers (Postfix first, so it does not defer
        mail to a vanishing Dovecot)."""
        self.stop_attached()
        self.stop_postfix()
        self.stop_dovecot()

    # -- processes that live and die with the servers (the demo's web console) ----------------

    @property
    def attached_dir(self) -> Path:
        """Where `attach` records processes: one `NAME.pid` file each."""
        return self.base_dir / "attached"

    def attach(self, name: str, pid: int) -> None:
        """Have `stop()` (and so `mailservers stop`) end process `pid` too. Recorded with its
        start time, so that a later process given the same pid is never signalled."""
        fields = _proc_fields(pid)
        if fields is None:
            raise HarnessError(f"cannot attach {name}: process {pid} is not running")
        self.attached_dir.mkdir(parents=True, exist_ok=True)
        (self.attached_dir / f"{name}.pid").write_text(f"{pid} {fields[19]}\n")

    def attached(self) -> dict[str, int]:
        """The attached processes still running: name → pid."""
        running: dict[str, int] = {}
        for path in sorted(self.attached_dir.glob("*.pid")):
            try:
                pid_text, start = path.read_text().split()[:2]
                proc = _Proc(int(pid_text), start, "")
            except (OSError, ValueError):
                continue
            if _still_running(proc):
                running[path.stem] = proc.pid
        return running

    def stop_attached(self, timeout: float = 10.0) -> list[str]:
        """SIGTERM every attached process, SIGKILL what is left after `timeout`; forget them
        all. Returns the names of those that were running."""
        running = self.attached()
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_pid_alive(pid) for pid in running.values()) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)
        for pid in running.values():
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for path in self.attached_dir.glob("*.pid"):
            path.unlink(missing_ok=True)
        return sorted(running)

    def restart_dovecot(self) -> None:
        """Stop and start Dovecot: every IMAP connection is dropped (for reconnect tests)."""
        self.stop_dovecot()
        self.start_dovecot()

    def start_dovecot(self) -> None:
        """Start Dovecot alone (no-op when running); waits for IMAP, IMAPS and LMTP."""
        self._prepare()
        if self.dovecot_pid() is not None:
            return
        cfg = self.config
        ports = (cfg.imap_port, cfg.imaps_port, cfg.lmtp_port)
        self._check_ports_free(ports, "Dovecot")
        # Left over from a harness version that had the auth penalty on: with nobody listening,
        # the auth process would retry connecting to it for 5 s before the first login.
        (self.dovecot_run / "anvil-auth-penalty").unlink(missing_ok=True)
        _run(["dovecot", "-c", str(self.dovecot_conf)], log=self.dovecot_log, env=self._env())
        self._wait_accepting(ports, "Dovecot", self.dovecot_log, self.dovecot_pid)

    def stop_dovecot(self) -> None:
        """Stop Dovecot (no-op when stopped); returns once its ports are free again."""
        cfg = self.config
        self._terminate(
            self.dovecot_pid(),
            (cfg.imap_port, cfg.imaps_port, cfg.lmtp_port),
            "Dovecot",
            hurry=True,
            pid_file=self.dovecot_run / "master.pid",
        )

    def start_postfix(self) -> None:
        """Start Postfix alone (no-op when running); waits for SMTP and submission.

        Works while Dovecot is stopped: mail for the harness domain is queued until it is back.
        """
        self._prepare()
        if self.postfix_pid() is not None:
            return
        ports = self._postfix_ports()
        self._check_ports_free(ports, "Postfix")
        env = self._env()
        # What `postfix start` runs after its permission checks (which take ~2.5 s; _prepare
        # already made the queue folders as /etc/postfix/postfix-files lists them): `-w`
        # returns once the master has initialised, with a non-zero exit if it could not.
        # Postfix reports its errors only to a terminal and the log, hence the log tail.
        _run([_POSTFIX_MASTER, "-c", str(self.postfix_dir), "-w"], log=self.postfix_log, env=env)
        # Connecting starts an smtpd on each port (Dovecot need not be up: the submission smtpd
        # asks for SASL only after STARTTLS).
        self._wait_accepting(ports, "Postfix", self.postfix_log, self.postfix_pid)

    def stop_postfix(self) -> None:
        """Stop Postfix (no-op when stopped); mail still queued stays in the queue folder."""
        # This is what `postfix stop` does (SIGTERM to the master), minus its 1 s polling sleeps.
        self._terminate(self.postfix_pid(), self._postfix_ports(), "Postfix")

    def _postfix_ports(self) -> tuple[int, int]:
        return (self.config.smtp_port, self.config.submission_port)

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PATH=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)

    def _check_ports_free(self, ports: Sequence[int], server: str) -> None:
        for port in ports:
            if not _port_free(self.config.host, port):
                raise HarnessError(
                    f"port {port} on {self.config.host} is busy, so {server} cannot listen "
                    f"there: stop whatever holds it (`ss -ltnp 'sport = :{port}'`) or use "
                    "other ports (CLI: --free-ports)"
                )

    def _wait_accepting(
        self, ports: Sequence[int], server: str, log: Path, pid: Callable[[], int | None]
    ) -> None:
        """Wait until every port accepts a connection; fail early if the server died."""
        deadline = time.monotonic() + _START_TIMEOUT
        for port in ports:
            while not _port_accepts(self.config.host, port):
                if time.monotonic() > deadline or pid() is None:
                    state = "died" if pid() is None else "is not listening"
                    raise HarnessError(
                        f"{server} {state} on port {port} after start{_tail_suffix(log)}"
                    )
                time.sleep(_POLL_INTERVAL)

    def _terminate(
        self,
        pid: int | None,
        ports: Sequence[int],
        server: str,
        hurry: bool = False,
        pid_file: Path | None = None,
    ) -> None:
        """SIGTERM a master process, wait for it and every child it had, then for its ports."""
        if pid is None:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT
        children = _stop_master(pid, deadline, hurry, pid_file)
        # Dovecot's logged-in IMAP processes outlive the master (re-parented to init) and
        # keep serving their clients; end them, so a stopped server means dropped sessions.
        for child in children:
            if _still_running(child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        while any(_still_running(child) for child in children):
            if time.monotonic() > deadline:
                raise HarnessError(f"{server} stopped but some of its processes did not")
            time.sleep(_POLL_INTERVAL)
        # The master's children (login processes, smtpd) may hold the listening sockets a
        # moment longer; the ports must be free before a restart can bind them.
        for port in ports:
            while not _port_free(self.config.host, port):
                if time.monotonic() > deadline:
                    raise HarnessError(f"{server} stopped but port {port} is still in use")
                time.sleep(_POLL_INTERVAL)

    # -- files -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create folders, certificates and both servers' configuration (cheap when done)."""
        if os.geteuid() != 0:
            raise HarnessError("the mail harness needs root: Postfix's master runs only as root")
        ensure_installed()
        mail_uid, mail_gid = _ids("mail")
        postfix_uid, postfix_gid = _ids("postfix")
        for folder in (
            self.base_dir,
            self.dovecot_dir,
            self.postfix_dir.parent,
            self.postfix_dir,
            self.queue_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        _allow_traversal(self.base_dir)
        self.log_dir.mkdir(exist_ok=True)
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        self.mail_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.mail_dir, mail_uid, mail_gid)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, postfix_uid, postfix_gid)
        postdrop_gid = _group_id("postdrop")
        for name, (postdrop, mode) in _POSTFIX_QUEUE_DIRS.items():
            folder = self.queue_dir / name
            folder.mkdir(exist_ok=True)
            os.chown(folder, 0 if name == "pid" else postfix_uid, postdrop_gid if postdrop else 0)
            folder.chmod(mode)
        self._make_certificates()
        # Test-only passwords; the auth process runs as user dovecot and must read the file.
        _write(self.passwd_file, "".join(f"{u}:{{PLAIN}}{pw}::::::\n" for u, pw in self._users()))
        for path, text in self._server_files(mail_uid).items():
            _write(path, text)
        _write(
            self.postfix_dir / "vmailbox",
            "".join(f"{self.address(u)} {u}/\n" for u, _ in self._users()),
        )
        _write(self.config_file, self.config.to_json() + "\n")

    def _server_files(self, mail_uid: int) -> dict[Path, str]:
        """The servers' configuration files and the text this module writes into them."""
        files = {
            self.dovecot_conf: self._dovecot_conf(mail_uid),
            self.postfix_dir / "main.cf": self._postfix_main_cf(),
            self.postfix_dir / "master.cf": self._postfix_master_cf(),
        }
        if self.config.oauth2_introspection_url is not None:
            files[self.oauth2_conf] = self._dovecot_oauth2_conf_ext()
        return files

    def _server_files_stale(self) -> bool:
        """True when a configuration file on disk differs from what this module would write
        (servers started by an older version of the harness run with the old files)."""
        files = self._server_files(_ids("mail")[0])
        return any(not p.exists() or p.read_text() != text for p, text in files.items())

    def _users(self) -> list[tuple[str, str]]:
        return sorted(self.config.users.items())

    def _make_certificates(self) -> None:
        """A self-signed CA (base_dir/ca.pem) and a server certificate it signs, once per folder.

        Kept across restarts so clients that loaded the CA keep trusting the servers. EC P-256
        keys are made in milliseconds, unlike RSA.
        """
        server_cert = self.tls_dir / "server.pem"
        if self.ca_file.exists() and server_cert.exists():
            return
        cnf = self.tls_dir / "openssl.cnf"
        sans = ["IP:127.0.0.1", "DNS:localhost"]
        if self.config.host != "127.0.0.1":
            sans.insert(0, f"IP:{self.config.host}")
        cnf.write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = triage mail harness\n"
            "[ca]\nbasicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
            "[server]\nbasicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            f"subjectAltName = {', '.join(sans)}\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n"
        )
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ca_key, server_key, csr = (self.tls_dir / n for n in ("ca.key", "server.key", "server.csr"))
        tmp_ca = self.tls_dir / "ca.pem.tmp"
        _run(
            ["openssl", "req", "-config", str(cnf), "-x509", *key, "-keyout", str(ca_key),
             "-out", str(tmp_ca), "-days", "3650", "-extensions", "ca",
             "-subj", f"/CN=triage mail harness CA {secrets.token_hex(4)}"]
        )  # fmt: skip
        _run(
            ["openssl", "req", "-config", str(cnf), "-new", *key, "-keyout", str(server_key),
             "-out", str(csr), "-subj", "/CN=localhost"]
        )  # fmt: skip
        _run(
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(tmp_ca), "-CAkey",
             str(ca_key), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "825",
             "-extfile", str(cnf), "-extensions", "server", "-out", str(server_cert)]
        )  # fmt: skip
        for path in (ca_key, server_key):
            path.chmod(0o600)
        # Publish the CA last: its presence is what marks the certificates as complete.
        tmp_ca.replace(self.ca_file)
        self.ca_file.chmod(0o644)

    def _dovecot_conf(self, mail_uid: int) -> str:
        cfg = self.config
        tls = self.tls_dir
        dh = Path("/usr/share/dovecot/dh.pem")
        special = "".join(
            f"  mailbox {name} {{\n    special_use = {flag}\n    auto = subscribe\n  }}\n"
            for name, flag in SPECIAL_USE_FOLDERS.items()
        )
        oauth2 = cfg.oauth2_introspection_url is not None
        oauth2_auth = self._dovecot_oauth2_auth() if oauth2 else ""
        # With OAuth2 on (Dovecot 2.3), passwords are checked only for the password mechanisms:
        # a token sent with XOAUTH2 must never be tried as a password, nor a password introspected.
        plain_only = (
            "  mechanisms = plain login\n" if oauth2 and _dovecot_version() < (2, 4) else ""
        )
        sessions = cfg.imap_sessions_per_process
        imap_sharing = f"  client_limit = {sessions}\n  service_count = 0\n" if sessions > 1 else ""
        # One setting per line: Dovecot refuses a setting on the same line as `{`.
        return f"""\
# Written by devtools.mailharness on every start; edit the module, not this file.
instance_name = triage-mailharness
base_dir = {self.dovecot_run}
state_dir = {self.dovecot_dir / "state"}
log_path = {self.dovecot_log}
listen = {cfg.host}
protocols = imap lmtp
hostname = mail.{cfg.domain}
login_greeting = triage mail harness ready.

ssl = yes
ssl_cert = <{tls / "server.pem"}
ssl_key = <{tls / "server.key"}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
ssl_min_protocol = TLSv1.2

# Loopback only: plain LOGIN without TLS is what the plain-IMAP tests use.
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if oauth2 else ""}
# A wrong password must fail at once, not after the default 2 s penalty.
auth_failure_delay = 0
auth_cache_size = 0

first_valid_uid = {mail_uid}
mail_location = maildir:~/Maildir
recipient_delimiter = +
# Kill IMAP sessions on stop, so restart_dovecot() really drops clients.
shutdown_clients = yes

passdb {{
  driver = passwd-file
{plain_only}  args = scheme=PLAIN username_format=%n {self.passwd_file}
}}
{oauth2_auth}userdb {{
  driver = passwd-file
  args = username_format=%n {self.passwd_file}
  default_fields = uid=mail gid=mail home={self.mail_dir}/%n
}}

namespace inbox {{
  inbox = yes
  mailbox INBOX {{
    auto = subscribe
  }}
{special}}}

# Up to a thousand and more sessions at once from loopback (the mailbox-count benchmark watches
# 1,000 mailboxes, each an IMAPS session in IDLE): far more clients and processes per service
# than Dovecot's defaults (1,000 clients, 100 processes), or logins wait and time out.
default_client_limit = 5000
default_process_limit = 2500

service imap-login {{
  # High-performance mode: a few long-lived login processes each accept (and, for IMAPS, carry
  # the TLS of) many sessions; the default, one process per connection and at most 100, makes
  # the 101st IMAPS client wait for a free one.
  service_count = 0
  process_min_avail = 4
  inet_listener imap {{
    address = {cfg.host}
    port = {cfg.imap_port}
  }}
  inet_listener imaps {{
    address = {cfg.host}
    port = {cfg.imaps_port}
    ssl = yes
  }}
}}
service imap {{
  process_limit = 2500
{imap_sharing}}}
service lmtp {{
  inet_listener lmtp {{
    address = {cfg.host}
    port = {cfg.lmtp_port}
  }}
}}
# No growing delay (anvil's auth penalty, 2 s doubling to 15 s per client IP) after failed
# logins: tests try wrong passwords on purpose. The auth process logs one "net_connect_unix(
# anvil-auth-penalty) failed" error at start for this; it is expected. (Dovecot 2.3.19 still
# answers each failure after ~0.5 s, its failure-queue tick, even with auth_failure_delay = 0.)
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# Postfix's submission smtpd authenticates SMTP AUTH against the same users through this socket.
service auth {{
  unix_listener auth-postfix {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
protocol imap {{
  # Tests and benchmarks open many sessions per user from the same address (default 10).
  mail_max_userip_connections = 200
}}
protocol lmtp {{
  postmaster_address = postmaster@{cfg.domain}
}}
"""

    @property
    def oauth2_conf(self) -> Path:
        """Dovecot 2.3's oauth2 passdb settings (written when OAuth2 is on)."""
        return self.dovecot_dir / "dovecot-oauth2.conf.ext"

    def _dovecot_oauth2_auth(self) -> str:
        """The dovecot.conf text that checks XOAUTH2/OAUTHBEARER tokens by introspection."""
        if _dovecot_version() >= (2, 4):
            # Untested (only 2.3.19 is installed here): Dovecot 2.4 checks tokens in the
            # mechanism itself, configured by a top-level `oauth2` filter, with no passdb
            # (doc.dovecot.org/latest/core/config/auth/databases/oauth2.html). The rest of this
            # file is 2.3 syntax too, which 2.4 refuses: porting the harness means all of it.
            ca = self.config.oauth2_ca_file
            return (
                "oauth2 {\n"
                + "".join(f"  {line}\n" for line in self._oauth2_settings())
                + (f"  ssl_client_ca_file = {ca}\n" if ca else "")
                + "}\n"
            )
        return f"""\
# XOAUTH2 and OAUTHBEARER: the token is introspected on every login (auth_cache_size = 0).
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2_conf}
}}
"""

    def _oauth2_settings(self) -> list[str]:
        """Settings shared by Dovecot 2.3's dovecot-oauth2.conf.ext and 2.4's oauth2 filter."""
        return [
            "introspection_mode = post",
            f"introspection_url = {self.config.oauth2_introspection_url}",
            # Always ask the endpoint: tests expire and revoke tokens and count the calls.
            "force_introspection = yes",
            "username_attribute = username",
            "active_attribute = active",
            "active_value = true",
        ]

    def _dovecot_oauth2_conf_ext(self) -> str:
        ca = self.config.oauth2_ca_file
        return (
            "# Written by devtools.mailharness on every start; edit the module, not this file.\n"
            + "".join(f"{line}\n" for line in self._oauth2_settings())
            # Applied to both the login name and the introspected username before comparing:
            # `hello`, `hello@example.test` and `HELLO` are the same harness user.
            + "username_format = %Ln\n"
            + (f"tls_ca_cert_file = {ca}\n" if ca else "")
        )

    def _postfix_main_cf(self) -> str:
        cfg = self.config
        refuse = "error:outbound delivery disabled by the triage mail harness"
        return f"""\
# Written by devtools.mailharness on every start; edit the module, not this file.
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
# Postfix prints errors only to a terminal; this file is what HarnessError quotes.
maillog_file = {self.postfix_log}
maillog_file_prefixes = {self.log_dir}

myhostname = mail.{cfg.domain}
mydomain = {cfg.domain}
myorigin = $mydomain
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {cfg.host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP triage mail harness
biff = no
recipient_delimiter = +
message_size_limit = 52428800
# Accept a burst of test mail at full speed instead of pausing the sender, and answer
# errors (a failed AUTH, a refused recipient) without the default 1 s pause.
in_flow_delay = 0
smtpd_error_sleep_time = 0

# The harness domain goes to Dovecot over LMTP; unknown users are refused at RCPT TO.
virtual_mailbox_domains = {cfg.domain}
virtual_mailbox_maps = texthash:{self.postfix_dir / "vmailbox"}
virtual_alias_maps =
virtual_transport = lmtp:inet:{cfg.host}:{cfg.lmtp_port}

# Nothing leaves the machine: any other domain is refused at RCPT TO (relay access denied,
# even from mynetworks), and whatever reaches the queue some other way bounces.
relay_domains =
relayhost =
smtpd_relay_restrictions = reject_unauth_destination
default_transport = {refuse}
relay_transport = {refuse}
smtp_dns_support_level = disabled

# Retry deferred mail within seconds, so outage tests see it arrive once Dovecot is back.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
# A delivery transport found malfunctioning (LMTP while Dovecot was down) is otherwise left
# alone for 60 s: mail of an outage test would then arrive in the next test's mailbox.
transport_retry_time = 1s

# Optional STARTTLS (same certificate as Dovecot) on every smtpd. SMTP AUTH only on the
# submission service (master.cf): an smtpd with SASL on asks Dovecot's auth socket for its
# mechanisms when a session starts (with smtpd_tls_auth_only, after STARTTLS) and exits when
# Dovecot is down, so the inbound port must
# not have it, or mail sent during a Dovecot outage fails whenever a new smtpd answers.
smtpd_tls_security_level = may
smtpd_tls_cert_file = {self.tls_dir / "server.pem"}
smtpd_tls_key_file = {self.tls_dir / "server.key"}
smtpd_tls_session_cache_database =
smtpd_sasl_auth_enable = no
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.dovecot_run / "auth-postfix"}
smtp_tls_security_level = none
lmtp_tls_security_level = none
"""

    def _postfix_master_cf(self) -> str:
        # Nothing chrooted (column 5 "n"): the daemons read files under base_dir directly.
        # Submission as in Debian's master.cf: TLS first, then a login, before any recipient;
        # the harness domain stays the only destination (reject_unauth_destination).
        cfg = self.config
        submission = " ".join(
            f"-o {setting}"
            for setting in (
                "syslog_name=postfix/submission",
                "smtpd_tls_security_level=encrypt",
                "smtpd_sasl_auth_enable=yes",
                "smtpd_tls_auth_only=yes",
                "smtpd_client_restrictions=permit_sasl_authenticated,reject",
            )
        )
        services = [
            f"{cfg.host}:{cfg.smtp_port} inet n - n - - smtpd",
            f"{cfg.host}:{cfg.submission_port} inet n - n - - smtpd {submission}",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        header = "# Written by devtools.mailharness on every start.\n"
        return header + "".join(line + "\n" for line in services)

    # -- helpers for tests -------------------------------------------------------------------

    def send(
        self,
        message: bytes | str | EmailMessage,
        mail_from: str,
        rcpt_tos: str | Sequence[str],
    ) -> dict[str, tuple[int, bytes]]:
        """Deliver a message over SMTP to the harness Postfix's inbound port (no login), as
        another mail server would; works while Dovecot is stopped (the mail is queued).

        Returns the recipients Postfix refused while accepting others (smtplib's convention);
        raises smtplib.SMTPRecipientsRefused when it refused them all (e.g. outside domains).
        """
        rcpts = [rcpt_tos] if isinstance(rcpt_tos, str) else list(rcpt_tos)
        with smtplib.SMTP(self.config.host, self.config.smtp_port, timeout=10) as smtp:
            if isinstance(message, EmailMessage):
                # send_message negotiates SMTPUTF8 when addresses need it.
                return smtp.send_message(message, from_addr=mail_from, to_addrs=rcpts)
            return smtp.sendmail(mail_from, rcpts, message)

    def imap(self, user: str, tls: bool = False, timeout: float = 10.0) -> IMAPClient:
        """A logged-in IMAPClient for `user`: plain IMAP, or IMAPS verified against the CA.

        Use it as a context manager (`with harness.imap("hello") as c:`) so it logs out and
        closes its socket.
        """
        cfg = self.config
        client = IMAPClient(
            cfg.host,
            port=cfg.imaps_port if tls else cfg.imap_port,
            ssl=tls,
            ssl_context=self.ssl_context() if tls else None,
            timeout=timeout,
        )
        try:
            client.login(user, self.password(user))
        except BaseException:
            client.shutdown()
            raise
        return client

    def wait_for_messages(
        self, user: str, folder: str = "INBOX", count: int = 1, timeout: float = 10.0
    ) -> list[int]:
        """Wait until `folder` of `user` holds at least `count` messages; return all its UIDs.

        Polls with NOOP, which sees a new delivery within a millisecond (IDLE would add
        Dovecot's fixed 500 ms notification delay). Raises HarnessError on timeout.
        """
        deadline = time.monotonic() + timeout
        with self.imap(user) as client:
            while not client.folder_exists(folder):
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"folder {folder!r} of {user} did not appear in {timeout:g} s"
                        f"{_tail_suffix(self.postfix_log)}"
                    )
                time.sleep(_POLL_INTERVAL)
            client.select_folder(folder, readonly=True)
            while True:
                uids = [int(uid) for uid in client.search("ALL")]
                if len(uids) >= count:
                    return uids
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"{user}/{folder} holds {len(uids)} of {count} messages after "
                        f"{timeout:g} s{_tail_suffix(self.postfix_log)}"
                    )
                time.sleep(_POLL_INTERVAL)
                client.noop()

    def clear_mailbox(self, user: str) -> None:
        """Empty every folder of `user` and delete the folders the user created.

        The special-use folders and INBOX stay (empty). UIDs keep counting up: do not expect
        the next message to be UID 1.
        """
        keep_flags = {flag.encode() for flag in SPECIAL_USE_FOLDERS.values()}
        with self.imap(user) as client:
            folders = client.list_folders()
            # Children before parents, so a parent is never deleted while it has children.
            folders.sort(key=lambda f: str(f[2]).count((f[1] or b".").decode()), reverse=True)
            for flags, _delim, name in folders:
                if str(name).upper() != "INBOX" and not keep_flags & set(flags):
                    try:
                        client.delete_folder(name)
                    except IMAPClient.Error as exc:
                        # A parent that existed only to hold children (`Triage` above
                        # `Triage.Sales`) vanishes with its last child.
                        if b"NONEXISTENT" not in str(exc).encode():
                            raise
                elif client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"]:
                    # STATUS first: most folders are empty and need no SELECT. CLOSE expunges
                    # the messages just flagged \Deleted.
                    client.select_folder(name)
                    uids = client.search("ALL")
                    if uids:
                        client.delete_messages(uids, silent=True)
                    client.close_folder()
            # Subscriptions outlive DELETE in Dovecot; drop those whose folder is gone.
            existing = {name for _flags, _delim, name in client.list_folders()}
            for _flags, _delim, name in client.list_sub_folders():
                if name not in existing:
                    client.unsubscribe_folder(name)

    def clear_all_mailboxes(self) -> None:
        """`clear_mailbox` for every harness user, in parallel (each needs its own login)."""
        with ThreadPoolExecutor(max_workers=len(self.config.users) or 1) as pool:
            # list() re-raises the first failure here instead of dropping it.
            list(pool.map(self.clear_mailbox, self.config.users))

    def mail_queue(self) -> list[dict[str, Any]]:
        """Messages waiting in Postfix's queue (postqueue -j), e.g. deferred during an outage."""
        out = _run(["postqueue", "-c", str(self.postfix_dir), "-j"], env=self._env())
        # One JSON object per line; anything else is a warning on the merged stderr.
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def flush_queue(self) -> None:
        """Ask Postfix to retry deferred mail now (postqueue -f), e.g. after start_dovecot()."""
        _run(["postqueue", "-c", str(self.postfix_dir), "-f"], env=self._env())

    @contextlib.contextmanager
    def running(self) -> Iterator[MailHarness]:
        """`with harness.running():` starts the servers and always stops them afterwards."""
        self.start()
        try:
            yield self
        finally:
            self.stop()


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devtools.mailharness start|stop|status [--dir DIR]`; status 3 = stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.mailharness",
        description="Run the triage mail harness: Dovecot and Postfix on 127.0.0.1.",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="harness folder (default: $TRIAGE_HARNESS_DIR or <tmp>/triage-mailservers)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="start: listen on free ports instead of the defaults (kept for later commands)",
    )
    parser.add_argument(
        "--oauth2-introspection-url",
        metavar="URL",
        help="start: also accept XOAUTH2/OAUTHBEARER tokens, checked at this RFC 7662 endpoint "
        "(e.g. of `python -m devtools.oauthserver`); kept for later commands",
    )
    parser.add_argument(
        "--oauth2-ca-file",
        metavar="FILE",
        help="start: CA certificate to verify an https introspection endpoint against",
    )
    args = parser.parse_args(argv)
    try:
        harness = MailHarness.for_dir(args.dir)
        if args.command == "start" and args.free_ports and not harness.is_running():
            harness = MailHarness(harness.config.with_free_ports())
        if args.command == "start" and args.oauth2_introspection_url:
            ca = str(Path(args.oauth2_ca_file).absolute()) if args.oauth2_ca_file else None
            harness = MailHarness(
                replace(
                    harness.config,
                    oauth2_introspection_url=args.oauth2_introspection_url,
                    oauth2_ca_file=ca,
                )
            )
        if args.command == "start":
            began = time.monotonic()
            harness.start()
            _print_summary(harness, time.monotonic() - began)
        elif args.command == "stop":
            began = time.monotonic()
            attached = harness.stop_attached()
            harness.stop()
            also = f" with {', '.join(attached)}" if attached else ""
            print(
                f"mail harness in {harness.base_dir} stopped{also} "
                f"({time.monotonic() - began:.2f} s)"
            )
        else:
            info = harness.status()
            print(json.dumps(info, indent=2))
            return 0 if info["running"] else 3
    except HarnessError as exc:
        print(f"mailharness: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_summary(harness: MailHarness, seconds: float) -> None:
    cfg = harness.config
    print(f"mail harness running in {harness.base_dir} (ready in {seconds:.2f} s)")
    print(f"  IMAP   {cfg.host}:{cfg.imap_port}   plain")
    print(f"  IMAPS  {cfg.host}:{cfg.imaps_port}   TLS, CA {harness.ca_file}")
    print(f"  SMTP   {cfg.host}:{cfg.smtp_port}   inbound, optional STARTTLS, no AUTH")
    print(f"  SUBM   {cfg.host}:{cfg.submission_port}   STARTTLS then AUTH required")
    print("         (both: the harness domain only, other domains refused)")
    print(f"  LMTP   {cfg.host}:{cfg.lmtp_port}   (Postfix -> Dovecot)")
    if cfg.oauth2_introspection_url:
        print(f"  OAuth2 XOAUTH2/OAUTHBEARER too, tokens checked at {cfg.oauth2_introspection_url}")
    print(f"  logs   {harness.dovecot_log}, {harness.postfix_log}")
    print("  users  (login = local part or address, password)")
    for user, password in sorted(cfg.users.items()):
        print(f"         {harness.address(user):<24} {password}")


if __name__ == "__main__":
    sys.exit(main())
