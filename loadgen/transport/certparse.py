"""Device certificates parsed without OpenSSL 3.0's decoder framework.

``d2i_X509`` decodes a certificate's public key while it parses it. OpenSSL 3.0
does that through its decoder framework, which builds a decoder context (every
key manager and decoder of the providers, looked up by name) for each
certificate: 180-330 µs a device on this machine kind, most of what preparing a
device costs. 3.0 keeps its old decoder, about 30 µs, for the key types that an
ENGINE claims (``x509_pubkey_decode`` asks ``ENGINE_get_pkey_meth_engine``). So
``CertificateParser`` registers an ENGINE claiming EC keys, with OpenSSL's own
EC method, for the length of each parse and no longer: registered, it would take
every EC operation of the process (the handshake's included) off the providers.

The key decoded this way is OpenSSL's own legacy EC key. The certificate's
bytes are kept as they were read, and its signature and the key's match with
the device's private key are checked as before (``SSL_CTX_use_cert_and_key``).
OpenSSL 3.1 and later cache decoder contexts: there, and wherever an ENGINE
cannot be made, this is plain ``d2i_X509``.
"""

from __future__ import annotations

import ctypes
import weakref

from loadgen import openssl

_EVP_PKEY_EC = 408  # obj_mac.h: NID_X9_62_id_ecPublicKey
_OPENSSL_3_1 = 0x30100000

_PkeyMeths = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
    ctypes.c_int,
)


class _Engine:
    """An ENGINE that claims EC keys with OpenSSL's built-in EC method."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int
        new = openssl.bind(lib.ENGINE_new, p, [])
        free = openssl.bind(lib.ENGINE_free, i, [p])
        set_id = openssl.bind(lib.ENGINE_set_id, i, [p, ctypes.c_char_p])
        set_name = openssl.bind(lib.ENGINE_set_name, i, [p, ctypes.c_char_p])
        set_meths = openssl.bind(lib.ENGINE_set_pkey_meths, i, [p, _PkeyMeths])
        self._register = openssl.bind(lib.ENGINE_register_pkey_meths, i, [p])
        self._unregister = openssl.bind(lib.ENGINE_unregister_pkey_meths, None, [p])
        self._claims = openssl.bind(lib.ENGINE_get_pkey_meth_engine, p, [i])
        self._finish = openssl.bind(lib.ENGINE_finish, i, [p])
        meth_find = openssl.bind(lib.EVP_PKEY_meth_find, p, [i])
        nids = (ctypes.c_int * 1)(_EVP_PKEY_EC)

        def meths(
            _engine: int | None,
            pmeth: ctypes._Pointer[ctypes.c_void_p],
            nid_list: ctypes._Pointer[ctypes._Pointer[ctypes.c_int]],
            nid: int,
        ) -> int:
            if not pmeth:  # asked which key types it claims
                nid_list[0] = ctypes.cast(nids, ctypes.POINTER(ctypes.c_int))
                return 1
            if nid != _EVP_PKEY_EC:
                return 0
            pmeth[0] = meth_find(nid)
            return 1

        # Kept with the engine: OpenSSL holds the callback's address.
        self._callback = _PkeyMeths(meths)
        self._nids = nids
        self.pointer: int = new()
        if not self.pointer:
            raise OSError("ENGINE_new failed")
        weakref.finalize(self, free, self.pointer)
        if (
            set_id(self.pointer, b"loadgen-ec-decode") != 1
            or set_name(self.pointer, b"loadgen: EC keys of parsed certificates") != 1
            or set_meths(self.pointer, self._callback) != 1
        ):
            raise OSError("the ENGINE could not be set up")

    def register(self) -> bool:
        return bool(self._register(self.pointer) == 1)

    def unregister(self) -> None:
        self._unregister(self.pointer)

    def claims_ec(self) -> bool:
        """Whether any ENGINE claims EC keys now (one reference taken and given back)."""
        engine = self._claims(_EVP_PKEY_EC)
        if engine:
            self._finish(engine)
        return bool(engine)


class CertificateParser:
    """DER certificates to ``X509`` pointers (the caller frees them)."""

    def __init__(self, lib: ctypes.CDLL, *, legacy: bool | None = None) -> None:
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
        if legacy is None:
            version = openssl.bind(lib.OpenSSL_version_num, ctypes.c_ulong, [])
            legacy = version() < _OPENSSL_3_1
        self.engine: _Engine | None = None
        if legacy:
            try:
                self.engine = _Engine(lib)
            except (AttributeError, OSError):  # built without ENGINEs, say
                self._clear_errors()

    @classmethod
    def reach(cls) -> CertificateParser | None:
        lib = openssl.load()
        try:
            return cls(lib) if lib is not None else None
        except AttributeError:
            return None

    def parse(self, der: bytes) -> int | None:
        """The certificate, its public key decoded; None when OpenSSL refuses it."""
        engine = self.engine
        if engine is not None and engine.register():
            try:
                x509 = self._read(der)
            finally:
                engine.unregister()
            if x509 is not None:
                return x509
            # A key the old decoder does not know, or no certificate: the providers'.
        return self._read(der)

    def free(self, x509: int) -> None:
        self._free(x509)

    def _read(self, der: bytes) -> int | None:
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
