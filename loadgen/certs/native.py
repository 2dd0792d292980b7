"""EC device keys and CA signatures straight from libcrypto's EC_KEY functions.

Minting is a key generation and a signature per device and little else, and the
way through ``cryptography`` costs more than the work: per P-256 key, 16 µs to
generate it and 8 µs to serialise it, where ``EC_KEY_generate_key`` takes 9 µs
and the PKCS#8 bytes are two copies into a fixed layout; per signature, 23 µs
against 21 µs for ``ECDSA_sign`` (measured on this machine kind, see
docs/benchmarks.md). Both come from the process's own OpenSSL (``loadgen.openssl``),
whose RNG reseeds itself in forked workers.

The same layout serves the other way: ``EcKeyReader`` turns a device's PKCS#8
key back into an OpenSSL key for its TLS session without OpenSSL 3.0's slow key
decoders (``loadgen.transport.chain``).

Nothing here is trusted blindly: ``EcKeys`` encodes its first key with the known
PKCS#8 and SubjectPublicKeyInfo layouts and compares the bytes with
``cryptography``'s encoding of the same scalar, and ``EcSigner`` signs once and
has ``cryptography`` verify it, before use. Where any of that fails, or
OpenSSL cannot be reached, the callers keep to ``cryptography`` and OpenSSL's own
readers (``ec_keys``, ``ec_signer`` and ``ec_key_reader`` return None).
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loadgen import openssl
from loadgen.certs import der

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

# obj_mac.h
_NIDS = {"secp256r1": 415, "secp384r1": 715}
_UNCOMPRESSED = 4  # point_conversion_form_t
# OpenSSL's group names, for EVP_PKEY_fromdata.
_GROUPS = {"secp256r1": b"prime256v1", "secp384r1": b"secp384r1"}
# core.h: OSSL_PARAM data types; EVP_PKEY_KEYPAIR: private + public key + parameters.
_UNSIGNED_INTEGER, _UTF8_STRING, _OCTET_STRING = 2, 4, 5
_KEYPAIR = 0x87
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}
_PROBE = b"loadgen native signer self-check"
_bind = openssl.bind


class NativeError(Exception):
    """libcrypto refused an operation it had done before (out of memory, say)."""


class _Param(ctypes.Structure):
    """OSSL_PARAM (openssl/core.h)."""

    _fields_ = [
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    ]


class _Lib:
    def __init__(self, lib: ctypes.CDLL) -> None:
        p, size, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        self.new_by_curve_name = _bind(lib.EC_KEY_new_by_curve_name, p, [i])
        self.free = _bind(lib.EC_KEY_free, None, [p])
        self.generate = _bind(lib.EC_KEY_generate_key, i, [p])
        self.group = _bind(lib.EC_KEY_get0_group, p, [p])
        self.public = _bind(lib.EC_KEY_get0_public_key, p, [p])
        self.priv2oct = _bind(lib.EC_KEY_priv2oct, size, [p, ctypes.c_char_p, size])
        self.oct2priv = _bind(lib.EC_KEY_oct2priv, i, [p, ctypes.c_char_p, size])
        self.oct2key = _bind(lib.EC_KEY_oct2key, i, [p, ctypes.c_char_p, size, p])
        self.point2oct = _bind(lib.EC_POINT_point2oct, size, [p, p, i, ctypes.c_char_p, size, p])
        self.ecdsa_size = _bind(lib.ECDSA_size, i, [p])
        self.pkey_free = _bind(lib.EVP_PKEY_free, None, [p])
        self.pkey_new = _bind(lib.EVP_PKEY_new, p, [])
        self.pkey_assign = _bind(lib.EVP_PKEY_assign, i, [p, i, p])
        self.new = _bind(lib.EC_KEY_new, p, [])
        self.set_group = _bind(lib.EC_KEY_set_group, i, [p, p])
        self.pkey_ctx_new = _bind(
            lib.EVP_PKEY_CTX_new_from_name, p, [p, ctypes.c_char_p, ctypes.c_char_p]
        )
        self.pkey_ctx_free = _bind(lib.EVP_PKEY_CTX_free, None, [p])
        self.fromdata_init = _bind(lib.EVP_PKEY_fromdata_init, i, [p])
        self.fromdata = _bind(
            lib.EVP_PKEY_fromdata, i, [p, ctypes.POINTER(p), i, ctypes.POINTER(_Param)]
        )
        self.clear_errors = _bind(lib.ERR_clear_error, None, [])
        self.ecdsa_sign = _bind(
            lib.ECDSA_sign,
            i,
            [i, ctypes.c_char_p, i, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), p],
        )


def _lib() -> _Lib | None:
    lib = openssl.load()
    if lib is None:
        return None
    try:
        return _Lib(lib)
    except AttributeError:  # an OpenSSL built without the EC_KEY API
        return None


class _EcKey:
    """An ``EC_KEY`` on one curve (by its name in ``cryptography``), freed with its
    owner."""

    def __init__(self, lib: _Lib, curve: str) -> None:
        nid = _NIDS.get(curve)
        pointer = lib.new_by_curve_name(nid) if nid is not None else None
        if not pointer:
            raise NativeError(f"no EC_KEY for {curve}")
        self.pointer: int = pointer
        weakref.finalize(self, lib.free, pointer)


@dataclass(frozen=True)
class Pkcs8Layout:
    """How OpenSSL encodes an EC key on one curve: its PKCS#8 is prefix + scalar +
    middle + point, and its SubjectPublicKeyInfo is spki_prefix + point."""

    prefix: bytes
    middle: bytes
    spki_prefix: bytes
    scalar_size: int
    point_size: int

    def join(self, scalar: bytes, point: bytes) -> bytes:
        return self.prefix + scalar + self.middle + point

    def split(self, pkcs8: bytes) -> tuple[bytes, bytes] | None:
        """(scalar, point) of a key in this layout; None for anything else."""
        head = len(self.prefix)
        tail = head + self.scalar_size
        if (
            len(pkcs8) != tail + len(self.middle) + self.point_size
            or not pkcs8.startswith(self.prefix)
            or pkcs8[tail : tail + len(self.middle)] != self.middle
        ):
            return None
        return pkcs8[head:tail], pkcs8[tail + len(self.middle) :]


# OpenSSL's PKCS#8 and SPKI for P-256 and P-384 keys (tests/test_native.py holds
# these to what cryptography writes; EcKeys checks its first key against them).
KNOWN_LAYOUTS = {
    "secp256r1": Pkcs8Layout(
        bytes.fromhex("308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420"),
        bytes.fromhex("a144034200"),
        bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200"),
        32,
        65,
    ),
    "secp384r1": Pkcs8Layout(
        bytes.fromhex("3081b6020100301006072a8648ce3d020106052b8104002204819e30819b0201010430"),
        bytes.fromhex("a164036200"),
        bytes.fromhex("3076301006072a8648ce3d020106052b81040022036200"),
        48,
        97,
    ),
}


class _KeyParams:
    """The OSSL_PARAM array for one layout's keys, made once: a key's scalar and
    point are copied into its buffers. Making the buffers and the array for every
    key was most of the Python in preparing a device (about 25 µs of 40)."""

    __slots__ = ("array", "group", "point", "scalar")

    def __init__(self, group: bytes, layout: Pkcs8Layout) -> None:
        # The array points into these buffers: they live as long as it does.
        self.group = ctypes.create_string_buffer(group, len(group))
        self.scalar = ctypes.create_string_buffer(layout.scalar_size)
        self.point = ctypes.create_string_buffer(layout.point_size)
        self.array = (_Param * 4)(
            _Param(b"group", _UTF8_STRING, ctypes.addressof(self.group), len(group), 0),
            _Param(
                b"priv",
                _UNSIGNED_INTEGER,
                ctypes.addressof(self.scalar),
                layout.scalar_size,
                0,
            ),
            _Param(b"pub", _OCTET_STRING, ctypes.addressof(self.point), layout.point_size, 0),
            _Param(None, 0, None, 0, 0),
        )


class EcKeyReader:
    """OpenSSL keys (``EVP_PKEY``) from PKCS#8 EC keys in OpenSSL's own layout,
    built from their scalar and point. OpenSSL 3.0 reads a key file through its
    decoder framework at about 400 µs a key. By default the key is the provider's
    own, imported with ``EVP_PKEY_fromdata`` (about 26 µs; a legacy ``EC_KEY``
    wrapped in an ``EVP_PKEY`` cost 2 KiB more per device). With ``legacy``, for a
    process that holds a ``legacy_ec.LegacyEc`` claim (where ``EVP_PKEY_fromdata``
    refuses EC), and whenever that import fails, it is a legacy ``EC_KEY`` (its
    group copied from one made once per curve). Keys in any other encoding:
    None."""

    def __init__(self, lib: _Lib, *, legacy: bool = False) -> None:
        self._lib = lib
        # Known layouts, not learned: learning takes cryptography's EC code, about
        # 2 MB per worker that nothing else there needs. A key that matches no
        # layout goes to OpenSSL's reader; one that matches is checked against its
        # certificate by SSL_CTX_use_PrivateKey.
        self._layouts = [
            (layout, _KeyParams(_GROUPS[name], layout), name)
            for name, layout in KNOWN_LAYOUTS.items()
        ]
        self._curves = {name: _EcKey(lib, name) for name in KNOWN_LAYOUTS}
        # Without a context (legacy, or none to be had), every key is built as a
        # legacy one, which works either way.
        self._ctx = None if legacy else lib.pkey_ctx_new(None, b"EC", None)
        if self._ctx:
            weakref.finalize(self, lib.pkey_ctx_free, self._ctx)
        else:
            lib.clear_errors()
        self._out = ctypes.c_void_p()
        self._out_ref = ctypes.byref(self._out)

    def free(self, pkey: int) -> None:
        self._lib.pkey_free(pkey)

    def pkey(self, pkcs8: bytes) -> int | None:
        """A new ``EVP_PKEY`` holding the key (the caller frees it), or None."""
        for layout, params, name in self._layouts:
            parts = layout.split(pkcs8)
            if parts is not None:
                # EVP_PKEY_fromdata refuses EC while some holder claims it (in a
                # test's process, say, another test's emulator).
                pkey = self._import(params, *parts)
                return pkey if pkey is not None else self._legacy(self._curves[name], *parts)
        return None

    def _import(self, params: _KeyParams, scalar: bytes, point: bytes) -> int | None:
        if not self._ctx:
            return None
        # OSSL_PARAM integers are in the machine's byte order.
        params.scalar.raw = scalar[::-1] if sys.byteorder == "little" else scalar
        params.point.raw = point
        lib = self._lib
        # EVP_PKEY_fromdata fills in a key already there: the last one, freed since.
        self._out.value = None
        try:
            if (
                lib.fromdata_init(self._ctx) != 1
                or lib.fromdata(self._ctx, self._out_ref, _KEYPAIR, params.array) != 1
            ):
                lib.clear_errors()
                return None
        finally:
            ctypes.memset(params.scalar, 0, len(scalar))  # no private scalar left behind
        pkey: int | None = self._out.value
        return pkey

    def _legacy(self, curve: _EcKey, scalar: bytes, point: bytes) -> int | None:
        lib = self._lib
        key = lib.new()
        if not key:
            return None
        # The scalar goes into a BIGNUM that EC_KEY_free clears.
        if (
            lib.set_group(key, lib.group(curve.pointer)) != 1
            or lib.oct2priv(key, scalar, len(scalar)) != 1
            or lib.oct2key(key, point, len(point), None) != 1
        ):
            lib.free(key)
            lib.clear_errors()
            return None
        pkey: int | None = lib.pkey_new()
        if not pkey or lib.pkey_assign(pkey, openssl.EVP_PKEY_EC, key) != 1:
            lib.free(key)
            if pkey:
                lib.pkey_free(pkey)
            lib.clear_errors()
            return None
        return pkey


class EcKeys:
    """Fresh keys on one curve, each as (PKCS#8 PEM, SubjectPublicKeyInfo DER)."""

    def __init__(self, lib: _Lib, curve: ec.EllipticCurve) -> None:
        self._key = _EcKey(lib, curve.name)
        self._generate = lib.generate
        self._priv2oct = lib.priv2oct
        self._point2oct = lib.point2oct
        self._public = lib.public
        self._group = lib.group(self._key.pointer)
        size = (curve.key_size + 7) // 8
        self._priv = ctypes.create_string_buffer(size)
        self._pub = ctypes.create_string_buffer(1 + 2 * size)
        layout = KNOWN_LAYOUTS.get(curve.name)
        if layout is None:
            raise NativeError(f"no PKCS#8 layout for {curve.name}")
        self._layout = layout
        # Imported here, for minting: a worker reads keys (EcKeyReader) and
        # never needs cryptography, 16 MB of each worker's memory.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        # The first key, encoded here, must be byte for byte what cryptography
        # makes of the same scalar: the point libcrypto computed and the layout.
        priv, pub = self._raw()
        reference = ec.derive_private_key(int.from_bytes(priv, "big"), curve)
        if (
            reference.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            != layout.join(priv, pub)
            or reference.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            != layout.spki_prefix + pub
        ):
            raise NativeError(f"libcrypto's {curve.name} key is not what cryptography encodes")

    def _raw(self) -> tuple[bytes, bytes]:
        key = self._key.pointer
        priv, pub = self._priv, self._pub
        if not (
            self._generate(key)
            and self._priv2oct(key, priv, len(priv)) == len(priv)
            and self._point2oct(self._group, self._public(key), _UNCOMPRESSED, pub, len(pub), None)
            == len(pub)
        ):
            raise NativeError("EC key generation failed")
        return priv.raw, pub.raw

    def new(self) -> tuple[bytes, bytes]:
        priv, pub = self._raw()
        layout = self._layout
        return der.pem(layout.join(priv, pub), "PRIVATE KEY"), layout.spki_prefix + pub


class EcSigner:
    """ECDSA signatures (DER, as X.509 wants them) with one EC private key."""

    def __init__(
        self, lib: _Lib, key: ec.EllipticCurvePrivateKey, algorithm: hashes.HashAlgorithm
    ) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = _EcKey(lib, key.curve.name)
        size = (key.curve.key_size + 7) // 8
        scalar = key.private_numbers().private_value.to_bytes(size, "big")
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        pointer = self._key.pointer
        if not (
            lib.oct2priv(pointer, scalar, size) and lib.oct2key(pointer, point, len(point), None)
        ):
            raise NativeError("cannot load the signing key")
        self._sign = lib.ecdsa_sign
        hash_function = _HASHES.get(algorithm.name)
        if hash_function is None:
            raise NativeError(f"no digest {algorithm.name}")
        self._hash = hash_function
        self._signature = ctypes.create_string_buffer(lib.ecdsa_size(pointer))
        self._length = ctypes.c_uint()
        self._length_ref = ctypes.byref(self._length)
        try:
            key.public_key().verify(self.sign(_PROBE), _PROBE, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise NativeError("self-check signature did not verify") from None

    def sign(self, data: bytes) -> bytes:
        value = self._hash(data).digest()
        if not self._sign(
            0, value, len(value), self._signature, self._length_ref, self._key.pointer
        ):
            raise NativeError("ECDSA_sign failed")
        return self._signature.raw[: self._length.value]


def ec_keys(curve: ec.EllipticCurve) -> EcKeys | None:
    lib = _lib()
    if lib is None:
        return None
    try:
        return EcKeys(lib, curve)
    except NativeError:
        return None


def ec_key_reader(*, legacy: bool = False) -> EcKeyReader | None:
    lib = _lib()
    if lib is None:
        return None
    try:
        return EcKeyReader(lib, legacy=legacy)
    except NativeError:
        return None


def ec_signer(key: ec.EllipticCurvePrivateKey, algorithm: hashes.HashAlgorithm) -> EcSigner | None:
    lib = _lib()
    if lib is None:
        return None
    try:
        return EcSigner(lib, key, algorithm)
    except NativeError:
        return None
