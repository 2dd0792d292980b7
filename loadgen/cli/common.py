"""What every command group of the ``loadgen`` command shares."""

from __future__ import annotations

import click
from rich.console import Console

from loadgen.certs.keys import KeyType

KEY_TYPES = click.Choice([k.value for k in KeyType])


def stderr_console() -> Console:
    """Where progress and warnings go: stderr, so that stdout stays the result."""
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    click.echo(f"loadgen: warning: {message}", err=True)
