"""Jittered exponential backoff: for reconnecting to servers and for retrying outbound mail."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

JITTER = 0.2  # ±20 %: enough that many clients (or queued mails) don't retry in lock-step


def delay(
    attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait in seconds after failed attempt number `attempt` (1 for the first failure):
    initial·2^(attempt-1), capped at `maximum`, times a random factor in [1-JITTER, 1+JITTER]
    (`rand` returns a number in [0, 1)); never more than `maximum`."""
    base = min(maximum, initial * 2 ** max(attempt - 1, 0))
    return float(min(maximum, base * (1 - JITTER + 2 * JITTER * rand())))


@dataclass
class Backoff:
    """Successive delays of `delay` for a client reconnecting: each call doubles the base."""

    initial: float = 1.0
    maximum: float = 300.0
    attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        self.attempt += 1
        return delay(self.attempt, self.initial, self.maximum)

    def reset(self) -> None:
        """Back to the initial delay after a success."""
        self.attempt = 0
