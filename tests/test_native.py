"""Device keys and CA signatures made straight through libcrypto are the same
encodings cryptography makes, and the factory falls back to cryptography where
libcrypto cannot be reached."""

from __future__ import annotations

import ctypes

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loadgen import openssl
from loadgen.certs import native
from loadgen.certs.keys import KeyMaker, KeyType, Signer, spki_der
from loadgen.legacy_ec import LegacyEc
from tests.libcrypto import encoded

CURVES = [(ec.SECP256R1(), hashes.SHA256()), (ec.SECP384R1(), hashes.SHA384())]


def test_this_machine_mints_ec_keys_through_libcrypto():
    assert native.ec_keys(ec.SECP256R1()) is not None


@pytest.mark.parametrize(("curve", "_hash"), CURVES, ids=lambda c: getattr(c, "name", ""))
def test_native_keys_are_encoded_exactly_as_cryptography_encodes_them(curve, _hash):
    maker = native.ec_keys(curve)
    assert maker is not None
    for _ in range(20):
        pem, spki = maker.new()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == curve.name
        assert pem == key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        assert spki == spki_der(key)


def test_every_native_key_is_a_new_one():
    maker = native.ec_keys(ec.SECP256R1())
    assert maker is not None
    spkis = {maker.new()[1] for _ in range(500)}
    assert len(spkis) == 500


@pytest.mark.parametrize(("curve", "algorithm"), CURVES, ids=lambda c: getattr(c, "name", ""))
def test_native_signatures_verify_with_the_signers_public_key(curve, algorithm):
    key = ec.generate_private_key(curve)
    signer = native.ec_signer(key, algorithm)
    assert signer is not None
    for n in range(20):
        data = bytes([n]) * (300 + n)
        key.public_key().verify(signer.sign(data), data, ec.ECDSA(algorithm))


def test_without_libcrypto_keys_and_signatures_come_from_cryptography(monkeypatch):
    monkeypatch.setattr(openssl, "load", lambda: None)
    assert native.ec_keys(ec.SECP256R1()) is None
    key = ec.generate_private_key(ec.SECP256R1())
    assert native.ec_signer(key, hashes.SHA256()) is None

    pem, spki = KeyMaker([KeyType.EC_P256]).new(KeyType.EC_P256)
    assert spki == spki_der(serialization.load_pem_private_key(pem, password=None))
    signature = Signer(key).sign(b"tbs")
    key.public_key().verify(signature, b"tbs", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(("curve", "_hash"), CURVES, ids=lambda c: getattr(c, "name", ""))
def test_the_key_reader_builds_keys_from_pkcs8_in_openssls_layout(curve, _hash):
    reader = native.ec_key_reader()
    assert reader is not None
    key = ec.generate_private_key(curve)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pkey = reader.pkey(pkcs8)
    assert pkey is not None
    reader.free(pkey)


@pytest.mark.parametrize(("curve", "_hash"), CURVES, ids=lambda c: getattr(c, "name", ""))
def test_the_legacy_key_reader_builds_legacy_keys_with_the_files_scalar_and_point(curve, _hash):
    reader = native.ec_key_reader(legacy=True)
    assert reader is not None
    lib = openssl.load()
    assert lib is not None
    p, out = ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)
    get0_ec_key = openssl.bind(lib.EVP_PKEY_get0_EC_KEY, p, [p])
    priv2oct = openssl.bind(
        lib.EC_KEY_priv2oct, ctypes.c_size_t, [p, ctypes.c_char_p, ctypes.c_size_t]
    )
    i2d_pubkey = openssl.bind(lib.i2d_PUBKEY, ctypes.c_int, [p, out])
    key = ec.generate_private_key(curve)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pkey = reader.pkey(pkcs8)
    assert pkey is not None
    try:
        size = native.KNOWN_LAYOUTS[curve.name].scalar_size
        scalar = ctypes.create_string_buffer(size)
        assert priv2oct(get0_ec_key(pkey), scalar, size) == size
        assert scalar.raw == key.private_numbers().private_value.to_bytes(size, "big")
        assert encoded(i2d_pubkey, pkey) == spki_der(key)
    finally:
        reader.free(pkey)


@pytest.mark.parametrize("made", ["before", "during"], ids=["reader-first", "claim-first"])
def test_the_key_reader_builds_keys_while_another_holder_claims_ec_keys(made):
    # In a test's process, say, an emulator's claim held while another test
    # reads keys the providers' way.
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    reader = native.ec_key_reader() if made == "before" else None
    held = LegacyEc.claim(legacy=True)
    assert held is not None
    try:
        reader = reader or native.ec_key_reader()
        assert reader is not None
        pkey = reader.pkey(pkcs8)
        assert pkey is not None
        reader.free(pkey)
    finally:
        held.release()


def test_the_key_reader_leaves_other_encodings_to_openssl():
    reader = native.ec_key_reader()
    assert reader is not None
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert reader.pkey(sec1) is None
    assert reader.pkey(b"") is None
    assert reader.pkey(b"\x30" * 138) is None


@pytest.mark.parametrize(("curve", "_hash"), CURVES, ids=lambda c: getattr(c, "name", ""))
def test_the_known_pkcs8_layouts_are_what_cryptography_writes(curve, _hash):
    layout = native.KNOWN_LAYOUTS[curve.name]
    for _ in range(20):
        key = ec.generate_private_key(curve)
        scalar = key.private_numbers().private_value.to_bytes(layout.scalar_size, "big")
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        pkcs8 = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        assert pkcs8 == layout.join(scalar, point)
        assert layout.split(pkcs8) == (scalar, point)
        assert layout.spki_prefix + point == spki_der(key)
