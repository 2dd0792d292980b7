"""The sans-I/O MQTT codec: every packet of both versions survives the wire, in
chunks of any size, and bad bytes raise ProtocolError and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import mqtt
from loadgen.mqtt import wire
from tests.mqtt_strategies import connects, packets

VERSIONS = [mqtt.MQTT_3_1_1, mqtt.MQTT_5]


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_every_packet_decodes_to_what_was_encoded(version, data):
    packet = data.draw(packets(version))
    assert mqtt.Decoder(version).feed(mqtt.encode(packet, version)) == [packet]


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_connect_round_trips_and_tells_a_server_the_version(version, data):
    connect = data.draw(connects(version))
    decoder = mqtt.Decoder()
    assert decoder.feed(mqtt.encode(connect, version)) == [connect]
    assert decoder.version == version


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_a_stream_cut_anywhere_yields_the_same_packets(version, data):
    sent = data.draw(st.lists(packets(version), min_size=1, max_size=6))
    stream = b"".join(mqtt.encode(p, version) for p in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = mqtt.Decoder(version)
    received = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.feed(stream[start:end])
    assert received == sent
    assert decoder.buffered == 0


@pytest.mark.parametrize("version", [None, *VERSIONS])
@settings(max_examples=300)
@given(garbage=st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_protocol_errors(version, garbage):
    with contextlib.suppress(mqtt.ProtocolError):
        mqtt.Decoder(version, max_packet_size=1024).feed(garbage)


@pytest.mark.parametrize("version", VERSIONS)
@settings(max_examples=300)
@given(data=st.data())
def test_a_corrupted_packet_raises_only_protocol_errors(version, data):
    encoded = bytearray(mqtt.encode(data.draw(packets(version)), version))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(mqtt.ProtocolError):
        mqtt.Decoder(version).feed(bytes(encoded))


def test_a_packet_over_the_maximum_size_is_refused_before_it_is_buffered():
    decoder = mqtt.Decoder(mqtt.MQTT_5, max_packet_size=100)
    header = mqtt.encode(mqtt.Publish("t", b"x" * 200), mqtt.MQTT_5)[:3]
    with pytest.raises(mqtt.PacketTooLarge):
        decoder.feed(header)


def test_a_declared_length_arriving_a_byte_at_a_time_is_refused_once_it_is_whole():
    decoder = mqtt.Decoder(max_packet_size=1024)
    header = b"\x10" + wire.varint(200 * 1024 * 1024)  # a 200 MB CONNECT
    for byte in header[:-1]:
        assert decoder.feed(bytes((byte,))) == []
    assert decoder.buffered == len(header) - 1
    with pytest.raises(mqtt.PacketTooLarge, match="over the maximum of 1024"):
        decoder.feed(header[-1:])


@pytest.mark.parametrize("payload", [10, 300], ids=["one-byte length", "longer length"])
def test_a_packet_of_exactly_the_maximum_size_is_accepted_and_one_byte_more_is_not(payload):
    packet = mqtt.Publish("t", b"x" * payload)
    encoded = mqtt.encode(packet, mqtt.MQTT_5)
    assert mqtt.Decoder(mqtt.MQTT_5, max_packet_size=len(encoded)).feed(encoded) == [packet]
    with pytest.raises(mqtt.PacketTooLarge):
        mqtt.Decoder(mqtt.MQTT_5, max_packet_size=len(encoded) - 1).feed(encoded)


def test_by_default_a_decoder_takes_packets_up_to_mqtts_own_maximum():
    packet = mqtt.Publish("t", b"x" * (1024 * 1024))  # far over AWS's 128 KiB
    assert mqtt.Decoder(mqtt.MQTT_5).feed(mqtt.encode(packet, mqtt.MQTT_5)) == [packet]


def test_a_remaining_length_of_five_bytes_is_malformed():
    with pytest.raises(mqtt.MalformedPacket):
        mqtt.Decoder(mqtt.MQTT_5).feed(b"\x30\xff\xff\xff\xff\x01")


def test_a_server_wants_connect_first():
    with pytest.raises(mqtt.ProtocolError, match="before CONNECT"):
        mqtt.Decoder().feed(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))


def test_mqtt_3_1_is_an_unsupported_version():
    # CONNECT for MQTT 3.1: protocol name MQIsdp, level 3
    body = wire.string("MQIsdp") + bytes((3, 2)) + (60).to_bytes(2, "big") + wire.string("c")
    with pytest.raises(mqtt.UnsupportedProtocolVersion):
        mqtt.Decoder().feed(bytes((0x10, len(body))) + body)


def test_a_publish_topic_with_a_wildcard_is_refused():
    with pytest.raises(mqtt.ProtocolError, match="wildcard"):
        mqtt.Decoder(mqtt.MQTT_5).feed(mqtt.encode(mqtt.Publish("a/+/b"), mqtt.MQTT_5))


def test_a_property_not_allowed_in_its_packet_is_a_protocol_error():
    # CONNACK is not allowed to carry a Topic Alias (0x23).
    body = b"\x00\x00" + b"\x03\x23\x00\x01"
    with pytest.raises(mqtt.ProtocolError, match="topic_alias"):
        mqtt.Decoder(mqtt.MQTT_5).feed(bytes((0x20, len(body))) + body)


def test_connack_carries_v5_reason_codes_and_properties():
    ack = mqtt.ConnAck(
        mqtt.ReasonCode.QUOTA_EXCEEDED,
        properties=mqtt.Properties(reason_string="slow down", server_keep_alive=30),
    )
    assert mqtt.Decoder(mqtt.MQTT_5).feed(mqtt.encode(ack, mqtt.MQTT_5)) == [ack]


def test_a_servers_repeated_connack_is_decoded_once_and_shared():
    # mosquitto's CONNACK: Topic Alias Maximum 10, Receive Maximum 20.
    connack = b' \t\x00\x00\x06"\x00\n!\x00\x14'
    first, second = (mqtt.Decoder(mqtt.MQTT_5).feed(connack)[0] for _ in range(2))
    assert first == mqtt.ConnAck(
        properties=mqtt.Properties(topic_alias_maximum=10, receive_maximum=20)
    )
    assert first is second


def test_a_connack_decodes_by_the_connections_own_version():
    body = b"\x00\x00"  # success, no property block: complete in 3.1.1 only
    assert mqtt.Decoder(mqtt.MQTT_3_1_1).feed(b"\x20\x02" + body) == [mqtt.ConnAck()]
    with pytest.raises(mqtt.ProtocolError):
        mqtt.Decoder(mqtt.MQTT_5).feed(b"\x20\x02" + body)


def test_a_malformed_connack_is_refused_each_time_it_arrives():
    for _ in range(2):
        with pytest.raises(mqtt.MalformedPacket, match="bytes after the packet"):
            mqtt.Decoder(mqtt.MQTT_3_1_1).feed(b"\x20\x03\x00\x00\x00")


def test_repeated_property_blocks_are_decoded_once_and_shared():
    ack = mqtt.PubAck(7, 0x10, mqtt.Properties(reason_string="no subscribers"))
    first, second = (
        mqtt.Decoder(mqtt.MQTT_5).feed(mqtt.encode(ack, mqtt.MQTT_5))[0] for _ in range(2)
    )
    assert first == ack
    assert first.properties is second.properties


def test_a_bad_property_block_is_refused_each_time_it_arrives():
    body = b"\x00\x00" + b"\x03\x23\x00\x01"  # a Topic Alias in a CONNACK
    for _ in range(2):
        with pytest.raises(mqtt.ProtocolError, match="topic_alias"):
            mqtt.Decoder(mqtt.MQTT_5).feed(bytes((0x20, len(body))) + body)


def test_known_bytes_of_a_3_1_1_connect():
    # From the MQTT 3.1.1 specification's CONNECT layout: clean session, keepalive 10.
    packet = mqtt.Connect("c", protocol_version=mqtt.MQTT_3_1_1, keepalive=10)
    assert mqtt.encode(packet, mqtt.MQTT_3_1_1) == bytes.fromhex("100d00044d5154540402000a000163")


@pytest.mark.parametrize(
    "data",
    [b"\xc0\x80\x00", b"\x30\x82\x00" + bytes(2)],
    ids=["remaining length 0 in two bytes", "remaining length 2 in two bytes"],
)
def test_a_remaining_length_longer_than_it_needs_to_be_is_malformed(data):
    with pytest.raises(mqtt.MalformedPacket, match="minimal"):
        mqtt.Decoder(mqtt.MQTT_5).feed(data)


def test_a_property_identifier_longer_than_it_needs_to_be_is_malformed():
    # Payload Format Indicator (0x01) written as 0x81 0x00.
    body = wire.string("t") + b"\x03\x81\x00\x01"
    with pytest.raises(mqtt.MalformedPacket, match="minimal"):
        mqtt.Decoder(mqtt.MQTT_5).feed(bytes((0x30, len(body))) + body)


def _raw_connect(properties: bytes, flags: int = 0x02, payload: bytes = b"") -> bytes:
    body = (
        wire.string("MQTT") + bytes((5, flags)) + b"\x00\x3c" + properties + wire.string("c")
    ) + payload
    return bytes((0x10, len(body))) + body


@pytest.mark.parametrize(
    "properties",
    [b"\x03\x21\x00\x00", b"\x05\x27\x00\x00\x00\x00", b"\x02\x17\x02", b"\x02\x19\x02"],
    ids=[
        "Receive Maximum 0",
        "Maximum Packet Size 0",
        "Request Problem Information 2",
        "Request Response Information 2",
    ],
)
def test_a_connect_property_value_mqtt_5_rules_out_is_a_protocol_error(properties):
    with pytest.raises(mqtt.ProtocolError, match="property"):
        mqtt.Decoder().feed(_raw_connect(properties))


def test_a_will_with_an_empty_topic_is_a_protocol_error():
    will = b"\x00" + wire.string("") + wire.binary(b"gone")  # no will properties
    with pytest.raises(mqtt.ProtocolError, match="empty will topic"):
        mqtt.Decoder().feed(_raw_connect(b"\x00", flags=0x06, payload=will))


def _raw_subscribe(properties: bytes, topic_filter: str = "a/b", options: int = 0) -> bytes:
    body = b"\x00\x01" + properties + wire.string(topic_filter) + bytes((options,))
    return bytes((0x82, len(body))) + body


def test_a_subscription_identifier_of_0_is_a_protocol_error():
    with pytest.raises(mqtt.ProtocolError, match="Subscription Identifier 0"):
        mqtt.Decoder(mqtt.MQTT_5).feed(_raw_subscribe(b"\x02\x0b\x00"))


def test_a_subscribe_with_two_subscription_identifiers_is_a_protocol_error():
    with pytest.raises(mqtt.ProtocolError, match="given twice"):
        mqtt.Decoder(mqtt.MQTT_5).feed(_raw_subscribe(b"\x04\x0b\x01\x0b\x02"))


def test_no_local_on_a_shared_subscription_is_a_protocol_error():
    with pytest.raises(mqtt.ProtocolError, match="No Local"):
        mqtt.Decoder(mqtt.MQTT_5).feed(_raw_subscribe(b"\x00", "$share/g/a/b", options=0x04))


@pytest.mark.parametrize(
    ("version", "data"),
    [
        (mqtt.MQTT_5, b"\x20\x05\x00\x00\x02\x24\x02"),
        (mqtt.MQTT_5, b"\x20\x06\x00\x00\x03\x21\x00\x00"),
        (mqtt.MQTT_5, b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\x00"),
        (mqtt.MQTT_5, b"\x20\x03\x01\x87\x00"),
        (mqtt.MQTT_3_1_1, b"\x20\x02\x01\x05"),
    ],
    ids=[
        "Maximum QoS 2",
        "Receive Maximum 0",
        "Maximum Packet Size 0",
        "session present with 0x87",
        "3.1.1 session present with 0x05",
    ],
)
def test_a_connack_a_client_must_not_take_is_a_protocol_error(version, data):
    with pytest.raises(mqtt.ProtocolError, match="CONNACK"):
        mqtt.Decoder(version).feed(data)
