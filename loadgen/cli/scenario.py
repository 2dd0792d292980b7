"""`loadgen scenario`: scenario files."""

from __future__ import annotations

import json

import click

from loadgen.scenario.schema import Scenario


@click.group()
def scenario() -> None:
    """Scenario files."""


@scenario.command("schema")
def scenario_schema() -> None:
    """Print the scenario JSON Schema (for editors)."""
    click.echo(json.dumps(Scenario.model_json_schema(), indent=2))
