"""`loadgen aws`: the AWS account's side of a JITP load test."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from loadgen.aws.account import Account
from loadgen.aws.ratelimit import RateLimits
from loadgen.aws.teardown import Teardown
from loadgen.errors import LoadgenError, UserError


@click.group()
def aws() -> None:
    """The AWS account's side: what JITP created for a CA's devices."""


def _account_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--profile", help="A profile of ~/.aws/config (as the aws CLI)."),
            click.option("--region", help="Default: the profile's or AWS_REGION."),
            click.option(
                "--endpoint-url", help="Another endpoint than AWS's (a moto server, say)."
            ),
        )
    ):
        command = option(command)
    return command


@aws.command("teardown")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path), help="CA folder.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
@click.option("--keep-ca", is_flag=True, help="Leave the CA registered.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="At most this many calls per second to each API (default: AWS's quotas).",
)
@_account_options
def aws_teardown(
    ca_dir: Path,
    dry_run: bool,
    yes: bool,
    keep_ca: bool,
    rate: float | None,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> None:
    """Remove what JITP created for the CA's devices (certificates, their things
    and policies), then the CA; exit 0 only when all of it is gone."""
    import botocore.exceptions

    teardown = Teardown(Account(profile, region, endpoint_url).iot(), ca_dir, RateLimits(rate))
    try:
        found = teardown.find()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise LoadgenError(f"the account could not be read: {exc}") from None
    click.echo(
        f"CA {found.ca_id[:16]}…: {len(found.certificates)} certificates, "
        f"{len(found.things)} things and {len(found.policies)} policies attached to them"
    )
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("teardown deletes from the account: confirm with --yes")
        click.confirm("delete them (shared things and policies are kept)?", abort=True)
    summary = teardown.run(found, keep_ca=keep_ca)
    for line in summary.lines():
        click.echo(line)
    if not summary.complete:
        sys.exit(1)
