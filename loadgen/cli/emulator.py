"""`loadgen emulator`: the local AWS IoT JITP endpoint."""

from __future__ import annotations

import signal
from pathlib import Path

import click
import uvloop

from loadgen import lifeline as lifeline_mod
from loadgen.cli.common import PATH, POSITIVE
from loadgen.emulator import limits as emu_limits
from loadgen.emulator import serve as emu_serve
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.processes import default_processes
from loadgen.emulator.quota import Quotas
from loadgen.emulator.server import Emulator
from loadgen.errors import UserError
from loadgen.fds import raise_to_hard_limit
from loadgen.listen import PORT, PORT_OR_ANY, check_listen, check_server_identity


def emu_api_rates(items: tuple[str, ...]) -> dict[str, float | None]:
    # Here: botocore's models load only for a served API.
    from loadgen.emulator.api.app import operation_names
    from loadgen.emulator.api.throttle import parse_api_rates

    return parse_api_rates(items, operation_names())


@click.group()
def emulator() -> None:
    """The local AWS IoT JITP endpoint."""


@emulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT_OR_ANY, default=8883, show_default=True, help="0: any free port.")
@click.option("--server-cert", type=PATH, help="Default: made under --state-dir.")
@click.option("--server-key", type=PATH)
@click.option(
    "--ca",
    "cas",
    multiple=True,
    type=PATH,
    help="A CA certificate to register (with auto-registration); repeatable.",
)
@click.option(
    "--registration-config",
    "configs",
    multiple=True,
    type=PATH,
    help="templateBody and roleArn JSON for the --ca at the same position "
    "(default: a built-in template).",
)
@click.option(
    "--state-dir",
    type=PATH,
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
    "--api-port",
    type=PORT_OR_ANY,
    help="Serve the AWS IoT control-plane API (and a little IAM and STS) on this port, "
    "HTTP on --host: boto3 and the aws CLI with --endpoint-url. 0: any free port.",
)
@click.option(
    "--api-rate",
    "api_rates",
    multiple=True,
    metavar="NAME=RATE",
    help="The control plane's throttling of one operation (e.g. DeleteCertificate=10/s), "
    "or of all, or off (all=off); AWS's default rates otherwise. Repeatable.",
)
@click.option(
    "--ca-inactive",
    "inactive_cas",
    multiple=True,
    type=PATH,
    help="A CA registered INACTIVE: its devices fail the TLS handshake.",
)
@click.option(
    "--ca-no-auto-registration",
    "manual_cas",
    multiple=True,
    type=PATH,
    help="A CA registered ACTIVE without auto-registration: unknown devices are closed.",
)
@click.option(
    "--state",
    "state_db",
    type=PATH,
    help="Keep the registry in this SQLite file: a restart keeps what was provisioned.",
)
@click.option(
    "--max-packet-size",
    type=click.IntRange(min=64, max=emu_limits.LARGEST_PACKET_SIZE),
    default=emu_limits.MAX_PACKET_SIZE,
    show_default=True,
    help="Bytes; a larger packet closes its connection (MQTT 5: DISCONNECT 0x95).",
)
@click.option(
    "--connect-timeout",
    type=POSITIVE,
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
    type=POSITIVE,
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
    "--heartbeat-timeout",
    type=POSITIVE,
    default=emu_limits.HEARTBEAT_TIMEOUT,
    show_default=True,
    help="With --processes: seconds a serving process may leave the account's "
    "heartbeat unanswered; then it is killed and the emulator stops, as for a dead one.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=256),
    default=None,
    help="Serving processes sharing --port (SO_REUSEPORT), one account for all "
    "(registry, quotas, control plane, metrics). Default: the machine's cores.",
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
    api_port: int | None,
    api_rates: tuple[str, ...],
    inactive_cas: tuple[Path, ...],
    manual_cas: tuple[Path, ...],
    state_db: Path | None,
    max_packet_size: int,
    connect_timeout: float,
    write_buffer: int,
    slow_consumer_timeout: float,
    min_keepalive: int,
    heartbeat_timeout: float,
    processes: int | None,
    lifeline: int | None,
) -> None:
    """Serve mutual-TLS MQTT with AWS IoT's JITP flow; prints one line when ready."""
    # SIGUSR1 asks for the counts once the emulator serves. Its default action
    # ends a process: ignored until then, and for good in the serving processes,
    # which inherit the disposition (`kill -USR1 %1` signals the whole group).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if lifeline is not None:
        # A stop signal to every process of a run (a service manager's stop)
        # is the run's to act on: it stops this emulator once its devices'
        # grace is over and its counts are in, through stdin. A dead parent
        # closes stdin; the kernel's signal is for a parent that dies early.
        lifeline_mod.ignore_stop_signals()
        lifeline_mod.die_with_parent(lifeline, signal.SIGKILL)
    limits = Quotas.parse(quotas)
    if not (cas or inactive_cas or manual_cas or api_port is not None):
        # With the API, a CA can be registered through it.
        raise UserError("register at least one CA (--ca CA_PEM), or serve the API (--api-port)")
    if api_rates and api_port is None:
        raise UserError("--api-rate throttles the API: give --api-port too")
    if len(configs) > len(cas):
        raise UserError("more --registration-config than --ca")
    if (server_cert is None) != (server_key is None):
        raise UserError("--server-cert and --server-key go together")
    if server_cert is not None and server_key is not None:
        check_server_identity(server_cert, server_key)
    if metrics_port is not None and metrics_port == port:
        raise UserError(f"--metrics-port {metrics_port}: the same port as --port")
    if api_port is not None and api_port != 0 and api_port in (port, metrics_port):
        same = "--port" if api_port == port else "--metrics-port"
        raise UserError(f"--api-port {api_port}: the same port as {same}")
    rates = emu_api_rates(api_rates) if api_port is not None else {}
    check_listen(host, port, "--port")
    if metrics_port is not None:
        check_listen(host, metrics_port, "--metrics-port")
    if api_port is not None:
        check_listen(host, api_port, "--api-port")
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
        max_packet_size,
        connect_timeout,
        write_buffer,
        slow_consumer_timeout,
        min_keepalive,
        heartbeat_timeout=heartbeat_timeout,
    )
    emulator_ = Emulator(registry, str(server_cert), str(server_key), limits, bounds)
    raise_to_hard_limit()
    try:
        uvloop.run(
            emu_serve.serve_forever(
                emulator_,
                host,
                port,
                server_ca,
                stdin_lifeline=lifeline is not None,
                api=None if api_port is None else emu_serve.ApiSetup(api_port, rates),
                processes=processes or default_processes(),
                metrics_port=metrics_port,
            )
        )
    finally:
        registry.close()
