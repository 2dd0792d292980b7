"""A run's plan: the scenario resolved into what worker processes need, in plain
picklable records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loadgen.certs.store import Device as FleetDevice
from loadgen.certs.subject import FIELDS
from loadgen.device.lifecycle import DeviceConfig, HoldStep, PublishStep, Step, SubscribeStep
from loadgen.device.retry import RetryPolicy
from loadgen.errors import ConfigError
from loadgen.load.chaos import Chaos
from loadgen.load.schedule import (
    Burst,
    ConstantArrival,
    Executor,
    RampingArrival,
    Stage,
    scaled,
)
from loadgen.load.shard import Shard
from loadgen.scenario.schema import Hold, Publish, Scenario, parse_endpoint, template_text


@dataclass(frozen=True)
class TlsPlan:
    ca_file: Path | None
    server_name: str | None
    alpn: tuple[str, ...] | None
    verify_server: bool


@dataclass(frozen=True)
class RunPlan:
    scenario: str
    host: str
    port: int
    tls: TlsPlan
    version: int
    client_id: str  # template
    fleet: Path
    count: int
    executor: Executor
    max_in_flight: int
    device: DeviceConfig
    steps: tuple[Step, ...]  # templates: topics still hold {placeholders}
    source_addresses: tuple[str, ...] = ()
    workers: int = 1
    driver: str = "native"
    # Fleet devices before this one are left alone (a capacity search gives
    # every step devices that never connected, so each provisions afresh).
    first_device: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    chaos: Chaos | None = None  # faults injected on purpose, by tests
    # This generator's part of a fleet run by several (``--shard I/N``): ``count``,
    # ``executor`` and ``max_in_flight`` are then the shard's, 1/N of the fleet's.
    shard: Shard | None = None

    @property
    def phase(self) -> float:
        return self.shard.phase if self.shard is not None else 0.0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def executor_of(scenario: Scenario, rate: float | None = None) -> Executor:
    load = scenario.load
    if load.executor == "burst":
        return Burst()
    if load.executor == "constant-arrival-rate" or rate is not None:
        chosen = rate if rate is not None else load.rate
        assert chosen is not None
        return ConstantArrival(chosen)
    assert load.stages
    return RampingArrival(
        tuple(Stage(s.rate, s.duration) for s in load.stages), load.start_rate or 0.0
    )


def build_plan(
    scenario: Scenario,
    *,
    endpoint: tuple[str, int],
    count: int | None = None,
    rate: float | None = None,
    workers: int = 1,
    shard: Shard | None = None,
) -> RunPlan:
    """The run of ``count`` devices (default: the fleet's); with ``shard``, that
    shard's part of them, at 1/N of every rate and of max_in_flight."""
    host, port = endpoint
    steps: list[Step] = []
    for item in scenario.after_connect:
        if isinstance(item, Publish):
            p = item.publish
            steps.append(PublishStep(p.topic, p.qos, p.count, p.payload_bytes))
        elif isinstance(item, Hold):
            hold = item.hold
            steps.append(HoldStep(hold.duration or 0.0, hold.keepalive, hold.until))
        else:
            steps.append(SubscribeStep(item.subscribe.topic, item.subscribe.qos))
    retry = scenario.retry
    device = DeviceConfig(
        retry=RetryPolicy(
            retry.initial, retry.max, retry.multiplier, retry.jitter, retry.max_attempts
        ),
        expect_first_connect_rejected=scenario.jitp.expect_first_connect_rejected,
        connect_timeout=scenario.timeouts.connect,
        step_timeout=scenario.timeouts.step,
        keepalive=scenario.mqtt.keepalive,
    )
    tls, load = scenario.tls, scenario.load
    total = count if count is not None else scenario.fleet.count
    executor = executor_of(scenario, rate)
    return RunPlan(
        scenario=scenario.name,
        host=host,
        port=port,
        tls=TlsPlan(
            tls.ca_file,
            tls.server_name if tls.server_name is not None else host,
            tuple(tls.alpn) if tls.alpn else None,
            tls.verify_server,
        ),
        version=scenario.mqtt.protocol_version,
        client_id=scenario.mqtt.client_id,
        fleet=scenario.fleet.store,
        count=shard.size(total) if shard is not None else total,
        executor=executor if shard is None else scaled(executor, 1 / shard.count),
        max_in_flight=load.max_in_flight if shard is None else shard.share(load.max_in_flight),
        device=device,
        steps=tuple(steps),
        source_addresses=tuple(scenario.load.source_addresses or ()),
        workers=workers,
        driver=scenario.mqtt.driver,
        shard=shard,
    )


def endpoint_of(scenario: Scenario, override: str | None) -> tuple[str, int]:
    value = override or scenario.endpoint
    try:
        return parse_endpoint(value)
    except ValueError as exc:
        raise ConfigError(f"{'--endpoint' if override else 'endpoint'}: {exc}") from None


_NO_SUBJECT = {f.name: "" for f in FIELDS}


def check_template(template: str, where: str) -> None:
    """Refuse, before the run, a template naming something no device has (a
    scenario's were checked as it loaded, with their lines; this guards plans
    made from elsewhere)."""
    try:
        template_text(template)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def render(template: str, device: FleetDevice, client_id: str | None = None) -> str:
    """A template over a manifest line: {index}, {client_id}, {certificate_id} and
    the subject fields; a subject field the certificate lacks renders empty."""
    fields: dict[str, object] = {
        **_NO_SUBJECT,
        **device.subject,
        "index": device.index,
        "certificate_id": device.certificate_id,
        "client_id": client_id if client_id is not None else device.client_id,
    }
    # str.format_map, not string.Formatter: the same format, in C (about 15 µs of
    # Python per device, for the client id and each topic, otherwise).
    return template.format_map(fields)


def device_client_id(template: str, device: FleetDevice) -> str:
    """The MQTT client id; the manifest's when the template renders empty (say,
    {common_name} for a device whose certificate lacks one)."""
    return render(template, device) or device.client_id


def device_steps(steps: tuple[Step, ...], device: FleetDevice, client_id: str) -> tuple[Step, ...]:
    out: list[Step] = []
    for step in steps:
        if isinstance(step, PublishStep):
            out.append(
                PublishStep(
                    render(step.topic, device, client_id), step.qos, step.count, step.payload_bytes
                )
            )
        elif isinstance(step, SubscribeStep):
            out.append(SubscribeStep(render(step.topic_filter, device, client_id), step.qos))
        else:
            out.append(step)
    return tuple(out)
