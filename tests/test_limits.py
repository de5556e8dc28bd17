"""Process limits for many mailboxes: the soft open-files limit is raised to the hard one, and
a limit still too low for the accounts configured is named with the setting that fixes it."""

from __future__ import annotations

import resource
from pathlib import Path

from triage.ops.limits import cgroup_tasks_max, limit_problems, raise_descriptor_limit


def test_enough_of_everything_is_no_problem() -> None:
    """300 accounts with 16,384 open files and 1,024 tasks: nothing to say."""
    assert limit_problems(300, 1, 16_384, 1_024) == []
    assert limit_problems(3, 0, 1_024, None) == []


def test_too_few_open_files_names_limitnofile() -> None:
    """1,000 accounts under the usual 1,024 open files: one line naming LimitNOFILE."""
    [problem] = limit_problems(1_000, 0, 1_024, None)
    assert "1000 accounts need about 2094 open files, but the limit is 1024" in problem
    assert "LimitNOFILE=" in problem


def test_too_few_tasks_names_tasksmax() -> None:
    """100 accounts under the unit's TasksMax=64: one line naming TasksMax."""
    [problem] = limit_problems(100, 1, 65_536, 64)
    assert "100 accounts need about 118 threads, but the service may have 64" in problem
    assert "TasksMax=" in problem


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    """After raising, the soft limit equals the hard one (or was already unlimited)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        now = raise_descriptor_limit()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert now == soft
        assert hard in {soft, resource.RLIM_INFINITY}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_tasks_max_is_read_from_the_cgroup_or_unknown(tmp_path: Path) -> None:
    """A cgroup v1 line or an unreadable file gives None (no claim), never an error."""
    v1 = tmp_path / "cgroup"
    v1.write_text("12:pids:/user.slice\n")
    assert cgroup_tasks_max(v1) is None
    assert cgroup_tasks_max(tmp_path / "missing") is None
    own = cgroup_tasks_max()
    assert own is None or own > 0
