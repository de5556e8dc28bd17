"""The process limits a daemon with many mailboxes runs into, checked at start.

Every watched account costs one thread and a few file descriptors (its IMAP socket and its
store connection: a SQLite database and its WAL file). Linux's default soft limit of 1,024
descriptors, or a systemd unit's `TasksMax`, would otherwise end account threads one by one with
errors far from their cause. At start, triage raises its soft descriptor limit to the hard one
(allowed without privileges) and says plainly when a limit is still too low for the accounts
configured.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)

#: Descriptors and threads an account needs, and what the rest of the process needs.
FDS_PER_ACCOUNT = 4
FDS_BASE = 64
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


def limit_problems(accounts: int, workers: int, fds: int, tasks: int | None) -> list[str]:
    """What is too low for `accounts` mailboxes and `workers` decide processes (pure)."""
    problems = []
    need_fds = FDS_BASE + FDS_PER_ACCOUNT * accounts
    if fds < need_fds:
        problems.append(
            f"{accounts} accounts need about {need_fds} open files, but the limit is {fds}:"
            " set LimitNOFILE= in the unit (a drop-in: systemctl edit triage) or ulimit -n"
        )
    need_tasks = THREADS_BASE + accounts + 2 * workers
    if tasks is not None and tasks < need_tasks:
        problems.append(
            f"{accounts} accounts need about {need_tasks} threads, but the service may have"
            f" {tasks} (TasksMax): raise TasksMax= in a drop-in (systemctl edit triage)"
        )
    return problems


def check_limits(accounts: int, workers: int) -> list[str]:
    """Raise what can be raised, then log (ERROR) and return what is still too low."""
    problems = limit_problems(accounts, workers, raise_descriptor_limit(), cgroup_tasks_max())
    for problem in problems:
        log.error("%s", problem)
    return problems
