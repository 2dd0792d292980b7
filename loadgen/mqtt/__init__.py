"""MQTT 3.1.1 and 5.0 without I/O: packets, their codec, and connection state.

Bytes in, packets out (the style of h11 and wsproto); the same code serves the
device simulators and the emulator's broker side.
"""

from loadgen.mqtt.codec import MAX_PACKET_SIZE, Decoder, encode
from loadgen.mqtt.connection import Connection, Role, State
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
from loadgen.mqtt.properties import EMPTY, Properties
from loadgen.mqtt.reason import ConnackReturnCode, ReasonCode

__all__ = [
    "EMPTY",
    "MAX_PACKET_SIZE",
    "MQTT_3_1_1",
    "MQTT_5",
    "Auth",
    "ConnAck",
    "ConnackReturnCode",
    "Connect",
    "Connection",
    "Decoder",
    "Disconnect",
    "MalformedPacket",
    "Packet",
    "PacketTooLarge",
    "PingReq",
    "PingResp",
    "Properties",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "ReasonCode",
    "Role",
    "State",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "UnsupportedProtocolVersion",
    "Will",
    "encode",
]
