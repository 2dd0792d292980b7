"""The scenario schema. ``loadgen scenario schema`` prints it as JSON Schema for
editors; docs/scenarios.md describes every field."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import string
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainSerializer,
    PrivateAttr,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema

from loadgen.certs.profile import MAX_DEVICES, check_format_spec
from loadgen.certs.subject import FIELDS
from loadgen.config import field_error, read_model
from loadgen.device.retry import Jitter
from loadgen.emulator import limits
from loadgen.errors import ConfigError, FieldError, Loc
from loadgen.mqtt.wire import MAX_VARINT, check_carried
from loadgen.report.gates import parse as parse_gate
from loadgen.scenario.units import (
    DURATION_PATTERN,
    RATE_PATTERN,
    parse_duration,
    parse_rate,
    parse_rate_or_zero,
    positive,
)

# Durations and rates as people write them ("5s", "200/s"), in fields. Their JSON
# Schema (`loadgen scenario schema`, for editors) says what the loader takes: a
# number or such a text, not the float it makes of them.
_PER_SECOND = PlainSerializer(lambda r: f"{r:g}/s", return_type=str)


def _number_or_text(pattern: str, minimum: dict[str, float], like: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [{"type": "number", **minimum}, {"type": "string", "pattern": pattern}],
            "description": like,
        }
    )


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda s: f"{s:g}s", return_type=str),
    _number_or_text(DURATION_PATTERN, {"minimum": 0}, "a duration like 100ms, 5s, 2m or 1h"),
]
Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    _PER_SECOND,
    _number_or_text(RATE_PATTERN, {"exclusiveMinimum": 0}, "a rate like 200/s or 3000/m"),
]
PositiveDuration = Annotated[Duration, AfterValidator(positive)]
RateOrZero = Annotated[
    float,
    BeforeValidator(parse_rate_or_zero),
    _PER_SECOND,
    _number_or_text(RATE_PATTERN, {"minimum": 0}, "a rate like 200/s, or 0"),
]

EMBEDDED = "embedded"
# AWS IoT refuses a publish payload above 128 KiB (its message broker limits).
AWS_IOT_MAX_PAYLOAD = limits.AWS_MAX_PAYLOAD


def _server_name(name: str | None) -> str | None:
    """A name Python's TLS takes for SNI and the certificate's check, tried as
    each device's connection will be (an empty name, a leading dot, an empty or
    64-letter label, a NUL are refused there): every device failed otherwise."""
    if name is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_bio(
            ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name
        )
    except (ValueError, TypeError):
        raise ValueError(
            f"{name!r} is no host name TLS can send and check the server's certificate against"
        ) from None
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tls(_Strict):
    ca_file: Path | None = Field(
        default=None, description="Trust for the server certificate (default: system CAs)"
    )
    server_name: Annotated[str | None, AfterValidator(_server_name)] = Field(
        default=None, description="SNI and hostname check (default: the endpoint's host)"
    )
    alpn: list[str] | None = Field(
        default=None, description='e.g. ["x-amzn-mqtt-ca"] for AWS IoT on port 443'
    )
    verify_server: StrictBool = True


class Mqtt(_Strict):
    version: Literal[5, "5", "3.1.1"] = 5
    client_id: Annotated[str, AfterValidator(_client_id)] = Field(
        default="{client_id}",
        description="Template over the manifest: {client_id}, {index}, {certificate_id} and "
        "subject fields such as {common_name}",
    )
    keepalive: StrictInt = Field(default=60, ge=0, le=65535)
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
    count: StrictInt = Field(gt=0, le=MAX_DEVICES)
    profile: Path | None = None
    seed: StrictInt | None = None


class Jitp(_Strict):
    expect_first_connect_rejected: StrictBool = Field(
        default=False, description="Take the first rejection as the provisioning trigger"
    )


class Retry(_Strict):
    initial: Duration = 0.1
    max: Duration = 5.0
    multiplier: FiniteFloat = Field(default=2.0, ge=1.0)
    jitter: Jitter = Jitter.FULL
    max_attempts: StrictInt = Field(
        default=6, ge=1, description="Attempts in all, the first included"
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Retry:
        if self.max < self.initial:
            default = "" if "max" in self.model_fields_set else ", the default"
            raise field_error(
                ("max",), f"max ({self.max:g}s{default}) is below initial ({self.initial:g}s)"
            )
        return self


class StageSpec(_Strict):
    rate: RateOrZero
    duration: Duration


def _local_address(address: str) -> str:
    """An address connections can be made from: binding it is the only sure test
    (an address of another machine fails every device's connect instead)."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address, 0, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
        )[0]
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{address!r} is not an address ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ValueError(
                f"{address} is not a local address of this machine ({exc.strerror})"
            ) from None
    return address


# What each executor reads; a field another executor reads would be ignored.
_EXECUTOR_FIELDS = {
    "constant-arrival-rate": {"rate"},
    "ramping-arrival-rate": {"stages", "start_rate"},
    "burst": set(),
}


class Load(_Strict):
    executor: Literal["constant-arrival-rate", "ramping-arrival-rate", "burst"]
    rate: Rate | None = None
    start_rate: RateOrZero | None = Field(
        default=None, description="Where a ramp starts (default 0/s)"
    )
    stages: list[StageSpec] | None = None
    max_in_flight: StrictInt = Field(default=1000, gt=0)
    source_addresses: list[Annotated[str, AfterValidator(_local_address)]] | None = Field(
        default=None, description="Local addresses to connect from (e.g. 127.0.0.2 ...)"
    )

    @model_validator(mode="after")
    def _executor_has_what_it_needs(self) -> Load:
        if self.executor == "constant-arrival-rate" and self.rate is None:
            raise ValueError("constant-arrival-rate needs a rate")
        if self.executor == "ramping-arrival-rate" and not self.stages:
            raise ValueError("ramping-arrival-rate needs stages")
        for name in ("rate", "start_rate", "stages"):
            if name in self.model_fields_set and name not in _EXECUTOR_FIELDS[self.executor]:
                uses = " and ".join(sorted(_EXECUTOR_FIELDS[self.executor])) or "no rate"
                raise field_error(
                    (name,), f"executor {self.executor} takes {uses}: {name} would be ignored"
                )
        if self.stages and not self.start_rate and all(s.rate == 0 for s in self.stages):
            raise field_error(("stages",), "every stage has rate 0: no device would start")
        return self


_FORMATTER = string.Formatter()
TEMPLATE_FIELDS = ("index", "client_id", "certificate_id", *(f.name for f in FIELDS))


def template_text(template: str, placeholder: str = "") -> str:
    """A template over a device's manifest line, checked: its literal text, with
    ``placeholder`` for each field. ValueError for a field no device has."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None
    for _, name, spec, _ in parsed:
        if name is not None and name not in TEMPLATE_FIELDS:
            known = ", ".join(TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
        if name is not None and spec:
            check_format_spec(name, spec)
    return "".join(text + ("" if name is None else placeholder) for text, name, _, _ in parsed)


def _client_id(template: str) -> str:
    text = template_text(template)
    # Checked here, once, not per device: every device would send it, and fail
    # at once with a misleading reason.
    check_carried(template, "a client id")
    if all(name is None for _, name, _, _ in _FORMATTER.parse(template)):
        # AWS IoT keeps one connection per client id: every device would
        # disconnect the one before, and the run would blame throttling.
        raise ValueError(
            f"{text!r} is the same client id for every device: devices that share one "
            "disconnect each other; use a field of the device, {client_id} by default"
        )
    return template


def _topic_name(topic: str) -> str:
    """A topic to publish to (MQTT 4.7.3): not empty, no wildcards. What a
    placeholder renders cannot be known here; the literal text can."""
    text = template_text(topic, "x")
    if not text:
        raise ValueError("a topic cannot be empty")
    if "+" in text or "#" in text:
        raise ValueError(f"{topic!r}: a publish topic cannot hold the wildcards + or #")
    check_carried(topic, "a topic")
    return topic


def _topic_filter(topic: str) -> str:
    """A topic filter (MQTT 4.7.1): + a whole level, # a whole last level."""
    text = template_text(topic, "x")
    if not text:
        raise ValueError("a topic filter cannot be empty")
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{topic!r}: # must be a whole level, and the last")
        if "+" in level and level != "+":
            raise ValueError(f"{topic!r}: + must be a whole level")
    check_carried(topic, "a topic")
    return topic


class PublishSpec(_Strict):
    topic: Annotated[str, AfterValidator(_topic_name)]
    qos: Literal[0, 1] = 0
    count: StrictInt = Field(default=1, ge=0)
    payload_bytes: StrictInt = Field(default=0, ge=0)


class SubscribeSpec(_Strict):
    topic: Annotated[str, AfterValidator(_topic_filter)]
    qos: Literal[0, 1] = 0


class HoldSpec(_Strict):
    """Hold for ``duration`` from the device's connect, or ``until`` that long
    after the load's start (the same moment for every device, and for every
    shard started together): a fleet held together ends its hold together."""

    duration: Duration | None = None
    until: Duration | None = None
    # None: mqtt.keepalive, what the CONNECT promised (a default of its own
    # refused a scenario whose mqtt.keepalive was lower, naming a field never written).
    keepalive: Duration | None = Field(
        default=None, description="Seconds of silence before a PINGREQ (default: mqtt.keepalive)"
    )

    @model_validator(mode="after")
    def _one_end(self) -> HoldSpec:
        if self.duration is not None and self.until is not None:
            raise field_error(("until",), "a hold takes duration or until, not both")
        if self.duration is None and self.until is None:
            raise field_error(
                (), "a hold needs duration (from the connect) or until (from the load's start)"
            )
        return self


class Publish(_Strict):
    publish: PublishSpec


class Subscribe(_Strict):
    subscribe: SubscribeSpec


class Hold(_Strict):
    hold: HoldSpec


class Timeouts(_Strict):
    connect: PositiveDuration = 10.0
    step: PositiveDuration = 10.0


class EmulatorLimits(_Strict):
    """What one client may cost the embedded emulator (docs/emulator.md, Limits)."""

    max_packet_size: StrictInt = Field(
        default=limits.MAX_PACKET_SIZE,
        ge=64,
        le=limits.LARGEST_PACKET_SIZE,
        description="Bytes, a whole MQTT packet",
    )
    connect_timeout: Duration = Field(
        default=limits.CONNECT_TIMEOUT, gt=0, description="From the TLS handshake to CONNECT"
    )
    write_buffer: StrictInt = Field(
        default=limits.WRITE_BUFFER, ge=1024, description="Bytes queued to a subscriber"
    )
    slow_consumer_timeout: Duration = Field(
        default=limits.SLOW_CONSUMER_TIMEOUT,
        gt=0,
        description="How long a subscriber may stay over write_buffer",
    )
    min_keepalive: StrictInt = Field(
        default=limits.MIN_KEEPALIVE,
        ge=0,
        le=65535,
        description="Seconds; a shorter keepalive is raised to it, as AWS IoT does",
    )
    heartbeat_timeout: Duration = Field(
        default=limits.HEARTBEAT_TIMEOUT,
        gt=0,
        description="With processes: how long a serving process may leave the account's "
        "heartbeat unanswered before it is taken for hung and the emulator stops",
    )

    def to_limits(self) -> limits.Limits:
        return limits.Limits(
            self.max_packet_size,
            self.connect_timeout,
            self.write_buffer,
            self.slow_consumer_timeout,
            self.min_keepalive,
            heartbeat_timeout=self.heartbeat_timeout,
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
    strict_resources: StrictBool = False
    quotas: dict[Literal["connect", "connect-per-client", "provision"], str] = Field(
        default_factory=dict, description='e.g. {provision: 50/s, connect: "off"}'
    )
    metrics_port: StrictInt | None = Field(
        default=None, ge=1, le=65535, description="Serve its Prometheus metrics"
    )
    limits: EmulatorLimits = Field(default_factory=EmulatorLimits)
    api_port: StrictInt | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve the AWS IoT control-plane API here (http://127.0.0.1:PORT)",
    )
    api_rates: dict[str, str] = Field(
        default_factory=dict,
        description='Throttling per operation (or all): {DeleteCertificate: 10/s, all: "off"}',
    )
    processes: StrictInt | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Serving processes sharing the port, one account for all "
        "(default: the machine's cores)",
    )

    @model_validator(mode="after")
    def _api(self) -> EmulatorSpec:
        if self.template is not None and self.registration_config is not None:
            raise field_error(
                ("template",), "give template or registration_config, not both: one is the other"
            )
        if self.quotas:
            from loadgen.emulator.quota import Quotas
            from loadgen.errors import UserError

            for quota, rate in self.quotas.items():
                try:
                    Quotas.parse((f"{quota}={rate}",))
                except UserError as exc:
                    raise field_error(("quotas", quota), str(exc).split(": ", 1)[1]) from None
        if self.api_rates and self.api_port is None:
            raise field_error(("api_rates",), "throttles the API: set emulator.api_port too")
        if self.api_rates:
            # Here: botocore's models load only for a scenario that asks.
            from loadgen.emulator.api.app import operation_names
            from loadgen.emulator.api.throttle import parse_api_rates
            from loadgen.errors import UserError

            for name, rate in self.api_rates.items():
                try:
                    parse_api_rates([f"{name}={rate}"], operation_names())
                except UserError as exc:
                    message = str(exc).split(": ", 1)[1]
                    raise field_error(("api_rates", name), message) from None
        return self


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
    # Read from a file (`load_scenario`): what puts its name and a field's line
    # in front of a check's error about the field.
    _located: Callable[[FieldError], ConfigError] | None = PrivateAttr(default=None)

    def located(self, error: FieldError) -> ConfigError:
        """``error`` naming the scenario's file and the field's line, when the
        scenario was read from a file."""
        return self._located(error) if self._located is not None else error

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # It names the run in reports, metrics' labels and JUnit's XML, which
        # cannot hold control characters.
        if not v.strip() or not v.isprintable():
            raise ValueError("must be printable text, not empty")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v != EMBEDDED:
            parse_endpoint(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for i, text in enumerate(self.gates):
            try:
                parse_gate(text, "gate")
            except ConfigError as exc:
                raise field_error(("gates", i), str(exc).removeprefix("gate: ")) from None
        if self.endpoint == EMBEDDED and "tls" in self.model_fields_set:
            # The embedded emulator's own server CA and name are what the run trusts.
            raise field_error(("tls",), "endpoint: embedded sets TLS itself: remove the tls block")
        for i, item in enumerate(self.after_connect):
            promised = self.mqtt.keepalive
            pings = item.hold.keepalive if isinstance(item, Hold) else None
            if pings is not None and promised and pings > promised:
                # A server closes a client silent for 1.5 keepalives (MQTT 3.1.2.10,
                # AWS IoT too): every device would end closed mid-hold.
                raise field_error(
                    ("after_connect", i, "hold", "keepalive"),
                    f"pings every {pings:g} s, but the CONNECT promises one "
                    f"every {promised} s (mqtt.keepalive): the server would close the "
                    "connection; ping at most every mqtt.keepalive seconds",
                )
            if isinstance(item, Publish):
                limit = max_payload(item.publish, self.mqtt.protocol_version)
                if item.publish.payload_bytes > limit:
                    raise field_error(
                        ("after_connect", i, "publish", "payload_bytes"),
                        f"{item.publish.payload_bytes:,} bytes do not fit in an MQTT packet "
                        f"(at most {limit:,} with this topic)",
                    )
        return self

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


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port``: a host name, an IPv4 address, or an IPv6 one in brackets."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError(f"{value!r} is not host:port ({host} is no IPv6 address)") from None
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{value!r} is not host:port ({host!r} is no host name or address)")
    return host, int(port)


def max_payload(spec: PublishSpec, version: int) -> int:
    """The largest payload a PUBLISH of ``spec`` can carry: the packet's remaining
    length is at most 268,435,455 bytes, less the topic (at least its literal text;
    placeholders may render empty), the packet id (QoS 1) and MQTT 5's property
    length."""
    literal = template_text(spec.topic)
    header = 2 + len(literal.encode()) + (2 if spec.qos else 0) + (1 if version == 5 else 0)
    return MAX_VARINT - header


def warnings(scenario: Scenario) -> list[tuple[Loc, str]]:
    """What a scenario may do but a user likely did not mean."""
    found: list[tuple[Loc, str]] = []
    for i, item in enumerate(scenario.after_connect):
        if isinstance(item, Publish) and item.publish.payload_bytes > AWS_IOT_MAX_PAYLOAD:
            found.append(
                (
                    ("after_connect", i, "publish", "payload_bytes"),
                    f"{item.publish.payload_bytes:,} bytes is above AWS IoT's 128 KiB "
                    "payload limit (AWS IoT would refuse it)",
                )
            )
    if scenario.jitp.expect_first_connect_rejected and scenario.retry.max_attempts < 2:
        found.append(
            (
                ("retry", "max_attempts"),
                "1 attempt leaves none after JITP's trigger: every device ends with its "
                "first connect refused",
            )
        )
    return found


def load_scenario(path: Path, warn: Callable[[str], None] | None = None) -> Scenario:
    """The scenario in ``path``, validated; ``warn`` gets each warning as one line
    naming the file, the line and the field."""
    loaded = read_model(path, Scenario, what="scenario")
    if warn is not None:
        for loc, message in warnings(loaded.model):
            warn(f"{loaded.where(loc)}: {message}")
    loaded.model._located = loaded.located
    return loaded.model.resolve_paths(path.resolve().parent)
