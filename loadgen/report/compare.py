"""A regression gate between two runs: every phase's percentiles of the current
run against a baseline's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen.metrics.stats import PHASES

PERCENTILES = ("p50", "p90", "p99")


@dataclass(frozen=True)
class Comparison:
    phase: str
    percentile: str
    baseline: float
    current: float
    change: float  # relative: 0.1 is 10% slower
    regressed: bool


def compare(
    baseline: dict[str, Any], current: dict[str, Any], max_regression: float
) -> list[Comparison]:
    out = []
    for phase in PHASES:
        for p in PERCENTILES:
            before = baseline["latency_ms"][phase][p]
            after = current["latency_ms"][phase][p]
            if before is None or after is None or before <= 0:
                continue
            change = after / before - 1
            out.append(Comparison(phase, p, before, after, change, change > max_regression))
    return out
