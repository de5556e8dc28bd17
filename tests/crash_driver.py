"""Runs `triage once` and kills itself with SIGKILL at a named checkpoint (for crash tests).

    python tests/crash_driver.py CONFIG POINT N

POINT is a checkpoint name (after_fetch, after_classification, after_record, smtp_accepted,
after_send, before_done); the process dies on its N-th arrival there, like a power cut.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from triage.logs import setup_logging
from triage.runner import run_once_command
from triage.settings import load_settings


def main() -> int:
    """Run once with the kill switch armed."""
    config, point, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    hits = 0

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
