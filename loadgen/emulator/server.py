"""The emulator's mutual-TLS MQTT endpoint, on the same ``loadgen.mqtt`` code as
the devices (the server end of ``Connection``).

What a device meets, as on AWS IoT:
- a certificate from a CA that is not registered (or INACTIVE), expired or not yet
  valid: the TLS handshake fails;
- an unknown certificate from a registered CA with auto-registration: JITP runs
  and the connection that triggered it is closed; the next connect is accepted;
- a certificate that is INACTIVE, REVOKED or still PENDING_ACTIVATION: closed;
- an ACTIVE certificate: CONNACK, then PUBLISH, SUBSCRIBE, PINGREQ as usual;
- within ``Limits``: a packet over the maximum size, no CONNECT in time, silence
  past 1.5 keepalives, or a subscriber that stops reading: closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen import mqtt
from loadgen.emulator import policy
from loadgen.emulator.errors import ProvisioningError
from loadgen.emulator.limits import CLOSE_LINGER, Limits
from loadgen.emulator.quota import Limiter, Quotas
from loadgen.emulator.registry import (
    CertRecord,
    CertStatus,
    Registry,
    certificate_id,
    jitp_parameters,
)
from loadgen.mqtt import topics

if TYPE_CHECKING:
    from loadgen.emulator.api.app import ApiStats

# Why the emulator ends a session itself (EmulatorStats.closes).
CLOSE_REASONS = (
    "packet too large",
    "connect timeout",
    "keepalive timeout",
    "slow consumer",
    "protocol error",
)


class _ServerSslObject(ssl.SSLObject):
    """The sessions' TLS objects. uvloop asks each for the client's certificate
    as a dict at the end of its handshake (the transport's ``peercert``): OpenSSL
    reads it into Python strings, kept with the connection (about 2.8 KiB each,
    and time at every handshake) for nobody here, who read its DER. The dict
    form is None here (as for a peer without a certificate); the DER is as it is."""

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    @overload
    def getpeercert(self, binary_form: bool) -> Any: ...
    def getpeercert(self, binary_form: bool = False) -> Any:
        return super().getpeercert(True) if binary_form else None


@dataclass
class EmulatorStats:
    """Counters, named as AWS names them where AWS has a name."""

    provision: Counter[str] = field(default_factory=Counter)  # Success, ClientError, ...
    connects: Counter[str] = field(default_factory=Counter)  # accepted, or why refused
    provision_reasons: Counter[str] = field(default_factory=Counter)
    throttles: Counter[str] = field(default_factory=Counter)  # by quota
    # Sessions the emulator ended because a client broke a limit or the protocol.
    closes: Counter[str] = field(default_factory=Counter)
    # Messages not delivered to a subscriber, by why.
    dropped: Counter[str] = field(default_factory=Counter)


class Emulator:
    def __init__(
        self,
        registry: Registry,
        server_cert: str,
        server_key: str,
        quotas: Quotas | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.registry = registry
        self.limiter = Limiter(quotas or Quotas())
        self.limits = limits or Limits()
        self.connack_properties = mqtt.Properties(maximum_packet_size=self.limits.max_packet_size)
        self.server_cert = server_cert
        self.server_key = server_key
        self.stats = EmulatorStats()
        # By document, not name: the control plane may change what a name holds.
        self._parsed: dict[str, list[policy.Statement]] = {}
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        # The control plane's counts, when it is served (--api-port).
        self.api_stats: ApiStats | None = None
        # Sessions with subscriptions, for routing PUBLISHes between devices.
        self.subscribers: set[_Session] = set()

    def policies_of(self, record: CertRecord) -> list[list[policy.Statement]]:
        out = []
        for name in sorted(record.policies):
            document = self.registry.policies[name]
            if document not in self._parsed:
                try:
                    self._parsed[document] = policy.parse(document)
                except policy.PolicyError:
                    self._parsed[document] = []  # a policy that does not parse grants nothing
            out.append(self._parsed[document])
        return out

    def ssl_context(self) -> ssl.SSLContext:
        """The listening context. The CAs registered through the control plane
        (or set INACTIVE, or deleted) count from the next handshake: each one is
        handed a context that trusts exactly the registry's active CAs then."""
        context = self._trusting(self._active_cas())
        context.sni_callback = self._at_handshake
        return context

    def _active_cas(self) -> tuple[str, ...]:
        return tuple(sorted(ca.id for ca in self.registry.cas.values() if ca.active))

    def _trusting(self, cas: tuple[str, ...]) -> ssl.SSLContext:
        """A context trusting ``cas``; the latest one is kept, for the next
        handshakes: the set changes seldom, handshakes come by the thousand."""
        cached = self._contexts.get(cas)
        if cached is not None:
            return cached
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        # Devices never resume a TLS session (each connect is a full handshake,
        # as a fleet's first contact is): tickets would cost two encodings of the
        # session, the peer's certificate decoded again each (OpenSSL 3.0), and
        # the client's memory to keep them. SSL_MODE_RELEASE_BUFFERS, the other
        # memory lever, Python's ssl already sets on every context.
        context.num_tickets = 0
        context.sslobject_class = _ServerSslObject
        trusted = [
            self.registry.cas[ca_id].cert.public_bytes(Encoding.PEM).decode() for ca_id in cas
        ]
        if trusted:
            context.load_verify_locations(cadata="".join(trusted))
        self._contexts = {cas: context}
        return context

    def _at_handshake(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # OpenSSL calls this at every ClientHello, with or without SNI, before
        # the client's certificate is asked for: the chain is verified against
        # the context set here.
        context = self._trusting(self._active_cas())
        if context is not ssl_object.context:
            ssl_object.context = context

    def route(self, packet: mqtt.Publish) -> None:
        for session in list(self.subscribers):
            session.deliver(packet)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: _Session(self), host, port, ssl=self.ssl_context(), backlog=4096
        )

    def admit(self, cert: x509.Certificate) -> CertRecord | str:
        """The certificate's record when its MQTT session may go on, else why the
        connection is closed."""
        record = self.registry.certificates.get(certificate_id(cert))
        if record is not None:
            return _known(record)
        return self._unknown(cert, verified=False)

    def admit_handshake(self, der: bytes) -> CertRecord | str:
        """``admit``, for the certificate (DER) of a session, whose TLS handshake
        verified its chain against the active CAs. A known certificate needs only
        its id: the DER is parsed only for one the registry does not know yet."""
        record = self.registry.certificates.get(hashlib.sha256(der).hexdigest())
        if record is not None:
            return _known(record)
        return self._unknown(x509.load_der_x509_certificate(der), verified=True)

    def _unknown(self, cert: x509.Certificate, *, verified: bool) -> str:
        """A certificate the registry does not know: JITP, or why not
        (``verified``: see ``Registry.issuer_of``)."""
        registry = self.registry
        ca = registry.issuer_of(cert, verified=verified)
        if ca is None or not ca.active:
            return "unknown CA"
        if not ca.auto_registration:
            return "unknown certificate (auto-registration off)"
        if not self.limiter.allow_provision():
            # A throttled provisioning registers nothing: the retry provisions.
            self.stats.throttles["provision"] += 1
            self.stats.provision["Throttled"] += 1
            return "provisioning throttled"
        try:
            registry.provision(cert, ca)
        except ProvisioningError as exc:
            self.stats.provision[exc.metric] += 1
            self.stats.provision_reasons[str(exc)] += 1
            return f"provisioning failed: {exc}"
        self.stats.provision["Success"] += 1
        return "provisioned (JITP closes the first connection)"


def _known(record: CertRecord) -> CertRecord | str:
    if record.status is CertStatus.ACTIVE:
        return record
    return f"certificate {record.status.value}"


class _Session(asyncio.Protocol):
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.limits = emulator.limits
        self.conn = mqtt.Connection(mqtt.Role.SERVER, self.limits.max_packet_size)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        # The CONNECT deadline, then the keepalive check, then the linger of a close.
        self.timer: asyncio.TimerHandle | None = None
        self.slow: asyncio.TimerHandle | None = None  # set while over the write buffer
        self.connected = False  # CONNACK success sent: an MQTT session exists
        self.heard = 0.0  # loop time of the last whole packet from the client
        self.idle_limit = 0.0
        self.client_max = mqtt.MAX_PACKET_SIZE  # what the client accepts (MQTT 5 CONNECT)
        self.der = b""  # the client's certificate
        self.record: CertRecord | None = None
        self.variables: dict[str, str] = {}
        self.policies: list[list[policy.Statement]] = []
        self.filters: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, but is one.
        self.transport = cast(asyncio.Transport, transport)
        self.der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        admitted = self.emulator.admit_handshake(self.der)
        if isinstance(admitted, str):
            self.emulator.stats.connects[admitted.split(":")[0]] += 1
            self.transport.close()
            return
        self.record = admitted
        # Above it, pause_writing(): QoS 0 messages to it are dropped and the
        # slow-consumer deadline starts. Below a quarter of it, resume_writing().
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer)
        self.timer = self.loop.call_later(self.limits.connect_timeout, self._connect_deadline)

    def _allowed(self, action: str, resource: str) -> bool:
        return policy.allowed(self.policies, action, resource, self.variables)

    def _on_connect(self, packet: mqtt.Connect) -> None:
        assert self.transport is not None and self.record is not None
        record, registry = self.record, self.emulator.registry
        client_id = packet.client_id
        # AWS knows the thing when the client id is the name of a thing the
        # certificate is attached to.
        thing = registry.things.get(client_id) if client_id in record.things else None
        variables = policy.connection_variables(
            client_id,
            record.id,
            jitp_parameters(self.der),
            thing.name if thing else None,
            thing.type_name if thing else None,
        )
        self.policies = self.emulator.policies_of(record)
        # Kept for the session's later checks: only what its policies refer to
        # (most are a thing name), and not the certificate (about 1.6 KiB less
        # per held connection).
        self.variables = policy.only(variables, self.policies)
        self.der = b""
        v5 = packet.protocol_version == mqtt.MQTT_5
        exceeded = self.emulator.limiter.allow_connect(client_id)
        if exceeded is not None:
            self.emulator.stats.throttles[exceeded] += 1
            self.emulator.stats.connects["throttled"] += 1
            if v5:  # MQTT 3.1.1 has no code for it: AWS closes the connection.
                self.transport.write(self.conn.send(mqtt.ConnAck(0x9F)))
            self.transport.close()
            return
        if not self._allowed("iot:Connect", policy.arn("client", client_id)):
            self.emulator.stats.connects["not authorized"] += 1
            self.transport.write(self.conn.send(mqtt.ConnAck(0x87 if v5 else 5)))
            self.transport.close()
            return
        self.emulator.stats.connects["accepted"] += 1
        keepalive = self.limits.keepalive(packet.keepalive)
        properties = mqtt.EMPTY
        if v5:  # the limits it is held to: Maximum Packet Size, and Server Keep Alive
            properties = self.emulator.connack_properties
            if keepalive != packet.keepalive:
                properties = replace(properties, server_keep_alive=keepalive)
        self.transport.write(self.conn.send(mqtt.ConnAck(properties=properties)))
        self.connected = True
        self.idle_limit = self.limits.keepalive_timeout(packet.keepalive)
        if packet.properties.maximum_packet_size is not None:
            self.client_max = packet.properties.maximum_packet_size
        self._restart_timer(self.idle_limit, self._check_idle)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.conn.receive(data)
        except mqtt.PacketTooLarge as exc:
            self._close("packet too large", exc.reason_code)
            return
        except mqtt.ProtocolError as exc:
            self._close("protocol error", exc.reason_code)
            return
        if packets:  # a whole packet, as MQTT counts: a trickle of bytes keeps nothing alive
            self.heard = self.loop.time()
        for packet in packets:
            self._answer(packet)

    # Limits

    def _restart_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def _connect_deadline(self) -> None:
        if self.conn.version is None:  # no whole CONNECT yet
            self._close("connect timeout")

    def _check_idle(self) -> None:
        silent = self.loop.time() - self.heard
        if silent < self.idle_limit or self.slow is not None:
            # Heard from in time; or not read from (the slow-consumer deadline
            # decides that one), so its silence proves nothing.
            self._restart_timer(max(self.idle_limit - silent, 0.1), self._check_idle)
            return
        self._close("keepalive timeout", 0x8D)  # MQTT 5: Keep Alive timeout

    def pause_writing(self) -> None:
        # Over the write buffer: stop reading its requests too, so that nothing it
        # sends adds to what it does not read.
        assert self.transport is not None
        self.transport.pause_reading()
        self.slow = self.loop.call_later(self.limits.slow_consumer_timeout, self._slow_consumer)

    def resume_writing(self) -> None:
        assert self.transport is not None
        if self.slow is not None:
            self.slow.cancel()
            self.slow = None
        if not self.transport.is_closing():
            self.transport.resume_reading()
            self.heard = self.loop.time()  # its silence while it was not read proves nothing

    def _slow_consumer(self) -> None:
        self._close("slow consumer")

    def _close(self, reason: str, disconnect: int | None = None) -> None:
        """End the session for ``reason``: an MQTT 5 session hears it in a
        DISCONNECT with reason code ``disconnect``, then the connection has
        CLOSE_LINGER to end; anything else is cut at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.emulator.stats.closes[reason] += 1
        if disconnect is not None and self.connected and self.conn.version == mqtt.MQTT_5:
            transport.write(mqtt.encode(mqtt.Disconnect(disconnect), mqtt.MQTT_5))
            transport.close()
            self._restart_timer(CLOSE_LINGER, transport.abort)
        else:
            transport.abort()

    def _answer(self, packet: mqtt.Packet) -> None:
        assert self.transport is not None
        send = self.transport.write
        if isinstance(packet, mqtt.Connect):
            self._on_connect(packet)
        elif isinstance(packet, mqtt.Publish):
            if not self._allowed("iot:Publish", policy.arn("topic", packet.topic)):
                # As AWS does: a publish the policy denies ends the connection.
                self.emulator.stats.connects["publish denied"] += 1
                self.transport.close()
                return
            if packet.qos == 1 and packet.packet_id is not None:
                send(self.conn.send(mqtt.PubAck(packet.packet_id)))
            self.emulator.route(packet)
        elif isinstance(packet, mqtt.Subscribe):
            refused = 0x87 if self.conn.version == mqtt.MQTT_5 else 0x80
            codes = []
            for s in packet.subscriptions:
                if self._allowed("iot:Subscribe", policy.arn("topicfilter", s.topic_filter)):
                    self.filters.append(s.topic_filter)
                    codes.append(min(s.qos, 1))
                else:
                    codes.append(refused)
            if self.filters:
                self.emulator.subscribers.add(self)
            send(self.conn.send(mqtt.SubAck(packet.packet_id, tuple(codes))))
        elif isinstance(packet, mqtt.Unsubscribe):
            send(self.conn.send(mqtt.UnsubAck(packet.packet_id, (0,) * len(packet.topic_filters))))
        elif isinstance(packet, mqtt.PingReq):
            send(self.conn.send(mqtt.PingResp()))
        elif isinstance(packet, mqtt.Disconnect):
            # The client is done: no TLS shutdown (close_notify, waiting for the
            # peer's), which cost about a tenth of a connect's CPU.
            self.transport.abort()

    def deliver(self, packet: mqtt.Publish) -> None:
        """A PUBLISH from another device, if a filter matches and the policy
        allows iot:Receive; delivered at QoS 0."""
        if self.transport is None or self.transport.is_closing():
            return
        if not any(topics.matches(f, packet.topic) for f in self.filters):
            return
        if not self._allowed("iot:Receive", policy.arn("topic", packet.topic)):
            return
        if self.slow is not None:  # over its write buffer: QoS 0 may be dropped
            self.emulator.stats.dropped["slow consumer"] += 1
            return
        data = self.conn.send(mqtt.Publish(packet.topic, packet.payload))
        if len(data) > self.client_max:  # MQTT 5: discarded, as if it had been sent
            self.emulator.stats.dropped["over the client's maximum packet size"] += 1
            return
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.emulator.subscribers.discard(self)
        for handle in (self.timer, self.slow):
            if handle is not None:
                handle.cancel()
