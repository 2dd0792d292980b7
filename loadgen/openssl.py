"""The process's own OpenSSL, for the few calls Python's modules do not expose.

Loaded through ``_ssl``, so the library is the very one ``ssl`` and ``hashlib``
already use (dlsym on that handle also finds libcrypto's symbols): nothing new is
mapped, and no second copy of OpenSSL can disagree with the first.
"""

from __future__ import annotations

import ctypes
from typing import Any

EVP_PKEY_EC = 408  # obj_mac.h: NID_X9_62_id_ecPublicKey, OpenSSL's EC key type


def load() -> ctypes.CDLL | None:
    """libssl (and, through it, libcrypto), or None where it cannot be reached."""
    try:
        import _ssl

        return ctypes.CDLL(_ssl.__file__)
    except (ImportError, OSError):
        return None


def bind(function: Any, restype: object, argtypes: list[object]) -> Any:
    """``function`` with its C signature set: ctypes guesses int otherwise."""
    function.restype = restype
    function.argtypes = argtypes
    return function
