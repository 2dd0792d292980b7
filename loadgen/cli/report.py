"""`loadgen report`: show, render, merge and compare run reports."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from loadgen.report import compare as report_compare_mod
from loadgen.report import fields as report_fields
from loadgen.report import gates as gates_mod
from loadgen.report import merge as report_merge
from loadgen.report.build import write_outputs, write_report
from loadgen.report.show import print_report
from loadgen.run import (
    report_path,
)
from loadgen.words import counted


@click.group()
def report() -> None:
    """Run reports."""


@report.command("show")
@click.argument("path", metavar="REPORT", type=click.Path(path_type=Path))
def report_show(path: Path) -> None:
    """Print a report as tables."""
    print_report(Console(highlight=False), report_merge.load_report(path, report_fields.SHOW))


@report.command("html")
@click.argument("path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path))
def report_html(path: Path, out: Path) -> None:
    """Write a report (of a run, a merge or a capacity search) as HTML."""
    loaded = report_merge.load_report(path, report_fields.HTML)
    for line in write_outputs(loaded, None, report_path(out, "--out")):
        click.echo(line)


@report.command("merge")
@click.argument(
    "paths", metavar="REPORT...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path))
def report_merge_command(paths: tuple[Path, ...], out: Path) -> None:
    """Merge reports of shards that ran side by side (exact percentiles)."""
    report_path(out, "--out")  # its folder exists, before any work
    merged = report_merge.merge_files(list(paths))
    write_report(out, merged)
    devices = counted(merged["devices"], "device")
    click.echo(f"{counted(len(paths), 'report')} merged into {out}: {devices}")


@report.command("compare")
@click.argument("baseline_path", metavar="BASELINE", type=click.Path(path_type=Path))
@click.argument("current_path", metavar="CURRENT", type=click.Path(path_type=Path))
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
        after = "nothing measured" if row.current is None else f"{row.current:,.1f} ms"
        change = "" if row.change is None else f"{row.change:+.1%}, "
        click.echo(
            f"{verdict}: {row.percentile}({row.phase}) {row.baseline:,.1f} ms -> "
            f"{after} ({change}limit +{limit * 100:g}%)"
        )
    if why is not None or any(row.regressed for row in rows):
        sys.exit(1)
