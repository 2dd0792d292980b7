"""Errors of the MQTT layer: everything a peer can send wrong is a ``ProtocolError``."""

from __future__ import annotations

from typing import Any

from loadgen.errors import LoadgenError


class ProtocolError(LoadgenError):
    """The peer broke the protocol. ``reason_code`` is what an MQTT 5 DISCONNECT
    should carry when answering it."""

    reason_code = 0x82  # Protocol Error
    # The packets that came whole and valid before the fault, in the same read,
    # in order: a receiver acts on them as if they had come alone (a CONNACK
    # followed by garbage was still an accepted connect).
    received: tuple[Any, ...] = ()


class MalformedPacket(ProtocolError):
    """Bytes that do not parse as the packet they claim to be."""

    reason_code = 0x81


class PacketTooLarge(ProtocolError):
    """A packet over the maximum size this side accepts."""

    reason_code = 0x95


class UnsupportedProtocolVersion(ProtocolError):
    """A CONNECT with a protocol level other than 4 (3.1.1) or 5."""

    reason_code = 0x84
