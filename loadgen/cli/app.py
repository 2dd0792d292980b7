"""The ``loadgen`` command: its root group, one module per command group
(``loadgen/cli/ca.py`` for ``loadgen ca``, ...), and how its errors end."""

from __future__ import annotations

import importlib
import sys

import click

from loadgen import __version__
from loadgen import lifeline as lifeline_mod
from loadgen.cli import streams
from loadgen.errors import LoadgenError, UserError

# Each command group's module, imported when that command runs (or --help lists
# them): all of them cost a command 0.5 s and 58 MB, and `loadgen emulator
# serve`, the emulator's account process, lives as long as the devices it holds.
_COMMANDS = {
    "aws": ("loadgen.cli.aws", "aws"),
    "ca": ("loadgen.cli.ca", "ca"),
    "certs": ("loadgen.cli.certs", "certs"),
    "run": ("loadgen.cli.run", "run_command"),
    "capacity": ("loadgen.capacity.command", "capacity_command"),
    "report": ("loadgen.cli.report", "report"),
    "scenario": ("loadgen.cli.scenario", "scenario"),
    "emulator": ("loadgen.cli.emulator", "emulator"),
    "template": ("loadgen.cli.template", "template"),
}


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, name = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command) and command.name == cmd_name, command
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadgen")
def cli() -> None:
    """Load tester for AWS IoT Just-in-Time Provisioning and any MQTT endpoint that
    authenticates devices by X.509 client certificates."""


def main() -> None:
    # A closed terminal or a `kill` stops a command the way Ctrl-C does: a run
    # still writes what it measured, no child is left behind.
    lifeline_mod.stop_signals_as_interrupt()
    streams.forgive_lost_outputs()
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
