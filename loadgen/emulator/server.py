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
import socket
import ssl
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from loadgen import mqtt
from loadgen.emulator import policy
from loadgen.emulator.account import Account, Admission, Admitted
from loadgen.emulator.conditions import SOURCE_IP
from loadgen.emulator.limits import CLOSE_LINGER, Limits
from loadgen.emulator.parameters import jitp_parameters
from loadgen.emulator.quota import Limiter, Quotas
from loadgen.heap import Heap
from loadgen.legacy_ec import LegacyEc
from loadgen.metrics.stats import fold_reasons
from loadgen.mqtt import topics
from loadgen.transport.idle import IdleTls
from loadgen.transport.tls import strict_eof

if TYPE_CHECKING:
    from cryptography import x509

    from loadgen.emulator.api.app import ApiStats
    from loadgen.emulator.local import LocalAccount
    from loadgen.emulator.registry import CertRecord, Registry

# CONNACK, 3.1.1's form: no session present, return code 0x01.
_UNACCEPTABLE_PROTOCOL = b"\x20\x02\x00\x01"

# A CONNECT whose client left while the account was asked (EmulatorStats.connects).
CLIENT_GONE = "client gone before the answer"

# Why the emulator ends a session itself (EmulatorStats.closes).
CLOSE_REASONS = (
    "packet too large",
    "connect timeout",
    "keepalive timeout",
    "slow consumer",
    "protocol error",
    "session taken over",
    "publish denied",
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

    def failed(self, reason: str) -> None:
        """A provisioning failed: counted by its reason, bounded as a run's
        failure reasons are."""
        self.provision_reasons[reason] += 1
        self.provision_reasons = fold_reasons(self.provision_reasons, {})

    def summary(self) -> dict[str, dict[str, int]]:
        """As the STATS line names them."""
        return {key: dict(getattr(self, name)) for key, name in _SUMMARY.items()}

    def add(self, summary: dict[str, dict[str, int]]) -> None:
        """Add another process's `summary`."""
        for key, name in _SUMMARY.items():
            getattr(self, name).update(summary.get(key, {}))
        self.provision_reasons = fold_reasons(self.provision_reasons, {})


# uvloop's per-connection TLS read buffer is 256 KiB: above this, its own mapping.
_OWN_MAPPING = 128 * 1024
# What a session's decrypted bytes are read into, shared by the sessions of a
# process (each read is decoded before the next): a buffered protocol, so that
# uvloop does not read each record into a fresh 256 KiB bytes object, which with
# the mapping above was an mmap, an mremap and a munmap per read. More than
# this waiting is read in another turn of the loop.
_READ_SIZE = 64 * 1024
# A timer armed from a timer callback runs after the next poll for I/O.
_LAST_LOOK = 0.005
# Seconds between heap trims while connections come and go.
_TRIM_INTERVAL = 5.0

_SUMMARY = {
    "provision": "provision",
    "provision_failures": "provision_reasons",
    "connects": "connects",
    "throttles": "throttles",
    "closes": "closes",
    "dropped": "dropped",
}


class Emulator:
    """The TLS + MQTT side: sessions, and routing between them. What a session
    asks of the account goes to ``account``: by default one in this process, on
    ``registry``; a serving process of ``--processes N`` gives a remote one."""

    def __init__(
        self,
        registry: Registry | None,
        server_cert: str,
        server_key: str,
        quotas: Quotas | None = None,
        limits: Limits | None = None,
        *,
        account: Account | None = None,
    ) -> None:
        # Held as long as this emulator: on OpenSSL 3.0 each client's certificate
        # is decoded by the old EC decoder in its handshake (loadgen.legacy_ec),
        # about a fifth of the server's CPU per connect (docs/benchmarks.md).
        self.legacy_ec = LegacyEc.claim()
        self.limits = limits or Limits()
        # AWS IoT takes QoS 0 and 1 only, and has no Subscription Identifiers:
        # MQTT 5 clients are told so.
        self.connack_properties = mqtt.Properties(
            maximum_packet_size=self.limits.max_packet_size,
            maximum_qos=1,
            subscription_identifier_available=0,
        )
        self.server_cert = server_cert
        self.server_key = server_key
        self.stats = EmulatorStats()
        self.local: LocalAccount | None = None
        if account is None:
            assert registry is not None, "an emulator needs a registry or an account"
            # Here, not at the top: a serving process (with an account of the
            # account process's) does without the registry and cryptography.
            from loadgen.emulator.local import LocalAccount

            self.local = LocalAccount(registry, Limiter(quotas or Quotas()), self.stats)
            account = self.local
        self.account = account
        # By document, not name: the control plane may change what a name holds.
        self._parsed: dict[str, list[policy.Statement]] = {}
        self._policy_sets: dict[tuple[str, ...], list[list[policy.Statement]]] = {}
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        # The control plane's counts, when it is served (--api-port).
        self.api_stats: ApiStats | None = None
        # Sessions with subscriptions, for routing PUBLISHes between devices.
        self.subscribers: set[_Session] = set()
        # With serving processes: a PUBLISH goes to the others' subscribers too
        # (forward), and the account hears when this one has subscribers or not.
        self.forward: Callable[[mqtt.Publish], None] | None = None
        self.on_subscribers: Callable[[bool], None] | None = None
        # The session of each client id connected here: a newer connection of the
        # same client id takes it over once its CONNACK is sent, as AWS IoT
        # and MQTT do. With serving processes the account hears when one
        # connects here (``account.connected``) or ends (``account.left``),
        # and tells this process when another connected one of these
        # (take_over).
        self.sessions: dict[str, _Session] = {}
        self._turn = 0  # of the last session connected here
        # Connections accepted (handshakes that failed too): what churns the heap.
        self.accepted = 0
        self._tidying: asyncio.Task[None] | None = None
        self.read_buffer = memoryview(bytearray(_READ_SIZE))
        # Gives a held session's TLS buffers back (None: OpenSSL not reached);
        # set with the first context.
        self.idle: IdleTls | None = None

    @property
    def registry(self) -> Registry:
        """The registry, for an emulator whose account is in this process."""
        assert self.local is not None, "the registry is the account process's"
        return self.local.registry

    @property
    def limiter(self) -> Limiter:
        assert self.local is not None, "the quotas are the account process's"
        return self.local.limiter

    def policies_of(self, record: CertRecord) -> list[list[policy.Statement]]:
        assert self.local is not None
        return self.parsed_policies(self.local.admission_of(record).policies)

    def parsed_policies(self, documents: tuple[str, ...]) -> list[list[policy.Statement]]:
        known = self._policy_sets.get(documents)
        if known is not None:
            return known
        out = []
        for document in documents:
            if document not in self._parsed:
                try:
                    self._parsed[document] = policy.parse(document)
                except policy.PolicyError:
                    self._parsed[document] = []  # a policy that does not parse grants nothing
            out.append(self._parsed[document])
        if len(self._policy_sets) > 10_000:  # documents per device, in a strange account
            self._policy_sets.clear()
        self._policy_sets[documents] = out
        return out

    def ssl_context(self) -> ssl.SSLContext:
        """The listening context. The CAs registered through the control plane
        (or set INACTIVE, or deleted) count from the next handshake: each one is
        handed a context that trusts exactly the account's active CAs then."""
        context = self._trusting(self.account.trusted())
        context.sni_callback = self._at_handshake
        return context

    def _trusting(self, cas: tuple[str, ...]) -> ssl.SSLContext:
        """A context trusting ``cas`` (PEMs); the latest one is kept, for the
        next handshakes: the set changes seldom, handshakes come by the thousand."""
        cached = self._contexts.get(cas)
        if cached is not None:
            return cached
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        strict_eof(context)  # the same on every Python: a dropped device reads as dropped
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        # Devices never resume a TLS session (each connect is a full handshake,
        # as a fleet's first contact is): tickets would cost two encodings of the
        # session, the peer's certificate decoded again each (OpenSSL 3.0), and
        # the client's memory to keep them. SSL_MODE_RELEASE_BUFFERS, the other
        # memory lever, Python's ssl already sets on every context.
        context.num_tickets = 0
        context.sslobject_class = _ServerSslObject
        if cas:
            context.load_verify_locations(cadata="".join(cas))
        if not self._contexts:
            self.idle = IdleTls.reach(context)
        self._contexts = {cas: context}
        return context

    def _at_handshake(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # OpenSSL calls this at every ClientHello, with or without SNI, before
        # the client's certificate is asked for: the chain is verified against
        # the context set here.
        context = self._trusting(self.account.trusted())
        if context is not ssl_object.context:
            ssl_object.context = context

    def route(self, packet: mqtt.Publish, source: _Session | None = None) -> None:
        """``packet`` from ``source`` to every subscriber. The other processes
        never hold its source (one connection per client id)."""
        self.route_here(packet, source)
        if self.forward is not None:
            self.forward(packet)

    def route_here(self, packet: mqtt.Publish, source: _Session | None = None) -> None:
        """To this process's subscribers."""
        for session in list(self.subscribers):
            session.deliver(packet, source)

    def connected(self, session: _Session, client_id: str) -> None:
        """``session`` got its CONNACK: an older session of its client id here
        is taken over, and the account hears of it (for the other processes)."""
        self._turn += 1
        session.turn = self._turn
        older = self.sessions.get(client_id)
        self.sessions[client_id] = session
        if older is not None and older is not session:
            older.taken_over()
        self.account.connected(client_id, session.turn)

    def take_over(self, client_id: str, turn: int) -> None:
        """Another serving process connected ``client_id``: its session here,
        if it is still the ``turn``-th (not one connected here since), ends."""
        session = self.sessions.get(client_id)
        if session is not None and session.turn == turn:
            del self.sessions[client_id]  # the account holds the newer one already
            session.taken_over()

    def ended(self, session: _Session, client_id: str) -> None:
        if self.sessions.get(client_id) is session:
            del self.sessions[client_id]
            self.account.left(client_id, session.turn)

    def subscribe(self, session: _Session) -> None:
        if session not in self.subscribers:
            self.subscribers.add(session)
            if len(self.subscribers) == 1 and self.on_subscribers is not None:
                self.on_subscribers(True)

    def unsubscribe(self, session: _Session) -> None:
        if session in self.subscribers:
            self.subscribers.discard(session)
            if not self.subscribers and self.on_subscribers is not None:
                self.on_subscribers(False)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._accepted, host, port, ssl=self.ssl_context(), backlog=4096
        )
        self._tidy_heap()
        return server

    async def serve_on(self, sockets: list[socket.socket]) -> list[asyncio.Server]:
        """Serve on listening sockets made elsewhere (the account process's)."""
        loop = asyncio.get_running_loop()
        context = self.ssl_context()
        servers = [
            await loop.create_server(self._accepted, sock=sock, ssl=context, backlog=4096)
            for sock in sockets
        ]
        self._tidy_heap()
        return servers

    def _accepted(self) -> _Session:
        self.accepted += 1
        return _Session(self)

    def _tidy_heap(self) -> None:
        """While connections come and go, give what they freed back to the
        system (loadgen/heap.py); a quiet emulator costs nothing."""
        if self._tidying is not None:
            return
        heap = Heap()
        heap.mmap_above(_OWN_MAPPING)

        async def tidy() -> None:
            trimmed = self.accepted
            while True:
                await asyncio.sleep(_TRIM_INTERVAL)
                if self.accepted != trimmed:
                    trimmed = self.accepted
                    heap.trim()

        self._tidying = asyncio.get_running_loop().create_task(tidy())

    def admit(self, cert: x509.Certificate) -> CertRecord | str:
        """The certificate's record when its MQTT session may go on, else why the
        connection is closed (the account in this process decides)."""
        assert self.local is not None
        return self.local.record_for(cert)


# Packets kept while the account is asked before the client is no longer read
# (pausing costs a connect more than the wait: only a flood is paused).
_BACKLOG = 16
_NO_FILTERS: frozenset[str] = frozenset()


def _refusal(connect: mqtt.Connect) -> tuple[str, int] | None:
    """Why ``connect`` is refused whatever the account says (as the connects
    count names it), and the CONNACK code that says so; None if it is not."""
    if connect.protocol_version == mqtt.MQTT_5:
        if connect.properties.authentication_method is not None:
            # Certificates are AWS IoT's authentication here; a method the
            # server does not know ends the connection [MQTT-4.12.0-1].
            return "bad authentication method", 0x8C
        if connect.will is not None and connect.will.qos > 1:
            # Past the Maximum QoS 1 the CONNACK would give [MQTT-3.2.2-12].
            return "QoS not supported", 0x9B
    elif not connect.client_id and not connect.clean_start:
        # A session kept by no client id could never be resumed [MQTT-3.1.3-8].
        return "identifier rejected", 0x02
    return None


def assign_client_id() -> str:
    """A client id for a client that sent an empty one: unique across the
    emulator's processes, and past restarts, without asking anyone."""
    return f"emulator-{uuid.uuid4().hex}"


class _Session(asyncio.BufferedProtocol):
    # What few sessions have, as class defaults: an instance sets its own only
    # when it has one (no memory, no work, for the rest).
    # Filters subscribed with No Local: the session's own messages skip them.
    no_local: frozenset[str] = _NO_FILTERS
    # The Session Expiry Interval of its MQTT 5 CONNECT.
    session_expiry = 0
    # The client id is one the emulator assigned (its CONNECT's was empty).
    assigned = False

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
        self.tls_pointer = 0  # its SSLObject's SSL *, for the emulator's ``idle``
        self.admission: Admission | None = None
        # Waiting for the account's answer (admission, then the CONNECT's quota):
        # reading stops meanwhile, and what was read waits in the backlog.
        self.asking = False
        self.paused = False
        self.backlog: list[mqtt.Packet | mqtt.ProtocolError] = []  # a fault last
        self.connect_packet: mqtt.Connect | None = None
        self.variables: dict[str, str] = {}
        self.policies: list[list[policy.Statement]] = []
        self.filters: list[str] = []
        self.client_id = ""  # once connected
        self.turn = 0  # once connected: the how-manieth session of this process

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, but is one.
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.der = ssl_object.getpeercert(binary_form=True)
        if self.emulator.idle is not None:
            self.tls_pointer = self.emulator.idle.pointer(ssl_object)
        self.asking = True
        self.emulator.account.admit(self.der, self._admitted)

    def _keep_for_later(self, packet: mqtt.Packet | mqtt.ProtocolError) -> None:
        """A packet that came while the account was asked (a remote account;
        one in this process answers at once): kept, in order, until it
        answers; a client that sends on and on meanwhile is not read from."""
        self.backlog.append(packet)
        if len(self.backlog) >= _BACKLOG and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _answered(self) -> bool:
        """The account answered: go on reading; False if the connection is gone."""
        self.asking = False
        if self._ending():
            return False
        assert self.transport is not None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        return True

    def _admitted(self, admitted: Admitted) -> None:
        # A client may leave while a remote account decides (one in this
        # process answers at once): what it connected for is counted all the
        # same, once, as with one process.
        here = self._answered()
        if isinstance(admitted, str):  # the account's answer, heard or not
            self.emulator.stats.connects[admitted.split(":")[0]] += 1
            if here:
                assert self.transport is not None
                self.transport.close()
            return
        if not here:
            if self.backlog and isinstance(self.backlog[0], mqtt.Connect):
                self.emulator.stats.connects[CLIENT_GONE] += 1
            return
        assert self.transport is not None
        self.admission = admitted
        # Above it, pause_writing(): QoS 0 messages to it are dropped and the
        # slow-consumer deadline starts. Below a quarter of it, resume_writing().
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer)
        self.timer = self.loop.call_later(self.limits.connect_timeout, self._connect_deadline)
        self._after_answer()

    def _allowed(self, action: str, resource: str) -> bool:
        return policy.allowed(self.policies, action, resource, self.variables)

    def _on_connect(self, packet: mqtt.Connect) -> None:
        assert self.transport is not None
        refusal = _refusal(packet)
        if refusal is not None:
            why, code = refusal
            self.emulator.stats.connects[why] += 1
            self._send_connack(mqtt.ConnAck(code), packet)
            self.transport.close()
            return
        if not packet.client_id:
            # MQTT lets a server take an empty client id if it assigns a unique
            # one and goes on as if the client had sent it [MQTT-3.1.3-6]; AWS
            # IoT assigns one. The connect quota and iot:Connect see that one.
            packet = replace(packet, client_id=assign_client_id())
            self.assigned = True
        if packet.properties.session_expiry_interval:
            self.session_expiry = packet.properties.session_expiry_interval
        self.connect_packet = packet
        self.asking = True
        self.emulator.account.allow_connect(packet.client_id, self._connect_allowed)

    def _connect_allowed(self, exceeded: str | None) -> None:
        packet = self.connect_packet
        here = self._answered()
        if packet is None:
            return
        self.connect_packet = None
        v5 = packet.protocol_version == mqtt.MQTT_5
        if exceeded is not None:  # the account's answer, heard or not
            self.emulator.stats.throttles[exceeded] += 1
            self.emulator.stats.connects["throttled"] += 1
            if here:
                if v5:  # MQTT 3.1.1 has no code for it: AWS closes the connection.
                    self._send_connack(mqtt.ConnAck(0x9F), packet)
                assert self.transport is not None
                self.transport.close()
            return
        if not here:
            self.emulator.stats.connects[CLIENT_GONE] += 1
            return
        assert self.transport is not None and self.admission is not None
        admission = self.admission
        client_id = packet.client_id
        # AWS knows the thing when the client id is the name of a thing the
        # certificate is attached to.
        attached = client_id in admission.things
        self.policies = self.emulator.parsed_policies(admission.policies)
        used = policy.uses(self.policies)
        source_ip = None
        if SOURCE_IP in used:  # asked of the transport only for a policy that uses it
            source_ip = self.transport.get_extra_info("peername")[0]
        variables = policy.connection_variables(
            client_id,
            admission.cert_id,
            jitp_parameters(self.der),
            client_id if attached else None,
            admission.things[client_id] if attached else None,
            source_ip,
            admission.attributes.get(client_id) if attached else None,
        )
        # Kept for the session's later checks: only what its policies refer to
        # (most are a thing name), and not the certificate (about 1.6 KiB less
        # per held connection).
        self.variables = {name: v for name, v in variables.items() if name in used}
        self.der = b""
        if not self._allowed("iot:Connect", policy.arn("client", client_id)):
            self.emulator.stats.connects["not authorized"] += 1
            self._send_connack(mqtt.ConnAck(0x87 if v5 else 5), packet)
            self.transport.close()
            return
        self.emulator.stats.connects["accepted"] += 1
        keepalive = self.limits.keepalive(packet.keepalive)
        properties = mqtt.EMPTY
        if v5:  # the limits it is held to: Maximum Packet Size, and Server Keep Alive
            properties = self.emulator.connack_properties
            if keepalive != packet.keepalive:
                properties = replace(properties, server_keep_alive=keepalive)
            if self.assigned:  # [MQTT-3.2.2-16]
                properties = replace(properties, assigned_client_identifier=client_id)
        self._send_connack(mqtt.ConnAck(properties=properties), packet)
        if self.emulator.idle is not None:
            # The handshake's flights grew both memory BIOs (about 3 KiB) for
            # a session that now mostly sits idle; the CONNACK is out of them
            # already (uvloop writes through at once).
            self.emulator.idle.settle(self.tls_pointer)
        self.connected = True
        self.client_id = client_id
        self.emulator.connected(self, client_id)
        self.idle_limit = self.limits.keepalive_timeout(packet.keepalive)
        if packet.properties.maximum_packet_size is not None:
            self.client_max = packet.properties.maximum_packet_size
        self._restart_timer(self.idle_limit, self._check_idle)
        self._after_answer()

    def _encode(self, packet: mqtt.Packet) -> bytes | None:
        """``packet`` as the client's bytes; None once the client has sent its
        DISCONNECT. Read, it may still wait behind the account's answer (a
        CONNECT and a DISCONNECT in one segment): nothing more goes to a client
        that is done, and sending raised, which once ended the serving process."""
        if self.conn.state is mqtt.State.CLOSED:
            return None
        return self.conn.send(packet)

    def _send(self, packet: mqtt.Packet) -> None:
        data = self._encode(packet)
        if data is not None:
            assert self.transport is not None
            self.transport.write(data)

    def _send_connack(self, ack: mqtt.ConnAck, connect: mqtt.Connect) -> None:
        """``ack`` within the Maximum Packet Size ``connect`` declared, which
        the server must not exceed [MQTT-3.1.2-24]: past it, without the
        properties a client may do without (all but the Assigned Client
        Identifier); past it still, not sent at all [MQTT-3.1.2-25]."""
        data = self._encode(ack)
        maximum = connect.properties.maximum_packet_size
        if data is None or maximum is None or len(data) <= maximum:
            if data is not None:
                assert self.transport is not None
                self.transport.write(data)
            return
        assigned = ack.properties.assigned_client_identifier
        bare = replace(ack, properties=mqtt.Properties(assigned_client_identifier=assigned))
        data = mqtt.encode(bare, mqtt.MQTT_5)
        if len(data) > maximum:
            self.emulator.stats.dropped["CONNACK over the client's maximum packet size"] += 1
            return
        assert self.transport is not None
        self.transport.write(data)

    def _send_within_maximum(self, packet: mqtt.SubAck | mqtt.UnsubAck) -> None:
        """An acknowledgement that grows with what the client asked: one past
        the Maximum Packet Size its CONNECT declared is not sent, as if it had
        been [MQTT-3.1.2-25] (it carries no Reason String or User Property to
        leave out first)."""
        data = self._encode(packet)
        if data is None:
            return
        if len(data) > self.client_max:
            name = type(packet).__name__.upper()
            self.emulator.stats.dropped[f"{name} over the client's maximum packet size"] += 1
            return
        assert self.transport is not None
        self.transport.write(data)

    def _after_answer(self) -> None:
        """What arrived while the account was asked, in order; nothing after
        what ended the connection (a refused CONNECT, a close)."""
        while self.backlog and not self.asking and not self._ending():
            self._answer(self.backlog.pop(0))

    def _ending(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.emulator.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._received(bytes(self.emulator.read_buffer[:nbytes]))

    def _received(self, data: bytes) -> None:
        assert self.transport is not None
        fault: mqtt.ProtocolError | None = None
        try:
            packets: list[mqtt.Packet | mqtt.ProtocolError] = list(self.conn.receive(data))
        except mqtt.ProtocolError as exc:
            # What came whole before the fault is answered as if it had come
            # alone (a CONNACK, a PUBACK, a routed PUBLISH); then the fault.
            packets, fault = list(exc.received), exc
        if packets:  # a whole packet, as MQTT counts: a trickle of bytes keeps nothing alive
            self.heard = self.loop.time()
        if fault is not None:
            packets.append(fault)
        for packet in packets:
            if self._ending():
                return
            if self.asking or self.backlog:
                self._keep_for_later(packet)
            else:
                self._answer(packet)

    def _broke(self, fault: mqtt.ProtocolError) -> None:
        """The client broke the protocol: a session (CONNACK sent) hears why in
        an MQTT 5 DISCONNECT; anything else is cut."""
        if isinstance(fault, mqtt.PacketTooLarge):
            self._close("packet too large", fault.reason_code)
        elif isinstance(fault, mqtt.UnsupportedProtocolVersion):
            # MQTT 3.1.1, 3.1.2.2: CONNACK 0x01 (unacceptable protocol level), in
            # the one CONNACK form every version reads, then the connection ends.
            self._close("protocol error", farewell=_UNACCEPTABLE_PROTOCOL)
        else:
            self._close("protocol error", fault.reason_code)

    # Limits

    def _restart_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def _connect_deadline(self) -> None:
        if self.conn.version is None:  # no whole CONNECT yet
            self._close("connect timeout")

    def _check_idle(self, last_look: bool = False) -> None:
        silent = self.loop.time() - self.heard
        if silent < self.idle_limit or self.slow is not None:
            # Heard from in time; or not read from (the slow-consumer deadline
            # decides that one), so its silence proves nothing.
            self._restart_timer(max(self.idle_limit - silent, 0.1), self._check_idle)
            return
        if not last_look:
            # uvloop runs due timers before it reads the sockets: after a busy
            # spell, a PINGREQ that came in time may still sit unread. Look once
            # more after the loop has read what is waiting.
            self._restart_timer(_LAST_LOOK, lambda: self._check_idle(last_look=True))
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

    def taken_over(self) -> None:
        self._close("session taken over", 0x8E)  # MQTT 5: Session taken over

    def _close(self, reason: str, disconnect: int | None = None, farewell: bytes = b"") -> None:
        """End the session for ``reason``: an MQTT 5 session hears it in a
        DISCONNECT with reason code ``disconnect`` (any client: ``farewell``'s
        bytes), then the connection has CLOSE_LINGER to end; anything else is
        cut at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.emulator.stats.closes[reason] += 1
        if disconnect is not None and self.connected and self.conn.version == mqtt.MQTT_5:
            farewell = mqtt.encode(mqtt.Disconnect(disconnect), mqtt.MQTT_5)
        if farewell:
            transport.write(farewell)
            transport.close()
            self._restart_timer(CLOSE_LINGER, transport.abort)
        else:
            transport.abort()

    def _answer(self, packet: mqtt.Packet | mqtt.ProtocolError) -> None:
        assert self.transport is not None
        if isinstance(packet, mqtt.ProtocolError):
            self._broke(packet)
        elif isinstance(packet, mqtt.Connect):
            self._on_connect(packet)
        elif isinstance(packet, mqtt.Publish):
            if packet.qos > 1:  # past the Maximum QoS its CONNACK gave
                self._close("protocol error", 0x9B)  # MQTT 5: QoS not supported
                return
            properties = packet.properties
            if properties.topic_alias is not None:
                # Its CONNACK gave no Topic Alias Maximum: none may be used.
                self._close("protocol error", 0x94)  # Topic Alias invalid
                return
            if properties.subscription_identifier:
                # Only a server's PUBLISH carries them [MQTT-3.3.4-6].
                self._close("protocol error", 0x82)
                return
            if not self._allowed("iot:Publish", policy.arn("topic", packet.topic)):
                # As AWS does: a publish the policy denies ends the connection.
                self._close("publish denied")
                return
            if packet.qos == 1 and packet.packet_id is not None:
                self._send(mqtt.PubAck(packet.packet_id))
            self.emulator.route(packet, self)
        elif isinstance(packet, mqtt.Subscribe):
            if packet.properties.subscription_identifier:
                # Its CONNACK said Subscription Identifier Available 0, as AWS
                # IoT's does: using one anyway is a Protocol Error (MQTT 5
                # 3.2.2.3.12), answered with this DISCONNECT.
                self._close("protocol error", 0xA1)  # Subscription Identifiers not supported
                return
            v5 = self.conn.version == mqtt.MQTT_5
            codes = []
            for s in packet.subscriptions:
                if not topics.valid_filter(s.topic_filter):
                    codes.append(0x8F if v5 else 0x80)  # Topic Filter invalid
                elif not self._allowed("iot:Subscribe", policy.arn("topicfilter", s.topic_filter)):
                    codes.append(0x87 if v5 else 0x80)  # Not authorized
                elif s.topic_filter in self.filters:  # the same filter again replaces it
                    self._no_local(s)
                    codes.append(min(s.qos, 1))
                elif len(self.filters) >= self.limits.max_subscriptions:
                    codes.append(0x97 if v5 else 0x80)  # Quota exceeded
                else:
                    self.filters.append(s.topic_filter)
                    self._no_local(s)
                    codes.append(min(s.qos, 1))
            if self.filters:
                self.emulator.subscribe(self)
            self._send_within_maximum(mqtt.SubAck(packet.packet_id, tuple(codes)))
        elif isinstance(packet, mqtt.Unsubscribe):
            codes = []
            for topic_filter in packet.topic_filters:
                if topic_filter in self.filters:
                    self.filters.remove(topic_filter)
                    if topic_filter in self.no_local:
                        self.no_local = self.no_local - {topic_filter}
                    codes.append(0x00)
                else:
                    codes.append(0x11)  # MQTT 5: No subscription existed
            if not self.filters:
                self.emulator.unsubscribe(self)
            # MQTT 3.1.1's UNSUBACK has no codes: the codec leaves them out.
            self._send_within_maximum(mqtt.UnsubAck(packet.packet_id, tuple(codes)))
        elif isinstance(packet, mqtt.PingReq):
            self._send(mqtt.PingResp())
        elif isinstance(packet, (mqtt.PubRec, mqtt.PubRel, mqtt.PubComp, mqtt.Auth)):
            # QoS 2's flow and enhanced authentication, neither offered (Maximum
            # QoS 1, no Authentication Method): the client broke the protocol.
            self._close("protocol error", 0x82)
        elif isinstance(packet, mqtt.Disconnect):
            if packet.properties.session_expiry_interval and not self.session_expiry:
                # A session its CONNECT let end with the connection cannot be
                # kept by its DISCONNECT [MQTT-3.14.2-2]: no valid DISCONNECT.
                self._close("protocol error", 0x82)
                return
            # The client is done: no TLS shutdown (close_notify, waiting for the
            # peer's), which cost about a tenth of a connect's CPU.
            self.transport.abort()

    def _no_local(self, subscription: mqtt.Subscription) -> None:
        """Keep whether ``subscription``'s filter takes the session's own messages."""
        topic_filter = subscription.topic_filter
        if subscription.no_local:
            self.no_local = self.no_local | {topic_filter}
        elif topic_filter in self.no_local:
            self.no_local = self.no_local - {topic_filter}

    def deliver(self, packet: mqtt.Publish, source: _Session | None = None) -> None:
        """A PUBLISH from a device (``source``, when it is connected here), if a
        filter matches and the policy allows iot:Receive; delivered at QoS 0."""
        if self.transport is None or self.transport.is_closing():
            return
        filters = self.filters
        if source is self and self.no_local:
            # Not back to the client that published it [MQTT-3.8.3-3].
            filters = [f for f in filters if f not in self.no_local]
        if not any(topics.matches(f, packet.topic) for f in filters):
            return
        if not self._allowed("iot:Receive", policy.arn("topic", packet.topic)):
            return
        if self.slow is not None:  # over its write buffer: QoS 0 may be dropped
            self.emulator.stats.dropped["slow consumer"] += 1
            return
        data = self._encode(mqtt.Publish(packet.topic, packet.payload))
        if data is None:
            return
        if len(data) > self.client_max:  # MQTT 5: discarded, as if it had been sent
            self.emulator.stats.dropped["over the client's maximum packet size"] += 1
            return
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.emulator.unsubscribe(self)
        if self.client_id:
            self.emulator.ended(self, self.client_id)
        for handle in (self.timer, self.slow):
            if handle is not None:
                handle.cancel()
