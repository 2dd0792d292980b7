"""A scenario turned into a run's plan (``loadgen.load.plan.RunPlan``): what the
worker processes receive, with every template and endpoint checked first."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from loadgen.device.lifecycle import DeviceConfig, HoldStep, PublishStep, Step, SubscribeStep
from loadgen.device.retry import RetryPolicy
from loadgen.errors import ConfigError
from loadgen.load.plan import RunPlan, TlsPlan
from loadgen.load.schedule import (
    Burst,
    ConstantArrival,
    Executor,
    RampingArrival,
    Stage,
    scaled,
)
from loadgen.load.shard import Shard, WholeRun
from loadgen.scenario.schema import Hold, Publish, Scenario, parse_endpoint, template_text


def executor_of(scenario: Scenario, rate: float | None = None) -> Executor:
    """The scenario's arrivals; with ``rate`` (``--rate``), a constant rate
    instead, whatever the scenario's executor: a burst's too."""
    load = scenario.load
    if rate is not None:
        return ConstantArrival(rate)
    if load.executor == "burst":
        return Burst()
    if load.executor == "constant-arrival-rate":
        assert load.rate is not None
        return ConstantArrival(load.rate)
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
            pings = (
                hold.keepalive if hold.keepalive is not None else _pings(scenario.mqtt.keepalive)
            )
            steps.append(HoldStep(hold.duration or 0.0, float(pings), hold.until))
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
    whole = None
    if shard is not None:
        whole = whole_run(
            scenario.name,
            total,
            {
                "executor": executor,
                "max_in_flight": load.max_in_flight,
                "mqtt": [scenario.mqtt.protocol_version, scenario.mqtt.client_id],
                "device": device,
                "steps": steps,
            },
        )
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
        max_in_flight=load.max_in_flight
        if shard is None
        else shard.share(load.max_in_flight, ("load", "max_in_flight")),
        device=device,
        steps=tuple(steps),
        source_addresses=tuple(scenario.load.source_addresses or ()),
        workers=workers,
        driver=scenario.mqtt.driver,
        shard=shard,
        whole=whole,
    )


def whole_run(scenario: str, fleet: int, settings: dict[str, Any]) -> WholeRun:
    """The run that shards of ``fleet`` devices of ``scenario`` are parts of.
    ``settings`` are the whole run's (its executor unscaled, its max_in_flight),
    records by their type and fields. The endpoint is not one of them: the
    shards of one run may each connect to their own (an embedded emulator's
    port, an address per zone)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return [type(value).__name__, dataclasses.asdict(value)]
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    text = json.dumps({k: plain(v) for k, v in settings.items()}, sort_keys=True)
    return WholeRun(scenario, fleet, "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16])


# A hold's PINGREQs when neither it nor the CONNECT sets a keepalive: AWS IoT
# holds a CONNECT's 0 to 1200 s all the same (an MQTT 3.1.1 CONNACK cannot say
# so), and closes a client silent 1.5 times that.
_PINGS_WITHOUT_KEEPALIVE = 60.0


def _pings(keepalive: int) -> float:
    """A hold's default keepalive: the CONNECT's, or a minute when it has none."""
    return float(keepalive) if keepalive else _PINGS_WITHOUT_KEEPALIVE


def endpoint_of(scenario: Scenario, override: str | None) -> tuple[str, int]:
    # An empty --endpoint (an unset variable's "$ENDPOINT") is a mistake, not
    # the scenario's endpoint.
    value = override if override is not None else scenario.endpoint
    try:
        return parse_endpoint(value)
    except ValueError as exc:
        raise ConfigError(
            f"{'--endpoint' if override is not None else 'endpoint'}: {exc}"
        ) from None


def check_template(template: str, where: str) -> None:
    """Refuse, before the run, a template naming something no device has (a
    scenario's were checked as it loaded, with their lines; this guards plans
    made from elsewhere)."""
    try:
        template_text(template)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
