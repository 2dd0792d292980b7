"""Connection state: what each end may send and receive, and when."""

from __future__ import annotations

import pytest

from loadgen import mqtt
from loadgen.mqtt import Connection, Role, State


def _pair(version: int = mqtt.MQTT_5) -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive(client.send(mqtt.Connect("dev", protocol_version=version)))
    return client, server


def test_a_successful_handshake_connects_both_ends():
    client, server = _pair()
    assert server.state is State.CONNECTING and server.version == mqtt.MQTT_5
    assert client.receive(server.send(mqtt.ConnAck())) == [mqtt.ConnAck()]
    assert client.state is server.state is State.CONNECTED


@pytest.mark.parametrize(
    ("version", "code"),
    [(mqtt.MQTT_5, mqtt.ReasonCode.NOT_AUTHORIZED), (mqtt.MQTT_3_1_1, 5)],
)
def test_a_refused_connack_closes_both_ends(version, code):
    client, server = _pair(version)
    (ack,) = client.receive(server.send(mqtt.ConnAck(code)))
    assert ack.reason_code == code
    assert client.state is server.state is State.CLOSED


def test_a_client_cannot_publish_before_connack():
    client, _ = _pair()
    with pytest.raises(mqtt.ProtocolError, match="before CONNACK"):
        client.send(mqtt.Publish("t"))


def test_a_client_sends_connect_first():
    with pytest.raises(mqtt.ProtocolError, match="CONNECT first"):
        Connection(Role.CLIENT).send(mqtt.PingReq())


def test_a_second_connect_is_a_protocol_error_and_ends_what_the_server_end_receives():
    _client, server = _pair()
    server.send(mqtt.ConnAck())
    again = mqtt.encode(mqtt.Connect("dev"), mqtt.MQTT_5)
    with pytest.raises(mqtt.ProtocolError, match="twice") as info:
        server.receive(again)
    assert server.fault is info.value
    with pytest.raises(mqtt.ProtocolError, match="after the connection closed"):
        server.receive(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))


def test_packet_ids_skip_unacknowledged_publishes_and_puback_frees_them():
    client, server = _pair()
    client.receive(server.send(mqtt.ConnAck()))
    first = client.next_packet_id()
    server.receive(client.send(mqtt.Publish("t", b"x", qos=1, packet_id=first)))
    assert client.unacknowledged == {first}
    client.receive(server.send(mqtt.PubAck(first)))
    assert client.unacknowledged == set()
    assert client.next_packet_id() == first + 1


def test_disconnect_closes_the_connection():
    client, server = _pair()
    client.receive(server.send(mqtt.ConnAck()))
    server.receive(client.send(mqtt.Disconnect()))
    assert client.state is server.state is State.CLOSED


def test_a_client_may_send_packets_right_after_connect():
    server = Connection(Role.SERVER)
    pipelined = mqtt.encode(mqtt.Connect("dev"), mqtt.MQTT_5) + mqtt.encode(
        mqtt.Subscribe(1, (mqtt.Subscription("a/#"),)), mqtt.MQTT_5
    )
    connect, subscribe = server.receive(pipelined)
    assert isinstance(connect, mqtt.Connect) and isinstance(subscribe, mqtt.Subscribe)
    server.send(mqtt.ConnAck())
    server.send(mqtt.SubAck(1, (0,)))
    assert server.state is State.CONNECTED


def test_a_connect_over_the_servers_maximum_closes_it_before_a_session_exists():
    server = Connection(Role.SERVER, max_packet_size=64)
    connect = mqtt.encode(mqtt.Connect("d" * 100), mqtt.MQTT_5)
    with pytest.raises(mqtt.PacketTooLarge) as raised:
        server.receive(connect[:3])
    assert raised.value.reason_code == mqtt.ReasonCode.PACKET_TOO_LARGE
    # No CONNECT was taken: there is no session to send a DISCONNECT to.
    assert server.state is State.NEW and server.version is None


def test_a_packet_over_the_servers_maximum_after_connect_keeps_the_sessions_version():
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, max_packet_size=64)
    server.receive(client.send(mqtt.Connect("dev")))
    client.receive(server.send(mqtt.ConnAck()))
    with pytest.raises(mqtt.PacketTooLarge):
        server.receive(client.send(mqtt.Publish("t", b"x" * 100)))
    # The version says how to answer: MQTT 5 DISCONNECT 0x95 Packet too large.
    assert server.version == mqtt.MQTT_5
    assert server.send(mqtt.Disconnect(0x95)) == mqtt.encode(mqtt.Disconnect(0x95), mqtt.MQTT_5)


def test_packets_whole_before_malformed_bytes_in_the_same_read_come_with_the_error():
    client, server = _pair()
    accepted = server.send(mqtt.ConnAck())
    with pytest.raises(mqtt.ProtocolError) as info:
        client.receive(accepted + b"\xff\x00")  # a reserved packet type
    assert info.value.received == (mqtt.ConnAck(),)
    assert client.state is State.CONNECTED and client.fault is info.value


def test_packets_before_a_fault_can_still_be_answered_by_the_server():
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    connect = client.send(mqtt.Connect("dev"))
    with pytest.raises(mqtt.MalformedPacket) as info:
        server.receive(connect + b"\xff\x00")  # a reserved packet type
    assert info.value.received == (mqtt.Connect("dev"),)
    # The CONNECT is answered as if it had come alone; then the fault is told.
    assert client.receive(server.send(mqtt.ConnAck())) == [mqtt.ConnAck()]
    assert client.receive(server.send(mqtt.Disconnect(0x81))) == [mqtt.Disconnect(0x81)]


def test_packets_before_one_the_state_refuses_come_with_the_error():
    client, server = _pair()
    # A second CONNACK breaks the protocol; the first, in the same read, stands.
    twice = server.send(mqtt.ConnAck()) + mqtt.encode(mqtt.ConnAck(), mqtt.MQTT_5)
    with pytest.raises(mqtt.ProtocolError) as info:
        client.receive(twice)
    assert info.value.received == (mqtt.ConnAck(),)
