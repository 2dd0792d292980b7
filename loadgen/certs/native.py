"""EC device keys and CA signatures straight from libcrypto's EC_KEY functions.

Minting is a key generation and a signature per device and little else, and the
way through ``cryptography`` costs more than the work: per P-256 key, 16 µs to
generate it and 8 µs to serialise it, where ``EC_KEY_generate_key`` takes 9 µs
and the PKCS#8 bytes are two copies into a fixed layout; per signature, 23 µs
against 21 µs for ``ECDSA_sign`` (measured on this machine kind, see
docs/benchmarks.md). Both come from the process's own OpenSSL (``loadgen.openssl``),
whose RNG reseeds itself in forked workers.

Nothing here is trusted blindly: ``EcKeys`` learns its PKCS#8 and
SubjectPublicKeyInfo layouts from ``cryptography``'s encoding of its first key,
and ``EcSigner`` signs once and has ``cryptography`` verify it, before either is
used. Where any of that fails, or OpenSSL cannot be reached, the factory keeps to
``cryptography`` (``ec_keys`` and ``ec_signer`` return None).
"""

from __future__ import annotations

import ctypes
import hashlib
import weakref
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loadgen import openssl
from loadgen.certs import der

# obj_mac.h
_NIDS = {"secp256r1": 415, "secp384r1": 715}
_UNCOMPRESSED = 4  # point_conversion_form_t
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}
_PROBE = b"loadgen native signer self-check"


class NativeError(Exception):
    """libcrypto refused an operation it had done before (out of memory, say)."""


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
        self.ecdsa_sign = _bind(
            lib.ECDSA_sign,
            i,
            [i, ctypes.c_char_p, i, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), p],
        )


def _bind(function: Any, restype: object, argtypes: list[object]) -> Any:
    function.restype = restype
    function.argtypes = argtypes
    return function


def _lib() -> _Lib | None:
    lib = openssl.load()
    if lib is None:
        return None
    try:
        return _Lib(lib)
    except AttributeError:  # an OpenSSL built without the EC_KEY API
        return None


class _EcKey:
    """An ``EC_KEY`` on one curve, freed with its owner."""

    def __init__(self, lib: _Lib, curve: ec.EllipticCurve) -> None:
        nid = _NIDS.get(curve.name)
        pointer = lib.new_by_curve_name(nid) if nid is not None else None
        if not pointer:
            raise NativeError(f"no EC_KEY for {curve.name}")
        self.pointer: int = pointer
        weakref.finalize(self, lib.free, pointer)


class EcKeys:
    """Fresh keys on one curve, each as (PKCS#8 PEM, SubjectPublicKeyInfo DER)."""

    def __init__(self, lib: _Lib, curve: ec.EllipticCurve) -> None:
        self._key = _EcKey(lib, curve)
        self._generate = lib.generate
        self._priv2oct = lib.priv2oct
        self._point2oct = lib.point2oct
        self._public = lib.public
        self._group = lib.group(self._key.pointer)
        size = (curve.key_size + 7) // 8
        self._priv = ctypes.create_string_buffer(size)
        self._pub = ctypes.create_string_buffer(1 + 2 * size)
        priv, pub = self._raw()
        # The layouts, from cryptography's encoding of this very key: PKCS#8 is
        # prefix + scalar + middle + point, and the SPKI is prefix + point.
        reference = ec.derive_private_key(int.from_bytes(priv, "big"), curve)
        pkcs8 = reference.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        spki = reference.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        at = pkcs8.find(priv)
        if at < 0 or not pkcs8.endswith(pub) or not spki.endswith(pub):
            raise NativeError(f"unexpected PKCS#8 layout for {curve.name}")
        self._pkcs8_prefix = pkcs8[:at]
        self._pkcs8_middle = pkcs8[at + size : -len(pub)]
        self._spki_prefix = spki[: -len(pub)]

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
        pkcs8 = self._pkcs8_prefix + priv + self._pkcs8_middle + pub
        return der.pem(pkcs8, "PRIVATE KEY"), self._spki_prefix + pub


class EcSigner:
    """ECDSA signatures (DER, as X.509 wants them) with one EC private key."""

    def __init__(
        self, lib: _Lib, key: ec.EllipticCurvePrivateKey, algorithm: hashes.HashAlgorithm
    ) -> None:
        self._key = _EcKey(lib, key.curve)
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


def ec_signer(key: ec.EllipticCurvePrivateKey, algorithm: hashes.HashAlgorithm) -> EcSigner | None:
    lib = _lib()
    if lib is None:
        return None
    try:
        return EcSigner(lib, key, algorithm)
    except NativeError:
        return None
