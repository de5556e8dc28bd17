"""`triage doctor` checks the open-files and thread limits against the accounts configured: one
clear line naming the setting when a limit is too low, the figures when it is enough."""

from __future__ import annotations

from triage.core.settings import Settings
from triage.ops.doctor import check_limits, checks
from triage.ops.limits import Limits, needed_fds, process_limits


def settings(accounts: int, pool_size: int = 10) -> Settings:
    return Settings.model_validate(
        {
            "imap": {
                "username": "u0",
                "password": "pw",
                "host": "mail.test",
                "accounts": [
                    {"name": f"a{i}", "username": f"u{i}", "password": "pw", "host": "mail.test"}
                    for i in range(1, accounts)
                ],
            },
            "store": {"pool_size": pool_size},
        }
    )


def test_a_thousand_accounts_fit_the_units_limit_of_open_files() -> None:
    """The unit's LimitNOFILE=16384 is enough for 1,000 accounts; the figures are shown."""
    [finding] = check_limits(settings(1000), Limits("the unit triage.service", 16_384, None))
    assert finding.status == "ok"
    assert "1000 account(s) need about 2094 open files" in finding.detail
    assert "open files 16384" in finding.detail


def test_too_few_open_files_is_one_problem_naming_limitnofile() -> None:
    [finding] = check_limits(settings(1000), Limits("the unit triage.service", 1024, None))
    assert finding.status == "problem"
    assert finding.detail == (
        "1000 accounts need about 2094 open files, but the limit is 1024 (the unit triage.service)"
    )
    assert "LimitNOFILE=" in finding.fix
    assert "\n" not in finding.detail + finding.fix


def test_too_few_tasks_is_one_problem_naming_tasksmax() -> None:
    """The unit's default TasksMax=64 is too low for 100 accounts."""
    [finding] = check_limits(settings(100), Limits("the unit triage.service", 16_384, 64))
    assert finding.status == "problem"
    assert "100 accounts need about 116 threads, but the service may have 64" in finding.detail
    assert "TasksMax=" in finding.fix


def test_the_store_pool_counts_three_files_per_connection() -> None:
    assert needed_fds(0, 10) + 30 == needed_fds(0, 20)
    [finding] = check_limits(settings(2, pool_size=20), Limits("x", 1024, None))
    assert "need about 128 open files" in finding.detail


def test_the_doctor_runs_the_limits_check_against_this_process() -> None:
    """Without systemd's unit, the limits are those of this shell, named as such."""
    names = [name for name, _check in checks(settings(1))]
    assert names[:2] == ["store", "limits"]
    [finding] = check_limits(settings(1), process_limits())
    assert finding.status == "ok"
    assert "this shell" in finding.detail
