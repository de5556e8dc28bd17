"""Named points in the work on a message or an outbound mail, where the crash tests kill triage.

Production code calls `checkpoint("smtp_accepted")` and the like; the default does nothing, and
the crash driver (tests/crash_driver.py) passes one that sends SIGKILL on the chosen arrival.
"""

from __future__ import annotations

from collections.abc import Callable

Checkpoint = Callable[[str], None]


def no_checkpoint(_name: str) -> None:
    """The default checkpoint: no fault injection."""
