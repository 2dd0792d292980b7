"""Latency per interval of the run, for plots and post-hoc analysis.

One HDR histogram per phase per second would cost tens of kilobytes each; a run
of ten minutes would hold hundreds of megabytes. These sparse log buckets keep
only the buckets hit (a few dozen per second), merge exactly (counts add), and
place any percentile within half a bucket: 0.5%.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

# Bucket k holds values in [GROWTH**k, GROWTH**(k + 1)) microseconds.
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


class LogBuckets:
    __slots__ = ("counts",)

    def __init__(self, counts: Counter[int] | None = None) -> None:
        self.counts: Counter[int] = counts if counts is not None else Counter()

    def record(self, seconds: float) -> None:
        micros = max(seconds * 1_000_000, 1.0)
        self.counts[int(math.log(micros) / _LOG_GROWTH)] += 1

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: LogBuckets) -> None:
        self.counts.update(other.counts)

    def percentile_ms(self, percentile: float) -> float:
        """The value at ``percentile`` (the geometric middle of its bucket)."""
        total = self.count
        rank = max(1, math.ceil(percentile / 100.0 * total))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return _middle_ms(k)
        raise ValueError("percentile of an empty histogram")

    def summary_ms(self) -> dict[str, Any]:
        """count, p50, p90, p99 and max in milliseconds (None when empty)."""
        if not self.counts:
            return {"count": 0, **dict.fromkeys(PERCENTILES), "max": None}
        out: dict[str, Any] = {"count": self.count}
        for name, p in PERCENTILES.items():
            out[name] = round(self.percentile_ms(p), 3)
        out["max"] = round(_middle_ms(max(self.counts)), 3)
        return out

    def to_wire(self) -> dict[str, int]:
        """JSON-ready: bucket index (as text) to count."""
        return {str(k): n for k, n in sorted(self.counts.items())}

    @classmethod
    def from_wire(cls, data: dict[str, int]) -> LogBuckets:
        return cls(Counter({int(k): int(n) for k, n in data.items()}))


def _middle_ms(k: int) -> float:
    return float(GROWTH ** (k + 0.5) / 1000.0)
