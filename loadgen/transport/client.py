"""An MQTT client connection over TCP and TLS on asyncio, phase by phase.

TLS is an ``ssl.SSLObject`` over memory BIOs that this module feeds from a
non-blocking socket, not asyncio's TLS transport (whose buffers cost 12 KiB more
per connection). An SSLObject takes its certificate from its context when it is
made, so one shared context per worker serves every device: see
``loadgen.transport.tls.ClientTls``. TCP connect and TLS handshake are separate
steps, each with its own timestamp. The MQTT state
lives in ``loadgen.mqtt.Connection``; this module only moves bytes and wakes
whoever waits for an answer.

Connecting is driven by the event loop's callbacks alone (socket writable: TCP is
up; each readable: the next handshake flight, then CONNECT), and the caller waits
on one future, for the CONNACK. Awaiting each step instead cost a future and a
task step apiece: the client's CPU per connect was 1.21 to 1.29x that of
`openssl s_time`'s handshake then, 1.14 to 1.16x now, about 1.08x a bare callback
state machine's (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadgen import mqtt
from loadgen.mqtt.reason import reason_name
from loadgen.transport.errors import (
    AckRefused,
    Closed,
    ClosedBeforeTls,
    DeviceFilesError,
    NotTls,
    PeerProtocolError,
    Refused,
    TlsRejected,
    TransportError,
    Unreachable,
)
from loadgen.transport.keepalive import Holds
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import TlsSession

Clock = Callable[[], float]


# Linux: a socket bound to a source address gets its port at connect(), from
# the ports free for that destination. bind() picking it searches the ports
# bound on that address, and past about 14,000 (half the ephemeral range) each
# bind cost 5.3 ms of kernel CPU (measured here), enough to stall a box holding
# tens of thousands of devices from a few source addresses.
_NO_PORT_AT_BIND: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)


def family_of(address: str) -> socket.AddressFamily:
    """The family of a socket that connects to, or binds, ``address`` (an IPv6
    address has a colon; a name is taken as IPv4, as binding it resolves it)."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@dataclass(frozen=True)
class Target:
    """Where to connect. ``host`` should already be an address: resolving names
    on the timed path would put the resolver's latency into every device's."""

    host: str
    port: int
    server_name: str | None = None  # SNI and the hostname check; None: no SNI
    source_address: str | None = None  # the local address to connect from
    # (host, port) when host is an address: parsed once, not per connect.
    address: tuple[str, int] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return
        object.__setattr__(self, "address", (self.host, self.port))


def describe_error(exc: BaseException | None) -> str:
    if exc is None:
        return "closed by the server"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, DeviceFilesError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _dropped(exc: BaseException | None) -> bool:
    """Whether TLS says the peer ended the connection without close_notify.
    Python 3.11.0-3.11.2 raise a plain ``SSLError`` for it, later releases
    ``SSLEOFError``."""
    return isinstance(exc, ssl.SSLEOFError) or (
        isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING"
    )


def lost_after_handshake(
    exc: BaseException | None, phase: str, *, tls: bool, heard: bool
) -> TransportError:
    """What a connection lost in ``phase``, once the server has spoken TLS, says:
    ``exc`` its error (None: closed cleanly), ``heard`` whether any MQTT came
    first. The one judgement of both drivers."""
    if isinstance(exc, ssl.SSLError) and not _dropped(exc):
        return TlsRejected(describe_error(exc), phase)
    if (
        (isinstance(exc, ConnectionResetError) or _dropped(exc))
        and tls
        and phase == "connack"
        and not heard
    ):
        # With TLS 1.3 the server judges the client certificate after the
        # client's handshake is done. Its alert races our CONNECT, and the
        # reset that CONNECT provokes often destroys the unread alert; some
        # servers drop the connection without any alert or close_notify.
        # (A server that merely closes, as JITP's first connect does, sends
        # close_notify: that reads as a clean end, "closed".)
        how = "reset" if isinstance(exc, ConnectionResetError) else "dropped without close_notify"
        return TlsRejected(
            f"TLS: {how} right after the handshake, before any MQTT answer "
            "(the server rejected the client certificate)",
            phase,
        )
    return Closed(describe_error(exc), phase)


_READ_SIZE = 65536
_DISCONNECT = mqtt.Disconnect()  # packets are immutable: one serves every device
# OpenSSL's reasons for a first answer that is no TLS record: an HTTP, MQTT or
# other plain-text server on the port.
NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
    }
)


class _Channel:
    """One socket, TLS or not, its MQTT state, and who waits for what."""

    # Slots: a connected device keeps one of these for as long as it holds on.
    __slots__ = (
        "_connect_bytes",
        "_connecting",
        "_heard",
        "_out",
        "_reading",
        "_writing",
        "bytes_received",
        "clock",
        "closed",
        "conn",
        "error",
        "fd",
        "loop",
        "phase",
        "pingresps",
        "publishes_received",
        "sent_at",
        "server_keepalive",
        "sock",
        "times",
        "tls",
        "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        tls: TlsSession | None,
        times: AttemptTimes,
        clock: Clock,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.conn = mqtt.Connection(mqtt.Role.CLIENT)
        self.times = times
        self.clock = clock
        self.waiters: dict[object, asyncio.Future[Any]] = {}
        self.error: TransportError | None = None
        self.phase = "tcp"
        self.publishes_received = 0
        self.pingresps = 0
        self.sent_at = loop.time()  # the last MQTT packet's: keepalive counts from it
        # An MQTT 5 CONNACK's Server Keep Alive (0: none): the keepalive the
        # server holds this client to, whatever its CONNECT asked.
        self.server_keepalive = 0
        self.bytes_received = 0
        self.closed = False
        self._out = bytearray()
        self._writing = False
        self._connecting = False  # a writer waits for TCP to come up
        self._heard = False  # the server sent something during the TLS handshake
        self._reading = False
        self._connect_bytes = b""

    def start(self, address: tuple[Any, ...], connect_packet: mqtt.Connect) -> None:
        """Begin TCP, then TLS, then CONNECT, each step started by the callback of
        the one before. The outcome arrives on the "connack" waiter."""
        # Encoded first: a CONNECT the codec refuses raises here, in the caller.
        self._connect_bytes = self.conn.send(connect_packet)
        # Reader and writer registered together share one poll handle for the
        # connection's life: registered one after the other, each costs the
        # event loop a handle and more epoll_ctl calls (measured with strace: 12
        # per connect, now 8). The reader ignores the socket until TCP is up.
        self._reading = True
        self.loop.add_reader(self.fd, self._readable)
        code = self.sock.connect_ex(address)
        if code == 0 or (code == errno.EINPROGRESS and self._established()):
            self._tcp_up()
        elif code in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
            self._connecting = True
            self.loop.add_writer(self.fd, self._tcp_writable)
        else:
            self._tcp_failed(code)

    def _established(self) -> bool:
        """Whether TCP came up during ``connect_ex`` itself, as it often does on
        loopback. Then the handshake starts at once: waiting for the socket to
        turn writable costs a wake-up of the event loop and a writer registered
        and removed again, about 1% of the client's CPU per connect
        (docs/benchmarks.md)."""
        try:
            self.sock.getpeername()
        except OSError:
            return False  # ENOTCONN: SYN sent, or already refused (SO_ERROR says)
        return True

    def _tcp_writable(self) -> None:
        self._connecting = False
        self.loop.remove_writer(self.fd)
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._tcp_failed(code)
        else:
            self._tcp_up()

    def _tcp_failed(self, code: int) -> None:
        exc = OSError(code, os.strerror(code))  # the OSError subclass for the code
        if isinstance(exc, ConnectionResetError):
            # TCP came up and the server reset it before we looked (a connection
            # limit, say): a connection turned away, as one reset a moment later.
            self.times.tcp_connected = self.clock()
            self.phase = "tls" if self.tls is not None else "connack"
            self._lost(exc)
            return
        if isinstance(exc, ConnectionRefusedError):
            self._fail(Refused(describe_error(exc), "tcp"))
        else:
            self._fail(Unreachable(describe_error(exc), "tcp"))
        self.close()

    def _tcp_up(self) -> None:
        self.times.tcp_connected = self.clock()
        if self.tls is None:
            self._send_connect()
        else:
            self.phase = "tls"
            self._handshake()

    def _handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            tls.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._send_tls_output()
            return
        except ssl.SSLError as exc:
            if exc.reason in NOT_TLS:
                error: TransportError = NotTls(
                    f"{describe_error(exc)} (the server does not speak TLS here)", "tls"
                )
            else:
                error = TlsRejected(describe_error(exc), "tls")
            self._fail(error)
            self._send_tls_output()  # the alert, for the server's log
            self.close()
            return
        self.times.tls_done = self.clock()
        if tls.idle is not None:
            tls.idle.handshake_done(tls.pointer)
        # The client's Finished stays in the outgoing BIO: the CONNECT's record
        # joins it there and both go out in one segment, one system call fewer
        # (TLS 1.3 lets application data follow the Finished at once).
        self._send_connect()
        if tls.incoming.pending and not self.closed:
            self._read_tls()  # records that came with the server's last flight

    def _send_connect(self) -> None:
        self.phase = "connack"
        self._send(self._connect_bytes)
        self.times.connect_sent = self.clock()

    def _readable(self) -> None:
        if self._connecting:
            return  # a failed connect: the writer's callback reads SO_ERROR
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        try:
            if self.phase == "tls":
                assert self.tls is not None
                if not data:
                    self._lost(None)
                    return
                self._heard = True
                self.tls.incoming.write(data)
                self._handshake()
                return
            if self.tls is None:
                if not data:
                    self._lost(None)
                else:
                    self.bytes_received += len(data)
                    self._received(data)
                return
            if data:
                self.tls.incoming.write(data)
            else:
                self.tls.incoming.write_eof()
            self._read_tls()
        finally:
            if data and not self.closed:
                # uvloop calls a reader once for a socket whose reset came with
                # data, then drops it (libuv stops polling at EPOLLERR): the
                # reset, pending behind the data just read, would never be read.
                # SO_ERROR tells it (about 0.3 µs; a recv to EAGAIN costs more).
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    self._lost(OSError(code, os.strerror(code)))

    def _read_tls(self) -> None:
        tls = self.tls
        assert tls is not None
        incoming, sslobj = tls.incoming, tls.sslobj
        while not self.closed:
            try:
                plain = sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                if tls.outgoing.pending:
                    self._send_tls_output()  # e.g. a key update's answer
                if tls.idle is not None:
                    tls.idle.release(tls.pointer)  # e.g. after the session tickets
                return
            except ssl.SSLError as exc:
                self._lost(exc)
                return
            if not plain:
                self._lost(None)
                return
            self.bytes_received += len(plain)
            self._received(plain)
            # Nothing left to decrypt: another read would only raise
            # SSLWantReadError, and an exception costs more than this check.
            if not incoming.pending and not sslobj.pending() and not incoming.eof:
                if tls.outgoing.pending:
                    self._send_tls_output()
                if tls.idle is not None:
                    tls.idle.release(tls.pointer)
                return

    def _received(self, data: bytes) -> None:
        try:
            packets = self.conn.receive(data)
        except mqtt.ProtocolError as exc:
            for packet in exc.received:  # what came whole before the fault stands
                self._dispatch(packet)
            self._fail(PeerProtocolError(f"MQTT: {exc}", self.phase))
            self.close()
            return
        for packet in packets:
            self._dispatch(packet)

    def _dispatch(self, packet: mqtt.Packet) -> None:
        key: object
        if isinstance(packet, mqtt.ConnAck):
            self.times.connack = self.clock()
            key = "connack"
            if packet.reason_code == 0:
                # Accepted: what fails from here on fails the device's acting,
                # until its first step names its phase.
                self.phase = "acting"
        elif isinstance(packet, mqtt.PubAck):
            self.times.pubacks.append(self.clock())
            key = ("puback", packet.packet_id)
        elif isinstance(packet, (mqtt.SubAck, mqtt.UnsubAck)):
            key = (type(packet).__name__, packet.packet_id)
        elif isinstance(packet, mqtt.PingResp):
            self.pingresps += 1
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

    def _lost(self, exc: BaseException | None) -> None:
        if self.phase == "tls" and not self._heard:
            how = "closed" if exc is None else describe_error(exc)
            error: TransportError = ClosedBeforeTls(
                f"{how} before the server sent any TLS (it does not speak TLS on this "
                "port, or turned the connection away at once)",
                "tls",
            )
        elif self.phase == "tls" and exc is None:
            error = Closed("closed by the server during the TLS handshake", "tls")
        else:
            error = lost_after_handshake(
                exc, self.phase, tls=self.tls is not None, heard=bool(self.bytes_received)
            )
        self._fail(error)
        self.close()

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(self.error)
        self.waiters.clear()

    def write(self, packet: mqtt.Packet) -> None:
        if self.closed:
            raise self.error or Closed("connection closed", self.phase)
        self._send(self.conn.send(packet))

    def _send(self, data: bytes) -> None:
        self.sent_at = self.loop.time()
        tls = self.tls
        if tls is not None:
            tls.sslobj.write(data)
            data = tls.outgoing.read()
        self._transmit(data)

    def _send_tls_output(self) -> None:
        assert self.tls is not None
        pending = self.tls.outgoing.read()
        if pending:
            self._transmit(pending)

    def _transmit(self, data: bytes) -> None:
        """Send what the socket takes now; keep the rest, in order, until it
        turns writable."""
        if self.closed:
            return
        if self._writing:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._out += data[sent:]
            self._writing = True
            self.loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        """The socket turned writable: send what was kept."""
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(exc)
                return
            if not sent:
                return
            del self._out[:sent]
        if not self.closed:  # closing removed the writer already
            self._writing = False
            self.loop.remove_writer(self.fd)

    def expect(self, key: object) -> asyncio.Future[mqtt.Packet]:
        if self.error is not None:
            raise self.error
        waiter: asyncio.Future[mqtt.Packet] = self.loop.create_future()
        self.waiters[key] = waiter
        return waiter

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._reading:
            self.loop.remove_reader(self.fd)
        if self._writing or self._connecting:
            self.loop.remove_writer(self.fd)
        self.sock.close()


class MqttClient:
    """A connected device. Every method raises a ``TransportError`` subclass when
    the connection fails; timeouts are the caller's (``asyncio.timeout``)."""

    __slots__ = ("_p",)

    def __init__(self, channel: _Channel) -> None:
        self._p = channel

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

    async def hold(
        self,
        seconds: float,
        keepalive: float,
        holds: Holds | None = None,
        answer_within: float = 10.0,
    ) -> None:
        """Stay connected for ``seconds``, sending PINGREQ whenever nothing was
        sent for ``keepalive`` (0: never), or for the server's keepalive when its
        CONNACK gave a shorter one. ``holds`` is the event loop's shared
        wheel (a worker's; without one, a wheel of this hold's own). Raises
        ``NoPingResp`` (a ``TimeoutError``) when at the end a PINGREQ has waited
        ``answer_within`` for its answer, and the ``TransportError`` of a
        connection lost."""
        p = self._p
        p.phase = "hold"
        self._check()
        if seconds <= 0:
            return
        if (server := p.server_keepalive) and not 0 < keepalive <= server:
            # [MQTT-3.2.2-21]: the client uses the server's keepalive instead of
            # its own. AWS IoT answers 1200 s to a CONNECT asking 0 or more: a
            # device pinging on its own plan was closed after 1800 s of silence.
            keepalive = float(server)
        tls = p.tls
        if tls is not None and tls.idle is not None:
            tls.idle.settle(tls.pointer)  # held: the handshake's buffers go
        done = p.expect("hold")
        wheel = holds if holds is not None else Holds(p.loop)
        wheel.add(p, done, seconds, keepalive, answer_within)
        try:
            await done
        finally:
            p.waiters.pop("hold", None)

    def _check(self) -> None:
        if self._p.error is not None:
            raise self._p.error

    def disconnect(self) -> None:
        """Send DISCONNECT (if still open) and close; never raises. No TLS
        close_notify: devices that drop off do not send one either."""
        p = self._p
        if p.closed:
            return
        if p.error is None and p.conn.state is mqtt.State.CONNECTED:
            with contextlib.suppress(mqtt.ProtocolError, TransportError, OSError):
                p.write(_DISCONNECT)
        p.close()

    def abort(self) -> None:
        self._p.close()


async def _resolve(loop: asyncio.AbstractEventLoop, target: Target) -> tuple[Any, ...]:
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unreachable(f"DNS: {exc.strerror or exc}", "tcp") from None
    return tuple(infos[0][4])


def _expire(waiter: asyncio.Future[mqtt.Packet]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def connect(
    target: Target,
    tls: TlsSession | ssl.SSLContext | None,
    connect_packet: mqtt.Connect,
    times: AttemptTimes,
    *,
    clock: Clock = time.monotonic,
    timeout: float | None = None,
) -> MqttClient:
    """TCP, then TLS (unless ``tls`` is None), then CONNECT and CONNACK.

    ``tls`` is a session prepared ahead (``ClientTls.session``), or a device's
    own context (a session is made from it here). Returns a connected client, or
    raises the ``TransportError`` subclass for the phase that failed, or
    ``TimeoutError`` when ``timeout`` seconds pass first (without one, the caller
    bounds the whole, in ``asyncio.timeout`` say). The socket is closed whatever
    way this fails.

    The timeout is one timer on the event loop that fails the CONNACK's waiter:
    ``asyncio.timeout`` around the call cost about 150 bytecodes a connect.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    if isinstance(tls, ssl.SSLContext):
        tls = TlsSession.of(tls, target.server_name)
    address = target.address
    if address is None:
        async with asyncio.timeout_at(deadline):
            address = await _resolve(loop, target)
    sock = socket.socket(family_of(address[0]), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    channel: _Channel | None = None
    timer = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.source_address:
            if _NO_PORT_AT_BIND is not None:
                sock.setsockopt(socket.IPPROTO_IP, _NO_PORT_AT_BIND, 1)
            sock.bind((target.source_address, 0))
        channel = _Channel(loop, sock, tls, times, clock)
        waiter = channel.expect("connack")
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, waiter)
        channel.start(address, connect_packet)
        ack = await waiter
    except BaseException:
        if channel is not None:
            channel.close()
        else:
            sock.close()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    assert isinstance(ack, mqtt.ConnAck)
    channel.server_keepalive = ack.properties.server_keep_alive or 0
    client = MqttClient(channel)
    if ack.reason_code:
        version = connect_packet.protocol_version
        client.abort()
        raise AckRefused(
            f"CONNACK {reason_name(ack.reason_code, version)}", "connack", ack.reason_code, version
        )
    return client
