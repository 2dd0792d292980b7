"""Packets to bytes and bytes to packets, for MQTT 3.1.1 and 5.0.

``encode`` turns a packet into its wire form for a protocol version. ``Decoder``
takes bytes as they arrive, in chunks of any size, and returns whole packets;
anything malformed raises a ``ProtocolError`` subclass and nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from loadgen.mqtt import properties as props
from loadgen.mqtt import wire
from loadgen.mqtt.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from loadgen.mqtt.packets import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from loadgen.mqtt.properties import EMPTY

# MQTT's own ceiling: 1 byte of fixed header, 4 of length, 268,435,455 of body.
MAX_PACKET_SIZE = 1 + 4 + wire.MAX_VARINT
_PROTOCOL_NAME = wire.string("MQTT")
_VERSIONS = (MQTT_3_1_1, MQTT_5)
_WILDCARDS = ("+", "#")
# Indexed by packet type. The decoder runs between TLS handshakes, with the
# interpreter out of the CPU's caches: every lookup saved there counts
# (bench.connect_profile).
_NAMES = ("", *(t.name for t in PacketType))
# The fixed header's flags each type must carry (PUBLISH's are its own).
_FLAGS = tuple(
    0x02 if t in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
    for t in range(16)
)
_CONNECT, _CONNACK = int(PacketType.CONNECT), int(PacketType.CONNACK)
_PUBLISH, _AUTH = int(PacketType.PUBLISH), int(PacketType.AUTH)


# Encoding


def encode(packet: Packet, version: int) -> bytes:
    """The wire form of ``packet`` for protocol ``version`` (4 or 5). A CONNECT is
    encoded for its own ``protocol_version``, which is what sets a connection's."""
    first, body = _ENCODERS[type(packet)](packet, version)
    size = len(body)
    if size < 0x80:
        return bytes((first, size)) + body
    return bytes((first,)) + wire.varint(size) + body


def _props(p: props.Properties, version: int) -> bytes:
    return props.encode(p) if version == MQTT_5 else b""


def _connect(p: Connect, version: int) -> tuple[int, bytes]:
    version = p.protocol_version
    flags = 0x02 if p.clean_start else 0
    payload = bytearray(wire.string(p.client_id))
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        payload += _props(p.will.properties, version)
        payload += wire.string(p.will.topic) + wire.binary(p.will.payload)
    if p.username is not None:
        flags |= 0x80
        payload += wire.string(p.username)
    if p.password is not None:
        flags |= 0x40
        payload += wire.binary(p.password)
    header = _PROTOCOL_NAME + bytes((version, flags)) + p.keepalive.to_bytes(2, "big")
    return 0x10, header + _props(p.properties, version) + bytes(payload)


def _connack(p: ConnAck, version: int) -> tuple[int, bytes]:
    head = bytes((1 if p.session_present else 0, p.reason_code))
    return 0x20, head + _props(p.properties, version)


def _publish(p: Publish, version: int) -> tuple[int, bytes]:
    first = 0x30 | (0x08 if p.dup else 0) | (p.qos << 1) | (1 if p.retain else 0)
    body = wire.string(p.topic)
    if p.qos:
        if not p.packet_id:
            raise ValueError("a QoS 1 or 2 PUBLISH needs a packet id")
        body += p.packet_id.to_bytes(2, "big")
    return first, body + _props(p.properties, version) + p.payload


def _ack(first: int) -> Callable[[Any, int], tuple[int, bytes]]:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then (MQTT 5) a reason code
    and properties that may be left out when they are success and empty."""

    def encode_ack(p: PubAck | PubRec | PubRel | PubComp, version: int) -> tuple[int, bytes]:
        body = p.packet_id.to_bytes(2, "big")
        if version == MQTT_5 and (p.reason_code or p.properties):
            body += bytes((p.reason_code,))
            if p.properties:
                body += props.encode(p.properties)
        return first, body

    return encode_ack


def _subscribe(p: Subscribe, version: int) -> tuple[int, bytes]:
    body = bytearray(p.packet_id.to_bytes(2, "big") + _props(p.properties, version))
    for s in p.subscriptions:
        options = s.qos
        if version == MQTT_5:
            options |= (
                (0x04 if s.no_local else 0)
                | (0x08 if s.retain_as_published else 0)
                | (s.retain_handling << 4)
            )
        body += wire.string(s.topic_filter) + bytes((options,))
    return 0x82, bytes(body)


def _suback(p: SubAck, version: int) -> tuple[int, bytes]:
    return 0x90, p.packet_id.to_bytes(2, "big") + _props(p.properties, version) + bytes(
        p.reason_codes
    )


def _unsubscribe(p: Unsubscribe, version: int) -> tuple[int, bytes]:
    body = p.packet_id.to_bytes(2, "big") + _props(p.properties, version)
    return 0xA2, body + b"".join(wire.string(f) for f in p.topic_filters)


def _unsuback(p: UnsubAck, version: int) -> tuple[int, bytes]:
    body = p.packet_id.to_bytes(2, "big")
    if version == MQTT_5:
        body += props.encode(p.properties) + bytes(p.reason_codes)
    return 0xB0, body


def _empty(first: int) -> Callable[[Any, int], tuple[int, bytes]]:
    return lambda _p, _v: (first, b"")


def _reasoned(first: int) -> Callable[[Any, int], tuple[int, bytes]]:
    """DISCONNECT and AUTH: empty in 3.1.1; in MQTT 5 a reason code and properties
    that may be left out when they are success and empty."""

    def encode_reasoned(p: Disconnect | Auth, version: int) -> tuple[int, bytes]:
        if version != MQTT_5 or not (p.reason_code or p.properties):
            return first, b""
        body = bytes((p.reason_code,))
        if p.properties:
            body += props.encode(p.properties)
        return first, body

    return encode_reasoned


_ENCODERS: dict[type, Callable[[Any, int], tuple[int, bytes]]] = {
    Connect: _connect,
    ConnAck: _connack,
    Publish: _publish,
    PubAck: _ack(0x40),
    PubRec: _ack(0x50),
    PubRel: _ack(0x62),
    PubComp: _ack(0x70),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: _empty(0xC0),
    PingResp: _empty(0xD0),
    Disconnect: _reasoned(0xE0),
    Auth: _reasoned(0xF0),
}


# Decoding


class Decoder:
    """Bytes in, packets out.

    ``version`` is the protocol version when it is known (a client knows it from
    its own CONNECT); a server leaves it None and the first packet, which must be
    a CONNECT, sets it. ``max_packet_size`` bounds a whole packet, header
    included: a longer one raises ``PacketTooLarge`` as soon as its length is read,
    before it is buffered.
    """

    __slots__ = ("_buffer", "max_packet_size", "version")

    def __init__(self, version: int | None = None, max_packet_size: int = MAX_PACKET_SIZE):
        if version is not None and version not in _VERSIONS:
            raise ValueError(f"unsupported MQTT version {version}")
        self.version = version
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for a packet that has not fully arrived."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._buffer
        size = len(data)
        # One whole packet of under 128 bytes, nothing held back: a CONNACK, an
        # acknowledgement. The connect path's usual case, read without framing.
        if (
            not buffer
            and 2 <= size <= 129  # so the length is one byte, without a continuation
            and data[1] + 2 == size
            and size <= self.max_packet_size
        ):
            return [self._decode(data[0], data[2:])]
        if buffer:
            buffer += data
        # Nothing held back (the usual case): packets are read from ``data`` as it
        # came, and only a trailing partial packet is copied.
        chunk: bytes | bytearray = buffer or data
        packets: list[Packet] = []
        pos, size = 0, len(chunk)
        try:
            while pos < size:
                frame = self._frame(chunk, pos)
                if frame is None:
                    break
                first, start, end = frame
                packets.append(self._decode(first, chunk[start:end]))
                pos = end
        except ProtocolError as exc:
            exc.received = tuple(packets)
            raise
        if buffer:
            del buffer[:pos]
        elif pos < len(data):
            buffer += data[pos:]
        return packets

    def _frame(self, buffer: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
        """(first byte, body start, body end) of the next whole packet, or None."""
        available = len(buffer) - pos
        if available < 2:
            return None
        length = buffer[pos + 1]
        if length < 0x80:  # one byte of length: every packet of under 128 bytes
            start = pos + 2
        else:
            length = 0
            for i in range(4):
                if i + 1 >= available:
                    return None
                digit = buffer[pos + 1 + i]
                length |= (digit & 0x7F) << (7 * i)
                if not digit & 0x80:
                    if not digit:  # a shorter encoding existed [MQTT-1.5.5-1]
                        raise MalformedPacket("remaining length not minimally encoded")
                    start = pos + 2 + i
                    break
            else:
                raise MalformedPacket("remaining length longer than 4 bytes")
        size = start - pos + length
        if size > self.max_packet_size:
            raise PacketTooLarge(
                f"packet of {size} bytes over the maximum of {self.max_packet_size}"
            )
        if len(buffer) < start + length:
            return None
        return buffer[pos], start, start + length

    def _decode(self, first: int, body: bytes | bytearray) -> Packet:
        kind = first >> 4
        if kind == 0:
            raise MalformedPacket("packet type 0 is reserved")
        name = _NAMES[kind]
        flags = first & 0x0F
        if flags != _FLAGS[kind] and kind != _PUBLISH:
            raise MalformedPacket(f"{name}: reserved flags 0x{flags:x}")
        version = self.version
        if kind == _CONNECT:
            connect = _read_whole(_read_connect, body, name, flags, 0)
            assert isinstance(connect, Connect)
            self.version = connect.protocol_version
            return connect
        if version is None:
            raise ProtocolError(f"{name} before CONNECT")
        if kind == _CONNACK:
            return _decode_connack(bytes(body), version)
        if kind == _AUTH and version != MQTT_5:
            raise MalformedPacket("AUTH is an MQTT 5 packet")
        return _read_whole(_READERS[kind], body, name, flags, version)


def _read_whole(
    read: Callable[[wire.Reader, int, int], Packet],
    body: bytes | bytearray,
    name: str,
    flags: int,
    version: int,
) -> Packet:
    """A packet that must take up all of ``body``."""
    reader = wire.Reader(body, name)
    packet = read(reader, flags, version)
    if reader.pos != reader.end:
        raise MalformedPacket(f"{name}: {reader.remaining} bytes after the packet")
    return packet


# A server answers every client with the same CONNACK bytes (mosquitto: success
# and the same two properties). Packets are immutable, so one decoded CONNACK
# serves them all: decoding it again ran about 170 of a connect's 2,200 Python
# bytecodes (bench.connect_profile --bytecodes). A malformed one raises every
# time: exceptions are not cached.
@functools.lru_cache(maxsize=64)
def _decode_connack(body: bytes, version: int) -> Packet:
    return _read_whole(_read_connack, body, "CONNACK", 0, version)


def _read_connect(r: wire.Reader, _flags: int = 0, _version: int = 0) -> Connect:
    if r.binary() != b"MQTT":
        raise UnsupportedProtocolVersion("CONNECT: protocol name is not MQTT")
    version = r.byte()
    if version not in _VERSIONS:
        raise UnsupportedProtocolVersion(f"CONNECT: protocol level {version}")
    flags = r.byte()
    if flags & 0x01:
        raise MalformedPacket("CONNECT: reserved flag set")
    will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 0x03, flags & 0x20
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise MalformedPacket("CONNECT: inconsistent will flags")
    if version == MQTT_3_1_1 and flags & 0x40 and not flags & 0x80:
        raise MalformedPacket("CONNECT: password without user name")
    keepalive = r.uint16()
    properties = props.decode(r, "CONNECT") if version == MQTT_5 else EMPTY
    client_id = r.string()
    will = None
    if will_flag:
        will_props = props.decode(r, "W") if version == MQTT_5 else EMPTY
        topic = r.string()
        if not topic:  # a will has no Topic Alias to stand for it [MQTT-4.7.3-1]
            raise ProtocolError("CONNECT: empty will topic")
        _check_topic(topic, "CONNECT will")
        will = Will(topic, r.binary(), will_qos, bool(will_retain), will_props)
    username = r.string() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    return Connect(
        client_id=client_id,
        protocol_version=version,
        clean_start=bool(flags & 0x02),
        keepalive=keepalive,
        username=username,
        password=password,
        will=will,
        properties=properties,
    )


def _check_topic(topic: str, where: str) -> None:
    if any(w in topic for w in _WILDCARDS):
        raise ProtocolError(f"{where}: topic name {topic!r} contains a wildcard")


def _packet_id(r: wire.Reader) -> int:
    packet_id = r.uint16()
    if packet_id == 0:
        raise MalformedPacket(f"{r.packet}: packet identifier 0")
    return packet_id


def _read_connack(r: wire.Reader, _flags: int, version: int) -> ConnAck:
    ack_flags, code = r.take(2)
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved flags set")
    if ack_flags and code:
        # A refused connection has no session [MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4]).
        raise ProtocolError(f"CONNACK: session present with reason code 0x{code:02x}")
    properties = props.decode(r, "CONNACK") if version == MQTT_5 else EMPTY
    return ConnAck(code, bool(ack_flags & 1), properties)


def _read_publish(r: wire.Reader, flags: int, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH: QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message")
    topic = r.string()
    _check_topic(topic, "PUBLISH")
    packet_id = _packet_id(r) if qos else None
    properties = props.decode(r, "PUBLISH") if version == MQTT_5 else EMPTY
    if not topic and properties.topic_alias is None:
        raise ProtocolError("PUBLISH: empty topic name without a topic alias")
    return Publish(topic, r.rest(), qos, bool(flags & 1), dup, packet_id, properties)


def _read_ack(cls: type[PubAck | PubRec | PubRel | PubComp]) -> Callable[..., Packet]:
    def read(r: wire.Reader, _flags: int, version: int) -> Packet:
        packet_id = _packet_id(r)
        code = 0
        properties = EMPTY
        if version == MQTT_5 and r.remaining:
            code = r.byte()
            if r.remaining:
                properties = props.decode(r, r.packet)
        return cls(packet_id, code, properties)

    return read


def _read_subscribe(r: wire.Reader, _flags: int, version: int) -> Subscribe:
    packet_id = _packet_id(r)
    properties = props.decode(r, "SUBSCRIBE") if version == MQTT_5 else EMPTY
    subscriptions = []
    while r.remaining:
        topic_filter = r.string()
        options = r.byte()
        reserved = 0xC0 if version == MQTT_5 else 0xFC
        qos, retain_handling = options & 0x03, (options >> 4) & 0x03
        if options & reserved or qos == 3 or retain_handling == 3:
            raise MalformedPacket(f"SUBSCRIBE: bad options 0x{options:02x}")
        if options & 0x04 and version == MQTT_5 and topic_filter.startswith("$share/"):
            # A shared subscription's messages go to any of its group: not
            # sending one back to its publisher cannot be kept [MQTT-3.8.3-4].
            raise ProtocolError(f"SUBSCRIBE: No Local on shared subscription {topic_filter!r}")
        subscriptions.append(
            Subscription(
                topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling
            )
        )
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _read_suback(r: wire.Reader, _flags: int, version: int) -> SubAck:
    packet_id = _packet_id(r)
    properties = props.decode(r, "SUBACK") if version == MQTT_5 else EMPTY
    return SubAck(packet_id, tuple(r.rest()), properties)


def _read_unsubscribe(r: wire.Reader, _flags: int, version: int) -> Unsubscribe:
    packet_id = _packet_id(r)
    properties = props.decode(r, "UNSUBSCRIBE") if version == MQTT_5 else EMPTY
    filters = []
    while r.remaining:
        filters.append(r.string())
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, tuple(filters), properties)


def _read_unsuback(r: wire.Reader, _flags: int, version: int) -> UnsubAck:
    packet_id = _packet_id(r)
    if version != MQTT_5:
        return UnsubAck(packet_id)
    properties = props.decode(r, "UNSUBACK")
    return UnsubAck(packet_id, tuple(r.rest()), properties)


def _read_empty(cls: type[PingReq | PingResp]) -> Callable[..., Packet]:
    def read(r: wire.Reader, _flags: int, _version: int) -> Packet:
        return cls()

    return read


def _read_reasoned(cls: type[Disconnect | Auth]) -> Callable[..., Packet]:
    def read(r: wire.Reader, _flags: int, version: int) -> Packet:
        if version != MQTT_5 or not r.remaining:
            return cls()
        code = r.byte()
        properties = props.decode(r, r.packet) if r.remaining else EMPTY
        return cls(code, properties)

    return read


_READERS: dict[int, Callable[[wire.Reader, int, int], Packet]] = {
    PacketType.CONNACK: _read_connack,
    PacketType.PUBLISH: _read_publish,
    PacketType.PUBACK: _read_ack(PubAck),
    PacketType.PUBREC: _read_ack(PubRec),
    PacketType.PUBREL: _read_ack(PubRel),
    PacketType.PUBCOMP: _read_ack(PubComp),
    PacketType.SUBSCRIBE: _read_subscribe,
    PacketType.SUBACK: _read_suback,
    PacketType.UNSUBSCRIBE: _read_unsubscribe,
    PacketType.UNSUBACK: _read_unsuback,
    PacketType.PINGREQ: _read_empty(PingReq),
    PacketType.PINGRESP: _read_empty(PingResp),
    PacketType.DISCONNECT: _read_reasoned(Disconnect),
    PacketType.AUTH: _read_reasoned(Auth),
}
