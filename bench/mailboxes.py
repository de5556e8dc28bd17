"""Many mailboxes on one instance: what each watched mailbox costs `triage run`.

For each count N (default 1 and 100; the goal is about 1,000) one `triage run` watches N
mailboxes of a private Dovecot (harness users m0000, m0001, …), each over IMAPS with IDLE and the
default poll interval, as an operator would configure them. The figures of one row:

- start-up: from starting `triage run` (fresh store) until every account's first pass is
  recorded in the store;
- RSS, threads and open file descriptors of the process, read from /proc once all are idle;
- idle CPU: the process's user + system CPU time over a window of `--idle-window` seconds
  (60 s by default, so that each account's periodic pass falls inside it once), as a
  percentage of one core;
- push latency p50 / p95: inquiries from distinct senders (p00, p01, …) to mailboxes picked at
  random among the N, each timed from the SMTP submission until the reply is in the sender's
  INBOX (as `bench.latency` does for one mailbox);
- stop: SIGTERM until the process has exited (every account's worker stopped).

Dovecot serves 25 IDLE sessions per imap process here: each process holds one inotify instance,
and the kernel allows 128 per user (fs.inotify.max_user_instances; every harness user is the
`mail` user); past that Dovecot would check mailboxes only every 30 s, which this benchmark would
measure instead of triage.

    python -m bench.mailboxes --counts 1,100,300,1000 --json /tmp/mailboxes.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import latency
from bench.memory import cpu_seconds, snapshot
from bench.startup import Setup, TriageProcess, ensure_model, prospects
from devtools.demo import accounts_toml
from devtools.mailharness import DEFAULT_USERS, HarnessConfig, MailHarness

# The goals of issue 17, for 1,000 mailboxes.
GOAL_ACCOUNTS = 1000
GOAL_STARTUP_S = 15.0
GOAL_RSS_MIB = 500.0
GOAL_IDLE_CPU_PCT = 5.0
GOAL_P95_S = 1.0

PASSWORD = "pw-bench-mailbox"  # noqa: S105 - a test user's, on loopback
SESSIONS_PER_IMAP_PROCESS = 25
READY_TIMEOUT_S = 300.0
SETTLE_S = 5.0
SEED = 17

CONFIG = """\
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"

[store]
path = "{base}/triage.db"

[replies]
mode = "live"
from_address = "hello@{domain}"
from_name = "Example Furniture"
envelope_sender = "noreply@{domain}"
our_addresses = [{our_addresses}]
company_name = "Example Furniture Ltd"
signature = "The Example Furniture team"

[daemon]
health_port = 0
"""


def mailbox_users(count: int) -> dict[str, str]:
    """Harness users m0000 … (local part -> password), the mailboxes triage watches."""
    return {f"m{i:04d}": PASSWORD for i in range(count)}


@contextlib.contextmanager
def many_mailbox_harness(base: Path, count: int, probes: int) -> Iterator[MailHarness]:
    """Dovecot and Postfix with `count` mailbox users and `probes` senders, IDLE sessions
    sharing imap processes (see the module's text)."""
    users = {**DEFAULT_USERS, **mailbox_users(count), **prospects(probes)}
    config = HarnessConfig(
        base_dir=base, users=users, imap_sessions_per_process=SESSIONS_PER_IMAP_PROCESS
    ).with_free_ports()
    harness = MailHarness(config)
    with harness.running():
        yield harness


def write_setup(
    harness: MailHarness, base: Path, model: Path, count: int, poll_interval: float | None = None
) -> Setup:
    """A fresh store and a config watching m0000 … m{count-1}, live replies; `poll_interval`
    for every account (None: the default)."""
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob("triage.db*"):
        stale.unlink()
    secret = base / "mailbox.password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    cfg = harness.config
    poll = "" if poll_interval is None else f"poll_interval = {poll_interval:g}\n"
    users = list(mailbox_users(count))
    config = base / "triage.toml"
    config.write_text(
        accounts_toml(harness, base, users, options=poll, password_file=secret)
        + CONFIG.format(
            smtp_port=cfg.smtp_port,
            base=base,
            domain=cfg.domain,
            our_addresses=", ".join(f'"{harness.address(u)}"' for u in ["hello", *users]),
        )
    )
    env = {
        **os.environ,
        "TRIAGE_CLASSIFIER__MODEL_PATH": str(model),
        # Every prospect is on example.test: the default caps would defer all but the first
        # few replies, and the run would measure the caps instead of the service.
        "TRIAGE_REPLIES__MAX_PER_HOUR": "100000",
        "TRIAGE_REPLIES__MAX_PER_DOMAIN_PER_HOUR": "100000",
    }
    return Setup(config, base / "triage.db", env, base / "triage.log")


def synced_accounts(store: Path) -> int:
    """How many accounts have a recorded pass."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            row = conn.execute(
                "SELECT COUNT(DISTINCT account) FROM mailbox_state WHERE last_sync IS NOT NULL"
            ).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class MailboxesResult:
    """The figures of one mailbox count."""

    accounts: int
    startup_s: float
    rss_mib: float
    threads: int
    fds: int
    idle_cpu_pct: float
    idle_window_s: float
    push: latency.LatencyResult
    stop_s: float
    poll_interval_s: float = 60.0

    @property
    def met(self) -> bool | None:
        """The goals, for GOAL_ACCOUNTS mailboxes or more; None for a smaller count."""
        if self.accounts < GOAL_ACCOUNTS:
            return None
        return (
            self.startup_s <= GOAL_STARTUP_S
            and self.rss_mib <= GOAL_RSS_MIB
            and self.idle_cpu_pct <= GOAL_IDLE_CPU_PCT
            and self.push.replied == self.push.sent
            and self.push.p95 <= GOAL_P95_S
        )


def measure(
    harness: MailHarness,
    work: Path,
    model: Path,
    count: int,
    probes: int,
    idle_window: float,
    poll_interval: float | None = None,
) -> MailboxesResult:
    """One `triage run` watching `count` mailboxes: start-up, idle costs, push latency, stop."""
    setup = write_setup(harness, work / f"mailboxes-{count}", model, count, poll_interval)
    with TriageProcess(setup) as proc:
        started = time.perf_counter()
        proc.start()
        while synced_accounts(setup.store) < count:
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(
                    f"{count} mailboxes: only {synced_accounts(setup.store)} synced in"
                    f" {READY_TIMEOUT_S:g} s; see {setup.log}"
                )
            time.sleep(0.02)
        startup_s = time.perf_counter() - started
        time.sleep(SETTLE_S)  # the last passes end, every worker goes into IDLE
        cpu_before, t_before = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(idle_window)
        cpu_after, t_after = cpu_seconds(proc.pid), time.perf_counter()
        idle_pct = 100.0 * (cpu_after - cpu_before) / (t_after - t_before)
        memory = snapshot(proc.pid)
        threads, fds = _threads(proc.pid), _fds(proc.pid)
        push = _push(harness, count, probes)
        assert proc.proc is not None
        running = proc.proc
        stop_started = time.perf_counter()
        proc.stop()
        stop_s = time.perf_counter() - stop_started
        if running.returncode not in (0, None):
            raise RuntimeError(f"triage run exited {running.returncode}; see {setup.log}")
    return MailboxesResult(
        accounts=count,
        startup_s=startup_s,
        rss_mib=memory.main_rss_mib,
        threads=threads,
        fds=fds,
        idle_cpu_pct=idle_pct,
        idle_window_s=t_after - t_before,
        push=push,
        stop_s=stop_s,
        poll_interval_s=60.0 if poll_interval is None else poll_interval,
    )


def _push(harness: MailHarness, count: int, probes: int) -> latency.LatencyResult:
    """`probes` inquiries, one at a time, each to a mailbox picked at random."""
    pick = random.Random(SEED)
    mailboxes = list(mailbox_users(count))
    seconds: list[float] = []
    for n, sender in enumerate(prospects(probes)):
        to = harness.address(pick.choice(mailboxes))
        took = latency._one(harness, sender, to, n)
        if took is not None:
            seconds.append(took)
        time.sleep(pick.uniform(0.0, latency.MAX_GAP_S))
    return latency.LatencyResult(tuple(seconds), probes)


def run(
    work: Path,
    model: Path,
    counts: Sequence[int],
    probes: int,
    idle_window: float,
    poll_interval: float | None = None,
) -> list[MailboxesResult]:
    """Every count in turn on one private harness (users for the largest count)."""
    if not counts:
        return []
    with many_mailbox_harness(work / "mail-many", max(counts), probes) as harness:
        results = []
        for count in counts:
            for user in prospects(probes):
                harness.clear_mailbox(user)
            results.append(measure(harness, work, model, count, probes, idle_window, poll_interval))
        return results


def parse_counts(text: str) -> tuple[int, ...]:
    """ "1,100,300" -> (1, 100, 300); empty text: no counts."""
    return tuple(int(c) for c in text.split(",") if c.strip())


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[met]


def table(results: Sequence[MailboxesResult]) -> str:
    """The mailbox-count table in markdown."""
    lines = [
        "| mailboxes | start-up | RSS | threads | fds | idle CPU (one core) | push p50 / p95"
        " | stop | goal met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.accounts:,} | {r.startup_s:.1f} s | {r.rss_mib:.0f} MiB | {r.threads:,}"
            f" | {r.fds:,} | {r.idle_cpu_pct:.2f} % | {r.push.p50:.2f} / {r.push.p95:.2f} s"
            f" ({r.push.replied}/{r.push.sent}) | {r.stop_s:.1f} s | {_yes(r.met)} |"
        )
    polls = sorted({f"{r.poll_interval_s:g} s" for r in results}) or ["60 s"]
    lines.append(
        f"\nGoal at {GOAL_ACCOUNTS:,} mailboxes: start-up ≤ {GOAL_STARTUP_S:g} s, RSS ≤"
        f" {GOAL_RSS_MIB:g} MiB, idle CPU ≤ {GOAL_IDLE_CPU_PCT:g} % of one core, push p95 ≤"
        f" {GOAL_P95_S:g} s. IMAPS + IDLE, poll interval {', '.join(polls)} (a pass over each"
        " mailbox's folders that often), `ingest.workers = 0`."
    )
    return "\n".join(lines)


def figures(results: Sequence[MailboxesResult]) -> list[dict[str, Any]]:
    """The figures under stable names, one dict per count, for the JSON file."""
    out = []
    for r in results:
        data = asdict(r)
        data.pop("push")
        data.update(
            push_p50_s=r.push.p50,
            push_p95_s=r.push.p95,
            push_sent=r.push.sent,
            push_replied=r.push.replied,
            push_seconds=list(r.push.seconds),
            goal_met=r.met,
        )
        out.append(data)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mailbox-count section alone and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.mailboxes", description=__doc__)
    parser.add_argument("--counts", default="1,100", help="mailbox counts (1,100)")
    parser.add_argument("--probes", type=int, default=20, help="push samples per count (20)")
    parser.add_argument(
        "--idle-window", type=float, default=60.0, help="seconds of idle CPU measured (60)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="imap poll_interval of every account (default: triage's, 60 s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        work = Path(tmp)
        model = ensure_model(work)
        results = run(
            work,
            model,
            parse_counts(args.counts),
            args.probes,
            args.idle_window,
            args.poll_interval,
        )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(figures(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
