"""What a session asks of the emulated account: may this certificate go on (and
what it needs to know then), may this CONNECT go on under the account's
quotas, and which CAs the TLS side trusts.

One interface, two sides: ``loadgen.emulator.local.LocalAccount`` answers at
once, from the registry and the limiter in this process (one process, and the
account process itself);
``loadgen.emulator.serving.RemoteAccount`` answers through the RPC to the
account process, for a serving process of ``--processes N``. The answers come
to a callback either way, so that `_Session` is one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Admission:
    """What an admitted certificate's session needs from the registry."""

    cert_id: str
    things: dict[str, str | None]  # the things it is attached to: name -> type name
    policies: tuple[str, ...]  # its policies' documents, by policy name
    # Those things' attributes, only when a policy looks at them (by
    # iot:Connection.Thing.Attributes[NAME]): otherwise held for nothing.
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_wire(
        self,
    ) -> tuple[str, dict[str, str | None], tuple[str, ...], dict[str, dict[str, str]]]:
        return (self.cert_id, self.things, self.policies, self.attributes)


# Why a connection is closed after the handshake; or the session may go on.
Admitted = Admission | str


class Account(Protocol):
    def admit(self, der: bytes, answer: Callable[[Admitted], None]) -> None:
        """Answer whether the certificate (DER) may have an MQTT session."""

    def allow_connect(self, client_id: str, answer: Callable[[str | None], None]) -> None:
        """Answer None when the CONNECT may proceed, else the quota it exceeds."""

    def connected(self, client_id: str, turn: int) -> None:
        """A session of ``client_id`` got its CONNACK here, this process's
        ``turn``-th: its session in any other process is taken over."""

    def left(self, client_id: str, turn: int) -> None:
        """The session of ``client_id`` in this process (its ``turn``) ended."""

    def trusted(self) -> tuple[str, ...]:
        """PEMs of the CAs a handshake trusts now (called at every handshake:
        cheap, and the same tuple object while nothing changed)."""
