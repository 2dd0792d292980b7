"""OpenSSL 3.0's legacy EC code for a process's TLS, claimed by an ENGINE.

``d2i_X509`` decodes a certificate's public key while it parses it. OpenSSL 3.0
does that through its decoder framework, which builds a decoder context (every
key manager and decoder of the providers, looked up by name) for each
certificate: 180-330 µs on this machine kind. A device pays it twice, for its
own certificate when it is prepared and in its handshake for the server's (which
`openssl s_time` pays too); a server pays it for each client's certificate.
3.0 keeps its old decoder, about 30 µs, for the key types that an ENGINE claims
(``x509_pubkey_decode`` asks ``ENGINE_get_pkey_meth_engine``).

``LegacyEc.claim`` registers an ENGINE that claims EC keys with OpenSSL's own
built-in EC method. While it is held, EC public keys are decoded the old way and
EC operations (ECDSA, ECDH) run through that method, the same arithmetic, on
OpenSSL's legacy ``EC_KEY``s: nothing is converted between a provider's key and
a legacy one. Keys a process builds itself must then be legacy keys too
(``native.EcKeyReader(legacy=True)``): ``EVP_PKEY_fromdata`` refuses an EC
context the ENGINE claims. Keys OpenSSL reads from files (``load_cert_chain``)
are the providers' still, and work (converted once, and cached with the key).

The claim is the process's (OpenSSL's ENGINE table is), so it is taken where a
process's TLS is set up (a worker's ``ClientTls``, the emulator's ``Emulator``)
and given back when that is dropped or the interpreter exits: OpenSSL's own
cleanup at exit would otherwise call the ENGINE's Python callback after Python
is gone. A process has one ENGINE, made at its first claim and registered while
any claim is held; its callback lives as long as the process. (An ENGINE per
claim, each callback freed with its claim, could have OpenSSL run a freed
callback: a claim held by garbage stays registered, and the oldest registered
engine is the one OpenSSL picks, until the collector finalizes it, which can
happen inside that very callback, since it allocates, or on another thread.)

OpenSSL 3.1 and later cache decoder contexts: there, and wherever an ENGINE
cannot be made, nothing is claimed and every key is the providers'.
"""

from __future__ import annotations

import ctypes
import functools
import weakref

from loadgen import openssl

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
        set_id = openssl.bind(lib.ENGINE_set_id, i, [p, ctypes.c_char_p])
        set_name = openssl.bind(lib.ENGINE_set_name, i, [p, ctypes.c_char_p])
        set_meths = openssl.bind(lib.ENGINE_set_pkey_meths, i, [p, _PkeyMeths])
        self._register = openssl.bind(lib.ENGINE_register_pkey_meths, i, [p])
        self._unregister = openssl.bind(lib.ENGINE_unregister_pkey_meths, None, [p])
        meth_find = openssl.bind(lib.EVP_PKEY_meth_find, p, [i])
        nids = (ctypes.c_int * 1)(openssl.EVP_PKEY_EC)

        def meths(
            _engine: int | None,
            pmeth: ctypes._Pointer[ctypes.c_void_p],
            nid_list: ctypes._Pointer[ctypes._Pointer[ctypes.c_int]],
            nid: int,
        ) -> int:
            if not pmeth:  # asked which key types it claims
                nid_list[0] = ctypes.cast(nids, ctypes.POINTER(ctypes.c_int))
                return 1
            if nid != openssl.EVP_PKEY_EC:
                return 0
            pmeth[0] = meth_find(nid)
            return 1

        # Kept with the engine: OpenSSL holds the callback's address (and the
        # callback the nids it hands out).
        self._callback = _PkeyMeths(meths)
        # Never freed, on purpose (about 290 bytes, once a process): freeing an
        # ENGINE calls its callback, and a context that still holds the engine
        # could do that after Python is gone.
        self.pointer: int = new()
        if not self.pointer:
            raise OSError("ENGINE_new failed")
        if (
            set_id(self.pointer, b"loadgen-legacy-ec") != 1
            or set_name(self.pointer, b"loadgen: OpenSSL's built-in EC method") != 1
            or set_meths(self.pointer, self._callback) != 1
        ):
            raise OSError("the ENGINE could not be set up")
        self.claims = 0  # held now; registered while there is one

    def take(self) -> bool:
        """One more claim; the first registers the engine (False if it cannot)."""
        if self.claims == 0 and self._register(self.pointer) != 1:
            return False
        self.claims += 1
        return True

    def give_back(self) -> None:
        """One claim fewer; the last unregisters the engine."""
        self.claims -= 1
        if self.claims == 0:
            self._unregister(self.pointer)


@functools.cache
def _process_engine() -> _Engine | None:
    # Cached for the process's life, on purpose: OpenSSL holds the engine's
    # callback address as long as the engine lives, and it lives for good.
    lib = openssl.load()
    if lib is None:
        return None
    try:
        return _Engine(lib)
    except (AttributeError, OSError):  # built without ENGINEs, say (claim clears the errors)
        return None


def ec_claimed() -> bool:
    """Whether any ENGINE claims EC keys in this process now (one reference taken
    and given back)."""
    lib = openssl.load()
    if lib is None:
        return False
    p = ctypes.c_void_p
    try:
        claims = openssl.bind(lib.ENGINE_get_pkey_meth_engine, p, [ctypes.c_int])
        finish = openssl.bind(lib.ENGINE_finish, ctypes.c_int, [p])
    except AttributeError:
        return False
    engine = claims(openssl.EVP_PKEY_EC)
    if engine:
        finish(engine)
    return bool(engine)


class LegacyEc:
    """A claim on EC keys for OpenSSL's legacy EC code, held until released."""

    def __init__(self, engine: _Engine) -> None:
        # At the latest when the interpreter exits (finalize's atexit).
        self._release = weakref.finalize(self, engine.give_back)

    @classmethod
    def claim(cls, *, legacy: bool | None = None) -> LegacyEc | None:
        """The claim, made; None on OpenSSL 3.1 and later (or with ``legacy``
        False), or where no ENGINE can be made or registered."""
        lib = openssl.load()
        if lib is None:
            return None
        if legacy is None:
            try:
                version = openssl.bind(lib.OpenSSL_version_num, ctypes.c_ulong, [])
            except AttributeError:
                return None
            legacy = version() < _OPENSSL_3_1
        if not legacy:
            return None
        engine = _process_engine()
        if engine is not None and engine.take():
            return cls(engine)
        openssl.bind(lib.ERR_clear_error, None, [])()  # nothing to surface in ssl later
        return None

    @property
    def held(self) -> bool:
        return self._release.alive

    def release(self) -> None:
        self._release()
