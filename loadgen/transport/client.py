"""An MQTT client connection over TCP and TLS on asyncio, phase by phase.

TCP and TLS are two steps (``create_connection``, then ``start_tls``) so each has
its own timestamp. The MQTT state lives in ``loadgen.mqtt.Connection``; this
module only moves bytes and wakes whoever waits for an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadgen import mqtt
from loadgen.mqtt.reason import reason_name
from loadgen.transport.errors import (
    AckRefused,
    Closed,
    PeerProtocolError,
    Refused,
    TlsRejected,
    TransportError,
    Unreachable,
)
from loadgen.transport.timing import AttemptTimes

Clock = Callable[[], float]


@dataclass(frozen=True)
class Target:
    """Where to connect. ``host`` should already be an address: resolving names
    on the timed path would put the resolver's latency into every device's."""

    host: str
    port: int
    server_name: str | None = None  # SNI and the hostname check; None: no SNI
    source_address: str | None = None  # the local address to connect from


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed by the server"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Protocol(asyncio.Protocol):
    def __init__(self, times: AttemptTimes, clock: Clock) -> None:
        self.conn = mqtt.Connection(mqtt.Role.CLIENT)
        self.times = times
        self.clock = clock
        self.transport: asyncio.BaseTransport | None = None
        self.waiters: dict[object, asyncio.Future[mqtt.Packet]] = {}
        self.error: TransportError | None = None
        self.phase = "tcp"
        self.publishes_received = 0
        self.bytes_received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.times.tcp_connected = self.clock()

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            packets = self.conn.receive(data)
        except mqtt.ProtocolError as exc:
            self._fail(PeerProtocolError(f"MQTT: {exc}", self.phase))
            if self.transport is not None:
                self.transport.abort()  # type: ignore[attr-defined]
            return
        for packet in packets:
            self._dispatch(packet)

    def _dispatch(self, packet: mqtt.Packet) -> None:
        key: object
        if isinstance(packet, mqtt.ConnAck):
            self.times.connack = self.clock()
            key = "connack"
        elif isinstance(packet, mqtt.PubAck):
            self.times.pubacks.append(self.clock())
            key = ("puback", packet.packet_id)
        elif isinstance(packet, (mqtt.SubAck, mqtt.UnsubAck)):
            key = (type(packet).__name__, packet.packet_id)
        elif isinstance(packet, mqtt.PingResp):
            key = "pingresp"
        elif isinstance(packet, mqtt.Publish):
            self.publishes_received += 1
            if packet.qos == 1 and packet.packet_id is not None:
                self.write(mqtt.PubAck(packet.packet_id))
            return
        elif isinstance(packet, mqtt.Disconnect):
            code = reason_name(packet.reason_code, mqtt.MQTT_5)
            self._fail(Closed(f"server sent DISCONNECT {code}", self.phase))
            return
        else:
            return
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError):
            error: TransportError = TlsRejected(_describe(exc), self.phase)
        elif (
            isinstance(exc, ConnectionResetError)
            and self.times.tls_done is not None
            and self.phase == "connack"
            and not self.bytes_received
        ):
            # With TLS 1.3 the server judges the client certificate after the
            # client's handshake is done; its alert races our CONNECT, and the
            # reset that CONNECT provokes often destroys the unread alert.
            error = TlsRejected(
                "TLS: reset right after the handshake, before any MQTT answer "
                "(the server rejected the client certificate)",
                self.phase,
            )
        else:
            error = Closed(_describe(exc), self.phase)
        self._fail(error)

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(self.error)
        self.waiters.clear()

    def write(self, packet: mqtt.Packet) -> None:
        data = self.conn.send(packet)
        assert self.transport is not None
        self.transport.write(data)  # type: ignore[attr-defined]

    def expect(self, key: object) -> asyncio.Future[mqtt.Packet]:
        if self.error is not None:
            raise self.error
        waiter: asyncio.Future[mqtt.Packet] = asyncio.get_running_loop().create_future()
        self.waiters[key] = waiter
        return waiter


class MqttClient:
    """A connected device. Every method raises a ``TransportError`` subclass when
    the connection fails; timeouts are the caller's (``asyncio.timeout``)."""

    def __init__(self, protocol: _Protocol) -> None:
        self._p = protocol

    @property
    def times(self) -> AttemptTimes:
        return self._p.times

    @property
    def version(self) -> int:
        assert self._p.conn.version is not None
        return self._p.conn.version

    @property
    def phase(self) -> str:
        """What the connection was doing last: connack, publish, subscribe, hold."""
        return self._p.phase

    @property
    def publishes_received(self) -> int:
        return self._p.publishes_received

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Send a PUBLISH; at QoS 1, return when its PUBACK arrives."""
        p = self._p
        p.phase = "publish"
        if qos == 0:
            self._check()
            p.write(mqtt.Publish(topic, payload))
            p.times.publishes_sent.append(p.clock())
            return
        packet_id = p.conn.next_packet_id()
        waiter = p.expect(("puback", packet_id))
        p.write(mqtt.Publish(topic, payload, qos=1, packet_id=packet_id))
        p.times.publishes_sent.append(p.clock())
        ack = await waiter
        assert isinstance(ack, mqtt.PubAck)
        if ack.reason_code >= 0x80:
            raise AckRefused(
                f"PUBACK {reason_name(ack.reason_code, self.version)}",
                "publish",
                ack.reason_code,
                self.version,
            )

    async def subscribe(self, topic_filter: str, qos: int = 0) -> int:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS. A failure code
        raises ``AckRefused`` (0x80 in both versions; MQTT 5 has finer ones)."""
        p = self._p
        p.phase = "subscribe"
        packet_id = p.conn.next_packet_id()
        waiter = p.expect(("SubAck", packet_id))
        p.write(mqtt.Subscribe(packet_id, (mqtt.Subscription(topic_filter, qos),)))
        ack = await waiter
        assert isinstance(ack, mqtt.SubAck)
        code = ack.reason_codes[0] if ack.reason_codes else 0x80
        if code >= 0x80:
            raise AckRefused(f"SUBACK 0x{code:02x} for {topic_filter}", "subscribe", code, 5)
        return code

    async def ping(self) -> None:
        p = self._p
        waiter = p.expect("pingresp")
        p.write(mqtt.PingReq())
        await waiter

    async def hold(self, seconds: float, keepalive: float) -> None:
        """Stay connected for ``seconds``, sending PINGREQ every ``keepalive``."""
        p = self._p
        p.phase = "hold"
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            self._check()
            left = end - loop.time()
            if left <= 0:
                return
            if keepalive <= 0 or left < keepalive:
                await asyncio.sleep(left)
                continue
            await asyncio.sleep(keepalive)
            await self.ping()

    def _check(self) -> None:
        if self._p.error is not None:
            raise self._p.error

    def disconnect(self) -> None:
        """Send DISCONNECT (if still open) and close; never raises."""
        p = self._p
        transport = p.transport
        if transport is None or transport.is_closing():
            return
        if p.error is None and p.conn.state is mqtt.State.CONNECTED:
            with contextlib.suppress(mqtt.ProtocolError, OSError):
                p.write(mqtt.Disconnect())
        transport.close()

    def abort(self) -> None:
        if self._p.transport is not None:
            self._p.transport.abort()  # type: ignore[attr-defined]


async def connect(
    target: Target,
    ssl_context: ssl.SSLContext | None,
    connect_packet: mqtt.Connect,
    times: AttemptTimes,
    *,
    clock: Clock = time.monotonic,
) -> MqttClient:
    """TCP, then TLS (unless ``ssl_context`` is None), then CONNECT and CONNACK.

    Returns a connected client, or raises the ``TransportError`` subclass for the
    phase that failed. The caller bounds the whole in ``asyncio.timeout`` and
    calls ``abort`` on what it got if that fires.
    """
    loop = asyncio.get_running_loop()
    protocol = _Protocol(times, clock)
    local = (target.source_address, 0) if target.source_address else None
    try:
        transport, _ = await loop.create_connection(
            lambda: protocol, target.host, target.port, local_addr=local
        )
    except ConnectionRefusedError as exc:
        raise Refused(_describe(exc), "tcp") from None
    except socket.gaierror as exc:
        raise Unreachable(f"DNS: {exc.strerror or exc}", "tcp") from None
    except OSError as exc:
        raise Unreachable(_describe(exc), "tcp") from None
    client = MqttClient(protocol)
    try:
        if ssl_context is not None:
            protocol.phase = "tls"
            try:
                tls = await loop.start_tls(
                    transport, protocol, ssl_context, server_hostname=target.server_name
                )
            except ssl.SSLError as exc:
                raise TlsRejected(_describe(exc), "tls") from None
            except (ConnectionError, OSError) as exc:
                raise Closed(_describe(exc), "tls") from None
            if tls is None:
                raise Closed("closed during the TLS handshake", "tls")
            protocol.transport = tls
            times.tls_done = clock()
        protocol.phase = "connack"
        waiter = protocol.expect("connack")
        protocol.write(connect_packet)
        times.connect_sent = clock()
        ack = await waiter
    except BaseException:
        client.abort()
        raise
    assert isinstance(ack, mqtt.ConnAck)
    if ack.reason_code:
        version = connect_packet.protocol_version
        client.abort()
        raise AckRefused(
            f"CONNACK {reason_name(ack.reason_code, version)}", "connack", ack.reason_code, version
        )
    return client
