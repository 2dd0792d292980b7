"""Everything one worker (or a whole run, once merged) measured."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loadgen.device.lifecycle import DeviceResult
from loadgen.device.outcome import OUTCOMES, Outcome, expectation
from loadgen.metrics.histogram import LatencyHistogram
from loadgen.metrics.intervals import LogBuckets

# Phases a device's time is split into, in the order they happen.
PHASES = ("provision", "tcp_connect", "tls_handshake", "connack", "publish_ack")
# Distinct failure reasons counted per outcome: far more than a run meets (a
# reason names a cause, not a device), bounded so that a run where every device
# fails differently stays small. Past it, reasons are counted together under
# OTHER_REASONS: an outcome's reasons always add up to its devices.
REASONS_KEPT = 1000
OTHER_REASONS = "(other reasons)"
# Devices named per failure reason (the lowest indices): enough to find a
# failure's device in the fleet, the same whatever order the workers ended in.
DEVICES_KEPT = 3
# Where a provisioned device's time went, from its scheduled start to its
# accepted CONNACK: ``back_off`` is what the phases do not cover (waits between
# attempts, JITP's provisioning among them).
BREAKDOWN = ("schedule_lag", "tcp_connect", "tls_handshake", "connack", "back_off")


def lowest(kept: Iterable[int], more: Iterable[int]) -> list[int]:
    """The ``DEVICES_KEPT`` lowest distinct indices of both, ascending: the same
    whichever order the devices ended or reports merged in."""
    return sorted({*kept, *more})[:DEVICES_KEPT]


def name_devices(named: dict[str, list[int]], more: dict[str, list[int]]) -> None:
    """``more``'s devices per reason added to ``named``'s, each reason's lowest
    kept (``lowest``)."""
    for reason, indices in more.items():
        named[reason] = lowest(named.get(reason, ()), indices)


def ranked(counts: Counter[str]) -> dict[str, int]:
    """Reasons most common first, ties by name: one order for a run and any
    merge of runs."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def fold_reasons(counts: Counter[str], named: dict[str, list[int]]) -> Counter[str]:
    """``counts`` with at most ``REASONS_KEPT`` reasons: the least common (ties
    by name, so that any merge order folds alike) counted under OTHER_REASONS,
    their devices named with it (``named`` is changed in place)."""
    if len(counts) <= REASONS_KEPT:
        return counts
    order = [reason for reason in ranked(counts) if reason != OTHER_REASONS]
    kept = Counter({reason: counts[reason] for reason in order[: REASONS_KEPT - 1]})
    kept[OTHER_REASONS] = sum(counts.values()) - sum(kept.values())
    others = [named.pop(reason, []) for reason in order[REASONS_KEPT - 1 :]]
    named[OTHER_REASONS] = lowest(
        named.get(OTHER_REASONS, ()), (i for part in others for i in part)
    )
    return kept


@dataclass
class RunStats:
    devices: int = 0
    attempts: int = 0
    provisioning_triggered: int = 0
    # CONNECTs, PUBLISHes and SUBSCRIBEs answered with a throttling code,
    # whatever their devices ended in.
    throttled: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    # Per outcome and reason, the fleet indices of its first devices (DEVICES_KEPT).
    reason_devices: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    attempts_per_device: Counter[int] = field(default_factory=Counter)
    phases: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {p: LatencyHistogram() for p in PHASES}
    )
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Per second since the schedule's start: devices started, and outcomes.
    started_per_second: Counter[int] = field(default_factory=Counter)
    outcomes_per_second: dict[str, Counter[int]] = field(default_factory=dict)
    first_start: float | None = None  # seconds since the schedule's start
    last_start: float | None = None
    # Per phase, per second of the run in which devices started: their latency.
    phases_per_second: dict[str, dict[int, LogBuckets]] = field(default_factory=dict)
    provisioned: int = 0
    # Provisioned devices whose driver timed only the whole (aiomqtt): their
    # connect phases and back-off cannot be told apart.
    untimed: int = 0
    # How hard the generator itself worked: CPU time of the workers, and devices
    # that waited for a free in-flight slot (max_in_flight reached).
    cpu_us: int = 0
    slot_waits: int = 0
    # What kept the in-flight slots: the devices' time from their start to
    # their end, and the part of it they waited on the endpoint (microseconds).
    in_flight_us: int = 0
    endpoint_wait_us: int = 0
    # CPU time of the workers before the schedule's start: preparing their first
    # window of devices (``cpu_us`` counts from the start on).
    ahead_cpu_us: int = 0
    # Microseconds (integers, so merging in any order gives the same sums).
    breakdown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BREAKDOWN, 0))
    # Per failed outcome, the devices that failed the way their injected fault
    # predicts; and the devices whose outcome nothing predicted.
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    notes: Counter[str] = field(default_factory=Counter)  # e.g. interrupted during hold

    def started(self, offset: float) -> None:
        """A device began (``offset`` seconds after the schedule's start)."""
        self.started_per_second[int(offset)] += 1
        if self.first_start is None or offset < self.first_start:
            self.first_start = offset
        if self.last_start is None or offset > self.last_start:
            self.last_start = offset

    def add(self, result: DeviceResult, started_offset: float, finished_offset: float) -> None:
        """A device's result; it started and finished ``*_offset`` seconds after
        the schedule's start."""
        self.devices += 1
        self.attempts += result.attempts
        self.attempts_per_device[result.attempts] += 1
        self.provisioning_triggered += result.provisioning_triggered
        self.throttled += result.throttled
        outcome = result.outcome.value
        self.outcomes[outcome] += 1
        predicted = expectation(result.fault, result.outcome, result.phase, result.judged)
        if predicted:
            self.expected[outcome] += 1
        elif predicted is not None:
            self.unexpected += 1
        if result.note is not None:
            self.notes[result.note] += 1
        self.outcomes_per_second.setdefault(outcome, Counter())[int(finished_offset)] += 1
        # A connected device may carry the reason of a failure it recovered
        # from: reasons are kept for the failed outcomes only.
        if result.reason is not None and outcome != "connected":
            key = f"{result.phase}: {result.reason}" if result.phase else result.reason
            self._reason(outcome, key, 1, result.index)
        self.lag.record(result.lag)
        self.in_flight_us += round((finished_offset - started_offset) * 1_000_000)
        self.endpoint_wait_us += round(result.endpoint_wait * 1_000_000)
        second = int(started_offset)
        if not result.connect_recorded:
            self._connect(result, second)
        record = self._record
        for seconds in result.publish_acks:
            record("publish_ack", second, seconds)

    def arrived(self, result: DeviceResult) -> None:
        """A device past its accepted CONNACK, still in its life: its connect's
        latencies count now, and are marked counted (``add`` then leaves them).
        One that already ended (``connect_recorded`` set by its recorder) is left."""
        if not result.connect_recorded:
            self._connect(result, int(result.started_offset))
            result.connect_recorded = True

    def _connect(self, result: DeviceResult, second: int) -> None:
        if result.provision is not None:
            self._record("provision", second, result.provision)
            self._break_down(result, result.provision)
        record = self._record
        for phase, seconds in result.phases:
            record(phase, second, seconds)

    def lose(self, devices: int, reason: str, phase: str) -> None:
        """Devices that ended with no result of their own (their worker died):
        each is an ``error`` nothing predicted."""
        if devices <= 0:
            return
        error = Outcome.ERROR.value
        self.devices += devices
        self.outcomes[error] += devices
        self.unexpected += devices
        self._reason(error, f"{phase}: {reason}", devices)

    def _reason(self, outcome: str, key: str, devices: int, index: int | None = None) -> None:
        reasons = self.reasons.setdefault(outcome, Counter())
        if key not in reasons and len(reasons) >= REASONS_KEPT - 1:
            key = OTHER_REASONS
        reasons[key] += devices
        if index is not None:
            named = self.reason_devices.setdefault(outcome, {}).setdefault(key, [])
            if len(named) < DEVICES_KEPT or index < named[-1]:
                named[:] = lowest(named, (index,))

    def _record(self, phase: str, second: int, seconds: float) -> None:
        self.phases[phase].record(seconds)
        per_second = self.phases_per_second.setdefault(phase, {})
        if second not in per_second:
            per_second[second] = LogBuckets()
        per_second[second].record(seconds)

    def _break_down(self, result: DeviceResult, provision: float) -> None:
        self.provisioned += 1
        breakdown = self.breakdown
        lag = result.lag
        phases = result.phases
        if not phases:
            self.untimed += 1
            breakdown["schedule_lag"] += round(lag * 1_000_000)
            return
        if result.attempts <= 1:
            # One attempt (the usual case): each phase once, rounded as the sum
            # below would round it, without a dict of sums.
            covered = lag
            for phase, seconds in phases:
                covered += seconds
                breakdown[phase] += round(seconds * 1_000_000)
        else:
            spent: dict[str, float] = {}
            for phase, seconds in phases:
                spent[phase] = spent.get(phase, 0.0) + seconds
            covered = sum(spent.values(), lag)
            for part, seconds in spent.items():
                breakdown[part] += round(seconds * 1_000_000)
        breakdown["schedule_lag"] += round(lag * 1_000_000)
        breakdown["back_off"] += round(max(0.0, provision - covered) * 1_000_000)

    def merge(self, other: RunStats) -> None:
        self.devices += other.devices
        self.attempts += other.attempts
        self.provisioning_triggered += other.provisioning_triggered
        self.throttled += other.throttled
        self.outcomes.update(other.outcomes)
        for outcome, named in other.reason_devices.items():
            name_devices(self.reason_devices.setdefault(outcome, {}), named)
        for outcome, reasons in other.reasons.items():
            counted = self.reasons.setdefault(outcome, Counter())
            counted.update(reasons)
            if len(counted) > REASONS_KEPT:
                named = self.reason_devices.setdefault(outcome, {})
                self.reasons[outcome] = fold_reasons(counted, named)
        self.attempts_per_device.update(other.attempts_per_device)
        for phase, histogram in other.phases.items():
            self.phases[phase].merge(histogram)
        self.lag.merge(other.lag)
        self.started_per_second.update(other.started_per_second)
        for outcome, series in other.outcomes_per_second.items():
            self.outcomes_per_second.setdefault(outcome, Counter()).update(series)
        for phase, seconds in other.phases_per_second.items():
            mine = self.phases_per_second.setdefault(phase, {})
            for second, buckets in seconds.items():
                mine.setdefault(second, LogBuckets()).merge(buckets)
        self.provisioned += other.provisioned
        self.untimed += other.untimed
        self.cpu_us += other.cpu_us
        self.ahead_cpu_us += other.ahead_cpu_us
        self.slot_waits += other.slot_waits
        self.in_flight_us += other.in_flight_us
        self.endpoint_wait_us += other.endpoint_wait_us
        for part, total in other.breakdown.items():
            self.breakdown[part] += total
        self.expected.update(other.expected)
        self.unexpected += other.unexpected
        self.notes.update(other.notes)
        for value in (other.first_start, other.last_start):
            if value is not None:
                self.first_start = (
                    value if self.first_start is None else min(self.first_start, value)
                )
                self.last_start = value if self.last_start is None else max(self.last_start, value)

    def to_wire(self, *, since: int | None = None) -> dict[str, Any]:
        """Plain data, for a pipe between processes. A progress message (``since``
        a second) leaves out the per-second latency, and the arrivals and
        outcomes of the seconds before ``since``: only the final message needs
        them, and they grow with the run."""
        per_second = since is None
        return {
            "devices": self.devices,
            "attempts": self.attempts,
            "provisioning_triggered": self.provisioning_triggered,
            "throttled": self.throttled,
            "outcomes": dict(self.outcomes),
            "reasons": {k: dict(v) for k, v in self.reasons.items()},
            "reason_devices": {
                k: {reason: list(v) for reason, v in named.items()}
                for k, named in self.reason_devices.items()
            },
            "attempts_per_device": dict(self.attempts_per_device),
            "phases": {k: v.encode() for k, v in self.phases.items()},
            "lag": self.lag.encode(),
            "started_per_second": _since(self.started_per_second, since),
            "outcomes_per_second": {
                k: _since(v, since) for k, v in self.outcomes_per_second.items()
            },
            "first_start": self.first_start,
            "last_start": self.last_start,
            "phases_per_second": {
                phase: {second: b.to_wire() for second, b in seconds.items()}
                for phase, seconds in self.phases_per_second.items()
            }
            if per_second
            else {},
            "provisioned": self.provisioned,
            "untimed": self.untimed,
            "cpu_us": self.cpu_us,
            "ahead_cpu_us": self.ahead_cpu_us,
            "slot_waits": self.slot_waits,
            "in_flight_us": self.in_flight_us,
            "endpoint_wait_us": self.endpoint_wait_us,
            "breakdown": dict(self.breakdown),
            "expected": dict(self.expected),
            "unexpected": self.unexpected,
            "notes": dict(self.notes),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunStats:
        return cls(
            devices=data["devices"],
            attempts=data["attempts"],
            provisioning_triggered=data["provisioning_triggered"],
            throttled=data["throttled"],
            outcomes=Counter(data["outcomes"]),
            reasons={k: Counter(v) for k, v in data["reasons"].items()},
            reason_devices=data["reason_devices"],
            attempts_per_device=Counter(data["attempts_per_device"]),
            phases={k: LatencyHistogram.decode(v) for k, v in data["phases"].items()},
            lag=LatencyHistogram.decode(data["lag"]),
            started_per_second=Counter(data["started_per_second"]),
            outcomes_per_second={k: Counter(v) for k, v in data["outcomes_per_second"].items()},
            first_start=data["first_start"],
            last_start=data["last_start"],
            phases_per_second={
                phase: {int(second): LogBuckets.from_wire(b) for second, b in seconds.items()}
                for phase, seconds in data["phases_per_second"].items()
            },
            provisioned=data["provisioned"],
            untimed=data["untimed"],
            cpu_us=data["cpu_us"],
            ahead_cpu_us=data["ahead_cpu_us"],
            slot_waits=data["slot_waits"],
            in_flight_us=data["in_flight_us"],
            endpoint_wait_us=data["endpoint_wait_us"],
            breakdown=dict(data["breakdown"]),
            expected=Counter(data["expected"]),
            unexpected=data["unexpected"],
            notes=Counter(data["notes"]),
        )

    def outcome_counts(self) -> dict[str, int]:
        """Every outcome name, zero included, in the documented order."""
        return {o.value: self.outcomes.get(o.value, 0) for o in OUTCOMES}


def _since(series: Counter[int], since: int | None) -> dict[int, int]:
    """A per-second series from second ``since`` on (all of it for None)."""
    if since is None:
        return dict(series)
    return {second: n for second, n in series.items() if second >= since}
