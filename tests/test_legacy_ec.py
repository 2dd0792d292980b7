"""While a worker holds its claim on EC keys for OpenSSL 3.0's legacy EC code,
certificates parse to the same bytes and public keys as without it, and the
claim ends with its holder or the process, never later."""

from __future__ import annotations

import ctypes
import datetime
import subprocess
import sys
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from loadgen import openssl
from loadgen.legacy_ec import LegacyEc
from loadgen.transport.certparse import CertificateParser
from tests.libcrypto import encoded

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
        p, out = ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)
        self.pubkey = openssl.bind(lib.X509_get0_pubkey, p, [p])
        self.i2d_x509 = openssl.bind(lib.i2d_X509, ctypes.c_int, [p, out])
        self.i2d_pubkey = openssl.bind(lib.i2d_PUBKEY, ctypes.c_int, [p, out])
        self.peek_error = openssl.bind(lib.ERR_peek_error, ctypes.c_ulong, [])
        self.version = openssl.bind(lib.OpenSSL_version_num, ctypes.c_ulong, [])()


@pytest.fixture(scope="module")
def calls() -> _Calls:
    return _Calls()


@pytest.fixture
def claim():
    held = LegacyEc.claim(legacy=True)
    assert held is not None
    yield held
    held.release()


def test_the_claim_is_made_on_openssl_3_0_only(calls):
    held = LegacyEc.claim()
    try:
        if calls.version < 0x30100000:  # this machine kind: Debian 12's OpenSSL 3.0
            assert held is not None and held.held
        else:  # 3.1 and later cache their decoder contexts
            assert held is None
    finally:
        if held is not None:
            held.release()


@pytest.mark.parametrize("kind", KEYS)
def test_while_claimed_a_certificate_parses_to_its_own_bytes_and_public_key(kind, calls, claim):
    key = KEYS[kind]()
    der = _certificate(key)
    parser = CertificateParser.reach()
    assert parser is not None
    certificate = parser.parse(der)
    assert certificate
    try:
        assert encoded(calls.i2d_x509, certificate) == der  # the bytes sent
        assert encoded(calls.i2d_pubkey, calls.pubkey(certificate)) == (
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    finally:
        parser.free(certificate)


def test_bytes_that_are_no_certificate_parse_to_none_and_leave_no_error_behind(calls, claim):
    parser = CertificateParser.reach()
    assert parser is not None
    der = _certificate(KEYS["ec-p256"]())
    assert parser.parse(der[: len(der) // 2]) is None
    assert parser.parse(b"not a certificate") is None
    assert calls.peek_error() == 0  # nothing for Python's ssl to report later


def _in_a_fresh_process(code: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the claim is the whole process's, and other tests
    # in this one may hold theirs.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_released_claim_leaves_no_engine_claiming_ec_keys():
    done = _in_a_fresh_process(
        """
        from loadgen.legacy_ec import LegacyEc, ec_claimed
        print(ec_claimed(), end=" ")
        held = LegacyEc.claim(legacy=True)
        print(ec_claimed(), end=" ")
        held.release()
        print(held.held, ec_claimed())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False", "False"]


def test_claims_share_the_process_engine_which_is_registered_until_the_last_is_released():
    done = _in_a_fresh_process(
        """
        from loadgen.legacy_ec import LegacyEc, ec_claimed
        first, second = LegacyEc.claim(legacy=True), LegacyEc.claim(legacy=True)
        first.release()
        print(ec_claimed(), end=" ")
        second.release()
        print(ec_claimed(), end=" ")
        again = LegacyEc.claim(legacy=True)
        print(ec_claimed())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


def test_a_process_that_exits_holding_its_claims_exits_cleanly():
    # OpenSSL's cleanup at exit would call the ENGINE's Python callback after
    # the interpreter is gone (a segfault) if a claim outlived Python. A worker's
    # TLS and an emulator each hold one.
    done = _in_a_fresh_process(
        """
        from loadgen.emulator.registry import Registry
        from loadgen.emulator.server import Emulator
        from loadgen.legacy_ec import LegacyEc
        from loadgen.transport.tls import ClientTls
        held = LegacyEc.claim(legacy=True)
        tls = ClientTls(ca_file=None, verify_server=False)
        emulator = Emulator(Registry(), "unused.pem", "unused.key")
        print(held.held)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


def test_an_emulator_and_a_workers_tls_hold_the_claim_on_openssl_3_0(calls):
    from loadgen.emulator.registry import Registry
    from loadgen.emulator.server import Emulator
    from loadgen.transport.tls import ClientTls

    tls = ClientTls(ca_file=None, verify_server=False)
    emulator = Emulator(Registry(), "unused.pem", "unused.key")
    legacy = calls.version < 0x30100000
    assert (tls.legacy_ec is not None) == legacy
    assert (emulator.legacy_ec is not None) == legacy
