"""`loadgen report`: show, render, merge and compare run reports."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from loadgen.cli.common import PATH, warn
from loadgen.cli.options import check_destinations, gate_options
from loadgen.errors import UserError
from loadgen.files import each_output
from loadgen.report import ci as ci_files
from loadgen.report import compare as report_compare_mod
from loadgen.report import fields as report_fields
from loadgen.report import gates as gates_mod
from loadgen.report import merge as report_merge
from loadgen.report import sources as sources_mod
from loadgen.report.build import write_outputs
from loadgen.report.shortfalls import shortfalls
from loadgen.report.show import print_report
from loadgen.report.sources import SOURCE
from loadgen.report.store import DESTINATION, Destination, Location
from loadgen.scenario.schema import load_scenario
from loadgen.scenario.units import parse_duration
from loadgen.words import counted


@click.group()
def report() -> None:
    """Run reports."""


@report.command("show")
@click.argument("path", metavar="REPORT", type=PATH)
def report_show(path: Path) -> None:
    """Print a report as tables."""
    print_report(Console(highlight=False), report_merge.load_report(path, report_fields.SHOW))


@report.command("html")
@click.argument("path", metavar="REPORT", type=PATH)
@click.option(
    "-o", "--out", "out", required=True, type=DESTINATION, help="A file or s3://BUCKET/KEY."
)
def report_html(path: Path, out: Destination) -> None:
    """Write a report (of a run, a merge or a capacity search) as HTML."""
    sources_mod.check_outputs([path], [out])
    out.check(warn)
    loaded = report_merge.load_report(path, report_fields.HTML)
    write_outputs(loaded, None, out, click.echo)


@report.command("merge")
@click.argument("sources", metavar="REPORT...", nargs=-1, required=True, type=SOURCE)
@click.option(
    "-o", "--out", "out", required=True, type=DESTINATION, help="A file or s3://BUCKET/KEY."
)
@click.option(
    "--html", "html", type=DESTINATION, help="The merge as HTML: a file or s3://BUCKET/KEY."
)
@click.option(
    "--expect",
    type=int,
    help="Exactly N shards' reports (--shard I/N, I from 0 to N-1, each once); exit 1 otherwise.",
)
@click.option(
    "--wait",
    "wait_text",
    help="With --expect: look again until every shard's report is there, for up to this "
    "long (e.g. 10m).",
)
@click.option(
    "--scenario",
    "scenario_path",
    type=PATH,
    help="Apply the gates: of this scenario (as the shards ran it) too.",
)
@gate_options
def report_merge_command(
    sources: tuple[Location, ...],
    out: Destination,
    html: Destination | None,
    expect: int | None,
    wait_text: str | None,
    gate_texts: tuple[str, ...],
    scenario_path: Path | None,
    junit_path: Destination | None,
    summary_path: Destination | None,
) -> None:
    """Merge reports of shards that ran side by side (exact percentiles). A REPORT
    is a file, a folder or s3://BUCKET/PREFIX/ (every *.json under it), or
    s3://BUCKET/KEY. Exit 1 when a gate fails, a shard is missing, or a shard fell
    short (stopped before its end, a worker lost, its emulator stopped)."""
    gates = merge_gates(scenario_path, gate_texts)
    wait_s = wait_seconds(wait_text, expect)
    check_destinations(out, html, junit_path, summary_path)
    outputs = [d for d in (out, html, junit_path, summary_path) if d is not None]
    sources_mod.check_outputs(list(sources), outputs)
    reader = sources_mod.Reader(list(sources), outputs)
    named = sources_mod.gather(reader, expect, wait_s, lambda line: click.echo(line, err=True))
    merged = report_merge.merge_named(named, reader.series)
    results = gates_mod.evaluate(gates, merged)
    if gates:
        merged["gates"] = gates_mod.as_json(results)
    merged_line = (
        f"{counted(len(named), 'report')} merged into {out}: {counted(merged['devices'], 'device')}"
    )

    def gates_and_ci_files() -> None:
        for result in results:
            click.echo(result.describe())
        ci_files.write_ci_files(merged, results, junit_path, summary_path)

    each_output(
        [lambda: write_outputs(merged, out, html, click.echo, merged_line), gates_and_ci_files]
    )
    fell_short = shortfalls(named, merged)
    for line in fell_short:
        click.echo(f"loadgen: {line}", err=True)
    if fell_short or any(not r.passed for r in results):
        sys.exit(1)


def merge_gates(scenario_path: Path | None, gate_texts: tuple[str, ...]) -> list[gates_mod.Gate]:
    """The scenario's gates, then --gate's, read as `loadgen run` reads them."""
    scenario_gates: list[str] = []
    if scenario_path is not None:
        scenario_gates = load_scenario(scenario_path, warn=warn).gates
    return gates_mod.from_texts(scenario_gates, scenario_path, gate_texts)


def wait_seconds(text: str | None, expect: int | None) -> float:
    if expect is not None and expect <= 0:
        raise UserError(f"--expect must be positive, got {expect}")
    if text is None:
        return 0.0
    if expect is None:
        raise UserError("--wait needs --expect N: the shards to wait for")
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserError(f"--wait: {exc}") from None


@report.command("compare")
@click.argument("baseline_path", metavar="BASELINE", type=PATH)
@click.argument("current_path", metavar="CURRENT", type=PATH)
@click.option(
    "--max-regression",
    default="10%",
    show_default=True,
    help="How much slower a percentile may get: a percentage, e.g. 10%.",
)
def report_compare(baseline_path: Path, current_path: Path, max_regression: str) -> None:
    """Fail (exit 1) when a phase percentile regressed beyond --max-regression, or
    when the current run measured nothing."""
    limit = report_compare_mod.parse_limit(max_regression)
    baseline = report_merge.load_report(baseline_path, report_fields.COMPARE)
    current = report_merge.load_report(current_path, report_fields.COMPARE)
    report_compare_mod.check_baseline(baseline, str(baseline_path))
    rows = report_compare_mod.compare(baseline, current, limit)
    if (why := gates_mod.nothing_measured(current)) is not None:
        click.echo(f"FAIL: {current_path} measured nothing: {why}")
    for row in rows:
        verdict = "FAIL" if row.regressed else "pass"
        after = "nothing measured" if row.current is None else f"{_ms(row.current)} ms"
        change = "" if row.change is None else f"{row.change:+.1%}, "
        click.echo(
            f"{verdict}: {row.percentile}({row.phase}) {_ms(row.baseline)} ms -> "
            f"{after} ({change}limit +{limit * 100:g}%)"
        )
    if why is not None or any(row.regressed for row in rows):
        sys.exit(1)


def _ms(value: float) -> str:
    """Milliseconds to the tenth, or to three significant digits below 1 ms: a
    change of a sub-millisecond phase must show in the numbers it is judged by."""
    return f"{value:,.1f}" if value >= 1 else f"{value:.3g}"
