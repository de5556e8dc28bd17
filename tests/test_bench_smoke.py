"""The benchmark suite runs end to end at a tiny size, so it cannot rot unnoticed.

No figure is judged here (timings depend on the machine and on what else runs); only that every
measurement produced its row, that triage handled every message, and that the worker-process path
decides exactly what the in-process path decides for the same mail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.mailharness import unavailable_reason

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.mail, pytest.mark.timeout(900)]

# The figures of one backlog run (top level for `ingest.workers = 0`, and in `by_workers`).
BACKLOG_FIGURES = (
    "backlog_msgs_per_s",
    "backlog_seconds",
    "backlog_wall_msgs_per_s",
    "fetch_msgs_per_s",
    "backlog_ratio",
    "cpu_main_ms_per_msg",
    "cpu_workers_ms_per_msg",
    "replies_composed",
    "peak_rss_mib",
    "steady_before_mib",
    "steady_after_mib",
    "rss_growth_pct",
)
FIGURES = (
    *BACKLOG_FIGURES,
    "push_p50_s",
    "push_p95_s",
    "push_max_s",
    "push_replied",
    "classifier_load_ms",
    "classifier_one_ms",
    "classifier_batch_msgs_per_s",
    "help_s",
    "ready_s",
    "machine",
    "nproc",
    "goals",
)


def test_the_suite_runs_at_tiny_size(tmp_path: Path) -> None:
    """`python -m bench --quick` prints one table with every row and writes it where told, and
    its JSON holds every figure of the table under a stable name."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    table, figures = tmp_path / "results.md", tmp_path / "results.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--fleet", "0"),
            *("--output", str(table), "--json", str(figures)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")][1:]
    measures = [row.split(" | ")[1] for row in rows]
    assert sum(m.startswith("Backlog") for m in measures) == 2  # workers 0 and 1
    assert sum(m.startswith("Memory") for m in measures) == 2
    assert any(m.startswith("Push latency") for m in measures)
    assert any(m.startswith("Classifier") for m in measures)
    assert any(m.startswith("Start-up") for m in measures)
    assert any(m.startswith("Many mailboxes: 100 on one instance") for m in measures)
    # The fleet section is left out here (`--fleet 0`): tests/test_bench_fleet.py runs it.
    assert not any(m.startswith("Fleet") for m in measures)
    assert done.stdout.count("| # | measure |") == 1  # one table

    data = json.loads(figures.read_text())
    # Every figure of the table, under the names that scripts comparing runs rely on.
    for key in FIGURES:
        assert key in data, key
        assert data[key] is not None, key
    assert set(data["by_workers"]) == {"0", "1"}
    for figures_of_run in data["by_workers"].values():
        assert set(BACKLOG_FIGURES) <= set(figures_of_run)
    assert data["backlog_workers"] == 0
    assert data["backlog_msgs_per_s"] == data["by_workers"]["0"]["backlog_msgs_per_s"] > 0
    assert data["fetch_msgs_per_s"] > 0
    assert data["peak_rss_mib"] > 0

    backlogs = data["details"]["backlogs"]
    assert [b["workers"] for b in backlogs] == [0, 1]
    for b in backlogs:
        assert sum(b["triage"]["decisions"].values()) == b["size"]
        assert b["bare"]["messages"] == b["size"]
    # The same mail, decided in process and in a worker process: the same decisions.
    assert backlogs[0]["triage"]["decisions"] == backlogs[1]["triage"]["decisions"]
    assert data["details"]["latency"]["sent"] == len(data["details"]["latency"]["seconds"])
    # The mailbox-count table, 1 and 100 mailboxes by default.
    assert [m["accounts"] for m in data["mailboxes"]] == [1, 100]
    assert all(m["threads"] > m["accounts"] and m["fds"] > m["accounts"] for m in data["mailboxes"])
    assert data["fleet"] is None
