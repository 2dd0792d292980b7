"""Back-off between connection attempts (exponential, capped, with jitter)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Jitter(StrEnum):
    FULL = "full"  # uniform in [0, delay]: AWS's advice for many clients at once
    EQUAL = "equal"  # delay/2 plus uniform in [0, delay/2]
    NONE = "none"


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.1
    max: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = Jitter.FULL
    max_attempts: int = 6

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """Seconds to wait after ``failed_attempts`` attempts (1 or more)."""
        base = min(self.max, self.initial * self.multiplier ** (failed_attempts - 1))
        if self.jitter is Jitter.FULL:
            return rng.uniform(0, base)
        if self.jitter is Jitter.EQUAL:
            return base / 2 + rng.uniform(0, base / 2)
        return base
