"""A regression gate between two runs: every phase's percentiles of the current
run against a baseline's. A current run that measured nothing (no device
connected, or a phase the baseline measured and it did not) fails: a job against
a dead endpoint must not pass."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from loadgen.errors import UserError
from loadgen.metrics.stats import PHASES
from loadgen.report.gates import nothing_measured

PERCENTILES = ("p50", "p90", "p99")
_PERCENT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Comparison:
    phase: str
    percentile: str
    baseline: float
    current: float | None  # None: the current run did not measure it
    change: float | None  # relative: 0.1 is 10% slower
    regressed: bool


def parse_limit(text: str, option: str = "--max-regression") -> float:
    """A percentage (``10%``) as a fraction. A plain number is refused: it meant a
    percentage here once, and a fraction in gates."""
    match = _PERCENT.match(text)
    if not match:
        raise UserError(f"{option} {text!r}: a percentage like 10%")
    limit = float(match[1]) / 100
    if math.copysign(1.0, limit) < 0 or not math.isfinite(limit):  # -0% too
        raise UserError(
            f"{option} {text!r}: how much slower a run may get cannot be negative "
            "(0% fails any slowdown)"
        )
    return limit


def compare(
    baseline: dict[str, Any], current: dict[str, Any], max_regression: float
) -> list[Comparison]:
    """Every percentile the baseline measured, against the current run's; one the
    current run did not measure counts as regressed."""
    out = []
    for phase in PHASES:
        for p in PERCENTILES:
            before = baseline["latency_ms"][phase][p]
            after = current["latency_ms"][phase][p]
            if before is None or before <= 0:
                continue
            if after is None:
                out.append(Comparison(phase, p, before, None, None, True))
                continue
            change = after / before - 1
            out.append(Comparison(phase, p, before, after, change, change > max_regression))
    return out


def check_baseline(baseline: dict[str, Any], name: str) -> None:
    """A baseline that measured nothing would pass any run: refuse it."""
    why = nothing_measured(baseline)
    if why is None and not any(
        (baseline["latency_ms"][phase][p] or 0) > 0 for phase in PHASES for p in PERCENTILES
    ):
        why = "no latency was measured"
    if why is not None:
        raise UserError(f"{name}: not a baseline to compare against: {why}")
