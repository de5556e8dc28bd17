"""Jittered exponential backoff for reconnecting to servers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of initial·2ⁿ seconds (capped), each with ±20 % jitter so clients don't stampede."""

    initial: float = 1.0
    maximum: float = 300.0
    attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the base."""
        base = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return float(base * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        """Back to the initial delay after a success."""
        self.attempt = 0
