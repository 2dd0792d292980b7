"""`loadgen run`: scenario in, fleet ready, workers started, report out."""

from __future__ import annotations

import ipaddress
import json
import math
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadgen import fds
from loadgen.certs.mint import InputNames, MintRequest, MintResult, mint
from loadgen.certs.mint import check as check_fleet
from loadgen.certs.profile import (
    MAX_DEVICES,
    MAX_WORKERS,
    SHARED_CLIENT_ID,
    check_count,
    manifest_template_values,
    read_profile,
)
from loadgen.certs.store import FleetStore
from loadgen.cores import cores
from loadgen.device.lifecycle import PublishStep, Step, SubscribeStep
from loadgen.emulator.render import render_registration
from loadgen.emulator.serve import EmbeddedEmulator, load_registration_config, start_embedded
from loadgen.errors import ConfigError, FieldError, UserError, field_name
from loadgen.files import write
from loadgen.listen import check_listen
from loadgen.load.plan import AUTO, RunPlan, Workers
from loadgen.load.runner import resolve
from loadgen.load.schedule import MAX_SPAN, ConstantArrival, peak_rate, too_long
from loadgen.load.shard import Shard
from loadgen.load.start import StartAt
from loadgen.load.workers import RunSignals, RunTiming, run_workers
from loadgen.metrics.stats import RunStats
from loadgen.report.build import build
from loadgen.report.gates import Gate
from loadgen.scenario.planning import build_plan, check_template, endpoint_of
from loadgen.scenario.schema import EMBEDDED, Scenario
from loadgen.scenario.units import parse_rate
from loadgen.transport.client import describe_error, family_of
from loadgen.transport.tls import trust_problem
from loadgen.words import counted


@dataclass(frozen=True)
class RunOptions:
    endpoint: str | None = None
    count: int | None = None
    rate: str | None = None
    workers: Workers = None
    shard: Shard | None = None  # --shard I/N: this generator's part of the fleet
    start: StartAt | None = None  # --start-at: when the schedule starts


# Where a plan for the embedded endpoint is checked before the emulator exists.
_PLACEHOLDER = "127.0.0.1:8883"


def is_embedded(scenario: Scenario, options: RunOptions) -> bool:
    return scenario.endpoint == EMBEDDED and options.endpoint is None


def check_plan(scenario: Scenario, options: RunOptions) -> RunPlan:
    """Everything about the run that can be wrong, checked before minting; a
    field's error names the scenario's file and the field's line."""
    try:
        return _check_plan(scenario, options)
    except FieldError as exc:
        raise scenario.located(exc) from None


def _check_plan(scenario: Scenario, options: RunOptions) -> RunPlan:
    if is_embedded(scenario, options):
        if scenario.emulator.metrics_port is not None:
            check_listen("127.0.0.1", scenario.emulator.metrics_port, "emulator.metrics_port")
        if scenario.emulator.api_port is not None:
            check_listen("127.0.0.1", scenario.emulator.api_port, "emulator.api_port")
        options = replace(options, endpoint=_PLACEHOLDER)
        # The emulator would refuse these at its start, after the fleet is minted.
        spec = scenario.emulator
        if spec.template is not None:
            render_registration(spec.template, spec.role_arn, "emulator.role_arn")
        elif spec.registration_config is not None:
            load_registration_config(spec.registration_config)
    plan = make_plan(scenario, options)
    check_sources(plan)
    count = fleet_count(scenario, options)
    fleet = check_fleet(fleet_request(scenario, count, plan.workers, plan.shard))
    values = manifest_template_values(scenario.mqtt.client_id, fleet.profile)
    if values is not None and values < count:
        raise FieldError(
            ("mqtt", "client_id"),
            f"at most {values:,} distinct client ids from the fleet's profile, fewer than "
            f"the run's {count:,} devices: {SHARED_CLIENT_ID}",
        )
    return plan


def check_gates(scenario: Scenario, plan: RunPlan, gates: list[Gate]) -> None:
    """Refuse a gate on what the plan never measures (a phase no device times,
    a burst's target rate): it could only fail, once the load has run. Named
    where it was written: the scenario's file and line, or its option."""
    never = plan.never_measured()
    for gate in gates:
        if (why := gate.never_measured(never)) is None:
            continue
        if gate.index is not None:
            raise scenario.located(FieldError(("gates", gate.index), f"{gate.text!r}: {why}"))
        raise UserError(f"{gate.where}: {gate.text!r}: {why}")


def check_sources(plan: RunPlan) -> None:
    """Every ``load.source_addresses`` entry is of a family the endpoint has an
    address of (a name resolved as the workers will resolve it; one that does
    not resolve is not judged: each device reports it): else each device given
    it fails to connect."""
    if not plan.source_addresses:
        return
    addresses = resolve(plan.host, plan.port)
    if addresses == [plan.host] and not _is_address(plan.host):
        return
    families = {family_of(address) for address in addresses}
    for i, source in enumerate(plan.source_addresses):
        if family_of(source) not in families:
            raise FieldError(
                ("load", "source_addresses", i),
                f"{source} is an {_FAMILY[family_of(source)]} address, and endpoint "
                f"{plan.host} has {' and '.join(sorted(_FAMILY[f] for f in families))} "
                "addresses only: no connection from it can reach it",
            )


_FAMILY = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_ports(scenario: Scenario, options: RunOptions, metrics_port: int | None) -> None:
    """The ports the run will listen on (its own ``--metrics-port``, and the
    embedded emulator's), each free alone, are not one port twice: else the
    second server fails once the fleet is minted. A clash names both settings,
    with the scenario's file and line."""
    if not is_embedded(scenario, options):
        return
    spec = scenario.emulator
    taken: dict[int, str] = {} if metrics_port is None else {metrics_port: "--metrics-port"}
    fields = (
        (("emulator", "metrics_port"), spec.metrics_port),
        (("emulator", "api_port"), spec.api_port),
    )
    for loc, port in fields:
        if port is None:
            continue
        if port in taken:
            error = FieldError(loc, f"{port}, the same port as {taken[port]}: give another")
            raise scenario.located(error)
        taken[port] = field_name(loc)


def emulator_state(scenario: Scenario) -> Path:
    """The embedded emulator's folder: beside the fleet's store."""
    return scenario.fleet.store.parent / "emulator"


def kept_files(scenario: Scenario, path: Path) -> list[tuple[Path, str]]:
    """What a run of the scenario in ``path`` reads, or keeps for the next one,
    each with what it is: its outputs must not be written over them. A folder
    stands for the files it holds now and those the run writes there."""
    tls = scenario.tls
    emulator = scenario.emulator
    named = [
        (path, "the scenario"),
        (scenario.fleet.profile, "fleet.profile"),
        (tls.ca_file, "tls.ca_file"),
        (emulator.template, "emulator.template"),
        (emulator.registration_config, "emulator.registration_config"),
    ]
    return [
        *((p, what) for p, what in named if p is not None),
        (scenario.fleet.store, "fleet.store"),
        (scenario.fleet.ca, "fleet.ca"),
        (emulator_state(scenario), "the embedded emulator's state"),
    ]


def fleet_count(scenario: Scenario, options: RunOptions) -> int:
    """The whole fleet's devices (a shard runs its part of them)."""
    return options.count if options.count is not None else scenario.fleet.count


@dataclass
class EndpointSession:
    """What the run talks to; for the embedded emulator, its counts once stopped."""

    scenario: Scenario
    options: RunOptions
    emulator: EmbeddedEmulator | None = None
    emulator_stats: dict[str, Any] | None = None

    def final_emulator(self) -> tuple[dict[str, Any] | None, str | None]:
        """The embedded emulator's counts once the devices are done (it keeps
        serving, e.g. its metrics while --linger waits for a last scrape), and
        why it stopped if it stopped or stopped answering (``emulator_stopped``)."""
        if self.emulator is None:
            return self.emulator_stats, None
        stats = self.emulator.stats()
        return stats, self.emulator_stopped(answered=stats is not None)

    def emulator_stopped(self, answered: bool = True) -> str | None:
        """Why the embedded emulator ended before the run stopped it (its
        devices could not connect from then on, and its counts may be short),
        or stopped answering (``answered``: it gave its counts when asked);
        None while it serves, and for any other endpoint."""
        if self.emulator is None:
            return None
        why = self.emulator.stopped_early()
        if why is None and not answered:
            why = "it stopped answering: it gave no counts when asked"
        return why


@contextmanager
def endpoint(scenario: Scenario, options: RunOptions) -> Iterator[EndpointSession]:
    """The scenario and options to run with: for ``endpoint: embedded``, an
    emulator subprocess that trusts the fleet CA, for the length of the run."""
    if not is_embedded(scenario, options):
        yield EndpointSession(scenario, options)
        return
    spec = scenario.emulator
    state = emulator_state(scenario)
    config = spec.registration_config
    if spec.template is not None:
        config = state / "registration-config.json"
        state.mkdir(parents=True, exist_ok=True)
        rendered = render_registration(spec.template, spec.role_arn, "emulator.role_arn")
        write(config, json.dumps(rendered).encode())
    emulator = start_embedded(
        scenario.fleet.ca,
        config,
        state,
        strict=spec.strict_resources,
        quotas={str(k): v for k, v in spec.quotas.items()},
        metrics_port=spec.metrics_port,
        limits=spec.limits.to_limits(),
        api_port=spec.api_port,
        api_rates=spec.api_rates,
        # Unset: the cores, or more, so that each serving process's share of
        # the connections in flight fits its open-files limit (as for workers).
        processes=spec.processes
        if spec.processes is not None
        else planned_workers(scenario.load.max_in_flight),
    )
    tls = scenario.tls.model_copy(
        update={"ca_file": emulator.server_ca, "server_name": "localhost"}
    )
    session = EndpointSession(
        scenario.model_copy(update={"tls": tls}),
        replace(options, endpoint=f"{emulator.host}:{emulator.port}"),
        emulator,
    )
    try:
        yield session
    finally:
        session.emulator_stats = emulator.stop()


@contextmanager
def signalled_endpoint(
    scenario: Scenario, options: RunOptions
) -> Iterator[tuple[RunSignals, EndpointSession]]:
    """The endpoint's session, under the stop signals of a command whose workers
    measure (``RunSignals``): a signal while the endpoint starts stops the
    command at once; once it serves, the workers; and one while the embedded
    emulator stops after the report is noted, not an interruption of a command
    that ended (its exit status stands)."""
    with RunSignals() as signals, ExitStack() as stack:
        with signals.abortable():
            session = stack.enter_context(endpoint(scenario, options))
        yield signals, session


def make_plan(scenario: Scenario, options: RunOptions) -> RunPlan:
    if is_embedded(scenario, options):
        raise ConfigError("endpoint: embedded needs the emulator started (see run.endpoint)")
    if options.count is not None:
        check_count("--count", options.count, MAX_DEVICES)
    if isinstance(options.workers, int):
        check_count("--workers", options.workers, MAX_WORKERS)
    if options.shard is not None:
        options.shard.check_size(fleet_count(scenario, options))
    try:
        rate = parse_rate(options.rate) if options.rate is not None else None
    except ValueError as exc:
        raise UserError(f"--rate: {exc}") from None
    plan = build_plan(
        scenario,
        endpoint=endpoint_of(scenario, options.endpoint),
        count=options.count,
        rate=rate,
        workers=options.workers if isinstance(options.workers, int) else 1,
        shard=options.shard,
    )
    if options.workers == AUTO:
        plan = replace(plan, workers=workers_for(plan))
    elif options.workers is None:
        plan = replace(plan, workers=planned_workers(plan.max_in_flight))
    # Each worker holds one device in flight at least: more workers than
    # max_in_flight would run more devices at a time than the bound allows.
    plan = replace(plan, workers=min(plan.workers, plan.max_in_flight))
    _check_span(plan, options)
    check_template(plan.client_id, "mqtt.client_id")
    for i, step in enumerate(plan.steps):
        if isinstance(step, PublishStep):
            check_template(step.topic, f"after_connect[{i}].publish.topic")
        elif isinstance(step, SubscribeStep):
            check_template(step.topic_filter, f"after_connect[{i}].subscribe.topic")
    if plan.tls.ca_file is not None:
        check_trust(plan.tls.ca_file)
    raise_fd_limit(plan)
    return plan


def _check_span(plan: RunPlan, options: RunOptions) -> None:
    """Refuse a schedule that would take more than ``MAX_SPAN`` to start its
    devices, naming the rate that spreads them."""
    if not too_long(plan.executor, plan.count, plan.phase):
        return
    problem = (
        f"starting {counted(plan.count, 'device')} would take more than "
        f"{MAX_SPAN / 86400:.0f} days, the longest a schedule may span (a rate's unit?)"
    )
    if options.rate is not None:
        raise UserError(f"--rate {options.rate}: {problem}")
    field = "rate" if isinstance(plan.executor, ConstantArrival) else "stages"
    raise FieldError(("load", field), problem)


def check_trust(ca_file: Path) -> None:
    """``tls.ca_file`` holds a certificate to trust: else every worker's context
    fails to load it, after the fleet was minted."""
    if not ca_file.is_file():
        raise FieldError(("tls", "ca_file"), f"{ca_file} not found")
    if (problem := trust_problem(ca_file)) is not None:
        raise FieldError(
            ("tls", "ca_file"),
            f"{ca_file}: no PEM certificate to trust in it ({describe_error(problem)})",
        )


# The scenario fields a fleet is checked against, for its errors.
_FLEET_FIELDS = InputNames(
    fleet="fleet.store", ca="fleet.ca", profile="fleet.profile", seed="fleet.seed"
)


def ensure_fleet(
    scenario: Scenario,
    count: int,
    workers: int | None,
    on_progress: Any = None,
    shard: Shard | None = None,
) -> MintResult | None:
    """Check the scenario's fleet (its CA, and the profile and seed it was minted
    with against the scenario's), then mint it when it is missing or holds fewer
    than ``count`` devices (creating the fleet CA first if needed). With
    ``shard``, only that shard's devices of the ``count``, with the fleet CA
    that must be there already."""
    request = fleet_request(scenario, count, workers, shard)
    check_fleet(request)
    store = FleetStore(scenario.fleet.store)
    if store.exists() and store.recover_locked() >= request.devices:
        return None
    return mint(request, on_progress)


def fleet_request(
    scenario: Scenario, count: int, workers: int | None, shard: Shard | None = None
) -> MintRequest:
    """The mint a scenario's fleet stands for: checked on every run, so that a
    fleet minted from another profile, seed or CA is never run as this one.
    Minting is CPU-bound: without ``workers``, a process per core.

    A shard (``--shard I/N``) mints its own devices into a store of its own, with
    the fleet's CA: never a CA of its own, which the endpoint would not know. A
    whole fleet's store already there (a shared volume) is run as it is."""
    fleet = scenario.fleet
    store = FleetStore(fleet.store)
    if shard is not None and store.exists() and store.read_meta().shard is None:
        shard = None
    loaded = None
    if fleet.profile is not None:
        try:
            loaded = read_profile(fleet.profile)
        except ConfigError as exc:
            raise ConfigError(f"fleet.profile: {exc}") from None
    names = replace(_FLEET_FIELDS, profile=f"fleet.profile {fleet.profile}")
    return MintRequest(
        fleet.store,
        fleet.ca,
        count,
        loaded.model if loaded is not None else None,
        fleet.seed,
        workers if workers is not None else default_workers(),
        init_ca=shard is None,
        names=names,
        shard=shard,
        locate=loaded.located if loaded is not None else None,
    )


def planned_workers(max_in_flight: int) -> int:
    """The machine's cores, or more when one worker's share of ``max_in_flight``
    would not fit in the open files a process may hold (its hard limit): the run
    scales by processes, never by one process's limit."""
    return fds.processes_for(max_in_flight, default_workers())


# Connects a second one worker is planned for: about half of one of this
# machine kind's cores (a device's whole life is 1.4-1.8 ms of CPU), leaving
# room for bursts and retries. One worker can keep 450/s on schedule (lag p99
# 4.5 ms), and the fewer devices share each wake-up of a worker's event loop,
# the more CPU each costs: two workers at 250/s cost 1.15x one (docs/benchmarks.md).
CONNECTS_PER_WORKER = 300.0
# A PUBLISH, SUBSCRIBE or a held device's PINGREQ with its answer costs about a
# tenth of a connect, or less.
_MESSAGES_PER_CONNECT = 10.0


def workers_for(plan: RunPlan) -> int:
    """Workers for ``--workers auto``: as many as the plan's rate needs
    (``workers_by_rate``), and more when a worker's share of ``max_in_flight``
    would not fit in the open files a process may hold."""
    return min(plan.max_in_flight, fds.processes_for(plan.max_in_flight, workers_by_rate(plan)))


def workers_by_rate(plan: RunPlan) -> int:
    """One worker per ``CONNECTS_PER_WORKER`` of the plan's peak arrival rate,
    counting the work of each device (two connects with JITP, its messages and
    a hold's PINGREQs), at most the cores (all of them for a burst, and for
    the aiomqtt driver, whose CPU per device was not measured against it)."""
    rate = peak_rate(plan.executor)
    if rate is None or plan.driver != "native":
        return default_workers()
    connects = 2.0 if plan.device.expect_first_connect_rejected else 1.0
    messages = sum(_messages(step) for step in plan.steps)
    work = rate * (connects + messages / _MESSAGES_PER_CONNECT)
    return min(default_workers(), max(1, math.ceil(work / CONNECTS_PER_WORKER)))


def _messages(step: Step) -> float:
    """The MQTT exchanges a step costs a device, a hold's PINGREQs included (one
    held ``until`` a time counted as if it held that long)."""
    if isinstance(step, PublishStep):
        return step.count
    if isinstance(step, SubscribeStep):
        return 1
    held = step.until if step.until is not None else step.seconds
    return held / step.keepalive if step.keepalive > 0 else 0.0


def raise_fd_limit(plan: RunPlan) -> None:
    """Each device in flight holds a socket: raise the soft limit as far as the
    hard one allows, and refuse a run that cannot fit."""
    needed = fds.needed(plan.max_in_flight, plan.workers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    too_many = FieldError(
        ("load", "max_in_flight"),
        f"{plan.max_in_flight} needs {needed} open files per worker, "
        f"but the limit is {soft} and cannot be raised that far (hard limit {hard}): "
        "raise it (ulimit -Hn), give more --workers (without --workers the run plans "
        "enough), or lower max_in_flight",
    )
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise too_many
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError):
        raise too_many from None


def execute(
    plan: RunPlan,
    on_progress: Any = None,
    start: StartAt | None = None,
    signals: RunSignals | None = None,
) -> tuple[RunStats, RunTiming, dict[str, Any]]:
    stats, timing = run_workers(plan, on_progress, start=start, signals=signals)
    return stats, timing, run_report(plan, stats, timing, start)


def run_report(
    plan: RunPlan, stats: RunStats, timing: RunTiming, start: StartAt | None
) -> dict[str, Any]:
    """The report of ``plan``'s run, with the shard it ran and its agreed start."""
    report = build(plan, stats, timing)
    report["shard"] = None
    if plan.shard is not None:
        report["shard"] = plan.shard.to_json()
        if plan.whole is not None:
            report["shard"]["of"] = plan.whole.to_json()
    if start is not None:
        report["start"] = {"at": start.at, "late_s": round(timing.late_s, 3)}
    return report


def unstarted_report(
    plan: RunPlan, scenario: Scenario, options: RunOptions, start: StartAt | None
) -> dict[str, Any]:
    """The report of a run stopped before its workers started (while its fleet
    was minted, its emulator started): it lasted nothing, and every device it
    planned did not start, as in a run stopped before its --start-at."""
    now = time.time()
    report = run_report(plan, RunStats(), RunTiming(now, now, partial=True), start)
    if is_embedded(scenario, options):
        report["endpoint"] = EMBEDDED  # the emulator's address was never known
    return report


def default_workers() -> int:
    return cores()


def mint_workers(workers: Workers) -> int | None:
    """The minting processes ``--workers`` asks for (None: a process per core)."""
    return workers if isinstance(workers, int) else None
