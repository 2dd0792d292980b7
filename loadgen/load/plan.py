"""A run's plan: the scenario resolved into what worker processes need, in plain
picklable records (made by ``loadgen.scenario.planning``).

Workers unpickle the plan, so importing this module imports what they run on:
it must not reach the scenario's schema (pydantic, about 23 MB in each worker
process, for nothing: a worker never reads a scenario)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loadgen.certs.store import Device as FleetDevice
from loadgen.certs.subject import FIELDS
from loadgen.device.lifecycle import DeviceConfig, PublishStep, Step, SubscribeStep
from loadgen.load.chaos import Chaos
from loadgen.load.schedule import Burst, Executor
from loadgen.load.shard import Shard, WholeRun

# ``--workers auto``: as many workers as the rate needs (``loadgen.run.workers_for``).
AUTO: Literal["auto"] = "auto"
# What --workers asks for: a number; AUTO; or None: the cores, or more for open
# files (``loadgen.run.planned_workers``).
Workers = int | Literal["auto"] | None


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
    whole: WholeRun | None = None  # with ``shard``: the run it is a part of

    @property
    def phase(self) -> float:
        return self.shard.phase if self.shard is not None else 0.0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def never_measured(self) -> dict[str, str]:
        """The phases and rates (as gates name them) no run of this plan ever
        measures, each with why: a gate on one could only fail, after the load."""
        never: dict[str, str] = {}
        if not any(isinstance(s, PublishStep) and s.qos == 1 and s.count for s in self.steps):
            never["publish_ack"] = "no after_connect step publishes at qos 1 (qos 0 has no PUBACK)"
        if self.driver != "native":
            why = f"mqtt.driver {self.driver} times only provision"
            never |= dict.fromkeys(("tcp_connect", "tls_handshake", "connack"), why)
        if isinstance(self.executor, Burst):
            never["target_rate"] = "a burst has no target rate"
        elif self.count < 2 and self.shard is None:
            # (A shard's one device is part of a merge, which measures the rate.)
            never["target_rate"] = "one arrival spans no time: a rate needs two devices"
        return never


_NO_SUBJECT = {f.name: "" for f in FIELDS}


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
