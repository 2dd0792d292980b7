"""The frames between the account process and its serving processes (sans
I/O): each message a 4-byte big-endian length, then the message in `marshal`'s
format (the two ends are the same program: tuples, dicts, strings, bytes and
numbers only, and fast at the rate of connects).

A message is a tuple: ``(id, method, args)`` a request (id > 0), ``(0, method,
args)`` a notification (no answer), ``(-id, result)`` the answer to request id.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

_LENGTH = struct.Struct(">I")
# Far above any message (a policy document set, the stats): a length past it is
# a broken stream, not a message.
MAX_FRAME = 64 * 1024 * 1024


class FrameError(ValueError):
    """The other end sent something that is not a frame of this protocol."""


def encode(message: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(message)
    return _LENGTH.pack(len(body)) + body


class Decoder:
    """Bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[Any, ...]] = []
        start = 0
        size = len(buffer)
        while size - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise FrameError(f"a frame of {length} bytes")
            end = start + 4 + length
            if end > size:
                break
            try:
                message = marshal.loads(memoryview(buffer)[start + 4 : end])
            except (ValueError, EOFError, TypeError) as exc:
                raise FrameError(f"not a message: {exc}") from None
            if not isinstance(message, tuple) or not message:
                raise FrameError("a message is a tuple")
            out.append(message)
            start = end
        if start:
            del buffer[:start]
        return out
