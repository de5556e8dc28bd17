"""Shared pytest fixtures. Keep each one small; add new ones below the existing ones."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mailtools import DaemonStarter
from triage.mailharness import HarnessConfig, MailHarness, unavailable_reason


@pytest.fixture(scope="session")
def mail_harness() -> Iterator[MailHarness]:
    """Real Dovecot and Postfix for the whole session, in a temporary folder.

    Ports are chosen free at start (not the fixed defaults), so a demo harness or another
    test run on the same machine does not collide with this one.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's own temporary folder: another pytest run on the machine resets that to
    # mode 0700, and the mail daemons (users dovecot, postfix) must be able to walk into ours.
    base = Path(tempfile.mkdtemp(prefix="triage-mailservers-"))
    harness = MailHarness(HarnessConfig(base_dir=base).with_free_ports())
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_mail(mail_harness: MailHarness) -> MailHarness:
    """The session's harness with every user's mailbox emptied before the test."""
    mail_harness.clear_all_mailboxes()
    return mail_harness


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonStarter]:
    """Starts `triage run` subprocesses and stops them after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = open(tmp_path / f"daemon-{len(procs)}.log", "w")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(
            [sys.executable, "-m", "triage", "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
