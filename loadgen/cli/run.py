"""`loadgen run`: one scenario, end to end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
)

from loadgen.certs.mint import MintResult
from loadgen.cli.certs import MintBar
from loadgen.cli.common import stderr_console, warn
from loadgen.cli.options import Outputs, output_options, target_options
from loadgen.load.runner import merge_progress
from loadgen.report import ci as ci_files
from loadgen.report import gates as gates_mod
from loadgen.report.show import LiveRun, print_report
from loadgen.run import (
    RunOptions,
    check_plan,
    ensure_fleet,
    execute,
    jitp_section,
    make_plan,
    report_path,
)
from loadgen.run import endpoint as run_endpoint
from loadgen.scenario.schema import Scenario, load_scenario
from loadgen.words import counted


@click.command("run")
@click.argument("scenario_path", metavar="SCENARIO", type=click.Path(path_type=Path))
@click.option("--count", type=int, help="Devices to run (default: the scenario's fleet.count).")
@click.option("--rate", help="A constant arrival rate instead of the scenario's, e.g. 200/s.")
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path),
    help="JUnit XML, one test case per gate.",
)
@click.option(
    "--summary-md",
    "summary_path",
    type=click.Path(path_type=Path),
    help="A markdown summary for a CI job's summary page.",
)
@click.option(
    "--gate",
    "gate_texts",
    multiple=True,
    help='A pass/fail condition, e.g. "p99(provision) < 2s"; repeatable.',
)
@target_options
@output_options
def run_command(
    scenario_path: Path,
    endpoint: str | None,
    count: int | None,
    rate: str | None,
    workers: int | None,
    outputs: Outputs,
    junit_path: Path | None,
    summary_path: Path | None,
    gate_texts: tuple[str, ...],
) -> None:
    """Run a scenario: mint its fleet if needed, then connect every device.
    Exit 1 when a gate fails."""
    scenario = load_scenario(scenario_path, warn=warn)
    gates = [
        *(gates_mod.parse(t, f"{scenario_path}: gates[{i}]") for i, t in enumerate(scenario.gates)),
        *(gates_mod.parse(t, "--gate") for t in gate_texts),
    ]
    options = RunOptions(endpoint, count, rate, workers)
    checked = check_plan(scenario, options)
    outputs.check()
    report_path(junit_path, "--junit")
    report_path(summary_path, "--summary-md")
    console = stderr_console()
    minted = _mint_with_progress(console, scenario, checked.count, workers)
    if minted is not None:
        click.echo(
            f"fleet {checked.fleet}: minted {minted.minted}, {counted(minted.total, 'device')}",
            err=True,
        )
    with run_endpoint(scenario, options) as session:
        plan = make_plan(session.scenario, session.options)
        exporter = outputs.exporter(plan)
        with LiveRun(console, plan) as live:

            def on_progress(parts: list[Any], elapsed: float) -> None:
                live.update(parts, elapsed)
                if exporter is not None:
                    exporter.progress(merge_progress(parts), elapsed)

            stats, timing, report = execute(plan, on_progress)
        if exporter is not None and (error := exporter.finish(stats)):
            click.echo(f"loadgen: {error}", err=True)
        report["jitp"] = jitp_section(report, session.final_emulator_stats())
        results = gates_mod.evaluate(gates, report)
        report["gates"] = [
            {
                "gate": r.gate,
                "passed": r.passed,
                "measured": r.measured,
                "threshold": r.threshold,
                "note": r.note,
            }
            for r in results
        ]
        print_report(Console(highlight=False), report)
        for result in results:
            click.echo(result.describe())
        outputs.write(report)
        ci_files.write_ci_files(report, results, junit_path, summary_path)
        outputs.linger_for_last_scrape()
    if timing.partial:
        click.echo("loadgen: interrupted; the report holds what ran (partial)", err=True)
        sys.exit(130)
    for worker, why in sorted(timing.lost.items()):
        click.echo(f"loadgen: worker {worker} {why}; its unfinished devices are errors", err=True)
    if timing.lost:
        sys.exit(1)
    if any(not r.passed for r in results):
        sys.exit(1)


def _mint_with_progress(
    console: Console, scenario: Scenario, count: int, workers: int | None
) -> MintResult | None:
    with MintBar(console, TextColumn("minting fleet"), BarColumn(), MofNCompleteColumn()) as bar:
        return ensure_fleet(scenario, count, workers, bar.update)
