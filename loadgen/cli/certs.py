"""`loadgen certs`: device certificate fleets: mint them, inspect them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from loadgen.certs.inspect import FleetSummary, summarize
from loadgen.certs.mint import InputNames, MintRequest, mint
from loadgen.certs.mint import check as check_mint
from loadgen.certs.profile import read_profile
from loadgen.cli.common import PATH, stderr_console
from loadgen.cli.options import SHARD
from loadgen.cores import cores
from loadgen.errors import UserError
from loadgen.load.shard import ShardName
from loadgen.words import counted


@click.group()
def certs() -> None:
    """Device certificate fleets."""


@certs.command("mint")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option("--count", required=True, type=int, help="Devices the fleet should hold.")
@click.option("--out", "out", required=True, type=PATH, help="Fleet folder.")
@click.option(
    "--profile",
    type=PATH,
    help="Subject profile YAML (default: the fleet's own, or the built-in default).",
)
@click.option("--seed", type=int, help="Subject seed (default: the fleet's own, or 0).")
@click.option("--workers", type=int, default=cores, show_default="cores")
@click.option(
    "--key-pool",
    type=int,
    help="Reuse N keys per key type across devices instead of one key each (RSA speed-up).",
)
@click.option("--init-ca", is_flag=True, help="Create the CA first when it does not exist.")
@click.option(
    "--shard",
    type=SHARD,
    metavar="I/N",
    help="Only shard I of N's devices of the --count (index % N == I, with the ids and "
    "subjects of the whole fleet), as `loadgen run --shard I/N` runs them.",
)
def certs_mint(
    ca_dir: Path,
    count: int,
    out: Path,
    profile: Path | None,
    seed: int | None,
    workers: int,
    key_pool: int | None,
    init_ca: bool,
    shard: ShardName | None,
) -> None:
    """Mint a fleet of device certificates, or grow or complete an existing one."""
    if shard is not None and shard.slice is None:
        raise UserError(f"--shard {shard.label}: certs mint takes I/N (shard I of N), e.g. 0/4")
    if shard is not None and init_ca:
        # Each shard's own CA would be one the endpoint does not know.
        raise UserError(
            "--init-ca with --shard: shards mint with the fleet's one CA; create it once"
        )
    loaded = read_profile(profile) if profile is not None else None
    request = MintRequest(
        fleet=out,
        ca_dir=ca_dir,
        count=count,
        profile=loaded.model if loaded is not None else None,
        seed=seed,
        workers=workers,
        key_pool=key_pool,
        init_ca=init_ca,
        names=InputNames(profile=f"--profile {profile}"),
        shard=shard.slice if shard is not None else None,
        locate=loaded.located if loaded is not None else None,
    )
    check_mint(request)  # before the progress bar: a refusal is one line
    with MintBar(
        stderr_console(),
        TextColumn("minting"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        result = mint(request, bar.update)
    where = f"{out} (shard {shard.slice})" if shard is not None else str(out)
    if result.minted == 0:
        click.echo(f"{where}: already holds {counted(result.total, 'device')}; nothing to mint")
    else:
        rate = f" ({result.minted / bar.elapsed:,.0f} certs/s)" if bar.elapsed > 0 else ""
        kept = f", kept {result.existing}" if result.existing else ""
        total = counted(result.total, "device")
        click.echo(f"{where}: minted {result.minted}{kept}, {total}{rate}")


@certs.command("inspect")
@click.argument("fleet", type=PATH)
@click.option("--verify", is_flag=True, help="Check every certificate file against the manifest.")
def certs_inspect(fleet: Path, verify: bool) -> None:
    """Summarize a fleet: key types, faults, subject variety, validity window."""
    print_summary(summarize(fleet, verify=verify))


class MintBar:
    """A minting progress bar that appears with the first progress, which mint()
    reports only when there is something to mint: no "0/200" bar otherwise."""

    # Without a terminal rich draws nothing: a plain line this often instead.
    PLAIN_EVERY = 5.0

    def __init__(
        self, console: Console, *columns: ProgressColumn, clock: Callable[[], float] | None = None
    ) -> None:
        self.console = console
        self.progress = Progress(*columns, console=console, transient=True, get_time=clock)
        self.task: TaskID | None = None
        self.first = 0
        self.said = 0.0  # elapsed seconds at the last plain line

    def __enter__(self) -> MintBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    @property
    def elapsed(self) -> float:
        return 0.0 if self.task is None else self.progress.tasks[self.task].elapsed or 0.0

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("mint", total=total, rate="")
            self.first = done
        # A rate over less than a second is noise.
        elapsed = self.elapsed
        rate = f"{(done - self.first) / elapsed:,.0f} certs/s" if elapsed >= 1 else ""
        self.progress.update(self.task, completed=done, total=total, rate=rate)
        if not self.console.is_terminal and elapsed >= self.said + self.PLAIN_EVERY:
            self.said = elapsed
            self.console.print(f"{elapsed:.1f} s minting: {done:,}/{total:,} {rate}".rstrip())


def print_summary(summary: FleetSummary) -> None:
    console = Console(highlight=False)
    meta = summary.meta
    console.print(f"[bold]{summary.path}[/]: {counted(summary.devices, 'device')}")
    if meta.shard is not None:
        index, count = meta.shard["index"], meta.shard["count"]
        mine = f"devices {index}, {index + count}, … of a fleet"
        console.print(f"  shard    {index}/{count} ({mine})")
    console.print(f"  CA       {meta.ca_subject} (sha256 {meta.ca_fingerprint[:16]}…)")
    console.print(
        f"  seed     {meta.seed}" + (f", key pool {meta.key_pool}" if meta.key_pool else "")
    )
    console.print(
        f"  validity {summary.not_before_min} … {summary.not_after_max}; "
        f"{summary.valid_now} valid now"
    )
    if summary.verified is not None:
        verified = counted(summary.verified, "certificate file")
        console.print(f"  verified {verified} against the manifest")
    for title, counts in (("key type", summary.key_types), ("fault", summary.faults)):
        table = Table(title=None, box=None, pad_edge=False)
        table.add_column(title)
        table.add_column("devices", justify="right")
        table.add_column("share", justify="right")
        for name, n in counts.items():
            table.add_row(name, str(n), f"{n / max(summary.devices, 1):.2%}")
        console.print(table)
    table = Table(box=None, pad_edge=False)
    for column in ("subject field", "present", "distinct", "examples"):
        table.add_column(column, justify="right" if column in ("present", "distinct") else "left")
    for name, info in summary.subject_fields.items():
        table.add_row(name, str(info.present), str(info.distinct), ", ".join(info.examples))
    console.print(table)
