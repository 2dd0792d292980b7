"""How a connection attempt can fail, one type per cause the device layer tells
apart. Each keeps the low-level reason as its message."""

from __future__ import annotations

from typing import ClassVar

from loadgen.errors import LoadgenError


class TransportError(LoadgenError):
    """A connection attempt or an open connection failed. ``phase`` is where:
    tcp, tls, connack, publish, subscribe, hold or disconnect."""

    # Whether JITP's rejection of a first connect can look like this. It always
    # completes TLS first, so a server that never spoke TLS cannot be provisioning.
    may_be_jitp_trigger: ClassVar[bool] = True

    def __init__(self, reason: str, phase: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.phase = phase


class Refused(TransportError):
    """TCP connection refused: nothing listens there."""


class Unreachable(TransportError):
    """No route, DNS failure, or another OS error before TCP connected."""


class TlsRejected(TransportError):
    """The TLS handshake failed, or the server rejected the client certificate
    (with TLS 1.3 that alert arrives after the client's handshake completed)."""


class NotTls(TlsRejected):
    """The server answered the TLS ClientHello with bytes that are not TLS: a
    plain TCP, MQTT or HTTP port."""

    may_be_jitp_trigger = False


class Closed(TransportError):
    """The server closed the connection (or reset it) without a TLS alert."""


class ClosedBeforeTls(Closed):
    """The server closed (or reset) the connection before it sent a byte of
    TLS: it does not speak TLS on this port, or it turned the connection away at
    once (a connection limit, say)."""

    may_be_jitp_trigger = False


class AckRefused(TransportError):
    """CONNACK, PUBACK or SUBACK with a failure code."""

    def __init__(self, reason: str, phase: str, code: int, version: int) -> None:
        super().__init__(reason, phase)
        self.code = code
        self.version = version


class PeerProtocolError(TransportError):
    """The server sent bytes that break MQTT."""


class DeviceFilesError(LoadgenError):
    """A device's certificate or key would not read or load: the device fails
    alone, in phase ``preparing``. The message says which file, not its path:
    devices failing alike share one reason (the report names them by index)."""
