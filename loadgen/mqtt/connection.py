"""One MQTT connection's protocol state, either end, without I/O.

``send(packet)`` checks that the packet may be sent now and returns its bytes;
``receive(data)`` takes bytes from the peer and returns the packets in them,
checking that each may arrive now. Whoever owns the socket moves the bytes. The
device simulators drive the client end; the emulator drives the server end.
"""

from __future__ import annotations

from collections.abc import Set
from enum import Enum

from loadgen.mqtt.codec import MAX_PACKET_SIZE, Decoder, encode
from loadgen.mqtt.errors import ProtocolError
from loadgen.mqtt.packets import (
    MQTT_5,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PubAck,
    Publish,
    Subscribe,
    Unsubscribe,
)


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    NEW = "new"  # nothing exchanged yet
    CONNECTING = "connecting"  # CONNECT sent (client) or received (server)
    CONNECTED = "connected"  # CONNACK with success
    CLOSED = "closed"  # refused, or DISCONNECT either way


_PACKET_IDS = 0xFFFF
# Until this end sends a QoS 1 PUBLISH: most connections never do (an empty set
# is 216 bytes, for each of tens of thousands of held connections).
_NONE_UNACKNOWLEDGED: frozenset[int] = frozenset()


class Connection:
    __slots__ = ("_decoder", "_next_id", "fault", "role", "state", "unacknowledged", "version")

    def __init__(self, role: Role, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.role = role
        self.state = State.NEW
        self.version: int | None = None
        self._decoder = Decoder(max_packet_size=max_packet_size)
        self._next_id = 0
        # QoS 1 PUBLISHes this end sent and the peer has not acknowledged yet.
        self.unacknowledged: Set[int] = _NONE_UNACKNOWLEDGED
        # What the peer broke: nothing more is received. The packets before it
        # stand, and leave the state as they made it, so that this end may
        # still answer them, then say why it ends (an MQTT 5 DISCONNECT).
        self.fault: ProtocolError | None = None

    # Sending

    def send(self, packet: Packet) -> bytes:
        if self.state is State.CLOSED:
            raise ProtocolError(f"cannot send {type(packet).__name__}: the connection is closed")
        if self.role is Role.CLIENT:
            self._client_sends(packet)
        else:
            self._server_sends(packet)
        assert self.version is not None
        data = encode(packet, self.version)
        if isinstance(packet, Publish) and packet.qos == 1 and packet.packet_id is not None:
            pending = self.unacknowledged
            if not isinstance(pending, set):
                pending = self.unacknowledged = set()
            pending.add(packet.packet_id)
        if isinstance(packet, Disconnect):
            self.state = State.CLOSED
        return data

    def _client_sends(self, packet: Packet) -> None:
        if self.state is State.NEW:
            if not isinstance(packet, Connect):
                raise ProtocolError(f"a client sends CONNECT first, not {type(packet).__name__}")
            self.version = packet.protocol_version
            self._decoder.version = packet.protocol_version
            self.state = State.CONNECTING
        elif isinstance(packet, Connect):
            raise ProtocolError("CONNECT sent twice")
        elif self.state is State.CONNECTING and not isinstance(packet, Disconnect):
            raise ProtocolError(f"cannot send {type(packet).__name__} before CONNACK")

    def _server_sends(self, packet: Packet) -> None:
        if self.state is State.NEW:
            raise ProtocolError("a server sends nothing before the client's CONNECT")
        if self.state is State.CONNECTING:
            if isinstance(packet, ConnAck):
                self.state = State.CLOSED if packet.reason_code else State.CONNECTED
                return
            if not (isinstance(packet, Disconnect) and self.version == MQTT_5):
                raise ProtocolError(f"a server answers CONNECT with CONNACK, not {packet}")
        elif isinstance(packet, ConnAck):
            raise ProtocolError("CONNACK sent twice")

    def next_packet_id(self) -> int:
        """A packet identifier not in use by an unacknowledged PUBLISH."""
        for _ in range(_PACKET_IDS):
            self._next_id = self._next_id % _PACKET_IDS + 1
            if self._next_id not in self.unacknowledged:
                return self._next_id
        raise ProtocolError("all 65,535 packet identifiers are in use")

    # Receiving

    def receive(self, data: bytes) -> list[Packet]:
        if self.state is State.CLOSED or self.fault is not None:
            if data:
                raise ProtocolError("data after the connection closed")
            return []
        fault: ProtocolError | None = None
        try:
            packets = self._decoder.feed(data)
        except ProtocolError as exc:
            packets, fault = list(exc.received), exc
        for i, packet in enumerate(packets):
            try:
                self._check_received(packet)
            except ProtocolError as exc:
                fault, exc.received = exc, tuple(packets[:i])
                break
        if fault is not None:
            self.fault = fault
            raise fault
        return packets

    def _check_received(self, packet: Packet) -> None:
        if self.state is State.CLOSED:
            raise ProtocolError(f"{type(packet).__name__} after the connection closed")
        if isinstance(packet, Disconnect):
            self.state = State.CLOSED
            return
        if self.role is Role.SERVER:
            # Clients may send packets right after CONNECT, before its CONNACK
            # (MQTT 3.1.1 section 3.1.4, 5.0 section 3.1.4): the application
            # answers them in order, once it has answered the CONNECT.
            if isinstance(packet, Connect):
                if self.state is not State.NEW:
                    raise ProtocolError("CONNECT received twice")
                self.version = packet.protocol_version
                self.state = State.CONNECTING
            return
        if self.state is State.CONNECTING:
            if not isinstance(packet, ConnAck):
                raise ProtocolError(f"expected CONNACK, got {type(packet).__name__}")
            self.state = State.CLOSED if packet.reason_code else State.CONNECTED
            return
        if isinstance(packet, ConnAck):
            raise ProtocolError("CONNACK received twice")
        if isinstance(packet, (Subscribe, Unsubscribe, Connect)):
            raise ProtocolError(f"a server does not send {type(packet).__name__}")
        if isinstance(packet, PubAck):
            pending = self.unacknowledged
            if isinstance(pending, set):
                pending.discard(packet.packet_id)
