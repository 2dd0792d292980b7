"""The hand-built DER of device certificates is exactly what cryptography's
CertificateBuilder makes from the same inputs."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from loadgen.certs import der, subject
from loadgen.certs.ca import init_ca
from loadgen.certs.keys import KeyType, generate_key, key_material, spki_der


def _reference(ca, key, serial: bytes, not_before, not_after, subj: dict[str, str]):
    """The same certificate through cryptography's builder."""
    public = key.public_key()
    usage = dict(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    name = x509.Name(
        [
            x509.NameAttribute(x509.ObjectIdentifier(f.oid), subj[f.name])
            for f in subject.FIELDS
            if f.name in subj
        ]
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(int.from_bytes(serial, "big"))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, ca.signer().hash)
    )


SUBJECT = {
    "country": "DE",
    "state": "Bayern",
    "organization": "Acme Lighting",
    "organizational_unit": "factory-a",
    "common_name": "lightbulb-000042",
    "serial_number": "6c1e6a9e-9d3c-4a57-9a4e-5a2d3b9d8f11",
    "dn_qualifier": "0a1b2c3d",
}


@pytest.mark.parametrize("ca_key", list(KeyType))
@pytest.mark.parametrize("device_key", list(KeyType))
def test_tbs_matches_certificate_builder_byte_for_byte(tmp_path, ca_key, device_key):
    ca = init_ca(tmp_path / "ca", key_type=ca_key)
    key = generate_key(device_key)
    serial = b"\x40" + os.urandom(15)
    not_before = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    not_after = dt.datetime(2051, 1, 1, tzinfo=dt.UTC)  # GeneralizedTime from 2050
    reference = _reference(ca, key, serial, not_before, not_after, SUBJECT)
    template = der.DeviceCertTemplate(ca.signer().algorithm_der, ca.name_der, ca.key_id)
    usage = der.KEY_USAGE_RSA if device_key is KeyType.RSA_2048 else der.KEY_USAGE_EC
    tbs = template.tbs(
        serial, der.validity(not_before, not_after), subject.encode(SUBJECT), spki_der(key), usage
    )
    assert tbs == reference.tbs_certificate_bytes
    cert = x509.load_der_x509_certificate(template.certificate(tbs, ca.signer().sign(tbs)))
    cert.verify_directly_issued_by(ca.cert)


def test_pem_round_trips_through_cryptography():
    data = os.urandom(700)
    cert_pem = der.pem(data, "PRIVATE KEY")
    lines = cert_pem.splitlines()
    assert lines[0] == b"-----BEGIN PRIVATE KEY-----"
    assert lines[-1] == b"-----END PRIVATE KEY-----"
    assert all(len(line) <= 64 for line in lines[1:-1])


@pytest.mark.parametrize("key_type", list(KeyType))
def test_key_material_gives_the_keys_own_public_key(key_type):
    key = generate_key(key_type)
    pem, spki = key_material(key)
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert spki == spki_der(loaded)


@given(st.integers(min_value=0, max_value=2**24))
def test_header_length_is_what_a_der_reader_reads(n):
    encoded = der.header(der.TAG_OCTET_STRING, n) + b"\0" * n
    tag, start, end = der.read_tlv(encoded)
    assert (tag, end - start, end) == (der.TAG_OCTET_STRING, n, len(encoded))


@given(st.binary(min_size=1, max_size=20))
def test_positive_integer_is_minimal_and_positive(value):
    encoded = der.positive_integer(value)
    _, start, end = der.read_tlv(encoded)
    content = encoded[start:end]
    assert int.from_bytes(content, "big", signed=True) == int.from_bytes(value, "big")
    assert len(content) == 1 or not (content[0] == 0 and content[1] < 0x80)
