"""`loadgen run`: one scenario, end to end."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
)

from loadgen.certs.mint import MintResult
from loadgen.cli.certs import MintBar
from loadgen.cli.common import PATH, stderr_console, warn
from loadgen.cli.options import (
    Outputs,
    gate_options,
    output_options,
    target_options,
)
from loadgen.files import each_output
from loadgen.load.plan import Workers
from loadgen.load.runner import merged_for
from loadgen.load.shard import Shard
from loadgen.load.start import DEFAULT_TOLERANCE, parse_start
from loadgen.load.workers import RunSignals
from loadgen.report import ci as ci_files
from loadgen.report import gates as gates_mod
from loadgen.report.build import jitp_section
from loadgen.report.show import LiveRun, emulator_stopped_line, print_report
from loadgen.report.store import Destination
from loadgen.run import (
    RunOptions,
    check_gates,
    check_plan,
    check_ports,
    ensure_fleet,
    execute,
    fleet_count,
    kept_files,
    make_plan,
    mint_workers,
    signalled_endpoint,
    unstarted_report,
)
from loadgen.scenario.schema import Scenario, load_scenario
from loadgen.words import counted


@click.command("run")
@click.argument("scenario_path", metavar="SCENARIO", type=PATH)
@click.option("--count", type=int, help="Devices to run (default: the scenario's fleet.count).")
@click.option(
    "--rate",
    help="A constant arrival rate instead of the scenario's executor (a ramp's or a "
    "burst's too), e.g. 200/s.",
)
@gate_options
@click.option(
    "--start-at",
    "start_at",
    metavar="TIME",
    help="Start the schedule at this wall-clock time (epoch seconds, or ISO 8601 with a "
    "zone, e.g. 2026-12-01T18:00:00Z), once prepared: shards started together.",
)
@click.option(
    "--start-tolerance",
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="How late past --start-at a run that was ready late may still start; later fails.",
)
@target_options
@output_options
def run_command(
    scenario_path: Path,
    endpoint: str | None,
    count: int | None,
    rate: str | None,
    workers: Workers,
    outputs: Outputs,
    junit_path: Destination | None,
    summary_path: Destination | None,
    gate_texts: tuple[str, ...],
    start_at: str | None,
    start_tolerance: str,
) -> None:
    """Run a scenario: mint its fleet if needed, then connect every device.
    Exit 1 when a gate fails."""
    start = parse_start(start_at, start_tolerance)
    scenario = load_scenario(scenario_path, warn=warn)
    gates = gates_mod.from_texts(scenario.gates, scenario_path, gate_texts)
    options = RunOptions(endpoint, count, rate, workers, outputs.slice, start)
    checked = check_plan(scenario, options)
    check_gates(scenario, checked, gates)
    check_ports(scenario, options, outputs.metrics_port)
    outputs.check(junit_path, summary_path, kept=kept_files(scenario, scenario_path))
    console = stderr_console()
    # Until the workers start (the fleet minted, the emulator starting, the
    # plan) a stop signal stops the command at once, with the report of a run
    # that started nothing; then it stops the workers, or is noted: what they
    # measured is written whatever comes.
    preparing = True
    try:
        minted = _mint_with_progress(
            console, scenario, fleet_count(scenario, options), mint_workers(workers), checked.shard
        )
        if minted is not None:
            click.echo(
                f"fleet {checked.fleet}: minted {minted.minted}, {counted(minted.total, 'device')}",
                err=True,
            )
        with signalled_endpoint(scenario, options) as (signals, session):
            with signals.abortable():
                plan = make_plan(session.scenario, session.options)
                exporter = outputs.exporter(plan)
            preparing = False
            if start is not None:
                shard = f"shard {plan.shard}" if plan.shard is not None else "the run"
                click.echo(f"{shard}: its schedule starts at --start-at {start.text}", err=True)
            with LiveRun(console, plan) as live:
                exported = [exporter.progress] if exporter is not None else []
                on_progress = merged_for(live.update, *exported)
                stats, timing, report = execute(plan, on_progress, start, signals)
            if timing.late_s > 0:
                click.echo(
                    f"loadgen: started {timing.late_s:.2f} s after --start-at (ready late)",
                    err=True,
                )
            if exporter is not None:
                exporter.finish(stats)
            emulator_stats, stopped = session.final_emulator()
            report["jitp"] = jitp_section(report, emulator_stats, stopped)
            results = _judge_and_write(report, gates, outputs, junit_path, summary_path)
            if signals.received is None:
                outputs.linger_for_last_scrape()
    except KeyboardInterrupt:
        if not preparing:
            raise
        _stopped_before_start(
            unstarted_report(checked, scenario, options, start),
            gates,
            outputs,
            junit_path,
            summary_path,
        )
    if signals.received is not None and not timing.partial:
        name = signal.Signals(signals.received).name
        click.echo(f"loadgen: {name} came after the run ended; its report is whole", err=True)
    for worker, why in sorted(timing.lost.items()):
        click.echo(f"loadgen: worker {worker} {why}; its unfinished devices are errors", err=True)
    if stopped is not None:
        click.echo(f"loadgen: {emulator_stopped_line(stopped)}", err=True)
    if timing.partial:
        click.echo("loadgen: interrupted; the report holds what ran (partial)", err=True)
        sys.exit(130)
    if timing.lost or stopped is not None:
        sys.exit(1)
    if any(not r.passed for r in results):
        sys.exit(1)


def _judge_and_write(
    report: dict[str, Any],
    gates: list[gates_mod.Gate],
    outputs: Outputs,
    junit_path: Destination | None,
    summary_path: Destination | None,
) -> list[gates_mod.GateResult]:
    """The gates applied to the report, which is printed and written with every
    other output asked for; the gates' results."""
    results = gates_mod.evaluate(gates, report)
    report["gates"] = gates_mod.as_json(results)
    print_report(Console(highlight=False), report)
    for result in results:
        click.echo(result.describe())
    each_output(
        [
            lambda: outputs.write(report),
            lambda: ci_files.write_ci_files(report, results, junit_path, summary_path),
        ]
    )
    return results


def _stopped_before_start(
    report: dict[str, Any],
    gates: list[gates_mod.Gate],
    outputs: Outputs,
    junit_path: Destination | None,
    summary_path: Destination | None,
) -> NoReturn:
    """The outputs of a run stopped before it started a device, then exit 130
    as for any stopped run. A second signal meanwhile is noted: it must not cut
    the outputs short."""
    with RunSignals():
        report["jitp"] = jitp_section(report, None)
        _judge_and_write(report, gates, outputs, junit_path, summary_path)
    click.echo(
        "loadgen: interrupted before any device started; the report says so (partial)", err=True
    )
    sys.exit(130)


def _mint_with_progress(
    console: Console, scenario: Scenario, count: int, workers: int | None, shard: Shard | None
) -> MintResult | None:
    with MintBar(console, TextColumn("minting fleet"), BarColumn(), MofNCompleteColumn()) as bar:
        return ensure_fleet(scenario, count, workers, bar.update, shard)
