"""One parsed copy of a fleet's CA chain for every device's TLS session.

``load_cert_chain`` parses the whole chain file (device certificate, then its
CA), so every prepared device kept a parsed CA certificate of its own: about
5 KiB each, for a certificate all devices send alike. Right after loading a
device's chain, its context's chain is swapped for one shared, parsed copy,
through OpenSSL's own API on the context's ``SSL_CTX`` (ctypes: Python's ``ssl``
does not expose it). The SSLObject made next takes references to that copy; the
certificates on the wire are the same.

Once a chain is known, later devices of that chain skip ``load_cert_chain``
altogether (``SharedChains.load``): OpenSSL parses only their own certificate,
its public key by OpenSSL's old decoder (``loadgen.legacy_ec``), and their key
is built from its parts, both instead of going through OpenSSL 3.0's key
decoders, which made preparing a device cost 700 µs, then about 250 µs, now
about 100 µs.

Where OpenSSL cannot be reached safely (not CPython, a debug build, symbols
missing, a context that does not answer as expected) nothing is shared, every
device goes through ``load_cert_chain``, and nothing else changes.
"""

from __future__ import annotations

import binascii
import ctypes
import ssl
import sys
from dataclasses import dataclass

from loadgen import openssl
from loadgen.certs import native
from loadgen.transport.certparse import CertificateParser

# ssl.h: SSL_CTX_set0_chain, SSL_CTX_add1_chain_cert, SSL_CTX_get0_chain_certs.
_CTRL_CHAIN = 88
_CTRL_CHAIN_CERT = 89
_CTRL_GET_CHAIN_CERTS = 115
# Distinct chains kept (parsed copies live as long as the worker): a fleet has
# one CA, a few at most; beyond this, devices parse their own as before.
_MAX_CHAINS = 16
_END = b"-----END CERTIFICATE-----"


def _chain_key(chain_pem: bytes) -> bytes:
    """What follows the device certificate in its chain file: the CA chain."""
    return chain_pem.partition(_END)[2].strip()


def pem_body(pem: bytes, label: bytes) -> bytes:
    """The DER inside a PEM block (empty when there is no such block)."""
    _, begin, rest = pem.partition(b"-----BEGIN " + label + b"-----")
    body, end, _ = rest.partition(b"-----END " + label + b"-----")
    if not begin or not end:
        return b""
    try:
        return binascii.a2b_base64(body)
    except binascii.Error:
        return b""


class _OpenSsl:
    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int
        self.ctrl = openssl.bind(lib.SSL_CTX_ctrl, ctypes.c_long, [p, i, ctypes.c_long, p])
        self.options = openssl.bind(lib.SSL_CTX_get_options, ctypes.c_uint64, [p])
        self.sk_num = openssl.bind(lib.OPENSSL_sk_num, i, [p])
        self.sk_value = openssl.bind(lib.OPENSSL_sk_value, p, [p, i])
        self.up_ref = openssl.bind(lib.X509_up_ref, i, [p])
        # certificate, private key, chain, override: both checked against each
        # other, nothing compared with the last device's (SSL_CTX_use_certificate
        # checks the new certificate against the old key, a mismatch each time).
        self.use_cert_and_key = openssl.bind(lib.SSL_CTX_use_cert_and_key, i, [p, p, p, p, i])
        self.sk_new = openssl.bind(lib.OPENSSL_sk_new_null, p, [])
        self.sk_push = openssl.bind(lib.OPENSSL_sk_push, i, [p, p])
        self.clear_errors = openssl.bind(lib.ERR_clear_error, None, [])


def openssl_calls() -> _OpenSsl | None:
    # The layout read below (PyObject_HEAD, then SSL_CTX *) is CPython's, in
    # release builds; elsewhere, do without.
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None
    lib = openssl.load()
    try:
        return _OpenSsl(lib) if lib is not None else None
    except AttributeError:
        return None


def ctx_pointer(lib: _OpenSsl, context: ssl.SSLContext) -> int | None:
    pointer = ctypes.c_void_p.from_address(id(context) + 2 * ctypes.sizeof(ctypes.c_void_p))
    address = pointer.value
    # The context must answer with its own options: then this is its SSL_CTX.
    if not address or lib.options(address) != context.options:
        return None
    return address


@dataclass(frozen=True, slots=True)
class _Chain:
    """A CA chain parsed once and referenced for good, and the same certificates
    as an OpenSSL stack, for ``SSL_CTX_use_cert_and_key`` (which takes its own
    references)."""

    certificates: tuple[int, ...]
    stack: int


class SharedChains:
    """Swaps each loaded chain for a shared parsed copy, in one context."""

    def __init__(self, context: ssl.SSLContext, *, legacy_ec: bool = False) -> None:
        """``legacy_ec``: the process holds a ``loadgen.legacy_ec.LegacyEc`` claim, so EC
        device keys are built as legacy keys."""
        self._lib = openssl_calls()
        self._ctx = ctx_pointer(self._lib, context) if self._lib is not None else None
        self._chains: dict[bytes, _Chain] = {}
        self._keys = native.ec_key_reader(legacy=legacy_ec) if self._ctx is not None else None
        self._certificates = CertificateParser.reach() if self._ctx is not None else None
        self.fast_loads = 0  # devices loaded by ``load``

    @property
    def active(self) -> bool:
        return self._lib is not None and self._ctx is not None

    def load(self, chain_pem: bytes, key_pem: bytes) -> bool:
        """Load a device's certificate and key into the context the short way, from
        its chain file's and key file's bytes: its own certificate only
        (``CertificateParser``), the CA from the shared copy, and the key built
        from its parts (``EcKeyReader``), both rather than through OpenSSL 3.0's
        key decoders. About 100 µs against 700 µs for ``load_cert_chain``. False
        when this cannot be done: a chain not seen yet, a key in another encoding,
        a key that is not the certificate's; then ``load_cert_chain`` (which says
        what is wrong) and ``share``."""
        lib, ctx, keys, certificates = self._lib, self._ctx, self._keys, self._certificates
        if lib is None or ctx is None or keys is None or certificates is None:
            return False
        shared = self._chains.get(_chain_key(chain_pem))
        if shared is None:
            return False
        pkey = keys.pkey(pem_body(key_pem, b"PRIVATE KEY"))
        if pkey is None:
            return False
        try:
            # The first certificate of the chain file: the device's.
            x509 = certificates.parse(pem_body(chain_pem, b"CERTIFICATE"))
            if x509 is None:
                return False
            try:
                if lib.use_cert_and_key(ctx, x509, pkey, shared.stack, 1) != 1:
                    lib.clear_errors()  # what OpenSSL queued must not surface in ssl later
                    return False
            finally:
                certificates.free(x509)  # the context holds its own reference
        finally:
            keys.free(pkey)
        self.fast_loads += 1
        return True

    def share(self, chain_pem: bytes) -> None:
        """Call right after ``load_cert_chain`` of the file holding ``chain_pem``."""
        lib, ctx = self._lib, self._ctx
        if lib is None or ctx is None:
            return
        key = _chain_key(chain_pem)
        if not key:
            return  # the device certificate alone: no chain to share
        shared = self._chains.get(key)
        if shared is None:
            if len(self._chains) < _MAX_CHAINS and (kept := self._keep(lib, ctx)):
                self._chains[key] = kept
            return
        lib.ctrl(ctx, _CTRL_CHAIN, 0, None)
        for x509 in shared.certificates:
            lib.ctrl(ctx, _CTRL_CHAIN_CERT, 1, x509)

    @staticmethod
    def _keep(lib: _OpenSsl, ctx: int) -> _Chain | None:
        """The chain just loaded, referenced for good: the shared copy."""
        stack = ctypes.c_void_p()
        lib.ctrl(ctx, _CTRL_GET_CHAIN_CERTS, 0, ctypes.addressof(stack))
        if not stack.value or not lib.sk_num(stack.value):
            return None
        kept = []
        for i in range(lib.sk_num(stack.value)):
            x509 = lib.sk_value(stack.value, i)
            lib.up_ref(x509)
            kept.append(x509)
        ours = lib.sk_new()
        if not ours:
            return None  # out of memory: the chain is not shared
        for x509 in kept:
            lib.sk_push(ours, x509)
        return _Chain(tuple(kept), ours)
