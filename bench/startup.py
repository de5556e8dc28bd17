"""Starting things: the private mail harness, the model, a triage config, and `triage run`.

Also the start-up figures of the table: the wall time of `triage --help` (what an operator waits
for on every command) and of `triage run` until its first sync is recorded in the store (what a
restart costs before new mail is handled again).

    python -m bench.startup        # just the start-up row, on a private harness
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.demo import write_config
from devtools.mailharness import DEFAULT_USERS, HarnessConfig, MailHarness

REPO = Path(__file__).resolve().parents[1]
REPO_MODEL = REPO / "classifiers" / "model.skops"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def prospects(count: int) -> dict[str, str]:
    """Harness users p00, p01, … (local part -> password): distinct senders for latency runs."""
    return {f"p{i:02d}": f"pw-p{i:02d}" for i in range(count)}


@contextlib.contextmanager
def private_harness(base: Path, extra_users: Mapping[str, str]) -> Iterator[MailHarness]:
    """Dovecot and Postfix on free ports under `base`, with the default and `extra_users`."""
    config = HarnessConfig(base_dir=base, users={**DEFAULT_USERS, **extra_users}).with_free_ports()
    harness = MailHarness(config)
    with harness.running():
        yield harness


def ensure_model(work: Path) -> Path:
    """A private copy of the repository's model when it loads here, else one trained now.

    A copy, so that a `triage train` in the working tree during a run (the daemon reloads a
    changed model file) cannot change the decisions half-way. Training takes about ten seconds;
    it only happens while `classifiers/model.skops` is missing or was fitted with another
    scikit-learn, so the benchmark never depends on it.
    """
    from triage.core.errors import ModelError
    from triage.decide.classify import card_path, load_classifier

    path = work / "model" / "model.skops"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(REPO_MODEL, path)
        shutil.copy2(card_path(REPO_MODEL), card_path(path))
        load_classifier(path)
    except (OSError, ModelError):
        from triage.training.corpus import load_corpus
        from triage.training.learn import train

        train(load_corpus(REPO / "classifiers" / "corpus"), path)
    return path


@dataclass(frozen=True)
class Setup:
    """Where one triage instance of the benchmark lives and how it is started."""

    config: Path
    store: Path
    env: Mapping[str, str]
    log: Path


def make_setup(
    harness: MailHarness, base: Path, model: Path, mode: str, extra_toml: str = ""
) -> Setup:
    """A fresh store and config under `base` watching hello@; replies in `mode`."""
    if base.exists():
        for stale in base.glob("triage.db*"):
            stale.unlink()
    base.mkdir(parents=True, exist_ok=True)
    config = write_config(harness, base, extra_toml)
    env = {
        **os.environ,
        "TRIAGE_REPLIES__MODE": mode,
        "TRIAGE_CLASSIFIER__MODEL_PATH": str(model),
    }
    return Setup(config, base / "triage.db", env, base / "triage.log")


def triage_command() -> list[str]:
    """The installed `triage` console script, as an operator runs it."""
    script = Path(sys.executable).with_name("triage")
    return [str(script)] if script.exists() else [sys.executable, "-m", "triage"]


def first_sync_recorded(store: Path) -> bool:
    """True once the store has a folder state with a sync time: the first pass got that far."""
    if not store.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT COUNT(*) FROM mailbox_state WHERE last_sync IS NOT NULL")
            return bool(row.fetchone()[0])
    except sqlite3.Error:
        # Not created or not migrated yet.
        return False


class TriageProcess:
    """`triage run` as a child process: started, watched through its store, stopped."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id of the running `triage run`."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start `triage run`; returns the seconds until its first sync was recorded."""
        started = time.perf_counter()
        with self.setup.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*triage_command(), "--config", str(self.setup.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.setup.env),
            )
        while not first_sync_recorded(self.setup.store):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"triage run exited {self.proc.returncode}; see {self.setup.log}"
                )
            if time.perf_counter() - started > READY_TIMEOUT:
                raise RuntimeError(f"triage run not ready in {READY_TIMEOUT:g} s")
            time.sleep(0.005)
        return time.perf_counter() - started

    def stop(self) -> None:
        """SIGTERM and wait, as systemd stops it; SIGKILL only if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> TriageProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class StartupResult:
    """Median wall times of `triage --help` and of `triage run` until ready."""

    help_s: float
    ready_s: float
    help_runs: int
    ready_runs: int


def time_help(runs: int) -> float:
    """The median wall time of `triage --help`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*triage_command(), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_ready(harness: MailHarness, work: Path, model: Path, runs: int) -> float:
    """The median time from starting `triage run` (fresh store) to its first recorded sync."""
    times = []
    for i in range(runs):
        setup = make_setup(harness, work / f"startup-{i}", model, "dry-run")
        with TriageProcess(setup) as proc:
            times.append(proc.start())
    return statistics.median(times)


def run(harness: MailHarness, work: Path, model: Path, runs: int = 3) -> StartupResult:
    """Measure both start-up figures."""
    help_runs = max(runs, 3)
    return StartupResult(
        help_s=time_help(help_runs),
        ready_s=time_ready(harness, work, model, runs),
        help_runs=help_runs,
        ready_runs=runs,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the start-up figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        work = Path(tmp)
        model = ensure_model(work)
        with private_harness(work / "mail", {}) as harness:
            result = run(harness, work, model, args.runs)
    print(f"triage --help: {result.help_s:.2f} s; triage run until ready: {result.ready_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
