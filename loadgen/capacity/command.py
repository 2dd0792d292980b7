"""`loadgen capacity`: run the search's steps against one endpoint session and
write what they found, like `loadgen run` writes a run."""

from __future__ import annotations

import functools
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from loadgen.capacity.search import EmulatorCpu, Search, Step, section, throttles, verdict
from loadgen.certs.profile import MAX_DEVICES
from loadgen.cli.common import PATH
from loadgen.cli.options import Outputs, output_options, target_options
from loadgen.errors import UserError
from loadgen.load.plan import AUTO, RunPlan, Workers
from loadgen.load.runner import merged_for
from loadgen.load.schedule import MAX_SPAN, ConstantArrival
from loadgen.load.workers import RunSignals
from loadgen.metrics import prometheus as prom
from loadgen.metrics.stats import RunStats
from loadgen.report import gates as gates_mod
from loadgen.report.build import jitp_section
from loadgen.report.merge import merge
from loadgen.report.show import LiveRun, emulator_stopped_line, listed, print_capacity, say
from loadgen.run import (
    EndpointSession,
    RunOptions,
    check_gates,
    check_plan,
    check_ports,
    ensure_fleet,
    execute,
    kept_files,
    make_plan,
    mint_workers,
    signalled_endpoint,
    workers_for,
)
from loadgen.scenario.schema import load_scenario
from loadgen.scenario.units import parse_duration, parse_rate
from loadgen.words import counted


def _rate(option: str, text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise UserError(f"{option} {text!r}: {exc}") from None


def _search(
    scenario_gates: list[str],
    where: Path,
    slo_texts: tuple[str, ...],
    start: str,
    step: str,
    step_duration: str,
    max_rate: str | None,
    max_steps: int,
) -> Search:
    slos = [gates_mod.parse(t, "--slo") for t in slo_texts] or [
        gates_mod.parse(t, f"{where}: gates[{i}]", i) for i, t in enumerate(scenario_gates)
    ]
    if not slos:
        raise UserError(
            "capacity needs an SLO: --slo 'p99(provision) < 2s' (or gates: in the scenario)"
        )
    try:
        duration = parse_duration(step_duration)
    except ValueError as exc:
        raise UserError(f"--step-duration {step_duration!r}: {exc}") from None
    if duration <= 0:
        raise UserError(f"--step-duration {step_duration!r}: must be above zero")
    if duration > MAX_SPAN:
        raise UserError(
            f"--step-duration {step_duration!r}: more than {MAX_SPAN / 86400:.0f} days, "
            "the longest a schedule may span"
        )
    if max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {max_steps}")
    first = _rate("--start", start)
    highest = _rate("--max-rate", max_rate) if max_rate is not None else None
    # No step would run: the search would mint a fleet, then say nothing.
    if highest is not None and highest + 1e-9 < first:  # as Search.rates compares
        raise UserError(f"--max-rate {max_rate} is below --start {start}: no step would run")
    return Search(tuple(slos), first, _rate("--step", step), duration, highest, max_steps)


@click.command("capacity")
@click.argument("scenario_path", metavar="SCENARIO", type=PATH)
@click.option(
    "--slo",
    "slo_texts",
    multiple=True,
    help="A gate every step must pass, e.g. 'p99(provision) < 2s'; repeatable "
    "(default: the scenario's gates).",
)
@click.option("--start", default="10/s", show_default=True, help="The first step's rate.")
@click.option("--step", "step", default="10/s", show_default=True, help="Added at each step.")
@click.option("--step-duration", default="60s", show_default=True, help="How long a step runs.")
@click.option("--max-rate", help="The highest rate to try (default: no limit but --max-steps).")
@click.option("--max-steps", type=int, default=50, show_default=True)
@click.option(
    "--first-device",
    type=int,
    default=0,
    show_default=True,
    help="The fleet index to start from: devices before it are left alone "
    "(e.g. already provisioned by an earlier search against the same endpoint).",
)
@target_options
@functools.partial(output_options, slices=False)
def capacity_command(
    scenario_path: Path,
    slo_texts: tuple[str, ...],
    start: str,
    step: str,
    step_duration: str,
    max_rate: str | None,
    max_steps: int,
    first_device: int,
    endpoint: str | None,
    workers: Workers,
    outputs: Outputs,
) -> None:
    """Raise the arrival rate step by step until an SLO breaks; report the
    highest sustainable rate and what limited it."""
    scenario = load_scenario(
        scenario_path, warn=lambda line: click.echo(f"loadgen: warning: {line}", err=True)
    )
    search = _search(
        scenario.gates, scenario_path, slo_texts, start, step, step_duration, max_rate, max_steps
    )
    if not 0 <= first_device < MAX_DEVICES:
        raise UserError(f"--first-device must be from 0 to {MAX_DEVICES - 1:,}, got {first_device}")
    # The fleet ends at MAX_DEVICES. Minting past it fails naming `run`'s
    # --count, after the search's header: say it first, in this command's options.
    per_step = search.start * search.step_duration
    if per_step > MAX_DEVICES:
        raise UserError(
            f"--start {start} for --step-duration {step_duration}: more than "
            f"{MAX_DEVICES:,} devices a step (the most a fleet holds)"
        )
    if first_device + search.devices(search.start) > MAX_DEVICES:
        raise UserError(
            f"--first-device {first_device}: the first step's "
            f"{counted(search.devices(search.start), 'device')} would pass the fleet's "
            f"last index ({MAX_DEVICES - 1:,})"
        )
    # The steps replace the scenario's schedule and grow its fleet: the plan
    # checked is the first step's (each later one differs only in its rate).
    options = RunOptions(endpoint, search.devices(search.start), start, workers)
    check_gates(scenario, check_plan(scenario, options), list(search.slos))
    check_ports(scenario, options, outputs.metrics_port)
    outputs.label_only("loadgen capacity")
    outputs.check(kept=kept_files(scenario, scenario_path))
    say(
        Console(highlight=False),
        f"capacity search: from {search.start:g}/s by {search.step:g}/s,",
        f"{search.step_duration:g} s a step;",
        "SLOs:",
        *listed([g.text for g in search.slos]),
        indent=0,
    )
    # The first step's devices (and the fleet CA, which the emulator trusts).
    ensure_fleet(scenario, first_device + search.devices(search.start), mint_workers(workers))
    steps: list[Step] = []
    interrupted = False
    with signalled_endpoint(scenario, options) as (signals, session):
        with signals.abortable():
            base = make_plan(session.scenario, session.options)
            exporter = outputs.exporter(base)
        began = time.time()
        offset = first_device
        total = RunStats()
        # The embedded emulator stopped, or a worker was lost, during a step.
        ended: str | None = None
        try:
            for number, rate in enumerate(search.rates(), 1):
                count = search.devices(rate)
                if offset + count > MAX_DEVICES:
                    # Checked for the first step before anything ran; a later one
                    # ends the search with what it found, as --max-rate would.
                    click.echo(
                        f"loadgen: no step at {rate:,.10g}/s: its {count:,} devices would pass "
                        f"the fleet's last index ({MAX_DEVICES - 1:,}); the search ends here",
                        err=True,
                    )
                    break
                with signals.abortable():  # a stop now loses nothing measured
                    ensure_fleet(scenario, offset + count, mint_workers(workers))
                plan = replace(
                    base, count=count, executor=ConstantArrival(rate), first_device=offset
                )
                if workers == AUTO:  # each step's rate plans its own
                    plan = replace(plan, workers=workers_for(plan))
                result, answered = _run_step(
                    session, plan, rate, search, number, began, exporter, signals
                )
                # One that hangs is stopped as much as one that died: its devices
                # went unanswered, and its counts of the step are lost.
                stopped = session.emulator_stopped(answered)
                if stopped is not None:
                    # Its devices were refused from some moment on: the step
                    # measured nothing whole, as one cut short.
                    result.interrupted = True
                    ended = emulator_stopped_line(stopped, f"the step at {rate:g}/s")
                elif (lost := result.workers_lost) is not None:
                    # A crash: its devices' ends are errors of our own, no finding.
                    result.interrupted = True
                    ended = (
                        f"the load generator lost a worker during the step at {rate:g}/s: {lost}"
                    )
                steps.append(result)
                total.merge(result.stats)
                if exporter is not None:
                    exporter.step_done(result.stats)
                say(Console(highlight=False), *_step_phrases(result), indent=0)
                offset += count
                if ended is not None:
                    break
                # Stopped during the step (a partial run), or between its end and here.
                if signals.received is not None:
                    interrupted = True
                    break
                if not result.passed:
                    break
        except KeyboardInterrupt:
            interrupted = True
        if exporter is not None:
            exporter.finish(total)
        if steps:
            emulator_stats, stopped = session.final_emulator()
            if ended is None and stopped is not None:  # after the last step's counts
                ended = emulator_stopped_line(stopped, "the search")
        found = verdict(search, steps, interrupted, ended)
        if not steps:
            click.echo(found.text())
        else:
            report = capacity_report(steps, base.max_in_flight, interrupted)
            report["jitp"] = jitp_section(report, emulator_stats, stopped)
            report["capacity"] = section(search, steps, found, interrupted)
            print_capacity(Console(highlight=False), report["capacity"])
            outputs.write(report)
        if signals.received is None:
            outputs.linger_for_last_scrape()
    if signals.received is not None and not interrupted:
        name = signal.Signals(signals.received).name
        click.echo(f"loadgen: {name} came after the search ended; its report is whole", err=True)
    if interrupted:
        click.echo("loadgen: interrupted; the report holds the steps that ran", err=True)
        sys.exit(130)
    if ended is not None:
        click.echo(f"loadgen: {ended}", err=True)
        sys.exit(1)


def _run_step(
    session: EndpointSession,
    plan: RunPlan,
    rate: float,
    search: Search,
    number: int,
    began: float,
    exporter: prom.Exporter | None,
    signals: RunSignals,
) -> tuple[Step, bool]:
    """One step: its run, judged against the SLOs, with the throttling the
    embedded emulator enforced meanwhile; and whether the embedded emulator
    gave its counts when asked, before and after it (True for any other
    endpoint)."""
    emulator = session.emulator
    before = emulator.stats() if emulator is not None else None
    if exporter is not None:
        exporter.step_begins(plan, number, rate)
    with LiveRun(Console(stderr=True), plan) as live:
        exported = [exporter.progress] if exporter is not None else []
        on_progress = merged_for(live.update, *exported)
        stats, timing, report = execute(plan, on_progress, signals=signals)
    after = emulator.stats() if emulator is not None else None
    answered = emulator is None or (before is not None and after is not None)
    step = Step(
        number,
        rate,
        timing.started_at - began,
        timing.ended_at - timing.started_at,
        plan.workers,
        report,
        stats,
        gates_mod.evaluate(list(search.slos), report),
        throttles(stats, before, after, plan.version == 5),
        interrupted=timing.partial,
        emulator_cpu=EmulatorCpu.between(before, after, timing.ended_at - timing.started_at),
    )
    return step, answered


def capacity_report(steps: list[Step], max_in_flight: int, partial: bool) -> dict[str, Any]:
    """The steps' reports as one: they ran one after another, so their series
    line up in time; rates and load describe the search, not a sum of shards."""
    report = merge([s.report for s in steps])
    last = steps[-1].report
    report["partial"] = partial
    report["rate"] = dict(last["rate"])
    report["load"] = {
        **last["load"],
        "executor": "CapacitySearch",
        "count": sum(s.report["load"]["count"] for s in steps),
        "max_in_flight": max_in_flight,
    }
    report["environment"] = dict(last["environment"])
    return report


def _step_phrases(step: Step) -> list[str]:
    """A step's line, in phrases (``say`` fits them to the console's width)."""
    row = step.row()
    p99 = row["latency_ms"]["provision"]["p99"]
    failed = "-" if row["failed_ratio"] is None else f"{row['failed_ratio']:.2%}"
    return [
        f"step {step.number}: {step.rate:g}/s for {row['duration_s']:g} s,",
        f"{counted(row['devices'], 'device')}:",
        f"achieved {_num(row['achieved_per_s'])}/s,",
        f"p99(provision) {_num(p99)} ms,",
        f"failed {failed},",
        f"throttled {row['throttled']},",
        f"generator CPU {row['generator_cpu']:.0%}:",
        "ok" if step.passed else f"stop ({step.limit})",
    ]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
