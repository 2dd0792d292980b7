"""Options that `loadgen run` and `loadgen capacity` share: one definition each,
so the two commands spell and document them the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from loadgen.run import default_workers

F = TypeVar("F", bound=Callable[..., Any])

_TARGET = (
    click.option("--endpoint", help="HOST:PORT instead of the scenario's endpoint."),
    click.option("--workers", type=int, default=default_workers, show_default="cores"),
)
_OUTPUTS = (
    click.option("--report", "report_file", type=click.Path(path_type=Path), help="JSON report."),
    click.option(
        "--html", "html_file", type=click.Path(path_type=Path), help="Self-contained HTML report."
    ),
    click.option("--metrics-port", type=int, help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    click.option(
        "--linger", type=float, default=0.0, help="Seconds to keep serving metrics after."
    ),
    click.option(
        "--pushgateway", help="Push metrics to this Pushgateway URL (periodically, at the end)."
    ),
    click.option("--job", default="loadgen", show_default=True, help="The Pushgateway job name."),
    click.option(
        "--shard",
        help="A name for this generator among several running side by side: "
        "a label on its metrics, and its own Pushgateway group.",
    ),
)


def _apply(options: tuple[Callable[[F], F], ...], command: F) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def target_options(command: F) -> F:
    """--endpoint and --workers."""
    return _apply(_TARGET, command)


def output_options(command: F) -> F:
    """--report, --html, --metrics-port, --linger, --pushgateway, --job and --shard."""
    return _apply(_OUTPUTS, command)
