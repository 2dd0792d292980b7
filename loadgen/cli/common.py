"""What every command group of the ``loadgen`` command shares."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from loadgen.certs.keys import KeyType

KEY_TYPES = click.Choice([k.value for k in KeyType])


class FiniteRange(click.FloatRange):
    """A number of seconds or a rate: click's FloatRange lets nan and inf by."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class PathType(click.Path):
    """A file or folder a command reads or writes. An empty one (an unset
    variable's ``--out "$DIR"``, say) is refused: as ``Path("")`` it would be
    the current folder, and a CA, a fleet or an emulator's state would be
    written into it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("an empty path (it would be the current folder)", param, ctx)
        return super().convert(value, param, ctx)


PATH = PathType(path_type=Path)
POSITIVE = FiniteRange(min=0, min_open=True)  # above zero
NOT_NEGATIVE = FiniteRange(min=0)


def stderr_console() -> Console:
    """Where progress and warnings go: stderr, so that stdout stays the result."""
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    click.echo(f"loadgen: warning: {message}", err=True)
