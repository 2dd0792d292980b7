"""`loadgen template`: provisioning templates for JITP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from loadgen.cli.common import PATH
from loadgen.emulator import check as emu_check
from loadgen.emulator import render as emu_render
from loadgen.scenario.schema import load_scenario
from loadgen.words import counted


@click.group()
def template() -> None:
    """Provisioning templates for JITP."""


@template.command("render")
@click.argument("path", metavar="TEMPLATE", type=PATH)
@click.option("--role-arn", required=True, help="A role with AWSIoTThingsRegistration.")
def template_render(path: Path, role_arn: str) -> None:
    """A readable template (.yaml or .json) in, the --registration-config JSON out;
    a registration config in (AWS's readable layout, say), its template with
    --role-arn out, as AWS takes it."""
    config = emu_render.render_registration(path, role_arn, "--role-arn", configs=True)
    click.echo(json.dumps(config, indent=2))


@template.command("check")
@click.argument("path", metavar="CONFIG", type=PATH)
@click.option(
    "--scenario",
    "scenario_path",
    type=PATH,
    help="Check against this scenario's fleet profile, client ids and topics.",
)
def template_check(path: Path, scenario_path: Path | None) -> None:
    """Lint a registration config (or readable template); exit 1 on errors."""
    loaded = emu_check.load_config(path)
    scenario_ = load_scenario(scenario_path) if scenario_path is not None else None
    findings = emu_check.check(loaded, scenario_)
    for finding in findings:
        click.echo(str(finding))
    errors = sum(f.error for f in findings)
    click.echo(f"{path}: {counted(errors, 'error')}, {counted(len(findings) - errors, 'warning')}")
    if errors:
        sys.exit(1)
