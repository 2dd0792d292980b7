"""MQTT's primitive encodings (section 1.5): integers, variable byte integers,
UTF-8 strings and binary data, and a bounds-checked reader over a packet body."""

from __future__ import annotations

import re

from loadgen.mqtt.errors import MalformedPacket

MAX_VARINT = 268_435_455

# What an MQTT UTF-8 string must not hold (MQTT 5 1.5.4, 3.1.1 1.5.3): U+0000, and
# the UTF-16 surrogates, which UTF-8 cannot encode at all. A Python str can hold a
# lone one: a YAML or JSON "\ud800" escape makes it.
_NOT_CARRIED = re.compile("[\x00\ud800-\udfff]")


def uncarried(text: str) -> str | None:
    """The first character of ``text`` that no MQTT UTF-8 string can carry, as
    ``U+XXXX``; None when every one can. For input checked once, before a run:
    sending such a text fails (a surrogate) or is a malformed packet (U+0000)."""
    found = _NOT_CARRIED.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_carried(text: str, what: str, why: str = "MQTT 5 1.5.4") -> None:
    """ValueError (for a validator: one line naming ``what`` and ``why``) when
    ``text`` holds a character no MQTT string can carry."""
    bad = uncarried(text)
    if bad is not None:
        raise ValueError(f"{text!r}: {what} cannot hold the character {bad} ({why})")


def varint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65,535 bytes")
    return len(data).to_bytes(2, "big") + data


def binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65,535 bytes")
    return len(value).to_bytes(2, "big") + value


class Reader:
    """Reads one packet's variable header and payload; running past the end is a
    ``MalformedPacket``, never an IndexError."""

    __slots__ = ("data", "end", "packet", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, packet: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.end = len(self.data)
        self.packet = packet

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise MalformedPacket(f"{self.packet}: truncated (needs {n} more bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedPacket(f"{self.packet}: truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:  # one byte: nearly every property id
            self.pos = pos + 1
            return self.data[pos]
        value = 0
        for shift in range(0, 28, 7):
            digit = self.byte()
            value |= (digit & 0x7F) << shift
            if not digit & 0x80:
                if not digit and shift:
                    # A last byte of 0 adds nothing: the value had a shorter
                    # encoding, and only the shortest is allowed [MQTT-1.5.5-1].
                    raise MalformedPacket(f"{self.packet}: variable byte integer not minimal")
                return value
        raise MalformedPacket(f"{self.packet}: variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket(f"{self.packet}: invalid UTF-8 string") from None
        if "\x00" in text:
            raise MalformedPacket(f"{self.packet}: UTF-8 string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(self.remaining)
