"""Reports for people: the live view while a run goes, the table at its end."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.load.plan import RunPlan
from loadgen.load.runner import Progress, merge_progress
from loadgen.load.schedule import target_rate
from loadgen.metrics.stats import PHASES

_RATE_WINDOW = 2.0


class LiveRun:
    """Target and achieved rate, in flight, outcomes so far, p50/p99 so far."""

    def __init__(self, console: Console, plan: RunPlan) -> None:
        self.plan = plan
        self.live = Live(console=console, transient=True, refresh_per_second=4)
        self.samples: list[tuple[float, int]] = []

    def __enter__(self) -> LiveRun:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, parts: list[Progress], elapsed: float) -> None:
        total = merge_progress(parts)
        provision = total.stats.phases["provision"]
        now = time.monotonic()
        self.samples.append((now, total.started))
        self.samples = [s for s in self.samples if now - s[0] <= _RATE_WINDOW]
        first_t, first_n = self.samples[0]
        achieved = (total.started - first_n) / (now - first_t) if now > first_t else 0.0
        target = target_rate(self.plan.executor, elapsed)
        head = Text(
            f"{elapsed:6.1f}s  started {total.started}/{self.plan.count}  "
            f"finished {total.stats.devices}  in flight {total.in_flight}  "
            f"rate {achieved:,.0f}/s" + (f" (target {target:,.0f}/s)" if target else "")
        )
        outcomes = "  ".join(f"{k} {v}" for k, v in sorted(total.stats.outcomes.items()))
        latency = (
            f"provision p50 {provision.percentile_ms(50):,.1f} ms  "
            f"p99 {provision.percentile_ms(99):,.1f} ms"
            if provision.count
            else "provision: no device connected yet"
        )
        self.live.update(Group(head, Text(outcomes or "no outcome yet"), Text(latency)))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_report(console: Console, report: dict[str, Any]) -> None:
    rate = report["rate"]
    console.print(
        f"[bold]{report['scenario']}[/] against {report['endpoint']}: "
        f"{report['devices']} devices in {report['duration_s']:.1f} s, "
        f"{report['attempts']['total']} attempts"
    )
    target = rate["target_per_s"]
    achieved = rate["achieved_per_s"]
    console.print(
        f"  arrival rate: target {_ms(target)}/s, achieved {_ms(achieved)}/s; "
        f"schedule lag p99 {_ms(report['schedule_lag_ms']['p99'])} ms"
    )
    per_device = (report.get("generator") or {}).get("cpu_ms_per_device")
    if per_device is not None:
        console.print(f"  generator: {per_device:,.2f} ms of CPU per device")
    outcomes = Table(box=None, pad_edge=False)
    outcomes.add_column("outcome")
    outcomes.add_column("devices", justify="right")
    for name, n in report["outcomes"].items():
        if n:
            outcomes.add_row(name, str(n))
    console.print(outcomes)
    latency = Table(box=None, pad_edge=False)
    for column in ("phase (ms)", "count", "p50", "p90", "p99", "p99.9", "max"):
        latency.add_column(column, justify="left" if column.startswith("phase") else "right")
    for phase in PHASES:
        s = report["latency_ms"][phase]
        latency.add_row(
            phase,
            str(s["count"]),
            *(_ms(s[k]) for k in ("p50", "p90", "p99", "p99_9", "max")),
        )
    console.print(latency)
    jitp = report.get("jitp")
    if jitp and jitp["first_connect_rejected"]:
        line = f"  JITP: {jitp['first_connect_rejected']} first connects rejected (the trigger)"
        if jitp["provisioning"] is not None:
            done = ", ".join(f"{k} {v}" for k, v in jitp["provisioning"].items() if v)
            line += f"; emulator provisioning: {done or 'none'}"
        console.print(line)
        for reason, n in list((jitp["provisioning_failures"] or {}).items())[:3]:
            console.print(f"  {n} provisionings failed: {reason}")
        # Reports from before the emulator had limits have no emulator_closes.
        for reason, n in sorted((jitp.get("emulator_closes") or {}).items()):
            console.print(f"  the emulator closed {n} session{'s' * (n != 1)}: {reason}")
    for outcome, reasons in report["reasons"].items():
        for reason, n in list(reasons.items())[:3]:
            console.print(f"  {outcome}: {n} devices: {reason}")
    if report.get("capacity"):
        print_capacity(console, report["capacity"])


def print_capacity(console: Console, capacity: dict[str, Any]) -> None:
    """A capacity search's steps, and its verdict."""
    table = Table(title="capacity search", box=None, pad_edge=False)
    for name in ("step", "rate/s", "achieved/s", "p50 ms", "p99 ms", "failed", "throttled", "stop"):
        table.add_column(name, justify="right")
    for row in capacity["steps"]:
        provision = row["latency_ms"]["provision"]
        failed = row["failed_ratio"]
        table.add_row(
            str(row["step"]),
            f"{row['rate_per_s']:g}",
            _ms(row["achieved_per_s"]),
            _ms(provision["p50"]),
            _ms(provision["p99"]),
            "-" if failed is None else f"{failed:.2%}",
            str(row["throttled"]),
            "ok" if row["passed"] else str(row["limit"]),
        )
    console.print(table)
    console.print(capacity["verdict"], soft_wrap=True, markup=False, highlight=False)
