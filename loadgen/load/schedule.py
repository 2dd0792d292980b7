"""Open-model arrival schedules, like k6's executors: devices arrive at planned
times whatever the endpoint does, so a slow endpoint shows up as latency and
devices in flight, never as a lower arrival rate in disguise."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ConstantArrival:
    rate: float  # devices per second


@dataclass(frozen=True)
class Stage:
    rate: float  # the rate reached at the end of the stage
    duration: float  # seconds


@dataclass(frozen=True)
class RampingArrival:
    """The rate moves linearly from ``start_rate`` through each stage's target.
    Devices left when the stages end arrive at the last stage's rate."""

    stages: tuple[Stage, ...]
    start_rate: float = 0.0


@dataclass(frozen=True)
class Burst:
    """Every device at once (``max_in_flight`` still bounds the concurrency)."""


Executor = ConstantArrival | RampingArrival | Burst


def offsets(executor: Executor, count: int, phase: float = 0.0) -> Iterator[float]:
    """Seconds from the schedule's start at which devices 0 .. count-1 arrive.
    With ``phase`` (0 <= phase < 1), device i arrives as if it were i + phase:
    a shard's part of a fleet's schedule (see loadgen.load.shard)."""
    if isinstance(executor, Burst):
        yield from (0.0 for _ in range(count))
    elif isinstance(executor, ConstantArrival):
        yield from ((i + phase) / executor.rate for i in range(count))
    else:
        yield from _ramping(executor, count, phase)


def scaled(executor: Executor, factor: float) -> Executor:
    """The schedule with every rate multiplied by ``factor`` (a shard's 1/N)."""
    if isinstance(executor, Burst):
        return executor
    if isinstance(executor, ConstantArrival):
        return ConstantArrival(executor.rate * factor)
    return RampingArrival(
        tuple(Stage(s.rate * factor, s.duration) for s in executor.stages),
        executor.start_rate * factor,
    )


def _ramping(executor: RampingArrival, count: int, phase: float = 0.0) -> Iterator[float]:
    """Device i arrives when the integral of the rate reaches i + phase."""
    produced = 0
    start, rate0, arrived = 0.0, executor.start_rate, 0.0
    last_rate = executor.start_rate
    for stage in executor.stages:
        rate1, span = stage.rate, stage.duration
        slope = (rate1 - rate0) / span if span > 0 else 0.0
        area = (rate0 + rate1) / 2 * span
        while produced < count and produced + phase <= arrived + area - 1e-9:
            need = produced + phase - arrived
            yield start + _time_for(need, rate0, slope, span)
            produced += 1
        start += span
        arrived += area
        rate0 = rate1
        last_rate = rate1 if rate1 > 0 else last_rate
    if produced < count:
        if last_rate <= 0:
            raise ValueError("the stages end at rate 0 with devices left to start")
        for i in range(count - produced):
            yield start + (produced + i + phase - arrived) / last_rate


def _time_for(need: float, rate0: float, slope: float, span: float) -> float:
    """t in [0, span] where rate0*t + slope*t^2/2 == need."""
    if need <= 0:
        return 0.0
    if abs(slope) < 1e-12:
        return need / rate0 if rate0 > 0 else span
    disc = rate0 * rate0 + 2 * slope * need
    t = (-rate0 + math.sqrt(max(disc, 0.0))) / slope
    return min(max(t, 0.0), span)


def target_rate(executor: Executor, at: float) -> float | None:
    """The planned arrival rate ``at`` seconds in; None for a burst."""
    if isinstance(executor, Burst):
        return None
    if isinstance(executor, ConstantArrival):
        return executor.rate
    start, rate0 = 0.0, executor.start_rate
    for stage in executor.stages:
        if at <= start + stage.duration:
            if stage.duration <= 0:
                return stage.rate
            return rate0 + (stage.rate - rate0) * (at - start) / stage.duration
        start += stage.duration
        rate0 = stage.rate
    return rate0 if rate0 > 0 else None


def peak_rate(executor: Executor) -> float | None:
    """The highest arrival rate the schedule asks for; None for a burst."""
    if isinstance(executor, Burst):
        return None
    if isinstance(executor, ConstantArrival):
        return executor.rate
    return max(executor.start_rate, *(stage.rate for stage in executor.stages))


# The longest a schedule may take to start its devices: a soak test runs for
# days, and a rate that spreads a fleet over more than this is a typo (1e-10/s
# put a second device 317 years out, and a per-second series of it ran out of
# memory).
MAX_SPAN = 30 * 86400.0


def arrived_by(executor: Executor, at: float) -> float:
    """How many devices the schedule has started ``at`` seconds in (its rate's
    integral): a check of a schedule's span in as many steps as it has stages,
    whatever its devices."""
    if isinstance(executor, Burst):
        return math.inf
    if isinstance(executor, ConstantArrival):
        return executor.rate * at
    start, rate0, arrived, last_rate = 0.0, executor.start_rate, 0.0, executor.start_rate
    for stage in executor.stages:
        if at <= start + stage.duration:
            within = at - start
            slope = (stage.rate - rate0) / stage.duration if stage.duration > 0 else 0.0
            return arrived + rate0 * within + slope * within * within / 2
        arrived += (rate0 + stage.rate) / 2 * stage.duration
        start += stage.duration
        rate0 = stage.rate
        last_rate = stage.rate if stage.rate > 0 else last_rate
    # As ``_ramping``: the devices left start at the last rate above 0.
    return arrived + last_rate * (at - start)


def too_long(executor: Executor, count: int, phase: float = 0.0) -> bool:
    """Whether the last of ``count`` devices would start after ``MAX_SPAN``."""
    return count > 1 and arrived_by(executor, MAX_SPAN) < count - 1 + phase


def bounds(executor: Executor, count: int, phase: float = 0.0) -> tuple[float, float] | None:
    """Seconds from the schedule's start to the first planned arrival and to the
    last (a shard's with its ``phase``); None for no device."""
    if count < 1:
        return None
    if isinstance(executor, ConstantArrival):
        return phase / executor.rate, (count - 1 + phase) / executor.rate
    first = last = None
    for last in offsets(executor, count, phase):
        first = last if first is None else first
    assert first is not None and last is not None  # count >= 1 offsets
    return first, last


def span(executor: Executor, count: int) -> float:
    """Seconds from the first planned arrival to the last."""
    if isinstance(executor, Burst) or count < 2:
        return 0.0
    if isinstance(executor, ConstantArrival):
        return (count - 1) / executor.rate
    last = 0.0
    for last in offsets(executor, count):  # noqa: B007
        pass
    return last
