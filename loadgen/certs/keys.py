"""Key types the factory mints, and what each one implies for signing."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from loadgen.certs import der, native

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"


_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}


def generate_key(key_type: KeyType) -> PrivateKey:
    curve = _CURVES.get(key_type)
    if curve is not None:
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_type_of(key: PrivateKey) -> KeyType | None:
    if isinstance(key, rsa.RSAPrivateKey):
        return KeyType.RSA_2048 if key.key_size == 2048 else None
    for key_type, curve in _CURVES.items():
        if key.curve.name == curve.name:
            return key_type
    return None


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: what device SDKs and ``ssl`` load."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_NO_ENCRYPTION = serialization.NoEncryption()


def key_material(key: PrivateKey) -> tuple[bytes, bytes]:
    """(PKCS#8 PEM, SubjectPublicKeyInfo DER) of a new device key.

    OpenSSL's PKCS#8 encoding of an EC key ends with the public point, so one
    serialisation yields both: 7 µs less per device than asking for each."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        layout = native.KNOWN_LAYOUTS[key.curve.name]
        pkcs8 = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, _NO_ENCRYPTION
        )
        parts = layout.split(pkcs8)
        if parts is not None:
            return der.pem(pkcs8, "PRIVATE KEY"), layout.spki_prefix + parts[1]
    return key_pem(key), spki_der(key)


def spki_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class KeyMaker:
    """New device keys as (PKCS#8 PEM, SubjectPublicKeyInfo DER). EC keys come
    straight from libcrypto where it can be reached (``native``), at less than half
    the cost; RSA keys, and EC keys elsewhere, through ``cryptography``."""

    def __init__(self, key_types: Iterable[KeyType]) -> None:
        self._native = {
            key_type: maker
            for key_type in key_types
            if key_type in _CURVES and (maker := native.ec_keys(_CURVES[key_type]))
        }

    def new(self, key_type: KeyType) -> tuple[bytes, bytes]:
        maker = self._native.get(key_type)
        if maker is not None:
            return maker.new()
        return key_material(generate_key(key_type))


class Signer:
    """Signs TBS bytes with a CA key, and names the algorithm in DER."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        if isinstance(key, rsa.RSAPrivateKey):
            self.hash: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
            # sha256WithRSAEncryption, parameters NULL
            self.algorithm_der = bytes.fromhex("300d06092a864886f70d01010b0500")
            self._padding = padding.PKCS1v15()
            self._native: native.EcSigner | None = None
        else:
            big = key.curve.key_size > 256
            self.hash = hashes.SHA384() if big else hashes.SHA256()
            # ecdsa-with-SHA384 / ecdsa-with-SHA256, parameters absent
            self.algorithm_der = bytes.fromhex(
                "300a06082a8648ce3d040303" if big else "300a06082a8648ce3d040302"
            )
            self._ecdsa = ec.ECDSA(self.hash)
            self._native = native.ec_signer(key, self.hash)

    def sign(self, data: bytes) -> bytes:
        if self._native is not None:
            return self._native.sign(data)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, self._padding, self.hash)
        return self.key.sign(data, self._ecdsa)
