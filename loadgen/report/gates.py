"""Gates: conditions on a run's report that a CI pipeline acts on.

    gate    := side OP side                 OP: < <= > >= == !=
    side    := [NUMBER "*"] term | NUMBER [UNIT]
    term    := FUNCTION "(" ARG ")" | TERM  the metrics below
    UNIT    := ms | s | % | /s

Every metric has a kind, and a number compared with it carries the kind's unit:
a latency ``2s`` or ``2000ms`` (a bare ``2`` is refused), a ratio ``0.1%`` or a
plain fraction up to 1, a count or a rate a plain number. A run that measured
nothing (no device connected) passes no gate. See docs/gates.md.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from loadgen.device.outcome import OUTCOMES
from loadgen.errors import ConfigError
from loadgen.metrics.stats import PHASES
from loadgen.words import number

Report = dict[str, Any]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_SPLIT = re.compile(r"\s*(<=|>=|==|!=|<|>)\s*")
_FUNC = re.compile(r"^([a-z][a-z0-9_.]*)\(\s*([a-z_]+)\s*\)$")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|%|/s)?$")
_SCALED = re.compile(r"^(\d+(?:\.\d+)?)\s*\*\s*(.+)$")


class Kind(Enum):
    """What a metric measures, which decides the unit of a number beside it."""

    LATENCY = "a latency"
    RATIO = "a ratio"
    COUNT = "a count"
    RATE = "a rate"


def _outcome_count(outcome: str) -> Callable[[Report], int | None]:
    return lambda r: int(r["outcomes"].get(outcome, 0))


def _expected(r: Report) -> int | None:
    return sum(int(n) for n in ((r.get("accounting") or {}).get("expected") or {}).values())


def _unexpected(r: Report) -> int | None:
    unexpected = (r.get("accounting") or {}).get("unexpected")
    return None if unexpected is None else int(unexpected)


# The outcomes a ratio or count reads: each outcome, and groups of them. None:
# the report cannot tell (a merge with a report from before accounting).
OUTCOME_COUNTS: dict[str, Callable[[Report], int | None]] = {
    **{o.value: _outcome_count(o.value) for o in OUTCOMES},
    "failed": lambda r: sum(int(n) for name, n in r["outcomes"].items() if name != "connected"),
    # Devices whose outcome the fleet's injected faults did not predict, and
    # those that failed as their fault predicts.
    "unexpected": _unexpected,
    "expected": _expected,
}


def _latency(key: str) -> Callable[[Report, str], float | None]:
    return lambda r, phase: r["latency_ms"][phase][key]


def _count(r: Report, outcome: str) -> float | None:
    n = OUTCOME_COUNTS[outcome](r)
    return None if n is None else float(n)


def _ratio(r: Report, outcome: str) -> float | None:
    n = OUTCOME_COUNTS[outcome](r)
    return None if n is None or not r["devices"] else n / r["devices"]


@dataclass(frozen=True)
class Function:
    """A metric with an argument: ``p99(provision)``, ``ratio(failed)``."""

    kind: Kind
    args: Collection[str]
    what: str  # the argument's name, for errors
    read: Callable[[Report, str], float | None]


@dataclass(frozen=True)
class Term:
    """A metric without one: ``achieved_rate``."""

    kind: Kind
    read: Callable[[Report], float | None]


_PERCENTILES = {"p50": "p50", "p90": "p90", "p99": "p99", "p99.9": "p99_9", "max": "max"}
FUNCTIONS: dict[str, Function] = {
    **{
        name: Function(Kind.LATENCY, PHASES, "phase", _latency(key))
        for name, key in _PERCENTILES.items()
    },
    "ratio": Function(Kind.RATIO, OUTCOME_COUNTS.keys(), "outcome", _ratio),
    "count": Function(Kind.COUNT, OUTCOME_COUNTS.keys(), "outcome", _count),
}
TERMS: dict[str, Term] = {
    "achieved_rate": Term(Kind.RATE, lambda r: r["rate"]["achieved_per_s"]),
    "target_rate": Term(Kind.RATE, lambda r: r["rate"]["target_per_s"]),
}


def nothing_measured(report: Report) -> str | None:
    """Why a report measured nothing a gate may pass on, or None when it did: a
    run against a dead endpoint (no device connected) must fail its gates. A
    device that failed as its injected fault predicts was answered by the
    endpoint, so a fleet of faulty devices alone still measures something."""
    devices = report.get("devices") or 0
    if not devices:
        return "no device ran"
    connected = (report.get("outcomes") or {}).get("connected")
    # Devices that connected and failed later (their broker died while they
    # held) measured their connect.
    provision = (report.get("latency_ms") or {}).get("provision")
    provisioned = provision.get("count") if isinstance(provision, dict) else None
    if not connected and not provisioned and not _expected(report):
        return f"no device connected (of {devices})"
    return None


@dataclass(frozen=True)
class _Side:
    """One side of a gate: a metric (``kind``, ``read``) or a number with its unit."""

    text: str
    kind: Kind | None = None
    read: Callable[[Report], float | None] | None = None
    number: float = 0.0
    unit: str | None = None
    scaled: bool = False  # a factor times a metric (``0.99 * target_rate``)
    reads: str | None = None  # the phase or rate it reads (``publish_ack``)


@dataclass(frozen=True)
class Gate:
    text: str
    left: Callable[[Report], float | None]
    op: str
    right: Callable[[Report], float | None]
    # What is measured is on the right: the left is a number (``1s >
    # p99(provision)``), or a metric scaled (``0.99 * target_rate <= achieved_rate``).
    measured_right: bool = False
    # The side compared with what was measured, as written (``0.99 * target_rate``).
    threshold_text: str = ""
    kind: Kind = Kind.COUNT  # what the metric measures
    # The phases and rates it reads (``publish_ack``, ``target_rate``).
    reads: frozenset[str] = frozenset()
    where: str = "gate"  # what wrote it, for errors: ``--gate``, a scenario's gates[i]
    index: int | None = None  # its place in the scenario's gates (None: an option's)

    def never_measured(self, never: dict[str, str]) -> str | None:
        """Why it could only fail, given what a run never measures (its plan's
        ``never_measured``): it reads one of those; None when it can pass."""
        unmeasured = sorted(self.reads & never.keys())
        return f"{unmeasured[0]} is never measured: {never[unmeasured[0]]}" if unmeasured else None

    def evaluate(self, report: Report) -> GateResult:
        left, right = self.left(report), self.right(report)
        measured, threshold = (right, left) if self.measured_right else (left, right)
        unit = UNITS[self.kind]

        def result(passed: bool, note: str | None) -> GateResult:
            return GateResult(self.text, passed, measured, threshold, note, unit)

        if (why := nothing_measured(report)) is not None:
            return result(False, f"nothing was measured: {why}")
        if measured is not None and threshold is None:
            # A metric on both sides, the second unmeasured (a burst has no target).
            return result(False, f"nothing was measured for {self.threshold_text}")
        if left is None or right is None:
            return result(False, "nothing was measured")
        return result(_OPS[self.op](left, right), None)


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    measured: float | None
    threshold: float | None
    note: str | None
    # How ``measured`` and ``threshold`` are written: UNITS' values (a report from
    # before units has none: plain numbers).
    unit: str = ""

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        measured = "nothing" if self.measured is None else in_unit(self.measured, self.unit, False)
        extra = f" ({self.note})" if self.note else ""
        return f"{verdict}: {self.gate}  (measured {measured}){extra}"


# The unit a metric's values are in, as a report's gates name it: a latency in
# milliseconds, a ratio a fraction, a rate per second, a count none.
UNITS = {Kind.LATENCY: "ms", Kind.RATIO: "fraction", Kind.RATE: "/s", Kind.COUNT: ""}


def in_unit(value: float, unit: str, grouped: bool = True) -> str:
    """A gate's number as its gate writes it: a fraction as a percentage (a
    ratio's threshold is mostly written ``1%``), a latency in ms, a rate per second."""
    if unit == "fraction":
        return f"{number(value * 100, grouped=grouped)}%"
    if unit == "ms":
        return f"{number(value, grouped=grouped)} ms"
    return number(value, grouped=grouped) + unit


def _side(text: str, where: str) -> _Side:
    text = text.strip()
    if match := _SCALED.match(text):
        factor, inner = float(match[1]), _side(match[2], where)
        if inner.read is None:
            return _Side(text, number=factor * inner.number, unit=inner.unit)
        read = inner.read
        return _Side(
            text,
            inner.kind,
            lambda r: None if (v := read(r)) is None else factor * v,
            scaled=True,
            reads=inner.reads,
        )
    if match := _NUMBER.match(text):
        return _Side(text, number=float(match[1]), unit=match[2])
    if text in TERMS:
        term = TERMS[text]
        return _Side(text, term.kind, term.read, reads=text)
    if (match := _FUNC.match(text)) and match[1] in FUNCTIONS:
        function, arg = FUNCTIONS[match[1]], match[2]
        if arg not in function.args:
            raise ConfigError(
                f"{where}: unknown {function.what} {arg!r} in {text!r} ({', '.join(function.args)})"
            )
        read_arg = function.read
        # What a latency reads is a phase; an outcome is counted by every run.
        reads = arg if function.kind is Kind.LATENCY else None
        return _Side(text, function.kind, lambda r: read_arg(r, arg), reads=reads)
    raise ConfigError(
        f"{where}: cannot read {text!r} (p99(provision), ratio(failed), count(throttled), "
        "achieved_rate, a number with ms, s or %)"
    )


def _threshold(number: _Side, kind: Kind, gate: str, where: str) -> float:
    """A number in the unit of the metric it is compared with."""
    n, unit = number.number, number.unit
    bad = f"{where}: {gate!r}: {number.text!r} is not {kind.value}"
    if kind is Kind.LATENCY:
        if unit == "s":
            return n * 1000
        if unit == "ms":
            return n
        raise ConfigError(f"{bad}: a latency needs a unit, {n:g}s or {n * 1000:g}ms")
    if kind is Kind.RATIO:
        if unit == "%" and n <= 100:
            return n / 100
        if unit is None and n <= 1:
            return n
        if unit == "%":
            raise ConfigError(f"{bad}: a ratio is at most 100%")
        raise ConfigError(f"{bad}: a ratio is a percentage ({n:g}%) or a fraction from 0 to 1")
    if unit is None or (kind is Kind.RATE and unit == "/s"):
        return n
    per = " or per second (/s)" if kind is Kind.RATE else ""
    raise ConfigError(f"{bad}: {kind.value} is a plain number{per}")


def parse(text: str, where: str = "gate", index: int | None = None) -> Gate:
    parts = _SPLIT.split(text.strip())
    if len(parts) != 3:
        raise ConfigError(f"{where}: {text!r} is not 'left OP right' (OP: < <= > >= == !=)")
    gate = text.strip()
    left, op, right = _side(parts[0], where), parts[1], _side(parts[2], where)
    if left.kind is None and right.kind is None:
        raise ConfigError(f"{where}: {gate!r} compares two numbers: one side must be a metric")
    if left.kind is not None and right.kind is not None and left.kind is not right.kind:
        raise ConfigError(f"{where}: {gate!r} compares {left.kind.value} with {right.kind.value}")
    return Gate(
        gate,
        _reader(left, right, gate, where),
        op,
        _reader(right, left, gate, where),
        measured_right=(
            measured_right := left.kind is None
            or (right.kind is not None and left.scaled and not right.scaled)
        ),
        threshold_text=(left if measured_right else right).text,
        kind=left.kind or right.kind or Kind.COUNT,
        reads=frozenset(side.reads for side in (left, right) if side.reads is not None),
        where=where,
        index=index,
    )


def _reader(side: _Side, other: _Side, gate: str, where: str) -> Callable[[Report], float | None]:
    if side.read is not None:
        return side.read
    assert other.kind is not None
    value = _threshold(side, other.kind, gate, where)
    return lambda _r: value


def evaluate(gates: list[Gate], report: Report) -> list[GateResult]:
    return [gate.evaluate(report) for gate in gates]


def from_texts(
    scenario_gates: list[str], scenario_path: object, gate_texts: Iterable[str]
) -> list[Gate]:
    """A scenario's ``gates:`` (named by its file and index in errors), then
    ``--gate``'s: what `loadgen run` and `report merge` judge."""
    return [
        *(parse(t, f"{scenario_path}: gates[{i}]", i) for i, t in enumerate(scenario_gates)),
        *(parse(t, "--gate") for t in gate_texts),
    ]


def as_json(results: list[GateResult]) -> list[dict[str, Any]]:
    """The results as a report's ``gates`` holds them."""
    return [dataclasses.asdict(result) for result in results]
