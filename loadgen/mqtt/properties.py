"""MQTT 5 properties (section 2.2.2): a typed record, and its wire form."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from loadgen.mqtt import wire
from loadgen.mqtt.errors import MalformedPacket, ProtocolError


class Kind(Enum):
    BYTE = 1
    TWO = 2
    FOUR = 4
    VARINT = 5
    STRING = 6
    BINARY = 7
    PAIR = 8


@dataclass(frozen=True, slots=True)
class Properties:
    """Every MQTT 5 property; None (or empty) when absent."""

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifier: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_property: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __bool__(self) -> bool:
        # The empty block most packets carry is EMPTY itself: comparing it field
        # by field took about 120 bytecodes a CONNECT.
        return self is not EMPTY and self != EMPTY


EMPTY = Properties()

# identifier, field, kind, packets it may appear in (W = will properties)
_TABLE: tuple[tuple[int, str, Kind, str], ...] = (
    (0x01, "payload_format_indicator", Kind.BYTE, "PUBLISH W"),
    (0x02, "message_expiry_interval", Kind.FOUR, "PUBLISH W"),
    (0x03, "content_type", Kind.STRING, "PUBLISH W"),
    (0x08, "response_topic", Kind.STRING, "PUBLISH W"),
    (0x09, "correlation_data", Kind.BINARY, "PUBLISH W"),
    (0x0B, "subscription_identifier", Kind.VARINT, "PUBLISH SUBSCRIBE"),
    (0x11, "session_expiry_interval", Kind.FOUR, "CONNECT CONNACK DISCONNECT"),
    (0x12, "assigned_client_identifier", Kind.STRING, "CONNACK"),
    (0x13, "server_keep_alive", Kind.TWO, "CONNACK"),
    (0x15, "authentication_method", Kind.STRING, "CONNECT CONNACK AUTH"),
    (0x16, "authentication_data", Kind.BINARY, "CONNECT CONNACK AUTH"),
    (0x17, "request_problem_information", Kind.BYTE, "CONNECT"),
    (0x18, "will_delay_interval", Kind.FOUR, "W"),
    (0x19, "request_response_information", Kind.BYTE, "CONNECT"),
    (0x1A, "response_information", Kind.STRING, "CONNACK"),
    (0x1C, "server_reference", Kind.STRING, "CONNACK DISCONNECT"),
    (
        0x1F,
        "reason_string",
        Kind.STRING,
        "CONNACK PUBACK PUBREC PUBREL PUBCOMP SUBACK UNSUBACK DISCONNECT AUTH",
    ),
    (0x21, "receive_maximum", Kind.TWO, "CONNECT CONNACK"),
    (0x22, "topic_alias_maximum", Kind.TWO, "CONNECT CONNACK"),
    (0x23, "topic_alias", Kind.TWO, "PUBLISH"),
    (0x24, "maximum_qos", Kind.BYTE, "CONNACK"),
    (0x25, "retain_available", Kind.BYTE, "CONNACK"),
    (0x26, "user_property", Kind.PAIR, "*"),
    (0x27, "maximum_packet_size", Kind.FOUR, "CONNECT CONNACK"),
    (0x28, "wildcard_subscription_available", Kind.BYTE, "CONNACK"),
    (0x29, "subscription_identifier_available", Kind.BYTE, "CONNACK"),
    (0x2A, "shared_subscription_available", Kind.BYTE, "CONNACK"),
)
_BY_ID = {ident: (name, kind, set(where.split())) for ident, name, kind, where in _TABLE}
_REPEATABLE = {"subscription_identifier", "user_property"}
# Where a repeatable property may come more than once: a PUBLISH carries one
# Subscription Identifier per matching subscription, a SUBSCRIBE only one
# (MQTT 5 3.8.2.1.2: "a Protocol Error to include the Subscription Identifier
# more than once").
_ONCE_IN = {"subscription_identifier": "SUBSCRIBE"}
# Values MQTT 5 calls a Protocol Error where the kind alone would allow them
# (sections 3.1.2.11, 3.2.2.3, 3.8.2.1): (field, the values allowed).
_RANGES: tuple[tuple[str, range], ...] = (
    ("receive_maximum", range(1, 0x10000)),
    ("maximum_packet_size", range(1, 0x100000000)),
    ("request_problem_information", range(2)),
    ("request_response_information", range(2)),
    ("maximum_qos", range(2)),
    ("retain_available", range(2)),
    ("wildcard_subscription_available", range(2)),
    ("subscription_identifier_available", range(2)),
    ("shared_subscription_available", range(2)),
)
_ORDER = [(ident, name, kind) for ident, name, kind, _ in _TABLE]
assert {f.name for f in fields(Properties)} == {name for _, name, _, _ in _TABLE}


def allowed(packet: str) -> list[tuple[str, Kind]]:
    """The properties ``packet`` may carry ("W" for a will), as (field, kind)."""
    return [
        (name, kind) for name, kind, where in _BY_ID.values() if packet in where or "*" in where
    ]


def encode(props: Properties) -> bytes:
    """Property length followed by the properties."""
    if props is EMPTY or not props:
        return b"\x00"
    out = bytearray()
    for ident, name, kind in _ORDER:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        for item in value if name in _REPEATABLE else (value,):
            out += wire.varint(ident)
            out += _encode_value(kind, item)
    return wire.varint(len(out)) + bytes(out)


def _encode_value(kind: Kind, value: Any) -> bytes:
    if kind is Kind.BYTE:
        return bytes((value,))
    if kind is Kind.TWO:
        return value.to_bytes(2, "big")  # type: ignore[no-any-return]
    if kind is Kind.FOUR:
        return value.to_bytes(4, "big")  # type: ignore[no-any-return]
    if kind is Kind.VARINT:
        return wire.varint(value)
    if kind is Kind.STRING:
        return wire.string(value)
    if kind is Kind.BINARY:
        return wire.binary(value)
    key, val = value
    return wire.string(key) + wire.string(val)


def decode(reader: wire.Reader, packet: str) -> Properties:
    """Read a property block for ``packet`` (e.g. "CONNACK", or "W" for a will)."""
    length = reader.varint()
    end = reader.pos + length
    if end > reader.end:
        raise MalformedPacket(f"{packet}: property length {length} runs past the packet")
    if not length:
        return EMPTY
    block = reader.data[reader.pos : end]
    reader.pos = end
    return _decode_block(block, packet)


# Peers repeat property blocks: a server gives every client the same CONNACK
# properties (now cached whole, with the CONNACK: codec._decode_connack), a fleet
# of like devices sends the emulator the same CONNECT properties. Decoding them
# again cost about 15 µs of a connect's 0.9 ms of CPU in place, between
# handshakes (docs/benchmarks.md). Properties are immutable, so one decoded
# record serves every packet carrying the same block.
@functools.lru_cache(maxsize=256)
def _decode_block(block: bytes, packet: str) -> Properties:
    reader = wire.Reader(block, packet)
    end = reader.end
    values: dict[str, Any] = {}
    while reader.pos < end:
        ident = reader.varint()
        entry = _BY_ID.get(ident)
        if entry is None:
            raise MalformedPacket(f"{packet}: unknown property 0x{ident:02x}")
        name, kind, where = entry
        if packet not in where and "*" not in where:
            raise ProtocolError(f"{packet}: property {name} is not allowed here")
        value = _decode_value(reader, kind)
        if name in values and (name not in _REPEATABLE or _ONCE_IN.get(name) == packet):
            raise ProtocolError(f"{packet}: property {name} given twice")
        if name in _REPEATABLE:
            values[name] = (*values.get(name, ()), value)
        else:
            values[name] = value
    if not values:
        return EMPTY
    # Decoded once per distinct block (the cache above): checking costs nothing
    # for the blocks a fleet repeats.
    for name, allowed_values in _RANGES:
        value = values.get(name)
        if value is not None and value not in allowed_values:
            raise ProtocolError(f"{packet}: property {name} of {value}")
    if 0 in values.get("subscription_identifier", ()):
        raise ProtocolError(f"{packet}: Subscription Identifier 0")  # 1 and up, 3.8.2.1.2
    return Properties(**values)


def _decode_value(reader: wire.Reader, kind: Kind) -> Any:
    if kind is Kind.BYTE:
        return reader.byte()
    if kind is Kind.TWO:
        return reader.uint16()
    if kind is Kind.FOUR:
        return reader.uint32()
    if kind is Kind.VARINT:
        return reader.varint()
    if kind is Kind.STRING:
        return reader.string()
    if kind is Kind.BINARY:
        return reader.binary()
    return (reader.string(), reader.string())
