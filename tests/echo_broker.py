"""A tiny MQTT broker built on our server end, so that clients nobody here wrote
(paho through aiomqtt, mosquitto_pub) can check the codec from the other side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from loadgen import mqtt
from loadgen.mqtt import topics

# How a broker answers a CONNECT, given how many CONNECTs that client id sent
# before: None accepts; an int refuses with that CONNACK code; "close" hangs up.
Decide = Callable[[mqtt.Connect, int], "int | str | None"]


@dataclass
class EchoBroker:
    """Accepts everyone (or as ``decide`` says); delivers each PUBLISH to
    matching subscriptions."""

    decide: Decide = lambda _connect, _seen: None
    puback_code: int | None = 0  # each PUBACK's reason code (MQTT 5); None: no PUBACK
    suback_code: int | None = None  # each SUBACK's code; None grants the QoS asked (at most 1)
    server_keep_alive: int | None = None  # in each MQTT 5 CONNACK, when given
    connects: dict[str, int] = field(default_factory=dict)
    received: list[mqtt.Packet] = field(default_factory=list)
    subscribers: list[tuple[str, mqtt.Connection, asyncio.Transport]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def protocol(self) -> asyncio.Protocol:
        return _ServerProtocol(self)


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, broker: EchoBroker) -> None:
        self.broker = broker
        self.conn = mqtt.Connection(mqtt.Role.SERVER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.conn.receive(data)
        except mqtt.ProtocolError as exc:
            self.broker.errors.append(exc)
            self.transport.close()
            return
        for packet in packets:
            self.broker.received.append(packet)
            self._answer(packet)

    def _answer(self, packet: mqtt.Packet) -> None:
        assert self.transport is not None
        send = self.transport.write
        if isinstance(packet, mqtt.Connect):
            seen = self.broker.connects.get(packet.client_id, 0)
            self.broker.connects[packet.client_id] = seen + 1
            answer = self.broker.decide(packet, seen)
            if answer == "close":
                self.transport.close()
            else:
                keep = self.broker.server_keep_alive
                properties = (
                    mqtt.Properties(server_keep_alive=keep)
                    if keep is not None and packet.protocol_version == mqtt.MQTT_5
                    else mqtt.Properties()
                )
                send(self.conn.send(mqtt.ConnAck(int(answer or 0), properties=properties)))
        elif isinstance(packet, mqtt.Subscribe):
            for s in packet.subscriptions:
                self.broker.subscribers.append((s.topic_filter, self.conn, self.transport))
            code = self.broker.suback_code
            codes = tuple(min(s.qos, 1) if code is None else code for s in packet.subscriptions)
            send(self.conn.send(mqtt.SubAck(packet.packet_id, codes)))
        elif isinstance(packet, mqtt.Publish):
            code = self.broker.puback_code
            if packet.qos == 1 and packet.packet_id is not None and code is not None:
                send(self.conn.send(mqtt.PubAck(packet.packet_id, code)))
            for topic_filter, conn, transport in self.broker.subscribers:
                if topics.matches(topic_filter, packet.topic) and not transport.is_closing():
                    transport.write(conn.send(mqtt.Publish(packet.topic, packet.payload)))
        elif isinstance(packet, mqtt.PingReq):
            send(self.conn.send(mqtt.PingResp()))
        elif isinstance(packet, mqtt.Unsubscribe):
            codes = (0,) * len(packet.topic_filters)
            send(self.conn.send(mqtt.UnsubAck(packet.packet_id, codes)))
        elif isinstance(packet, mqtt.Disconnect):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.subscribers = [s for s in self.broker.subscribers if s[1] is not self.conn]
