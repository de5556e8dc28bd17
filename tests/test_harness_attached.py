"""Processes attached to the mail harness (the demo's web console) stop with its servers, and a
recorded pid that now belongs to another process is never signalled."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mailharness import HarnessConfig, MailHarness


@pytest.fixture
def base() -> Iterator[Path]:
    """A short harness folder: pytest's own (longer under xdist) can pass the length a unix
    socket path allows below it."""
    path = Path(tempfile.mkdtemp(prefix="triage-attached-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def test_stop_attached_ends_the_attached_process_and_forgets_it(base: Path) -> None:
    harness = MailHarness(HarnessConfig(base_dir=base))
    proc = _sleeper()
    try:
        harness.attach("web", proc.pid)
        assert harness.attached() == {"web": proc.pid}
        assert harness.stop_attached() == ["web"]
        assert proc.wait(5) == -15  # SIGTERM
        assert harness.attached() == {}
        assert list(harness.attached_dir.glob("*.pid")) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_left_alone(base: Path) -> None:
    """The record holds the process's start time: another process under the same pid (here: the
    record rewritten with another start time) is not the attached one."""
    harness = MailHarness(HarnessConfig(base_dir=base))
    proc = _sleeper()
    try:
        harness.attach("web", proc.pid)
        record = harness.attached_dir / "web.pid"
        pid, start = record.read_text().split()
        record.write_text(f"{pid} {int(start) + 1}\n")
        assert harness.attached() == {}
        assert harness.stop_attached() == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_nothing_attached_is_nothing_to_stop(base: Path) -> None:
    assert MailHarness(HarnessConfig(base_dir=base)).stop_attached() == []
