"""The ``loadgen`` command: its root group, one module per command group
(``loadgen/cli/ca.py`` for ``loadgen ca``, ...), and how its errors end."""

from __future__ import annotations

import sys

import click

from loadgen import __version__
from loadgen import lifeline as lifeline_mod
from loadgen.capacity.command import capacity_command
from loadgen.cli.aws import aws
from loadgen.cli.ca import ca
from loadgen.cli.certs import certs
from loadgen.cli.emulator import emulator
from loadgen.cli.report import report
from loadgen.cli.run import run_command
from loadgen.cli.scenario import scenario
from loadgen.cli.template import template
from loadgen.errors import LoadgenError, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadgen")
def cli() -> None:
    """Load tester for AWS IoT Just-in-Time Provisioning and any MQTT endpoint that
    authenticates devices by X.509 client certificates."""


cli.add_command(aws)
cli.add_command(ca)
cli.add_command(certs)
cli.add_command(run_command)
cli.add_command(capacity_command)
cli.add_command(report)
cli.add_command(scenario)
cli.add_command(emulator)
cli.add_command(template)


def main() -> None:
    # A closed terminal or a `kill` stops a command the way Ctrl-C does: a run
    # still writes what it measured, no child is left behind.
    lifeline_mod.stop_signals_as_interrupt()
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"loadgen: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except LoadgenError as exc:
        click.echo(f"loadgen: failed: {exc}", err=True)
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("loadgen: interrupted; what was finished is kept", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a group called bare: its help, as asked
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line, like every other input mistake; the usage is one --help away.
        command = exc.ctx.command_path if exc.ctx is not None else "loadgen"
        message = " ".join(exc.format_message().split())
        click.echo(f"loadgen: error: {message} (see {command} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
