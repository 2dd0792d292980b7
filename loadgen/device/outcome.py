"""The outcome each device ends in, and how a failure maps to one."""

from __future__ import annotations

from enum import StrEnum

from loadgen.certs.subject import MISSING_PREFIX
from loadgen.mqtt import MQTT_5
from loadgen.transport.errors import (
    AckRefused,
    Closed,
    Refused,
    TlsRejected,
    TransportError,
)


class Outcome(StrEnum):
    CONNECTED = "connected"  # success
    THROTTLED = "throttled"  # v5 0x97 / 0x9F / 0x89, v3.1.1 code 3
    NOT_AUTHORIZED = "not_authorized"  # v5 0x86 / 0x87, v3.1.1 codes 4 / 5
    TLS_REJECTED = "tls_rejected"
    REFUSED = "refused"  # TCP
    CLOSED = "closed"  # closed by the server, after the attempts ran out
    TIMEOUT = "timeout"
    ERROR = "error"  # anything else; the reason is kept


OUTCOMES = tuple(Outcome)
# The note (report accounting.notes) of a device that connected, did every step
# before its hold, and was holding when a stop past the grace period cut it short.
HOLD_INTERRUPTED = "interrupted during hold"
_THROTTLED_V5 = {0x97, 0x9F, 0x89}
_NOT_AUTHORIZED_V5 = {0x86, 0x87}
_THROTTLED_V3 = {3}
_NOT_AUTHORIZED_V3 = {4, 5}


def classify(error: TransportError) -> Outcome:
    if isinstance(error, AckRefused):
        v5 = error.version == MQTT_5
        if error.code in (_THROTTLED_V5 if v5 else _THROTTLED_V3):
            return Outcome.THROTTLED
        if error.code in (_NOT_AUTHORIZED_V5 if v5 else _NOT_AUTHORIZED_V3):
            return Outcome.NOT_AUTHORIZED
        return Outcome.ERROR
    if isinstance(error, TlsRejected):
        return Outcome.TLS_REJECTED
    if isinstance(error, Refused):
        return Outcome.REFUSED
    if isinstance(error, Closed):
        return Outcome.CLOSED
    return Outcome.ERROR


# What a JITP endpoint does to the first connect of a new certificate: it closes
# the connection (AWS), fails TLS, or refuses the CONNACK.
PROVISIONING_TRIGGERS = {Outcome.CLOSED, Outcome.TLS_REJECTED, Outcome.NOT_AUTHORIZED}


# What a fault the profile injected on purpose predicts. A certificate outside
# its validity, or from a CA the endpoint does not know, must fail the TLS
# handshake: a connect is a finding. A certificate missing a subject field fails
# JITP only when the template references that field, so it may also connect.
_INVALID_CERT = frozenset({Outcome.TLS_REJECTED})
_PROVISIONING_REFUSED = frozenset({Outcome.CLOSED, Outcome.NOT_AUTHORIZED})
_FAULT_OUTCOMES = {
    "expired": _INVALID_CERT,
    "not_yet_valid": _INVALID_CERT,
    "unknown_ca": _INVALID_CERT,
}


def predicted(fault: str | None) -> frozenset[Outcome]:
    """The failed outcomes a device's injected fault predicts (none without one)."""
    if fault is None:
        return frozenset()
    if fault.startswith(MISSING_PREFIX):
        return _PROVISIONING_REFUSED
    return _FAULT_OUTCOMES.get(fault, frozenset())


def expectation(
    fault: str | None, outcome: Outcome, phase: str | None = None, judged: bool = True
) -> bool | None:
    """Whether ``outcome`` is what the fleet predicted for this device: True for a
    failure its fault predicts, False for a surprise (a failure nothing predicted,
    or a connect its certificate should have been refused), None for an ordinary
    connect.

    A failure is predicted only when it is the endpoint's verdict on the device:
    not when ``judged`` is false (the server did not speak TLS, or closed before
    it did: a dead endpoint fails every device alike), and, for a missing subject
    field, only once TLS was done (JITP refuses after the handshake)."""
    if outcome is Outcome.CONNECTED:
        if fault is None or fault.startswith(MISSING_PREFIX):
            return None
        return False
    if not judged or (fault is not None and fault.startswith(MISSING_PREFIX) and phase == "tls"):
        return False
    return outcome in predicted(fault)
