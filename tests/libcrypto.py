"""The process's libcrypto, read from tests: what an OpenSSL object encodes to."""

from __future__ import annotations

import ctypes
from typing import Any


def encoded(i2d: Any, pointer: int) -> bytes:
    """The DER an ``i2d_*`` function writes for ``pointer`` (bound with
    ``openssl.bind``: int for a pointer and a ``char **`` out)."""
    size = i2d(pointer, None)
    buffer = ctypes.create_string_buffer(size)
    out = ctypes.c_char_p(ctypes.addressof(buffer))
    i2d(pointer, ctypes.byref(out))
    return buffer.raw
