"""The run report: a versioned JSON document (docs/report-format.md)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import platform
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadgen import __version__
from loadgen.cores import cores
from loadgen.files import each_output, write_output
from loadgen.load.plan import RunPlan
from loadgen.load.schedule import bounds, offsets
from loadgen.load.schedule import span as schedule_span
from loadgen.load.workers import RunTiming
from loadgen.metrics.intervals import LogBuckets
from loadgen.metrics.stats import BREAKDOWN, PHASES, RunStats, ranked
from loadgen.report.html import render as render_html
from loadgen.report.store import HTML, JSON, Destination

FORMAT = "loadgen-report/1"


def _iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds")


def rates(plan: RunPlan, stats: RunStats, started_at: float) -> dict[str, Any]:
    """Arrivals per second, planned and achieved, over the arrivals' span; and
    the arrivals themselves, actual (``arrivals``: how many, the first's and the
    last's wall-clock time) and planned (``planned``: how many, the first's and
    the last's offset from the schedule's planned start), from which a merge
    measures the shards' rates together."""
    span = schedule_span(plan.executor, plan.count)
    target = (plan.count - 1) / span if span > 0 else None
    started = sum(stats.started_per_second.values())
    first = last = None
    if stats.first_start is not None and stats.last_start is not None:
        first, last = started_at + stats.first_start, started_at + stats.last_start
    return {
        "target_per_s": round(target, 3) if target is not None else None,
        "achieved_per_s": achieved_rate(started, first, last),
        "arrivals": {
            "count": started,
            "first_at": round(first, 6) if first is not None else None,
            "last_at": round(last, 6) if last is not None else None,
        },
        "planned": planned_arrivals(plan),
    }


def planned_arrivals(plan: RunPlan) -> dict[str, Any]:
    """The plan's arrivals: how many, and the first's and the last's offset (in
    seconds) from the schedule's planned start, a shard's with its phase in the
    fleet's schedule (null with no device)."""
    planned = bounds(plan.executor, plan.count, plan.phase)
    first, last = planned if planned is not None else (None, None)
    return {
        "count": plan.count,
        "first_s": round(first, 6) if first is not None else None,
        "last_s": round(last, 6) if last is not None else None,
    }


def achieved_rate(started: int, first: float | None, last: float | None) -> float | None:
    """``started`` arrivals from ``first`` to ``last`` a second (None: fewer
    than two, or no time between them)."""
    if first is None or last is None or started < 2 or last <= first:
        return None
    return round((started - 1) / (last - first), 3)


def build(plan: RunPlan, stats: RunStats, timing: RunTiming) -> dict[str, Any]:
    reasons = {outcome: ranked(counts) for outcome, counts in sorted(stats.reasons.items())}
    return {
        "format": FORMAT,
        # Tells runs apart: a merge refuses a run it holds already.
        "run_id": uuid.uuid4().hex,
        "scenario": plan.scenario,
        "endpoint": plan.endpoint,
        "started_at": _iso(timing.started_at),
        "ended_at": _iso(timing.ended_at),
        "duration_s": round(timing.ended_at - timing.started_at, 3),
        # Stopped early (Ctrl-C, SIGTERM): what ran is all here, but not all ran.
        "partial": timing.partial,
        "devices": stats.devices,
        "accounting": accounting(plan.count, stats, timing.lost),
        "outcomes": stats.outcome_counts(),
        "attempts": {
            "total": stats.attempts,
            "per_device": {str(k): v for k, v in sorted(stats.attempts_per_device.items())},
            "provisioning_triggered": stats.provisioning_triggered,
            "throttled": stats.throttled,
        },
        "latency_ms": {phase: stats.phases[phase].summary_ms() for phase in PHASES},
        "rate": rates(plan, stats, timing.started_at),
        "schedule_lag_ms": stats.lag.summary_ms(),
        "reasons": reasons,
        "reason_devices": {
            outcome: {reason: named[reason] for reason in reasons[outcome] if reason in named}
            for outcome, named in sorted(stats.reason_devices.items())
        },
        "provision_breakdown_ms": breakdown_ms(stats.provisioned, stats.breakdown, stats.untimed),
        "series": {
            "interval_s": 1,
            "target_per_s": target_series(plan, _ran_s(timing)),
            "started_per_s": _series(stats.started_per_second),
            "outcomes_per_s": {k: _series(v) for k, v in sorted(stats.outcomes_per_second.items())},
            **latency_series(stats.phases_per_second),
        },
        "histograms": {phase: stats.phases[phase].encode() for phase in PHASES}
        | {"schedule_lag": stats.lag.encode()},
        "generator": generator_cpu(
            stats.cpu_us / 1_000_000,
            stats.devices,
            stats.ahead_cpu_us / 1_000_000,
            timing.coordinator_cpu_s,
        ),
        "load": {
            "executor": type(plan.executor).__name__,
            "count": plan.count,
            "max_in_flight": plan.max_in_flight,
            "workers": plan.workers,
            "mqtt_version": "5" if plan.version == 5 else "3.1.1",
        },
        "environment": {
            "loadgen": __version__,
            "python": platform.python_version(),
            "cores": cores(),
            "machine": platform.machine(),
        },
    }


def accounting(planned: int, stats: RunStats, lost: dict[int, str]) -> dict[str, Any]:
    """Where every planned device went: ``started`` devices each have one
    outcome (``outcomes`` adds up to it), the rest did not start (the run was
    stopped first); of the started, which failed as their injected fault
    predicts (``expected``, per outcome) and how many nothing predicted; and the
    workers that ended without their results."""
    return {
        "planned": planned,
        "started": stats.devices,
        "not_started": planned - stats.devices,
        "expected": {o: stats.expected[o] for o in stats.outcome_counts() if stats.expected[o]},
        "unexpected": stats.unexpected,
        "notes": dict(stats.notes.most_common()),
        "workers_lost": {str(worker): why for worker, why in sorted(lost.items())},
    }


def generator_cpu(
    cpu_s: float, devices: int, ahead_s: float = 0.0, coordinator_s: float | None = 0.0
) -> dict[str, float | None]:
    """What the workers spent, all of it: preparing devices on the way, connecting,
    acting, recording. Per device, it says how many devices a core can drive.
    ``ahead_s``, the first window's preparation before the schedule's start, is
    part of a device's whole life but not of the run's pace. ``coordinator_s``,
    the process that started the workers, while they ran: what sizing a box must
    add to the workers' (its start-up and the report are not counted); None
    where it is not known (a merge with a report older than the figure)."""
    whole = cpu_s + ahead_s

    def per_device(seconds: float) -> float | None:
        return round(seconds * 1000 / devices, 3) if devices else None

    return {
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_device": per_device(cpu_s),
        "ahead_cpu_s": round(ahead_s, 3),
        "whole_cpu_ms_per_device": per_device(whole),
        "coordinator_cpu_s": None if coordinator_s is None else round(coordinator_s, 3),
        "all_cpu_ms_per_device": (
            None if coordinator_s is None else per_device(whole + coordinator_s)
        ),
    }


def _ran_s(timing: RunTiming) -> float | None:
    """How far a stopped run got into its schedule (to the stop: no device
    started in the grace period after it); None for a whole run."""
    if not timing.partial:
        return None
    stopped = timing.ended_at if timing.stopped_at is None else timing.stopped_at
    return max(0.0, stopped - timing.started_at)


def target_series(plan: RunPlan, until: float | None = None) -> list[int]:
    """Planned arrivals in each second of the schedule, before ``until``
    seconds in when given: a stopped run's series ends where it stopped, not
    where a schedule it never finished would have (a dense list of every
    second), and one stopped before its start planned nothing it ran."""
    counts: dict[int, int] = {}
    for offset in offsets(plan.executor, plan.count, plan.phase):
        if until is not None and offset >= until:
            break  # offsets only grow
        second = int(offset)
        counts[second] = counts.get(second, 0) + 1
    return _series(counts)


def latency_series(per_second: dict[str, dict[int, LogBuckets]]) -> dict[str, Any]:
    """Per phase and second (by when devices started): the percentiles, and the
    buckets they come from, so merged reports recompute them exactly. A second
    in which nothing was measured is null: a long sparse run (a soak) has
    mostly such seconds, and a summary of nothing for each took its report's
    most bytes."""
    latency: dict[str, list[dict[str, Any] | None]] = {}
    buckets: dict[str, list[dict[str, int]]] = {}
    for phase in PHASES:
        seconds = per_second.get(phase, {})
        length = max(seconds, default=-1) + 1
        empty = LogBuckets()
        latency[phase] = [
            seconds[s].summary_ms() if s in seconds and seconds[s].counts else None
            for s in range(length)
        ]
        buckets[phase] = [seconds.get(s, empty).to_wire() for s in range(length)]
    return {"latency_ms": latency, "latency_buckets": buckets}


def breakdown_ms(devices: int, micros: dict[str, int], untimed: int = 0) -> dict[str, Any] | None:
    """Mean milliseconds per part of a provisioned device's time (None when no
    device provisioned); the parts add up to the mean ``provision``. When some
    devices' driver timed only the whole (``untimed`` of them), only the
    schedule lag is known: the other parts are None, not a misleading 0."""
    if not devices:
        return None
    means: dict[str, float | None] = {
        part: round(micros.get(part, 0) / devices / 1000, 3)
        if part == "schedule_lag" or not untimed
        else None
        for part in BREAKDOWN
    }
    return {"devices": devices, **means}


def _series(counts: Any) -> list[int]:
    """Per-second counts as a dense list from second 0."""
    if not counts:
        return []
    out = [0] * (max(counts) + 1)
    for second, n in counts.items():
        out[second] = n
    return out


def report_json(report: dict[str, Any]) -> bytes:
    return json.dumps(report, indent=2).encode() + b"\n"


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_output(path, report_json(report))


def write_outputs(
    report: dict[str, Any],
    json_to: Destination | None,
    html_to: Destination | None,
    say: Callable[[str], object],
    json_line: str | None = None,
) -> None:
    """The report as JSON and as HTML, where asked (a local file written
    atomically, or an S3 object), each tried whatever became of the other;
    ``say`` tells the user each one written (the JSON in ``json_line`` when
    given, instead of the usual words)."""

    def as_json(to: Destination) -> None:
        to.write(report_json(report), JSON)
        say(json_line if json_line is not None else f"report written to {to}")

    def as_html(to: Destination) -> None:
        to.write(render_html(report).encode(), HTML)
        say(f"HTML report written to {to}")

    each_output(
        functools.partial(write, to)
        for write, to in ((as_json, json_to), (as_html, html_to))
        if to is not None
    )


def jitp_section(
    report: dict[str, Any],
    emulator_stats: dict[str, Any] | None,
    emulator_stopped: str | None = None,
) -> dict[str, Any]:
    """The report's ``jitp`` section: what devices saw, and (for the embedded
    emulator) what provisioning did and why it failed, and why the emulator
    stopped if it stopped during the run."""
    section: dict[str, Any] = {
        "first_connect_rejected": report["attempts"]["provisioning_triggered"],
        "attempts_per_device": report["attempts"]["per_device"],
        "provisioning": None,
        "provisioning_failures": None,
        "emulator_closes": None,
        "emulator_processes": None,
        "emulator_missing": None,
        "emulator_stopped": emulator_stopped,
    }
    if emulator_stats is not None:
        section["provisioning"] = {
            result: emulator_stats.get("provision", {}).get(result, 0)
            for result in ("Success", "ClientError", "ServerError", "Throttled")
        }
        section["provisioning_failures"] = emulator_stats.get("provision_failures", {})
        # Devices the emulator cut off for breaking a limit (docs/emulator.md, Limits).
        section["emulator_closes"] = emulator_stats.get("closes", {})
        section["emulator_processes"] = len(emulator_stats.get("processes", [])) or None
        # Serving processes that gave no counts when asked (silent: their
        # sessions' counts are not in these); empty when every one answered.
        section["emulator_missing"] = list(emulator_stats.get("missing", []))
    return section
