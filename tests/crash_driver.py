"""Runs `triage once` and kills itself with SIGKILL at a chosen moment (for crash tests).

    python tests/crash_driver.py CONFIG POINT N
    python tests/crash_driver.py CONFIG --kill-deciding MARKER

POINT is a checkpoint name (after_fetch, after_classification, after_record, smtp_connected,
smtp_data_sent, smtp_sending, smtp_accepted, after_send, before_done); the process dies on its
N-th arrival there, like a power cut.

With `--kill-deciding`, whichever process starts to decide (parse) a message whose bytes contain
MARKER dies there: the main process, or the worker process deciding it when `ingest.workers` > 0.
It is the poison message that gets triage killed for running out of memory, every time.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import triage.parsing.message
from triage.core.models import InboundMessage
from triage.core.settings import load_settings
from triage.ops.logs import setup_logging
from triage.ops.runner import run_once_command


def kill_when_deciding(marker: bytes) -> None:
    """Make parsing a message that contains `marker` kill the process that parses it.

    Every decide path (in process and in forked workers) parses through this function, and the
    workers are forked after this runs, so they inherit it.
    """
    original = triage.parsing.message._parse

    def parse_or_die(
        raw: bytes, needs_body: triage.parsing.message.NeedsBody | None = None
    ) -> InboundMessage:
        if marker in raw:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(raw, needs_body)

    triage.parsing.message._parse = parse_or_die


def main() -> int:
    """Run once with the kill switch armed."""
    config = Path(sys.argv[1])
    point, nth, hits = sys.argv[2], 0, 0
    if point == "--kill-deciding":
        kill_when_deciding(sys.argv[3].encode())
    else:
        nth = int(sys.argv[3])

    def checkpoint(name: str) -> None:
        nonlocal hits
        if name == point:
            hits += 1
            if hits == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    setup_logging("text", "WARNING")
    ok = run_once_command(load_settings(config), checkpoint)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
