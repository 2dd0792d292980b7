"""`loadgen aws`: the AWS account's side of a JITP load test."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from loadgen.aws import status as status_mod
from loadgen.aws.account import Account, endpoint_problem
from loadgen.aws.calls import Api
from loadgen.aws.ratelimit import RateLimits
from loadgen.aws.record import SetupRecord, load_record, record_path
from loadgen.aws.setup import Setup, SetupRequest, prepare
from loadgen.aws.snippet import scenario_text
from loadgen.aws.teardown import Teardown
from loadgen.certs.ca import refuse_ca_file
from loadgen.certs.store import FleetStore
from loadgen.cli.common import PATH, FiniteRange, stderr_console, warn
from loadgen.errors import LoadgenError, UserError
from loadgen.files import check_writable, write_output
from loadgen.transport.tls import trust_problem


@click.group()
def aws() -> None:
    """The AWS account's side: what JITP created for a CA's devices."""


def _endpoint_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An http(s) URL with a host, as botocore takes it; refused in one line here,
    not as botocore's traceback at the first call."""
    if value is not None and (problem := endpoint_problem(value)) is not None:
        raise UserError(f"--endpoint-url {value}: {problem}")
    return value


def _account_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--profile", help="A profile of ~/.aws/config (as the aws CLI)."),
            click.option("--region", help="Default: the profile's or AWS_REGION."),
            click.option(
                "--endpoint-url",
                callback=_endpoint_url,
                help="Another control plane than AWS's: the emulator's (--api-port) or moto's.",
            ),
        )
    ):
        command = option(command)
    return command


def _check_certificate(path: Path, option: str) -> None:
    """A PEM file holding a certificate: the CA the scenario written will trust
    (its ``tls.ca_file``), checked as the run checks that."""
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    if trust_problem(path) is not None:
        raise UserError(f"{option} {path}: not a PEM certificate")


def _config_option(template: Path | None) -> str:
    return "--registration-config" if template is None else "--template"


def _check_not_read(
    scenario: Path, ca_dir: Path, inputs: dict[str, Path | None], fleet: Path | None
) -> None:
    """Refuse a --write-scenario that is a file setup reads or keeps: written
    after the CA is registered, it would replace the CA that teardown needs to
    find it again (or the record of setup), an input of the next setup, or one
    of the fleet's files (its metadata, its manifest, a device's)."""
    refuse_ca_file(scenario, ca_dir, "--write-scenario")
    for option, path in inputs.items():
        if path is not None and scenario.resolve() == path.resolve():
            raise UserError(f"--write-scenario {scenario}: the same file as {option}")
    if fleet is not None and scenario.resolve().is_relative_to(fleet.resolve()):
        raise UserError(
            f"--write-scenario {scenario}: inside the fleet of --fleet {fleet}, whose files "
            "the run reads: give a file outside it"
        )


@aws.command("setup")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option(
    "--registration-config",
    type=PATH,
    help="templateBody + roleArn JSON, as register-ca-certificate takes it.",
)
@click.option(
    "--template",
    type=PATH,
    help="A readable template (.yaml/.json) instead of --registration-config.",
)
@click.option("--role-arn", help="The provisioning role (default: the config's roleArn).")
@click.option(
    "--create-role",
    is_flag=True,
    help="Create the role (named as --role-arn or the config's roleArn, else "
    "loadgen-jitp-CAID) with AWSIoTThingsRegistration.",
)
@click.option(
    "--allow-lint-errors",
    is_flag=True,
    help="Register a template `template check` finds errors in.",
)
@click.option(
    "--fleet",
    type=PATH,
    help="The fleet's folder: the thing groups its devices compute are created too.",
)
@click.option(
    "--server-ca",
    type=PATH,
    help="The scenario trusts this CA file (default: Amazon Root CA 1 from the system store).",
)
@click.option("--write-scenario", type=PATH, help="Write the scenario here.")
@_account_options
def aws_setup(
    ca_dir: Path,
    registration_config: Path | None,
    template: Path | None,
    role_arn: str | None,
    create_role: bool,
    allow_lint_errors: bool,
    fleet: Path | None,
    server_ca: Path | None,
    write_scenario: Path | None,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> None:
    """Register the CA for JITP (or update it), create what its template needs,
    and print a scenario for the account's endpoint."""
    import botocore.exceptions

    if (registration_config is None) == (template is None):
        raise UserError("give one of --registration-config FILE and --template FILE")
    config = registration_config or template
    assert config is not None
    if server_ca is not None:
        _check_certificate(server_ca, "--server-ca")
    request = SetupRequest(
        ca_dir,
        config,
        readable=template is not None,
        role_arn=role_arn,
        create_role=create_role,
        allow_lint_errors=allow_lint_errors,
        fleet=fleet,
    )
    prepared = prepare(request)
    # Before the account changes: what setup did must be recordable, and its
    # scenario writable.
    check_writable(record_path(ca_dir), "--ca")
    if write_scenario is not None:
        check_writable(write_scenario, "--write-scenario")
        _check_not_read(
            write_scenario,
            ca_dir,
            {_config_option(template): config, "--server-ca": server_ca},
            fleet,
        )
    account = Account(profile, region, endpoint_url)
    try:
        result = Setup(account, RateLimits()).run(prepared)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _account_failure(exc, "the account refused setup") from None
    # (After the account's checks: a refusal stays one line.)
    for finding in prepared.findings:
        warn(f"{config}: {finding}")
    for name in result.deprecated:
        warn(
            f"thing type {name} is deprecated: AWS creates no thing of it, so JITP will fail "
            "every device whose thing has it (undo: aws iot deprecate-thing-type "
            f"--thing-type-name {name} --undo-deprecate)"
        )
    for where in prepared.names.unlisted:
        warn(
            f"{config}: {where} is computed per device: give --fleet FLEET_DIR to create "
            "what it names, or create it yourself (RegisterThing needs it to exist)"
        )
    record = result.record
    ca_line = "registered" if result.registered else "was registered: updated"
    click.echo(
        f"CA {record.ca_id[:16]}… {ca_line} (ACTIVE, auto-registration on) in account "
        f"{record.account}, region {record.region}"
    )
    created = record.created
    for kind, names, existing in (
        ("thing type", created.thing_types, result.found.thing_types),
        ("thing group", created.thing_groups, result.found.thing_groups),
    ):
        for name in names:
            # Setup run again finds what it created the first time.
            again = " (an earlier run), still there" if name in existing else ""
            click.echo(f"  {kind} {name}: created by setup{again}")
        for name in existing:
            if name not in names:
                click.echo(f"  {kind} {name}: already there, left as it is")
    role_created = record.role_arn.rsplit("/", 1)[-1] in created.roles
    click.echo(f"  role {record.role_arn}" + (" (created by setup)" if role_created else ""))
    click.echo(f"  endpoint {record.endpoint}")
    click.echo(f"  recorded in {record_path(ca_dir)}")
    count = sum(1 for _ in FleetStore(fleet).devices()) if fleet is not None else None
    text = scenario_text(record, ca_dir, server_ca=server_ca, fleet=fleet, count=count)
    if write_scenario is not None:
        write_output(write_scenario, text.encode())
        click.echo(f"scenario written to {write_scenario}")
    else:
        click.echo("")
        click.echo(text, nl=False)


@aws.command("status")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Certificates looked at for attachments (0: all; two calls each, at 10/s).",
)
@_account_options
def aws_status(
    ca_dir: Path,
    sample: int,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> None:
    """The CA in the account: its status and template, the certificates it signed
    by status, what they are attached to, the quotas that bound a storm."""
    import botocore.exceptions

    record = load_record(ca_dir)
    account = _recorded_account(ca_dir, record, profile, region, endpoint_url)
    try:
        found = status_mod.status(
            Api(account.iot(), RateLimits(), probe=account.client("iot", attempts=3)),
            ca_dir,
            sample=sample,
            # Quotas are worth a look, not a wait on retries where there are none.
            quotas=account.client("service-quotas", attempts=2),
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _account_failure(exc, "the account could not be read") from None
    if record is not None:
        click.echo(f"set up by loadgen in account {record.account}, region {record.region}")
        click.echo(f"  endpoint {record.endpoint}")
        for name in record.created.names():
            click.echo(f"  {name} (created by setup)")
    for line in found.lines():
        click.echo(line)


@aws.command("teardown")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
@click.option("--keep-ca", is_flag=True, help="Leave the CA registered.")
@click.option(
    "--rate",
    type=FiniteRange(min=0.1),  # slower, a teardown of a fleet would take days in silence
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
    and policies), then what `aws setup` created, then the CA; exit 0 only when
    all of it is gone."""
    import botocore.exceptions

    record = load_record(ca_dir)
    account = _recorded_account(ca_dir, record, profile, region, endpoint_url)
    created = record.created if record is not None else None
    teardown = Teardown(
        account.iot(),
        ca_dir,
        RateLimits(rate),
        iam=account.iam(),
        created=created,
        probe=account.client("iot", attempts=3),
    )
    try:
        # Only a dry run lists every certificate's attachments up front (a call
        # per certificate per API); a teardown lists them as it removes each.
        found = teardown.find(attachments=dry_run)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _account_failure(exc, "the account could not be read") from None
    if found.listed:
        click.echo(
            f"CA {found.ca_id[:16]}…: {len(found.certificates)} certificates, "
            f"{len(found.things)} things and {len(found.policies)} policies attached to them"
        )
    else:
        click.echo(
            f"CA {found.ca_id[:16]}…: {len(found.certificates)} certificates (the things "
            "and policies attached to them are listed as each is removed; --dry-run lists them)"
        )
    if found.created.names():
        kept = " (kept with --keep-ca)" if keep_ca else ""
        click.echo(f"created by setup{kept}: {', '.join(found.created.names())}")
    policies = found.template_policies
    if policies.named:
        click.echo(
            "kept, detached only: the policies the CA's template names "
            f"({', '.join(sorted(policies.named))})"
        )
    if policies.known and (policies.computed_names or policies.documents == ()):
        click.echo(
            "kept, detached only: the account's policies the CA's template attaches "
            "(JITP creates only those of its PolicyDocuments)"
        )
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("teardown deletes from the account: confirm with --yes")
        click.confirm("delete them (shared things and policies are kept)?", abort=True)
    console = stderr_console()
    with Progress(
        TextColumn("tearing down"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("teardown", total=found.steps)
        teardown.on_progress = lambda done, total: bar.update(task, completed=done, total=total)
        try:
            summary = teardown.run(found, keep_ca=keep_ca)
        except botocore.exceptions.EndpointConnectionError as exc:
            # (Each step counts its own failure: this is only what none could.)
            raise LoadgenError(f"the account's API could not be reached: {exc}") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise LoadgenError(f"the account refused teardown: {exc}") from None
    for line in summary.lines():
        click.echo(line)
    if summary.interrupted:
        left = len(found.certificates) - summary.certificates.deleted
        left -= summary.certificates.already_gone
        click.echo(
            f"loadgen: interrupted with {left} of {len(found.certificates)} certificates "
            "left; run it again to finish (the CA folder's journal has what they used)",
            err=True,
        )
        sys.exit(130)
    if not summary.complete:
        sys.exit(1)


def _account_failure(exc: Exception, what: str) -> LoadgenError:
    """``what`` the account's answer ``exc`` means; an endpoint that does not
    answer is unreachable, the same line for every command, not an answer."""
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return LoadgenError(f"the account's API could not be reached: {exc}")
    return LoadgenError(f"{what}: {exc}")


def _recorded_account(
    ca_dir: Path,
    record: SetupRecord | None,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> Account:
    """The account as given, else as setup recorded it; refused when it is not the
    one setup changed (what setup created there is not to be looked for here)."""
    if record is None:
        return Account(profile, region, endpoint_url)
    account = Account(
        profile or record.profile, region or record.region, endpoint_url or record.endpoint_url
    )
    if account.region_name != record.region:
        raise UserError(
            f"{record_path(ca_dir)}: the CA was set up in region {record.region}, not "
            f"{account.region_name} (leave out --region)"
        )
    import botocore.exceptions

    try:
        identity = account.sts().get_caller_identity()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _account_failure(exc, "the account could not be read") from None
    if str(identity["Account"]) != record.account:
        raise UserError(
            f"{record_path(ca_dir)}: the CA was set up in account {record.account}; these "
            f"credentials are account {identity['Account']}"
        )
    return account
