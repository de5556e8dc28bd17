"""The benchmark suite: triage against the physical limits of its machine, in one table.

    python -m bench                  # 10,000-message backlog, 50 latency samples (~11 minutes)
    python -m bench --quick          # a tiny smoke run over the same code paths
    bench/run --size 20000           # the same through the wrapper script

It starts a private Dovecot and Postfix (free ports, a temporary folder, senders p00… and the
fleet's mailboxes fleet00… as extra users; for 6. a private PostgreSQL too), then measures, each
with the real `triage` command where the figure is about the service:

1. backlog throughput of `triage run` on N new messages next to a bare batched IMAP fetch of the
   same messages (`bench.backlog`), once per `--workers` value (`ingest.workers`);
2. push latency, SMTP submission → reply in the sender's INBOX, `triage run` on IDLE in live mode
   (`bench.latency`);
3. the classifier: model load, one message, batch throughput (`bench.classifier`);
4. memory of `triage run` before and after the backlog (`bench.memory`, read during 1.);
5. start-up: `triage --help` and `triage run` until its first sync is recorded (`bench.startup`);
6. many mailboxes on one instance (`bench.mailboxes`): for each of `--mailboxes` counts (1 and
   100 by default; the goal is about 1,000), start-up, RSS, threads, file descriptors, idle CPU
   and push latency of one `triage run` watching that many IMAPS mailboxes in IDLE;
7. fleet mode (`bench.fleet`): the backlog spread over 6 mailboxes, one instance on SQLite, then
   1, 2 and 3 instances on a private PostgreSQL (`--fleet`), and push latency on both stores.

It prints one markdown table and writes it, with a line naming the machine, to `bench/results.md`
(or `--output`). Wall-clock figures depend on what else the machine runs: the load average is
recorded with them, and the backlog row adds the CPU time per message, which does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import backlog, fleet, latency, mailboxes, startup
from bench.memory import MemoryResult
from devtools.pgharness import unavailable_reason as pg_unavailable

RESULTS = Path(__file__).resolve().parent / "results.md"

# The goals of issue 9: the backlog meets its goal at GOAL_RATE or at GOAL_RATIO of the bare fetch.
GOAL_RATE = 1500.0
GOAL_RATIO = 0.25
GOAL_P95_S = 1.0
GOAL_MEMORY_MIB = 180.0
GOAL_GROWTH = 0.10


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    measure: str
    result: str
    goal: str
    met: bool | None


@dataclass(frozen=True)
class Plan:
    """How big this run is."""

    size: int
    latency_count: int
    workers: tuple[int, ...]
    startup_runs: int
    classifier_messages: int
    classifier_repeat: int
    cold_classifier: bool
    settle: float
    mailbox_counts: tuple[int, ...] = ()
    mailbox_probes: int = 20
    idle_window: float = 60.0
    # Instances per PostgreSQL row of the fleet section; () leaves the section out.
    fleet_instances: tuple[int, ...] = fleet.INSTANCES


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes for a full run, or the tiny ones of `--quick` (explicit options still win)."""
    workers = tuple(int(w) for w in str(args.workers).split(",") if w.strip())
    counts = mailboxes.parse_counts(getattr(args, "mailboxes", ""))
    fleet_arg = str(getattr(args, "fleet", ",".join(map(str, fleet.INSTANCES))))
    instances = tuple(int(n) for n in fleet_arg.split(",") if n.strip() and int(n))
    if args.quick:
        return Plan(
            args.size or 60,
            args.latency or 3,
            workers,
            1,
            200,
            2,
            False,
            1.0,
            counts,
            3,
            10.0,
            instances,
        )
    return Plan(
        args.size or 10_000,
        args.latency or 50,
        workers,
        3,
        5000,
        20,
        True,
        6.0,
        counts,
        20,
        60.0,
        instances,
    )


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[met]


def table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table."""
    lines = ["| # | measure | result | goal | met |", "|---|---|---|---|---|"]
    for number, row in enumerate(rows, start=1):
        lines.append(f"| {number} | {row.measure} | {row.result} | {row.goal} | {_yes(row.met)} |")
    return "\n".join(lines)


# -- rows ---------------------------------------------------------------------------------------


def backlog_row(r: backlog.BacklogResult) -> Row:
    """Row 1: triage's rate next to the bare fetch."""
    t = r.triage
    cpu = f"{t.main_cpu_ms:.2f} ms main"
    if r.workers:
        cpu += f" + {t.worker_cpu_ms:.2f} ms workers"
    result = (
        f"triage **{t.rate:,.0f} msgs/s** ({t.seconds:.1f} s; {t.wall_rate:,.0f} msgs/s from the"
        f" MOVE incl. IDLE wake-up) · bare fetch {r.bare.rate:,.0f} msgs/s · ratio"
        f" **{r.ratio:.2f}** · CPU per message {cpu} · {t.replies:,} dry-run replies composed"
    )
    return Row(
        f"Backlog of {r.size:,} new messages, `ingest.workers = {r.workers}`",
        result,
        f"≥ {GOAL_RATE:,.0f} msgs/s or ratio ≥ {GOAL_RATIO}",
        backlog_met(r),
    )


def backlog_met(r: backlog.BacklogResult) -> bool:
    """The backlog goal: GOAL_RATE messages per second, or GOAL_RATIO of the bare fetch."""
    return r.triage.rate >= GOAL_RATE or r.ratio >= GOAL_RATIO


def memory_met(m: MemoryResult) -> bool:
    """The memory goal: peak at most GOAL_MEMORY_MIB, growth at most GOAL_GROWTH."""
    return m.peak_mib <= GOAL_MEMORY_MIB and m.growth <= GOAL_GROWTH


def latency_row(r: latency.LatencyResult, workers: int) -> Row:
    """Row 2: submission to reply."""
    worst = max(r.seconds, default=float("inf"))
    return Row(
        f"Push latency, {r.sent} inquiries, IDLE, live replies, `ingest.workers = {workers}`",
        f"p50 **{r.p50:.2f} s** · p95 **{r.p95:.2f} s** · max {worst:.2f} s ·"
        f" {r.replied}/{r.sent} replied",
        f"p95 ≤ {GOAL_P95_S:g} s",
        r.replied == r.sent and r.p95 <= GOAL_P95_S,
    )


def classifier_figures(model: Path, plan: Plan) -> list[dict[str, Any]]:
    """The rows of `bench.classifier.run` (another engineer's module), [] when it is missing."""
    try:
        module: Any = importlib.import_module("bench.classifier")
    except ImportError:
        return []
    rows: list[dict[str, Any]] = module.run(
        model, plan.classifier_messages, plan.classifier_repeat, plan.cold_classifier
    )
    return rows


def _find(rows: Sequence[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in rows if str(r["measure"]).startswith(prefix)), None)


def classifier_row(rows: Sequence[dict[str, Any]]) -> Row:
    """Row 3: the classifier's load time, one message, batch throughput."""
    if not rows:
        return Row("Classifier", "bench.classifier is missing", "–", None)

    def find(prefix: str) -> dict[str, Any] | None:
        return _find(rows, prefix)

    parts: list[str] = []
    goals: list[str] = []
    oks: list[bool] = []
    for prefix, label, unit in (
        ("cold load", "load (fresh process)", "ms"),
        ("warm load", "load", "ms"),
        ("one message (median)", "one message", "ms"),
        ("batch of", "batch", "msgs/s"),
    ):
        row = find(prefix)
        if row is None or (prefix == "warm load" and find("cold load") is not None):
            continue
        parts.append(f"{label} **{float(row['value']):,.1f} {unit}**")
        goals.append(f"{label} {row['target']} {unit}")
        if "ok" in row:
            oks.append(bool(row["ok"]))
    imports = find("first import")
    if imports is not None:
        parts.append(f"(imports {float(imports['value']) / 1000:.1f} s)")
    return Row("Classifier", " · ".join(parts), ", ".join(goals), all(oks) if oks else None)


def memory_row(m: MemoryResult, workers: int, size: int) -> Row:
    """Row 4: peak and steady memory of `triage run`."""
    before, after = m.steady_mib
    if m.by_pss:
        # Forked workers share the parent's pages: their VmRSS figures count them again.
        measure = "PSS of `triage run` and its workers"
        detail = (
            f" · VmHWM of the main process {m.after.main_hwm_mib:.0f} MiB, VmRSS sum of the"
            f" {m.after.processes} processes {m.after.rss_mib:.0f} MiB"
        )
    else:
        measure = "VmHWM and VmRSS of `triage run`"
        detail = ""
    return Row(
        f"Memory: {measure}, around the {size:,} backlog, `ingest.workers = {workers}`",
        f"peak **{m.peak_mib:.0f} MiB** · steady {before:.0f} → {after:.0f} MiB"
        f" (**{m.growth:+.1%}**){detail}",
        f"≤ {GOAL_MEMORY_MIB:.0f} MiB, growth ≤ {GOAL_GROWTH:.0%}",
        memory_met(m),
    )


def mailboxes_row(results: Sequence[mailboxes.MailboxesResult]) -> Row:
    """Row 6: the largest mailbox count measured (every count is in the mailbox table)."""
    r = max(results, key=lambda m: m.accounts)
    return Row(
        f"Many mailboxes: {r.accounts:,} on one instance, IMAPS + IDLE (table below)",
        f"start-up **{r.startup_s:.1f} s** · RSS **{r.rss_mib:.0f} MiB** · {r.threads:,} threads"
        f" · {r.fds:,} fds · idle CPU **{r.idle_cpu_pct:.2f} %** of one core · push p50"
        f" {r.push.p50:.2f} s, p95 **{r.push.p95:.2f} s** ({r.push.replied}/{r.push.sent})",
        f"at {mailboxes.GOAL_ACCOUNTS:,}: start-up ≤ {mailboxes.GOAL_STARTUP_S:g} s, RSS ≤"
        f" {mailboxes.GOAL_RSS_MIB:g} MiB, idle CPU ≤ {mailboxes.GOAL_IDLE_CPU_PCT:g} %, p95 ≤"
        f" {mailboxes.GOAL_P95_S:g} s",
        r.met,
    )


def startup_row(r: startup.StartupResult, workers: int) -> Row:
    """Row 5: the wait before anything useful happens."""
    return Row(
        f"Start-up, `ingest.workers = {workers}` (median)",
        f"`triage --help` **{r.help_s:.2f} s** · `triage run` until the first sync is recorded"
        f" **{r.ready_s:.2f} s**",
        "–",
        None,
    )


def fleet_rows(r: fleet.FleetResult) -> list[Row]:
    """Rows 8-…: the fleet's backlog rows, then push latency on PostgreSQL beside SQLite's."""
    rows = []
    for b in r.backlogs:
        store = "SQLite" if b.backend == "sqlite" else "PostgreSQL"
        cpu = f"{b.triage_cpu_ms:.2f} ms triage"
        if b.database_cpu_ms is not None:
            cpu += f" + {b.database_cpu_ms:.2f} ms PostgreSQL"
        if b.lock_waits is not None and b.in_transaction is not None:
            cpu += (
                f" · sessions in a transaction {b.in_transaction:.1f} on average, of which"
                f" {b.lock_waits:.1f} waiting for a lock"
            )
        plural = "instance" if b.instances == 1 else "instances"
        kept = ""
        if b.backend != "sqlite":
            kept = (
                " (kept throughout)"
                if not b.retaken and not b.moved
                else f" · **{b.retaken} lease(s) taken anew** during the backlog, {b.moved}"
                " mailbox(es) on another instance at its end"
            )
        rows.append(
            Row(
                f"Fleet backlog of {b.size:,} messages over {b.accounts} mailboxes, {store},"
                f" {b.instances} {plural}",
                f"**{b.rate:,.0f} msgs/s** ({b.seconds:.1f} s) · ratio to SQLite"
                f" **{r.ratio(b):.2f}** · CPU per message {cpu} · mailboxes per instance"
                f" {'/'.join(map(str, b.shares))}{kept} · {b.replies:,} dry-run replies composed",
                "–",
                None,
            )
        )
    pg, lite = r.postgresql_latency, r.sqlite_latency
    rows.append(
        Row(
            f"Push latency on PostgreSQL, one fleet instance, {pg.sent} inquiries, IDLE, live"
            " replies",
            f"p50 **{pg.p50:.2f} s** · p95 **{pg.p95:.2f} s** · max"
            f" {max(pg.seconds, default=float('inf')):.2f} s · {pg.replied}/{pg.sent} replied ·"
            f" SQLite in the same run: p50 {lite.p50:.2f} s · p95 {lite.p95:.2f} s",
            f"p95 ≤ {GOAL_P95_S:g} s",
            pg.replied == pg.sent and pg.p95 <= GOAL_P95_S,
        )
    )
    return rows


# -- the run ------------------------------------------------------------------------------------


def _version(command: list[str]) -> str:
    """The last word `command` prints (a version number), or "?"."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "?"


def machine() -> str:
    """One line naming the machine and the versions that the figures depend on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    packages = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("scikit-learn", "numpy", "scipy", "skops", "imapclient")
    )
    dovecot = _version(["sh", "-c", "dovecot --version | cut -d' ' -f1"])
    postfix = _version(["postconf", "-d", "mail_version"])
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {pages / 2**30:.1f} GiB RAM · Python"
        f" {platform.python_version()}, {packages} · Dovecot {dovecot}, Postfix {postfix}"
    )


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Results:
    """The table's rows and the figures behind them."""

    rows: list[Row]
    backlogs: list[backlog.BacklogResult]
    latency: latency.LatencyResult
    startup: startup.StartupResult
    classifier: list[dict[str, Any]]
    mailboxes: list[mailboxes.MailboxesResult] = dataclasses.field(default_factory=list)
    fleet_result: fleet.FleetResult | None = None


def run(plan: Plan, work: Path) -> Results:
    """Every measurement, in the table's order."""
    model = startup.ensure_model(work)
    tuned = max(plan.workers)
    rows: list[Row] = []
    users = {**startup.prospects(plan.latency_count), **fleet.users()}
    skipped = pg_unavailable() if plan.fleet_instances else None
    fleet_result = None
    with startup.private_harness(work / "mail", users) as harness:
        started = startup.run(harness, work, model, plan.startup_runs)
        lat = latency.run(harness, work, model, plan.latency_count, tuned)
        backlogs = [
            backlog.run(harness, work, model, plan.size, workers, plan.settle)
            for workers in plan.workers
        ]
        if plan.fleet_instances and skipped is None:
            fleet_result = fleet.run(
                harness, work, model, plan.size, plan.latency_count, plan.fleet_instances
            )
    rows.extend(backlog_row(b) for b in backlogs)
    rows.append(latency_row(lat, tuned))
    classifier = classifier_figures(model, plan)
    rows.append(classifier_row(classifier))
    rows.extend(memory_row(b.memory, b.workers, b.size) for b in backlogs)
    rows.append(startup_row(started, tuned))
    many = mailboxes.run(work, model, plan.mailbox_counts, plan.mailbox_probes, plan.idle_window)
    if many:
        rows.append(mailboxes_row(many))
    if fleet_result is not None:
        rows.extend(fleet_rows(fleet_result))
    elif skipped is not None:
        rows.append(Row("Fleet (PostgreSQL)", f"skipped: {skipped}", "–", None))
    return Results(rows, backlogs, lat, started, classifier, many, fleet_result)


# -- the figures as JSON ------------------------------------------------------------------------


def backlog_figures(b: backlog.BacklogResult) -> dict[str, Any]:
    """The backlog and memory figures of one `ingest.workers` value, under stable names."""
    before, after = b.memory.steady_mib
    return {
        "workers": b.workers,
        "backlog_messages": b.size,
        "backlog_msgs_per_s": b.triage.rate,
        "backlog_seconds": b.triage.seconds,
        "backlog_wall_msgs_per_s": b.triage.wall_rate,
        "fetch_msgs_per_s": b.bare.rate,
        "backlog_ratio": b.ratio,
        "cpu_main_ms_per_msg": b.triage.main_cpu_ms,
        "cpu_workers_ms_per_msg": b.triage.worker_cpu_ms,
        "replies_composed": b.triage.replies,
        # VmHWM and VmRSS of the one process, or the PSS of the process tree with workers.
        "memory_basis": "pss" if b.memory.by_pss else "rss",
        "peak_rss_mib": b.memory.peak_mib,
        "steady_before_mib": before,
        "steady_after_mib": after,
        "rss_growth_pct": b.memory.growth * 100,
        "backlog_met": backlog_met(b),
        "memory_met": memory_met(b.memory),
    }


def figures(results: Results) -> dict[str, Any]:
    """Every figure of the table under a stable name, for scripts that compare runs.

    The backlog and memory figures at top level are those of `ingest.workers = 0` (the run the
    memory goal is about; the first one measured when 0 was not); `by_workers` has them all.
    """
    by_workers = {str(b.workers): backlog_figures(b) for b in results.backlogs}
    main = by_workers.get("0") or next(iter(by_workers.values()), {})
    lat = results.latency

    def value(prefix: str) -> float | None:
        row = _find(results.classifier, prefix)
        return None if row is None else float(row["value"])

    imports_ms = value("first import")
    return {
        **{k: v for k, v in main.items() if k != "workers"},
        "backlog_workers": main.get("workers"),
        "push_p50_s": lat.p50,
        "push_p95_s": lat.p95,
        "push_max_s": max(lat.seconds, default=float("inf")),
        "push_sent": lat.sent,
        "push_replied": lat.replied,
        "push_met": lat.replied == lat.sent and lat.p95 <= GOAL_P95_S,
        "classifier_load_ms": value("cold load") or value("warm load"),
        "classifier_one_ms": value("one message (median)"),
        "classifier_batch_msgs_per_s": value("batch of"),
        "classifier_imports_s": None if imports_ms is None else imports_ms / 1000,
        "help_s": results.startup.help_s,
        "ready_s": results.startup.ready_s,
        "by_workers": by_workers,
        "mailboxes": mailboxes.figures(results.mailboxes),
        # The fleet section's figures (bench.fleet.figures), None when it did not run.
        "fleet": None if results.fleet_result is None else fleet.figures(results.fleet_result),
        "goals": {
            "backlog_msgs_per_s": GOAL_RATE,
            "backlog_ratio": GOAL_RATIO,
            "push_p95_s": GOAL_P95_S,
            "peak_rss_mib": GOAL_MEMORY_MIB,
            "rss_growth_pct": GOAL_GROWTH * 100,
            "mailboxes": {
                "accounts": mailboxes.GOAL_ACCOUNTS,
                "startup_s": mailboxes.GOAL_STARTUP_S,
                "rss_mib": mailboxes.GOAL_RSS_MIB,
                "idle_cpu_pct": mailboxes.GOAL_IDLE_CPU_PCT,
                "push_p95_s": mailboxes.GOAL_P95_S,
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, print the table, write the results file."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", type=int, default=0, help="backlog messages (10,000)")
    parser.add_argument("--latency", type=int, default=0, help="latency samples (50)")
    parser.add_argument(
        "--workers", default="0,1", help="ingest.workers values for the backlog (0,1)"
    )
    parser.add_argument(
        "--mailboxes",
        default="1,100",
        help='mailbox counts of the many-mailboxes table (1,100; e.g. 1,100,300,1000; "": none)',
    )
    parser.add_argument(
        "--fleet", default="1,2,3", help="instances per PostgreSQL fleet row (1,2,3; 0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the table")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    plan = plan_for(args)
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        results = run(plan, Path(tmp))
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"`{command}` · {when} · {machine()} · load average {load_before} before, {load()} after"
    )
    text = table(results.rows)
    if results.mailboxes:
        text += "\n\nMailboxes on one instance:\n\n" + mailboxes.table(results.mailboxes)
    print(header + "\n\n" + text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + "\n\n" + text + "\n")
    if args.json is not None:
        data = figures(results)
        data["machine"], data["command"], data["when"] = machine(), command, when
        data["nproc"] = os.cpu_count()
        data["details"] = dataclasses.asdict(results)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
