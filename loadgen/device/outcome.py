"""The outcome each device ends in, and how a failure maps to one."""

from __future__ import annotations

from enum import StrEnum

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
