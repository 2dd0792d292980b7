"""Gates: conditions on a run's report that a CI pipeline acts on.

    gate    := side OP side                 OP: < <= > >= == !=
    side    := [NUMBER "*"] term | NUMBER [UNIT]
    term    := PCT "(" PHASE ")"            PCT: p50 p90 p99 p99.9 max
             | ratio "(" OUTCOME ")"        a fraction of all devices
             | count "(" OUTCOME ")"        OUTCOME also failed, unexpected, expected
             | achieved_rate | target_rate  arrivals per second
    UNIT    := ms | s | %

``failed`` counts every outcome but ``connected``. Latencies compare in
milliseconds (``2s`` is 2000), ratios as fractions (``0.1%`` is 0.001).
See docs/gates.md.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadgen.device.outcome import OUTCOMES
from loadgen.errors import ConfigError
from loadgen.metrics.stats import PHASES

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_PERCENTILES = {"p50": "p50", "p90": "p90", "p99": "p99", "p99.9": "p99_9", "max": "max"}
# ``unexpected``: devices whose outcome the fleet's injected faults did not
# predict; ``expected``: those that failed as their fault predicts.
_OUTCOME_NAMES = {o.value for o in OUTCOMES} | {"failed", "unexpected", "expected"}
_SPLIT = re.compile(r"\s*(<=|>=|==|!=|<|>)\s*")
_FUNC = re.compile(r"^(p50|p90|p99|p99\.9|max|ratio|count)\(\s*([a-z_]+)\s*\)$")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|%)?$")
_SCALED = re.compile(r"^(\d+(?:\.\d+)?)\s*\*\s*(.+)$")


@dataclass(frozen=True)
class Gate:
    text: str
    left: Callable[[dict[str, Any]], float | None]
    op: str
    right: Callable[[dict[str, Any]], float | None]

    def evaluate(self, report: dict[str, Any]) -> GateResult:
        left, right = self.left(report), self.right(report)
        if left is None or right is None:
            return GateResult(self.text, False, left, right, "nothing was measured")
        return GateResult(self.text, _OPS[self.op](left, right), left, right, None)


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    measured: float | None
    threshold: float | None
    note: str | None

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        measured = "nothing" if self.measured is None else f"{self.measured:g}"
        extra = f" ({self.note})" if self.note else ""
        return f"{verdict}: {self.gate}  (measured {measured}){extra}"


def _outcome_count(report: dict[str, Any], outcome: str) -> int | None:
    if outcome in ("unexpected", "expected"):
        accounting = report.get("accounting") or {}
        if outcome == "expected":
            return sum(int(n) for n in (accounting.get("expected") or {}).values())
        unexpected = accounting.get("unexpected")
        return None if unexpected is None else int(unexpected)
    outcomes = report["outcomes"]
    if outcome == "failed":
        return sum(int(n) for name, n in outcomes.items() if name != "connected")
    return int(outcomes.get(outcome, 0))


def _side(text: str, where: str) -> Callable[[dict[str, Any]], float | None]:
    text = text.strip()
    if match := _SCALED.match(text):
        factor, inner = float(match[1]), _side(match[2], where)
        return lambda r: None if (v := inner(r)) is None else factor * v
    if match := _NUMBER.match(text):
        value, unit = float(match[1]), match[2]
        value = value * 1000 if unit == "s" else value / 100 if unit == "%" else value
        return lambda _r: value
    if text in ("achieved_rate", "target_rate"):
        key = "achieved_per_s" if text == "achieved_rate" else "target_per_s"
        return lambda r: r["rate"][key]
    if match := _FUNC.match(text):
        func, arg = match[1], match[2]
        if func in ("ratio", "count"):
            if arg not in _OUTCOME_NAMES:
                raise ConfigError(f"{where}: unknown outcome {arg!r} in {text!r}")
            if func == "count":
                return lambda r: None if (n := _outcome_count(r, arg)) is None else float(n)
            return lambda r: (
                None
                if (n := _outcome_count(r, arg)) is None or not r["devices"]
                else n / r["devices"]
            )
        if arg not in PHASES:
            raise ConfigError(f"{where}: unknown phase {arg!r} in {text!r} ({', '.join(PHASES)})")
        key = _PERCENTILES[func]
        return lambda r: r["latency_ms"][arg][key]
    raise ConfigError(
        f"{where}: cannot read {text!r} (p99(provision), ratio(failed), count(throttled), "
        "achieved_rate, a number with ms, s or %)"
    )


def parse(text: str, where: str = "gate") -> Gate:
    parts = _SPLIT.split(text.strip())
    if len(parts) != 3:
        raise ConfigError(f"{where}: {text!r} is not 'left OP right' (OP: < <= > >= == !=)")
    left, op, right = parts
    return Gate(text.strip(), _side(left, where), op, _side(right, where))


def evaluate(gates: list[Gate], report: dict[str, Any]) -> list[GateResult]:
    return [gate.evaluate(report) for gate in gates]
