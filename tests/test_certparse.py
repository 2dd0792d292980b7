"""Device certificates parsed by OpenSSL's old EC decoder are the same
certificates, with the same public keys, as the providers' parse makes, and
nothing of the ENGINE that selects that decoder outlives a parse."""

from __future__ import annotations

import ctypes
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from loadgen import openssl
from loadgen.transport.certparse import CertificateParser

KEYS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def _certificate(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


class _Calls:
    def __init__(self) -> None:
        lib = openssl.load()
        assert lib is not None
        p = ctypes.c_void_p
        self.pubkey = openssl.bind(lib.X509_get0_pubkey, p, [p])
        self.eq = openssl.bind(lib.EVP_PKEY_eq, ctypes.c_int, [p, p])
        self.i2d = openssl.bind(lib.i2d_X509, ctypes.c_int, [p, ctypes.POINTER(ctypes.c_char_p)])
        self.peek_error = openssl.bind(lib.ERR_peek_error, ctypes.c_ulong, [])

    def encoding(self, certificate: int) -> bytes:
        size = self.i2d(certificate, None)
        buffer = ctypes.create_string_buffer(size)
        out = ctypes.c_char_p(ctypes.addressof(buffer))
        self.i2d(certificate, ctypes.byref(out))
        return buffer.raw


@pytest.fixture(scope="module")
def calls() -> _Calls:
    return _Calls()


def _parser(legacy: bool) -> CertificateParser:
    lib = openssl.load()
    assert lib is not None
    return CertificateParser(lib, legacy=legacy)


def test_the_old_decoder_is_taken_on_openssl_3_0_only():
    parser = CertificateParser.reach()
    assert parser is not None
    lib = openssl.load()
    assert lib is not None
    version = openssl.bind(lib.OpenSSL_version_num, ctypes.c_ulong, [])()
    if version < 0x30100000:  # this machine kind: Debian 12's OpenSSL 3.0
        assert parser.engine is not None
    else:  # 3.1 and later cache their decoder contexts
        assert parser.engine is None


@pytest.mark.parametrize("kind", KEYS)
def test_a_certificate_parsed_the_old_way_is_the_providers_certificate(kind, calls):
    der = _certificate(KEYS[kind]())
    old, providers = _parser(True), _parser(False)
    ours, theirs = old.parse(der), providers.parse(der)
    assert ours and theirs
    try:
        assert calls.eq(calls.pubkey(ours), calls.pubkey(theirs)) == 1
        assert calls.encoding(ours) == der  # the bytes sent are the bytes read
    finally:
        old.free(ours)
        providers.free(theirs)


def test_no_engine_claims_ec_keys_after_a_parse():
    parser = _parser(True)
    assert parser.engine is not None
    certificate = parser.parse(_certificate(KEYS["ec-p256"]()))
    assert certificate
    parser.free(certificate)
    # Registered past the parse, it would take the process's EC operations
    # (the handshake's) off the providers.
    assert not parser.engine.claims_ec()


@pytest.mark.parametrize("legacy", [True, False], ids=["old-decoder", "providers"])
def test_bytes_that_are_no_certificate_parse_to_none_and_leave_no_error_behind(legacy, calls):
    parser = _parser(legacy)
    der = _certificate(KEYS["ec-p256"]())
    assert parser.parse(der[: len(der) // 2]) is None
    assert parser.parse(b"not a certificate") is None
    assert calls.peek_error() == 0  # nothing for Python's ssl to report later
