"""The fleet section of the benchmark: its rows and figures from known results, the wait for
settled leases, the spread of the backlog over the mailboxes, and one tiny end-to-end run on the
private mail servers and PostgreSQL (no figure judged: timings depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import pytest

from bench.__main__ import fleet_rows
from bench.fleet import FleetBacklog, FleetResult, balanced, figures, spread_messages
from bench.latency import LatencyResult

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fleet00", "fleet01", "fleet02", "fleet03", "fleet04", "fleet05")


def row(backend: str, instances: int, seconds: float, shares: tuple[int, ...]) -> FleetBacklog:
    return FleetBacklog(
        backend=backend,
        instances=instances,
        accounts=6,
        size=600,
        seconds=seconds,
        wall_seconds=seconds + 0.5,
        decisions={"other": 500, "sales": 100},
        replies=100,
        per_account={name: 100 for name in NAMES},
        shares=shares,
        moved=0,
        retaken=0 if instances < 3 else 2,
        triage_cpu_ms=1.5,
        database_cpu_ms=None if backend == "sqlite" else 0.5,
        lock_waits=None if backend == "sqlite" else 2.25,
        in_transaction=None if backend == "sqlite" else 3.0,
    )


def result(pg_p95: float) -> FleetResult:
    return FleetResult(
        backlogs=(
            row("sqlite", 1, 1.0, (6,)),
            row("postgresql", 1, 2.0, (6,)),
            row("postgresql", 2, 1.5, (3, 3)),
            row("postgresql", 3, 1.2, (2, 2, 2)),
        ),
        sqlite_latency=LatencyResult((0.5, 0.6), 2),
        postgresql_latency=LatencyResult((0.55, pg_p95), 2),
        postgresql_version="15.8",
        cores=2,
    )


def test_each_row_is_compared_with_the_sqlite_row() -> None:
    """Rates come from the store-measured span; every ratio divides by the SQLite row's rate."""
    figs = figures(result(0.7))
    rates = [r["msgs_per_s"] for r in figs["backlogs"]]
    assert rates == [600.0, 300.0, 400.0, 500.0]
    assert [r["ratio_to_sqlite"] for r in figs["backlogs"]] == [1.0, 0.5, 400 / 600, 500 / 600]
    assert [r["shares"] for r in figs["backlogs"]] == [[6], [6], [3, 3], [2, 2, 2]]
    assert figs["backlogs"][0]["database_cpu_ms_per_msg"] is None
    assert figs["backlogs"][0]["sessions_waiting_for_a_lock"] is None
    assert figs["backlogs"][3]["sessions_waiting_for_a_lock"] == 2.25
    assert figs["backlogs"][3]["sessions_in_a_transaction"] == 3.0
    assert figs["push_postgresql"]["p95_s"] == 0.7
    assert figs["push_sqlite"]["p50_s"] == 0.5
    assert figs["nproc"] == 2
    json.dumps(figs)  # the suite writes them as JSON


def test_the_table_has_a_row_per_backlog_and_judges_postgresql_latency() -> None:
    """One row per backlog (no goal), then push latency on PostgreSQL against p95 ≤ 1 s, with
    SQLite's figures of the same run beside it."""
    rows = fleet_rows(result(0.7))
    assert [r.measure for r in rows[:4]] == [
        "Fleet backlog of 600 messages over 6 mailboxes, SQLite, 1 instance",
        "Fleet backlog of 600 messages over 6 mailboxes, PostgreSQL, 1 instance",
        "Fleet backlog of 600 messages over 6 mailboxes, PostgreSQL, 2 instances",
        "Fleet backlog of 600 messages over 6 mailboxes, PostgreSQL, 3 instances",
    ]
    assert "ratio to SQLite **0.50**" in rows[1].result
    assert "mailboxes per instance 2/2/2 · **2 lease(s) taken anew**" in rows[3].result
    assert "mailboxes per instance 3/3 (kept throughout)" in rows[2].result
    assert "0.50 ms PostgreSQL" in rows[3].result
    assert "in a transaction 3.0 on average, of which 2.2 waiting for a lock" in rows[3].result
    assert "waiting for a lock" not in rows[0].result
    assert all(r.met is None for r in rows[:4])
    assert rows[4].measure.startswith("Push latency on PostgreSQL")
    assert "p95 **0.70 s**" in rows[4].result and "SQLite in the same run" in rows[4].result
    assert rows[4].met is True
    assert fleet_rows(result(1.2))[4].met is False


def test_leases_count_as_settled_only_when_every_instance_holds_its_fair_share() -> None:
    """The backlog waits for this: all accounts held, the instances live, each with its share."""
    even = {name: f"i{n % 3}" for n, name in enumerate(NAMES)}
    assert balanced(even, NAMES, live=3, count=3)
    first_took_all = {name: "i0" for name in NAMES}
    assert not balanced(first_took_all, NAMES, live=3, count=3)
    assert not balanced(even, NAMES, live=2, count=3)  # one not live (yet, or any more)
    assert not balanced({k: v for k, v in even.items() if k != "fleet05"}, NAMES, 3, 3)
    # Shares that do not divide: the floor or the ceiling each, as the lease manager settles.
    four = {name: f"i{n % 4}" for n, name in enumerate(NAMES)}
    assert balanced(four, NAMES, live=4, count=4)


def test_the_backlog_is_dealt_round_robin_each_message_addressed_to_its_mailbox() -> None:
    """The same mix as a single-mailbox backlog, dealt over the mailboxes, with unique
    Message-IDs and the To of the mailbox each one lands in."""
    addresses = [f"{name}@example.test" for name in NAMES[:3]]
    dealt = spread_messages(10, addresses, "t")
    assert [len(part) for part in dealt] == [4, 3, 3]
    ids = set()
    for address, part in zip(addresses, dealt, strict=True):
        for raw in part:
            msg = message_from_bytes(raw)
            assert msg.get_all("To") == [address]
            ids.add(msg["Message-ID"])
    assert ids == {f"<bench-t-{i}@bench.example.test>" for i in range(10)}


@pytest.mark.slow
@pytest.mark.mail
@pytest.mark.postgresql
@pytest.mark.timeout(600)
def test_the_section_runs_at_tiny_size(tmp_path: Path) -> None:
    """`python -m bench.fleet` on its own servers: every row handled every message with the
    same decisions, the instances shared the mailboxes evenly and kept them, every inquiry of
    both latency runs got its reply."""
    from devtools.mailharness import unavailable_reason as mail_unavailable
    from devtools.pgharness import unavailable_reason as pg_unavailable

    reason = mail_unavailable() or pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.fleet", "--size", "24", "--latency", "2"),
            *("--instances", "1,2", "--json", str(out), "--output", str(tmp_path / "fleet.md")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # The suite's rows for the section, under a line naming the command and the machine.
    table = (tmp_path / "fleet.md").read_text()
    assert table.startswith("`python -m bench.fleet --size 24") and "CPUs" in table
    rows_md = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows_md) == 4 and rows_md[-1].split(" | ")[1].startswith("Push latency")
    data = json.loads(out.read_text())
    rows = data["backlogs"]
    assert [(r["backend"], r["instances"]) for r in rows] == [
        ("sqlite", 1),
        ("postgresql", 1),
        ("postgresql", 2),
    ]
    assert [r["shares"] for r in rows] == [[6], [6], [3, 3]]
    assert all(r["leases_moved"] == r["leases_retaken"] == 0 for r in rows)
    for r in rows:
        assert sum(r["decisions"].values()) == 24
        assert r["msgs_per_s"] > 0
    assert rows[1]["decisions"] == rows[0]["decisions"] == rows[2]["decisions"]
    assert rows[0]["ratio_to_sqlite"] == 1.0
    assert rows[1]["database_cpu_ms_per_msg"] is not None
    assert rows[1]["sessions_in_a_transaction"] is not None
    for key in ("push_sqlite", "push_postgresql"):
        assert data[key]["replied"] == data[key]["sent"] == 2
