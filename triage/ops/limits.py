"""The process limits a daemon with many mailboxes runs into, checked at start.

Every watched account costs one thread and one file descriptor (its IMAP socket; the store's
connections are a pool shared by every thread, three descriptors each: the SQLite database, its
WAL and its shared-memory file). Linux's default soft limit of 1,024 descriptors, or a systemd
unit's `TasksMax`, would otherwise end account threads one by one with errors far from their
cause. At start, triage raises its soft descriptor limit to the hard one (allowed without
privileges) and says plainly when a limit is still too low for the accounts configured;
`triage doctor` checks the same against the service's limits.
"""

from __future__ import annotations

import logging
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Descriptors and threads an account needs, and what the rest of the process needs. Measured
#: (bench.mailboxes): one descriptor per account, its IMAP socket; the second is headroom for a
#: connection being replaced, an SMTP session or a Sent copy.
FDS_PER_ACCOUNT = 2
#: Fleet mode (a PostgreSQL store): each account's worker also has a doorbell pipe of its own.
FDS_PER_FLEET_ACCOUNT = FDS_PER_ACCOUNT + 2
#: The process without accounts: logs, the lock file, the health endpoint, worker pipes.
FDS_BASE = 64
#: Each pooled store connection (SQLite: the database, its -wal and its -shm file).
FDS_PER_STORE_CONNECTION = 3
THREADS_BASE = 16


def raise_descriptor_limit() -> int:
    """Raise the soft limit of open files to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def cgroup_tasks_max(proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """`pids.max` of this process's cgroup (systemd's TasksMax), or None when unlimited or
    unknown (cgroup v1, no systemd)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0" and path:
            try:
                value = (Path("/sys/fs/cgroup") / path.lstrip("/") / "pids.max").read_text()
            except OSError:
                return None
            value = value.strip()
            return None if value == "max" else int(value)
    return None


def needed_fds(accounts: int, store_connections: int = 10, *, fleet: bool = False) -> int:
    """About how many file descriptors `accounts` mailboxes need with a store pool of
    `store_connections` (`store.pool_size`); in `fleet` mode (a PostgreSQL store) each
    account's worker has a doorbell pipe of its own."""
    per_account = FDS_PER_FLEET_ACCOUNT if fleet else FDS_PER_ACCOUNT
    return FDS_BASE + FDS_PER_STORE_CONNECTION * store_connections + per_account * accounts


def needed_tasks(accounts: int, workers: int) -> int:
    """About how many threads and processes `accounts` mailboxes and `workers` decide
    processes need."""
    return THREADS_BASE + accounts + 2 * workers


def limit_problems(
    accounts: int,
    workers: int,
    fds: int,
    tasks: int | None,
    store_connections: int = 10,
    *,
    fleet: bool = False,
) -> list[str]:
    """What is too low for `accounts` mailboxes and `workers` decide processes (pure)."""
    problems = []
    need_fds = needed_fds(accounts, store_connections, fleet=fleet)
    if fds < need_fds:
        problems.append(
            f"{accounts} accounts need about {need_fds} open files, but the limit is {fds}:"
            " set LimitNOFILE= in the unit (a drop-in: systemctl edit triage) or ulimit -n"
        )
    need_tasks = needed_tasks(accounts, workers)
    if tasks is not None and tasks < need_tasks:
        problems.append(
            f"{accounts} accounts need about {need_tasks} threads, but the service may have"
            f" {tasks} (TasksMax): raise TasksMax= in a drop-in (systemctl edit triage)"
        )
    return problems


def check_limits(
    accounts: int, workers: int, store_connections: int = 10, *, fleet: bool = False
) -> list[str]:
    """Raise what can be raised, then log (ERROR) and return what is still too low."""
    problems = limit_problems(
        accounts,
        workers,
        raise_descriptor_limit(),
        cgroup_tasks_max(),
        store_connections,
        fleet=fleet,
    )
    for problem in problems:
        log.error("%s", problem)
    return problems


@dataclass(frozen=True)
class Limits:
    """The limits a `triage run` would have, and where they come from."""

    source: str
    fds: int
    tasks: int | None  # None: unlimited or unknown


def _systemd_value(value: str) -> int | None:
    """A limit as `systemctl show` prints it: a number, or "infinity" (None)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    return None


def service_limits(unit: str = "triage.service") -> Limits | None:
    """LimitNOFILE and TasksMax of the systemd unit, when systemd knows it; None otherwise (no
    systemctl, no such unit, or it does not answer within five seconds)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        out = subprocess.run(
            [systemctl, "show", unit, "--property=LoadState,LimitNOFILE,TasksMax"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    values = dict(line.partition("=")[::2] for line in out.stdout.splitlines())
    if out.returncode != 0 or values.get("LoadState") != "loaded":
        return None
    fds = _systemd_value(values.get("LimitNOFILE", ""))
    return Limits(
        f"the unit {unit}",
        fds if fds is not None else 1 << 20,
        _systemd_value(values.get("TasksMax", "")),
    )


def process_limits() -> Limits:
    """The limits `triage run` started from this shell would have: the hard open-files limit
    (it raises its soft limit to that) and this cgroup's pids.max."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    return Limits("this shell (ulimit -Hn, the cgroup's pids.max)", fds, cgroup_tasks_max())
