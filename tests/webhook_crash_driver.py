"""Runs the daemon (`triage run`) and kills it with SIGKILL at a point of a webhook delivery.

    python tests/webhook_crash_driver.py CONFIG POINT N

POINT is a checkpoint of `triage.act.webhooks` (webhook_claimed, webhook_posted,
webhook_recorded); the process dies on its N-th arrival there, like a power cut. POINT `none`
runs the daemon until SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from triage.core.settings import load_settings
from triage.ops.logs import setup_logging
from triage.ops.runner import run_forever


def main() -> int:
    """Run the daemon with the kill switch armed."""
    config = Path(sys.argv[1])
    point, nth, hits = sys.argv[2], int(sys.argv[3]), 0

    def checkpoint(name: str) -> None:
        nonlocal hits
        if name == point:
            hits += 1
            if hits == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    setup_logging("text", "WARNING")
    ok = run_forever(load_settings(config), lambda: load_settings(config), checkpoint)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
