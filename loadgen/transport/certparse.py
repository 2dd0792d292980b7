"""Device certificates parsed into OpenSSL ``X509``s for their TLS sessions.

Under a worker's ``loadgen.legacy_ec`` claim (OpenSSL 3.0), their EC public
keys are decoded by OpenSSL's old decoder, about 30 µs, instead of 3.0's
decoder framework (180-330 µs a certificate on this machine kind).
"""

from __future__ import annotations

import ctypes

from loadgen import openssl


class CertificateParser:
    """DER certificates to ``X509`` pointers (the caller frees them). Their public
    keys are decoded by whatever OpenSSL takes now: its old EC decoder while a
    ``loadgen.legacy_ec.LegacyEc`` claim is held."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._d2i = openssl.bind(
            lib.d2i_X509,
            ctypes.c_void_p,
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long],
        )
        self._free = openssl.bind(lib.X509_free, None, [ctypes.c_void_p])
        self._pubkey = openssl.bind(lib.X509_get0_pubkey, ctypes.c_void_p, [ctypes.c_void_p])
        self._clear_errors = openssl.bind(lib.ERR_clear_error, None, [])
        self._der = ctypes.c_char_p()
        self._der_ref = ctypes.byref(self._der)

    @classmethod
    def reach(cls) -> CertificateParser | None:
        lib = openssl.load()
        try:
            return cls(lib) if lib is not None else None
        except AttributeError:
            return None

    def parse(self, der: bytes) -> int | None:
        """The certificate if it parsed with its public key decoded, else None and
        nothing left queued (OpenSSL's errors would surface in ``ssl`` later)."""
        self._der.value = der
        x509: int | None = self._d2i(None, self._der_ref, len(der))
        if x509 is not None and self._pubkey(x509):
            return x509
        if x509 is not None:
            self._free(x509)
        self._clear_errors()
        return None

    def free(self, x509: int) -> None:
        self._free(x509)
