"""Options that `loadgen run` and `loadgen capacity` share: one definition each,
so the two commands spell and document them the same way."""

from __future__ import annotations

import functools
import signal
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from loadgen.cli.common import NOT_NEGATIVE, warn
from loadgen.errors import UserError
from loadgen.lifeline import StopSignals
from loadgen.listen import PORT, check_listen
from loadgen.load.plan import AUTO, RunPlan, Workers
from loadgen.load.shard import Shard, ShardName, parse_shard
from loadgen.metrics import prometheus as prom
from loadgen.report.build import write_outputs
from loadgen.report.store import DESTINATION, Destination

F = TypeVar("F", bound=Callable[..., Any])


class ShardType(click.ParamType[ShardName, Any]):
    name = "I/N|NAME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> ShardName:
        if isinstance(value, ShardName):
            return value
        option = param.opts[0] if param is not None and param.opts else "--shard"
        return parse_shard(str(value), option)


SHARD = ShardType()


def check_destinations(*destinations: Destination | None) -> None:
    """Refuse, before anything runs, the given outputs that could not be
    written, and two of them that are one file (the second would overwrite the
    first)."""
    given = [d for d in destinations if d is not None]
    for i, destination in enumerate(given):
        for earlier in given[:i]:
            if destination.names(earlier.location):
                raise UserError(
                    f"{destination.option} {destination}: the same file as {earlier.option}"
                )
        destination.check(warn)


def check_not_kept(destinations: list[Destination | None], kept: list[tuple[Path, str]]) -> None:
    """Refuse an output that would land on what the command reads or keeps
    (``kept``: paths and what each is; a folder holds its files). A folder
    that also holds the scenario itself (a fleet kept in the scenario's own
    folder) guards only the files already in it."""
    home = kept[0][0].resolve().parent if kept else None
    for destination in destinations:
        if destination is None or not isinstance(destination.location, Path):
            continue
        target = destination.location.resolve()
        for place, what in kept:
            folder = place.resolve()
            inside = folder in target.parents and (
                target.exists() or home is None or not home.is_relative_to(folder)
            )
            if target == folder or inside:
                where = f"inside {what}" if inside else what
                raise UserError(
                    f"{destination.option} {destination}: that is {where} ({place}), "
                    "which the command reads or keeps: give another file"
                )


def check_pushgateway(url: str) -> None:
    """A Pushgateway's address as prometheus-client takes it: ``host:port`` or
    an http(s) URL. Anything else is refused before the run, not found wanting
    at its first push."""
    # What http.client refuses to send (InvalidURL at the first push): a space,
    # a control character; and what it cannot encode.
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise UserError(
            f"--pushgateway {url!r}: a space, control or non-ASCII character "
            "(percent-encode it in a path)"
        )
    full = url if "://" in url else f"http://{url}"
    try:
        parts = urllib.parse.urlsplit(full)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--pushgateway {url}: not host:port or an http(s) URL")
    if port is None and "://" not in url:
        raise UserError(f"--pushgateway {url}: no port (host:port, or an http(s) URL)")


class WorkersType(click.ParamType[Workers, Any]):
    """``--workers``: a number of worker processes, or ``auto``."""

    name = "N|auto"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "N|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Workers:
        if value is None or isinstance(value, int) or value == AUTO:
            return value  # type: ignore[no-any-return]
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)


WORKERS = WorkersType()

_TARGET = (
    click.option("--endpoint", help="HOST:PORT instead of the scenario's endpoint."),
    click.option(
        "--workers",
        type=WORKERS,
        help="Worker processes: N, or auto (one per 300 connects a second of the peak "
        "arrival rate, a JITP device counting two, at most the cores). Default: the "
        "cores; either way more when load.max_in_flight needs more open files than "
        "one process may hold, and never more than load.max_in_flight.",
    ),
)
_OUTPUTS = (
    click.option(
        "--report", "report_file", type=DESTINATION, help="JSON report: a file or s3://BUCKET/KEY."
    ),
    click.option(
        "--html",
        "html_file",
        type=DESTINATION,
        help="Self-contained HTML report: a file or s3://BUCKET/KEY.",
    ),
    click.option("--metrics-port", type=PORT, help="Serve Prometheus metrics on PORT."),
    click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        help="The address --metrics-port listens on (0.0.0.0 in a pod Prometheus scrapes).",
    ),
    click.option(
        "--linger",
        type=NOT_NEGATIVE,
        default=0.0,
        help="Seconds to keep serving metrics after.",
    ),
    click.option(
        "--pushgateway", help="Push metrics to this Pushgateway URL (periodically, at the end)."
    ),
    click.option("--job", default="loadgen", show_default=True, help="The Pushgateway job name."),
)
_SHARD_SLICE = click.option(
    "--shard",
    type=SHARD,
    help="Which shard this generator is among several running side by side: "
    "I/N (shard I of N, 0 <= I < N) runs only its part of the fleet at 1/N of "
    "the rates; any other NAME is a shard split by hand. Either way a label "
    'on its metrics (shard="I" or the NAME) and its own Pushgateway group.',
)
# A command that runs the whole fleet (a capacity search) takes a NAME alone.
_SHARD_NAME = click.option(
    "--shard",
    type=SHARD,
    help="A NAME for this generator among several running side by side: a label on "
    'its metrics (shard="NAME") and its own Pushgateway group. It runs the whole '
    "fleet: I/N is refused.",
)


_GATES = (
    click.option(
        "--gate",
        "gate_texts",
        multiple=True,
        help='A pass/fail condition, e.g. "p99(provision) < 2s"; repeatable.',
    ),
    click.option(
        "--junit",
        "junit_path",
        type=DESTINATION,
        help="JUnit XML, a case per gate: a file or s3://BUCKET/KEY.",
    ),
    click.option(
        "--summary-md",
        "summary_path",
        type=DESTINATION,
        help="A markdown summary for a CI job's summary page: a file or s3://BUCKET/KEY.",
    ),
)


def _apply(options: tuple[Callable[[F], F], ...], command: F) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def gate_options(command: F) -> F:
    """--gate, --junit and --summary-md: the gates on a run, or on a merge."""
    return _apply(_GATES, command)


def target_options(command: F) -> F:
    """--endpoint and --workers."""
    return _apply(_TARGET, command)


@dataclass(frozen=True)
class Outputs:
    """Where a run's (or a capacity search's) results go: report files, and
    Prometheus while it goes."""

    report: Destination | None
    html: Destination | None
    metrics_port: int | None
    linger: float
    pushgateway: str | None
    job: str
    shard: ShardName | None
    metrics_host: str = "127.0.0.1"

    @property
    def slice(self) -> Shard | None:
        """The fleet's part this generator runs (``--shard I/N``), if any."""
        return self.shard.slice if self.shard is not None else None

    def label_only(self, command: str) -> None:
        """For a command that runs no fleet slice: ``--shard I/N`` is refused."""
        if self.slice is not None:
            raise UserError(
                f"--shard {self.slice}: {command} does not split a fleet into shards; "
                "give --shard a NAME (a label and a Pushgateway group)"
            )

    def check(
        self, *others: Destination | None, kept: list[tuple[Path, str]] | None = None
    ) -> None:
        """Refuse, before anything runs, files that could not be written (these
        and ``others``, the command's other outputs), and any of them that
        would land on what the command reads or keeps (``kept``)."""
        check_destinations(self.report, self.html, *others)
        check_not_kept([self.report, self.html, *others], kept or [])
        if self.metrics_port is not None:
            check_listen(self.metrics_host, self.metrics_port, "--metrics-port", "--metrics-host")

    def exporter(self, plan: RunPlan) -> prom.Exporter | None:
        if self.metrics_port is None and self.pushgateway is None:
            return None
        label = self.shard.label if self.shard is not None else None
        return prom.Exporter(
            plan,
            self.metrics_port,
            self.pushgateway,
            self.job,
            label,
            self.metrics_host,
            say=lambda line: click.echo(f"loadgen: {line}", err=True),
        )

    def write(self, report: dict[str, Any]) -> None:
        write_outputs(report, self.report, self.html, click.echo)

    def linger_for_last_scrape(self) -> None:
        # The last scrape sees the final values (the embedded emulator's too: it
        # serves until the endpoint's session ends). The results are written by
        # now: a stop signal ends the wait, and the run's exit status stands.
        if self.metrics_port is not None and self.linger > 0:
            with StopSignals() as stop:
                if stop.wait(self.linger) and stop.received is not None:
                    name = signal.Signals(stop.received).name
                    click.echo(f"loadgen: {name}: --linger ended early", err=True)


def output_options(command: Callable[..., Any], *, slices: bool = True) -> Callable[..., Any]:
    """--report, --html, --metrics-port, --metrics-host, --linger, --pushgateway,
    --job and --shard, handed to the command as one ``outputs: Outputs``. Without
    ``slices`` the command runs the whole fleet, and --shard says so."""

    @functools.wraps(command)
    def with_outputs(
        *args: Any,
        report_file: Destination | None,
        html_file: Destination | None,
        metrics_port: int | None,
        metrics_host: str,
        linger: float,
        pushgateway: str | None,
        job: str,
        shard: ShardName | None,
        **kwargs: Any,
    ) -> Any:
        if pushgateway is not None:
            check_pushgateway(pushgateway)
        outputs = Outputs(
            report_file, html_file, metrics_port, linger, pushgateway, job, shard, metrics_host
        )
        return command(*args, outputs=outputs, **kwargs)

    return _apply((*_OUTPUTS, _SHARD_SLICE if slices else _SHARD_NAME), with_outputs)
