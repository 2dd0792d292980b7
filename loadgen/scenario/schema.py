"""The scenario schema. ``loadgen scenario schema`` prints it as JSON Schema for
editors; docs/scenarios.md describes every field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loadgen.config import load_model
from loadgen.device.retry import Jitter
from loadgen.emulator import limits
from loadgen.scenario.units import Duration, Rate

EMBEDDED = "embedded"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tls(_Strict):
    ca_file: Path | None = Field(
        default=None, description="Trust for the server certificate (default: system CAs)"
    )
    server_name: str | None = Field(
        default=None, description="SNI and hostname check (default: the endpoint's host)"
    )
    alpn: list[str] | None = Field(
        default=None, description='e.g. ["x-amzn-mqtt-ca"] for AWS IoT on port 443'
    )
    verify_server: bool = True


class Mqtt(_Strict):
    version: Literal[5, "5", "3.1.1"] = 5
    client_id: str = Field(
        default="{client_id}",
        description="Template over the manifest: {client_id}, {index}, {certificate_id} and "
        "subject fields such as {common_name}",
    )
    keepalive: int = Field(default=60, ge=0, le=65535)
    driver: Literal["native", "aiomqtt"] = Field(
        default="native",
        description="native: our timed transport; aiomqtt: paho through aiomqtt (a cross-check; "
        "its connect runs in a thread pool and only the provision phase is timed)",
    )

    @property
    def protocol_version(self) -> int:
        return 4 if self.version == "3.1.1" else 5


class Fleet(_Strict):
    ca: Path = Field(description="A `loadgen ca init` folder; created if missing")
    store: Path
    count: int = Field(gt=0)
    profile: Path | None = None
    seed: int | None = None


class Jitp(_Strict):
    expect_first_connect_rejected: bool = Field(
        default=False, description="Take the first rejection as the provisioning trigger"
    )


class Retry(_Strict):
    initial: Duration = 0.1
    max: Duration = 5.0
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: Jitter = Jitter.FULL
    max_attempts: int = Field(default=6, ge=1, description="Attempts in all, the first included")


class StageSpec(_Strict):
    rate: Annotated[float, Field(ge=0)] | Rate
    duration: Duration

    @field_validator("rate", mode="before")
    @classmethod
    def _zero_allowed(cls, v: Any) -> Any:
        return 0.0 if v in (0, "0", "0/s") else v


class Load(_Strict):
    executor: Literal["constant-arrival-rate", "ramping-arrival-rate", "burst"]
    rate: Rate | None = None
    start_rate: Rate | None = None
    stages: list[StageSpec] | None = None
    max_in_flight: int = Field(default=1000, gt=0)
    source_addresses: list[str] | None = Field(
        default=None, description="Local addresses to connect from (e.g. 127.0.0.2 ...)"
    )

    @model_validator(mode="after")
    def _executor_has_what_it_needs(self) -> Load:
        if self.executor == "constant-arrival-rate" and self.rate is None:
            raise ValueError("constant-arrival-rate needs a rate")
        if self.executor == "ramping-arrival-rate" and not self.stages:
            raise ValueError("ramping-arrival-rate needs stages")
        return self


class PublishSpec(_Strict):
    topic: str
    qos: Literal[0, 1] = 0
    count: int = Field(default=1, ge=0)
    payload_bytes: int = Field(default=0, ge=0)


class SubscribeSpec(_Strict):
    topic: str
    qos: Literal[0, 1] = 0


class HoldSpec(_Strict):
    duration: Duration
    keepalive: Duration = 60.0


class Publish(_Strict):
    publish: PublishSpec


class Subscribe(_Strict):
    subscribe: SubscribeSpec


class Hold(_Strict):
    hold: HoldSpec


class Timeouts(_Strict):
    connect: Duration = 10.0
    step: Duration = 10.0


class EmulatorLimits(_Strict):
    """What one client may cost the embedded emulator (docs/emulator.md, Limits)."""

    max_packet_size: int = Field(
        default=limits.MAX_PACKET_SIZE, ge=64, description="Bytes, a whole MQTT packet"
    )
    connect_timeout: Duration = Field(
        default=limits.CONNECT_TIMEOUT, gt=0, description="From the TLS handshake to CONNECT"
    )
    write_buffer: int = Field(
        default=limits.WRITE_BUFFER, ge=1024, description="Bytes queued to a subscriber"
    )
    slow_consumer_timeout: Duration = Field(
        default=limits.SLOW_CONSUMER_TIMEOUT,
        gt=0,
        description="How long a subscriber may stay over write_buffer",
    )
    min_keepalive: int = Field(
        default=limits.MIN_KEEPALIVE,
        ge=0,
        le=65535,
        description="Seconds; a shorter keepalive is raised to it, as AWS IoT does",
    )

    def to_limits(self) -> limits.Limits:
        return limits.Limits(
            self.max_packet_size,
            self.connect_timeout,
            self.write_buffer,
            self.slow_consumer_timeout,
            self.min_keepalive,
        )


class EmulatorSpec(_Strict):
    """For ``endpoint: embedded``: how the local JITP emulator is set up."""

    registration_config: Path | None = Field(
        default=None,
        description="templateBody + roleArn JSON for the fleet CA (default: a built-in template)",
    )
    template: Path | None = Field(
        default=None, description="A readable template (.yaml/.json) instead of registration_config"
    )
    role_arn: str = "arn:aws:iam::123456789012:role/JITPRole"
    strict_resources: bool = False
    quotas: dict[Literal["connect", "connect-per-client", "provision"], str] = Field(
        default_factory=dict, description='e.g. {provision: 50/s, connect: "off"}'
    )
    metrics_port: int | None = Field(default=None, description="Serve its Prometheus metrics")
    limits: EmulatorLimits = Field(default_factory=EmulatorLimits)


class Scenario(_Strict):
    name: str
    endpoint: str = Field(description='"host:port", or "embedded" for the local JITP emulator')
    tls: Tls = Field(default_factory=Tls)
    mqtt: Mqtt = Field(default_factory=Mqtt)
    fleet: Fleet
    jitp: Jitp = Field(default_factory=Jitp)
    retry: Retry = Field(default_factory=Retry)
    load: Load
    after_connect: list[Publish | Subscribe | Hold] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    emulator: EmulatorSpec = Field(default_factory=EmulatorSpec)
    gates: list[str] = Field(
        default_factory=list, description='e.g. "p99(provision) < 2s", "ratio(failed) < 0.5%"'
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v != EMBEDDED:
            parse_endpoint(v)
        return v

    def resolve_paths(self, base: Path) -> Scenario:
        """Paths in a scenario are relative to the scenario file's folder."""

        def rel(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        fleet = self.fleet.model_copy(
            update={
                "ca": rel(self.fleet.ca),
                "store": rel(self.fleet.store),
                "profile": rel(self.fleet.profile),
            }
        )
        tls = self.tls.model_copy(update={"ca_file": rel(self.tls.ca_file)})
        emulator = self.emulator.model_copy(
            update={
                "registration_config": rel(self.emulator.registration_config),
                "template": rel(self.emulator.template),
            }
        )
        return self.model_copy(update={"fleet": fleet, "tls": tls, "emulator": emulator})


def parse_endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def load_scenario(path: Path) -> Scenario:
    scenario = load_model(path, Scenario, what="scenario")
    return scenario.resolve_paths(path.resolve().parent)
