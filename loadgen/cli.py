"""The ``loadgen`` command."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import uvloop
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

from loadgen import __version__
from loadgen import lifeline as lifeline_mod
from loadgen.capacity.command import capacity_command
from loadgen.certs import ca as ca_mod
from loadgen.certs.inspect import FleetSummary, summarize
from loadgen.certs.keys import KeyType
from loadgen.certs.mint import InputNames, MintRequest, MintResult, mint
from loadgen.certs.mint import check as check_mint
from loadgen.certs.profile import load_profile
from loadgen.cli_options import Outputs, output_options, target_options
from loadgen.emulator import check as emu_check
from loadgen.emulator import limits as emu_limits
from loadgen.emulator import metrics as emu_metrics
from loadgen.emulator import render as emu_render
from loadgen.emulator import serve as emu_serve
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.quota import Quotas
from loadgen.emulator.server import Emulator
from loadgen.errors import LoadgenError, UserError
from loadgen.files import write
from loadgen.listen import PORT, PORT_OR_ANY, check_listen, check_server_identity
from loadgen.load.runner import merge_progress
from loadgen.report import ci as ci_files
from loadgen.report import compare as report_compare_mod
from loadgen.report import fields as report_fields
from loadgen.report import gates as gates_mod
from loadgen.report import merge as report_merge
from loadgen.report.build import write_outputs, write_report
from loadgen.report.show import LiveRun, print_report
from loadgen.run import (
    RunOptions,
    check_plan,
    ensure_fleet,
    execute,
    jitp_section,
    make_plan,
    report_path,
)
from loadgen.run import endpoint as run_endpoint
from loadgen.scenario.schema import Scenario, load_scenario
from loadgen.words import counted

_KEY_TYPES = click.Choice([k.value for k in KeyType])


def _console() -> Console:
    return Console(stderr=True, highlight=False)


def _warn(message: str) -> None:
    click.echo(f"loadgen: warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadgen")
def cli() -> None:
    """Load tester for AWS IoT Just-in-Time Provisioning and any MQTT endpoint that
    authenticates devices by X.509 client certificates."""


@cli.group()
def ca() -> None:
    """Certificate authorities for device fleets."""


@ca.command("init")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CA folder.")
@click.option("--key-type", type=_KEY_TYPES, default=KeyType.EC_P256.value, show_default=True)
@click.option("--subject", default=ca_mod.DEFAULT_SUBJECT, show_default=True, help="RFC 4514.")
@click.option("--days", type=int, default=3650, show_default=True, help="Validity in days.")
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def ca_init(out: Path, key_type: str, subject: str, days: int, force: bool) -> None:
    """Create a CA: OUT/ca.pem and OUT/ca.key (0600)."""
    created = ca_mod.init_ca(
        out, key_type=KeyType(key_type), subject=subject, days=days, force=force
    )
    click.echo(f"CA {created.cert.subject.rfc4514_string()} written to {out}")
    click.echo(f"  certificate  {out / ca_mod.CERT_FILE}")
    click.echo(f"  key (0600)   {out / ca_mod.KEY_FILE}")
    click.echo(f"  sha256       {created.fingerprint}")


@ca.command("verification-cert")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path), help="CA folder.")
@click.option("--registration-code", required=True, help="From `aws iot get-registration-code`.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path))
def ca_verification_cert(ca_dir: Path, registration_code: str, out: Path) -> None:
    """The verification certificate `aws iot register-ca-certificate` asks for."""
    authority = ca_mod.load_ca(ca_dir)
    ca_mod.verification_cert(authority, registration_code, out)
    click.echo(f"verification certificate written to {out}")
    click.echo(
        "  aws iot register-ca-certificate "
        f"--ca-certificate file://{ca_dir / ca_mod.CERT_FILE} --verification-cert file://{out} "
        "--set-as-active --allow-auto-registration "
        "--registration-config file://registration-config.json"
    )


@ca.command("server-cert")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path), help="CA folder.")
@click.option("--name", "names", required=True, multiple=True, help="DNS name or IP; repeatable.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="OUT.pem/.key")
def ca_server_cert(ca_dir: Path, names: tuple[str, ...], out: Path) -> None:
    """A TLS server certificate signed by the CA (for a broker or the emulator)."""
    authority = ca_mod.load_ca(ca_dir)
    cert, key = ca_mod.server_cert(authority, list(names))
    cert_path, key_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".key")
    try:
        write(cert_path, cert)
        write(key_path, key, private=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror}") from None
    click.echo(f"server certificate for {', '.join(names)}: {cert_path}, key (0600) {key_path}")


@cli.group()
def certs() -> None:
    """Device certificate fleets."""


@certs.command("mint")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path), help="CA folder.")
@click.option("--count", required=True, type=int, help="Devices the fleet should hold.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Fleet folder.")
@click.option(
    "--profile",
    type=click.Path(path_type=Path),
    help="Subject profile YAML (default: the fleet's own, or the built-in default).",
)
@click.option("--seed", type=int, help="Subject seed (default: the fleet's own, or 0).")
@click.option("--workers", type=int, default=os.cpu_count() or 1, show_default="cores")
@click.option(
    "--key-pool",
    type=int,
    help="Reuse N keys per key type across devices instead of one key each (RSA speed-up).",
)
@click.option("--init-ca", is_flag=True, help="Create the CA first when it does not exist.")
def certs_mint(
    ca_dir: Path,
    count: int,
    out: Path,
    profile: Path | None,
    seed: int | None,
    workers: int,
    key_pool: int | None,
    init_ca: bool,
) -> None:
    """Mint a fleet of device certificates, or grow or complete an existing one."""
    loaded = load_profile(profile) if profile is not None else None
    request = MintRequest(
        fleet=out,
        ca_dir=ca_dir,
        count=count,
        profile=loaded,
        seed=seed,
        workers=workers,
        key_pool=key_pool,
        init_ca=init_ca,
        names=InputNames(profile=f"--profile {profile}"),
    )
    check_mint(request)  # before the progress bar: a refusal is one line
    with _MintBar(
        _console(),
        TextColumn("minting"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        result = mint(request, bar.update)
    if result.minted == 0:
        click.echo(f"{out}: already holds {counted(result.total, 'device')}; nothing to mint")
    else:
        rate = f" ({result.minted / bar.elapsed:,.0f} certs/s)" if bar.elapsed > 0 else ""
        kept = f", kept {result.existing}" if result.existing else ""
        click.echo(f"{out}: minted {result.minted}{kept}, {counted(result.total, 'device')}{rate}")


@certs.command("inspect")
@click.argument("fleet", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Check every certificate file against the manifest.")
def certs_inspect(fleet: Path, verify: bool) -> None:
    """Summarize a fleet: key types, faults, subject variety, validity window."""
    _print_summary(summarize(fleet, verify=verify))


@cli.command("run")
@click.argument("scenario_path", metavar="SCENARIO", type=click.Path(path_type=Path))
@click.option("--count", type=int, help="Devices to run (default: the scenario's fleet.count).")
@click.option("--rate", help="A constant arrival rate instead of the scenario's, e.g. 200/s.")
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path),
    help="JUnit XML, one test case per gate.",
)
@click.option(
    "--summary-md",
    "summary_path",
    type=click.Path(path_type=Path),
    help="A markdown summary for a CI job's summary page.",
)
@click.option(
    "--gate",
    "gate_texts",
    multiple=True,
    help='A pass/fail condition, e.g. "p99(provision) < 2s"; repeatable.',
)
@target_options
@output_options
def run_command(
    scenario_path: Path,
    endpoint: str | None,
    count: int | None,
    rate: str | None,
    workers: int,
    outputs: Outputs,
    junit_path: Path | None,
    summary_path: Path | None,
    gate_texts: tuple[str, ...],
) -> None:
    """Run a scenario: mint its fleet if needed, then connect every device.
    Exit 1 when a gate fails."""
    scenario = load_scenario(scenario_path, warn=_warn)
    gates = [
        *(gates_mod.parse(t, f"{scenario_path}: gates[{i}]") for i, t in enumerate(scenario.gates)),
        *(gates_mod.parse(t, "--gate") for t in gate_texts),
    ]
    options = RunOptions(endpoint, count, rate, workers)
    checked = check_plan(scenario, options)
    outputs.check()
    report_path(junit_path, "--junit")
    report_path(summary_path, "--summary-md")
    console = _console()
    minted = _mint_with_progress(console, scenario, checked.count, workers)
    if minted is not None:
        click.echo(
            f"fleet {checked.fleet}: minted {minted.minted}, {counted(minted.total, 'device')}",
            err=True,
        )
    with run_endpoint(scenario, options) as session:
        plan = make_plan(session.scenario, session.options)
        exporter = outputs.exporter(plan)
        with LiveRun(console, plan) as live:

            def on_progress(parts: list[Any], elapsed: float) -> None:
                live.update(parts, elapsed)
                if exporter is not None:
                    exporter.progress(merge_progress(parts), elapsed)

            stats, timing, report = execute(plan, on_progress)
        if exporter is not None and (error := exporter.finish(stats)):
            click.echo(f"loadgen: {error}", err=True)
        report["jitp"] = jitp_section(report, session.final_emulator_stats())
        results = gates_mod.evaluate(gates, report)
        report["gates"] = [
            {
                "gate": r.gate,
                "passed": r.passed,
                "measured": r.measured,
                "threshold": r.threshold,
                "note": r.note,
            }
            for r in results
        ]
        print_report(Console(highlight=False), report)
        for result in results:
            click.echo(result.describe())
        outputs.write(report)
        ci_files.write_ci_files(report, results, junit_path, summary_path)
        outputs.linger_for_last_scrape()
    if timing.partial:
        click.echo("loadgen: interrupted; the report holds what ran (partial)", err=True)
        sys.exit(130)
    for worker, why in sorted(timing.lost.items()):
        click.echo(f"loadgen: worker {worker} {why}; its unfinished devices are errors", err=True)
    if timing.lost:
        sys.exit(1)
    if any(not r.passed for r in results):
        sys.exit(1)


def _mint_with_progress(
    console: Console, scenario: Scenario, count: int, workers: int
) -> MintResult | None:
    with _MintBar(console, TextColumn("minting fleet"), BarColumn(), MofNCompleteColumn()) as bar:
        return ensure_fleet(scenario, count, workers, bar.update)


class _MintBar:
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

    def __enter__(self) -> _MintBar:
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


@cli.group()
def report() -> None:
    """Run reports."""


@report.command("show")
@click.argument("path", metavar="REPORT", type=click.Path(path_type=Path))
def report_show(path: Path) -> None:
    """Print a report as tables."""
    print_report(Console(highlight=False), report_merge.load_report(path, report_fields.SHOW))


@report.command("html")
@click.argument("path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path))
def report_html(path: Path, out: Path) -> None:
    """Write a report (of a run, a merge or a capacity search) as HTML."""
    loaded = report_merge.load_report(path, report_fields.HTML)
    for line in write_outputs(loaded, None, report_path(out, "--out")):
        click.echo(line)


@report.command("merge")
@click.argument(
    "paths", metavar="REPORT...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path))
def report_merge_command(paths: tuple[Path, ...], out: Path) -> None:
    """Merge reports of shards that ran side by side (exact percentiles)."""
    report_path(out, "--out")  # its folder exists, before any work
    merged = report_merge.merge_files(list(paths))
    write_report(out, merged)
    devices = counted(merged["devices"], "device")
    click.echo(f"{counted(len(paths), 'report')} merged into {out}: {devices}")


@report.command("compare")
@click.argument("baseline_path", metavar="BASELINE", type=click.Path(path_type=Path))
@click.argument("current_path", metavar="CURRENT", type=click.Path(path_type=Path))
@click.option(
    "--max-regression",
    default="10%",
    show_default=True,
    help="How much slower a percentile may get: a percentage, e.g. 10%.",
)
def report_compare(baseline_path: Path, current_path: Path, max_regression: str) -> None:
    """Fail (exit 1) when a phase percentile regressed beyond --max-regression, or
    when the current run measured nothing."""
    limit = report_compare_mod.parse_limit(max_regression)
    baseline = report_merge.load_report(baseline_path, report_fields.COMPARE)
    current = report_merge.load_report(current_path, report_fields.COMPARE)
    report_compare_mod.check_baseline(baseline, str(baseline_path))
    rows = report_compare_mod.compare(baseline, current, limit)
    if (why := gates_mod.nothing_measured(current)) is not None:
        click.echo(f"FAIL: {current_path} measured nothing: {why}")
    for row in rows:
        verdict = "FAIL" if row.regressed else "pass"
        after = "nothing measured" if row.current is None else f"{row.current:,.1f} ms"
        change = "" if row.change is None else f"{row.change:+.1%}, "
        click.echo(
            f"{verdict}: {row.percentile}({row.phase}) {row.baseline:,.1f} ms -> "
            f"{after} ({change}limit +{limit * 100:g}%)"
        )
    if why is not None or any(row.regressed for row in rows):
        sys.exit(1)


@cli.group()
def scenario() -> None:
    """Scenario files."""


@scenario.command("schema")
def scenario_schema() -> None:
    """Print the scenario JSON Schema (for editors)."""
    click.echo(json.dumps(Scenario.model_json_schema(), indent=2))


@cli.group()
def emulator() -> None:
    """The local AWS IoT JITP endpoint."""


@emulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT_OR_ANY, default=8883, show_default=True, help="0: any free port.")
@click.option(
    "--server-cert", type=click.Path(path_type=Path), help="Default: made under --state-dir."
)
@click.option("--server-key", type=click.Path(path_type=Path))
@click.option(
    "--ca",
    "cas",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A CA certificate to register (with auto-registration); repeatable.",
)
@click.option(
    "--registration-config",
    "configs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="templateBody and roleArn JSON for the --ca at the same position "
    "(default: a built-in template).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path(".loadgen/emulator"),
    show_default=True,
    help="Where the emulator's own server CA and certificate live.",
)
@click.option(
    "--strict-resources",
    is_flag=True,
    help="A thing type or group the template names must exist already.",
)
@click.option(
    "--quota",
    "quotas",
    multiple=True,
    metavar="NAME=RATE",
    help="connect (500/s), connect-per-client (1/s), provision (20/s): a rate like 100/s, "
    "or off. Repeatable.",
)
@click.option("--metrics-port", type=PORT, help="Serve Prometheus metrics on this port.")
@click.option(
    "--ca-inactive",
    "inactive_cas",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A CA registered INACTIVE: its devices fail the TLS handshake.",
)
@click.option(
    "--ca-no-auto-registration",
    "manual_cas",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A CA registered ACTIVE without auto-registration: unknown devices are closed.",
)
@click.option(
    "--state",
    "state_db",
    type=click.Path(path_type=Path),
    help="Keep the registry in this SQLite file: a restart keeps what was provisioned.",
)
@click.option(
    "--max-packet-size",
    type=click.IntRange(min=64),
    default=emu_limits.MAX_PACKET_SIZE,
    show_default=True,
    help="Bytes; a larger packet closes its connection (MQTT 5: DISCONNECT 0x95).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=emu_limits.CONNECT_TIMEOUT,
    show_default=True,
    help="Seconds from the TLS handshake to a whole CONNECT.",
)
@click.option(
    "--write-buffer",
    type=click.IntRange(min=1024),
    default=emu_limits.WRITE_BUFFER,
    show_default=True,
    help="Bytes queued to a client; above it its QoS 0 messages are dropped.",
)
@click.option(
    "--slow-consumer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=emu_limits.SLOW_CONSUMER_TIMEOUT,
    show_default=True,
    help="Seconds a client may stay above --write-buffer before it is disconnected.",
)
@click.option(
    "--min-keepalive",
    type=click.IntRange(min=0, max=65535),
    default=emu_limits.MIN_KEEPALIVE,
    show_default=True,
    help="Seconds; a shorter keepalive is raised to it (as AWS IoT does). A client "
    "silent for 1.5 keepalives is closed.",
)
@click.option(
    "--lifeline",
    type=int,
    hidden=True,
    help="For the process that starts it (pid): stop when that process ends or stdin closes.",
)
def emulator_serve(
    host: str,
    port: int,
    server_cert: Path | None,
    server_key: Path | None,
    cas: tuple[Path, ...],
    configs: tuple[Path, ...],
    state_dir: Path,
    strict_resources: bool,
    quotas: tuple[str, ...],
    metrics_port: int | None,
    inactive_cas: tuple[Path, ...],
    manual_cas: tuple[Path, ...],
    state_db: Path | None,
    max_packet_size: int,
    connect_timeout: float,
    write_buffer: int,
    slow_consumer_timeout: float,
    min_keepalive: int,
    lifeline: int | None,
) -> None:
    """Serve mutual-TLS MQTT with AWS IoT's JITP flow; prints one line when ready."""
    if lifeline is not None:
        # SIGTERM: the emulator stops the way its parent would have stopped it.
        lifeline_mod.die_with_parent(lifeline, signal.SIGTERM)
    limits = Quotas.parse(quotas)
    if not (cas or inactive_cas or manual_cas):
        raise UserError("register at least one CA (--ca CA_PEM)")
    if len(configs) > len(cas):
        raise UserError("more --registration-config than --ca")
    if (server_cert is None) != (server_key is None):
        raise UserError("--server-cert and --server-key go together")
    if server_cert is not None and server_key is not None:
        check_server_identity(server_cert, server_key)
    if metrics_port is not None and metrics_port == port:
        raise UserError(f"--metrics-port {metrics_port}: the same port as --port")
    check_listen(host, port, "--port")
    if metrics_port is not None:
        check_listen(host, metrics_port, "--metrics-port")
    registrations = [
        emu_serve.CaRegistration(
            ca,
            emu_serve.load_registration_config(configs[i])
            if i < len(configs)
            else REGISTRATION_CONFIG,
        )
        for i, ca in enumerate(cas)
    ]
    registrations += [emu_serve.CaRegistration(ca, None, active=False) for ca in inactive_cas]
    registrations += [
        emu_serve.CaRegistration(ca, None, auto_registration=False) for ca in manual_cas
    ]
    registry = emu_serve.build_registry(
        registrations, strict_resources=strict_resources, state=state_db
    )
    if server_cert is None or server_key is None:
        server_cert, server_key, server_ca = emu_serve.server_identity(state_dir)
    else:
        server_ca = server_cert
    bounds = emu_limits.Limits(
        max_packet_size, connect_timeout, write_buffer, slow_consumer_timeout, min_keepalive
    )
    emulator_ = Emulator(registry, str(server_cert), str(server_key), limits, bounds)
    if metrics_port is not None:
        emu_metrics.serve(emulator_, host, metrics_port)
    uvloop.run(
        emu_serve.serve_forever(
            emulator_, host, port, server_ca, stdin_lifeline=lifeline is not None
        )
    )


@cli.group()
def template() -> None:
    """Provisioning templates for JITP."""


@template.command("render")
@click.argument("path", metavar="TEMPLATE", type=click.Path(path_type=Path))
@click.option("--role-arn", required=True, help="A role with AWSIoTThingsRegistration.")
def template_render(path: Path, role_arn: str) -> None:
    """A readable template (.yaml or .json) in, the --registration-config JSON out."""
    config = emu_render.render_registration(path, role_arn, "--role-arn")
    click.echo(json.dumps(config, indent=2))


@template.command("check")
@click.argument("path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(path_type=Path),
    help="Check against this scenario's fleet profile, client ids and topics.",
)
def template_check(path: Path, scenario_path: Path | None) -> None:
    """Lint a registration config (or readable template); exit 1 on errors."""
    loaded = emu_check.load_config(path)
    scenario_ = load_scenario(scenario_path) if scenario_path is not None else None
    findings = emu_check.check(loaded, scenario_)
    for finding in findings:
        click.echo(str(finding))
    errors = sum(f.error for f in findings)
    click.echo(f"{path}: {counted(errors, 'error')}, {counted(len(findings) - errors, 'warning')}")
    if errors:
        sys.exit(1)


def _print_summary(summary: FleetSummary) -> None:
    console = Console(highlight=False)
    meta = summary.meta
    console.print(f"[bold]{summary.path}[/]: {counted(summary.devices, 'device')}")
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


cli.add_command(capacity_command)


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
