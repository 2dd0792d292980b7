"""Just enough DER to build X.509 v3 device certificates quickly.

``cryptography``'s ``CertificateBuilder`` spends about 55 µs per certificate in
Python and ASN.1 plumbing, more than key generation and signing together. Device
certificates differ only in serial, subject, validity and public key, so the rest
is encoded once per issuer and the variable parts are spliced in. The output is
byte-for-byte what ``CertificateBuilder`` produces for the same inputs (a test
holds it to that).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_UTF8 = 0x0C
TAG_PRINTABLE = 0x13
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


def header(tag: int, n: int) -> bytes:
    """Tag and length octets for ``n`` bytes of content."""
    if n < 0x80:
        return bytes((tag, n))
    if n < 0x100:
        return bytes((tag, 0x81, n))
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(body))) + body


def tlv(tag: int, content: bytes) -> bytes:
    return header(tag, len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(parts))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(body))


def positive_integer(value: bytes) -> bytes:
    """INTEGER from big-endian unsigned bytes, minimally encoded."""
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return tlv(TAG_INTEGER, value)


# The last moment an X.509 time can hold: GeneralizedTime has four year digits
# (RFC 5280 4.1.2.5 gives 99991231235959Z as "no well-defined expiration").
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def time(moment: datetime) -> bytes:
    """RFC 5280: UTCTime through 2049, GeneralizedTime from 2050."""
    if 1950 <= moment.year < 2050:
        return tlv(TAG_UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(TAG_GENERALIZED_TIME, moment.strftime("%Y%m%d%H%M%SZ").encode())


def validity(not_before: datetime, not_after: datetime) -> bytes:
    return sequence(time(not_before), time(not_after))


def name(attributes: Sequence[tuple[bytes, int, str]]) -> bytes:
    """A Name with one attribute per RDN: (encoded OID, string tag, value)."""
    return sequence(
        *(
            tlv(TAG_SET, sequence(oid_der, tlv(tag, value.encode())))
            for oid_der, tag, value in attributes
        )
    )


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at ``offset``."""
    tag = data[offset]
    first = data[offset + 1]
    if first < 0x80:
        start = offset + 2
        return tag, start, start + first
    size = first & 0x7F
    start = offset + 2 + size
    return tag, start, start + int.from_bytes(data[offset + 2 : start], "big")


def subject_public_key(spki: bytes) -> bytes:
    """The BIT STRING value of a SubjectPublicKeyInfo: what a key identifier hashes."""
    _, start, _ = read_tlv(spki)
    _, _, algorithm_end = read_tlv(spki, start)
    _, bits_start, bits_end = read_tlv(spki, algorithm_end)
    return spki[bits_start + 1 : bits_end]


def key_identifier(spki: bytes) -> bytes:
    """RFC 5280 method 1: SHA-1 of the subject public key bits."""
    return hashlib.sha1(subject_public_key(spki), usedforsecurity=False).digest()


_PEM_LINE = 64


def pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    encoded = binascii.b2a_base64(der, newline=False)
    lines = [encoded[i : i + _PEM_LINE] for i in range(0, len(encoded), _PEM_LINE)]
    return b"".join(
        (
            b"-----BEGIN ",
            label.encode(),
            b"-----\n",
            b"\n".join(lines),
            b"\n-----END ",
            label.encode(),
            b"-----\n",
        )
    )


_VERSION_3 = tlv(0xA0, tlv(TAG_INTEGER, b"\x02"))
_CRITICAL = tlv(TAG_BOOLEAN, b"\xff")
_OID_BASIC_CONSTRAINTS = oid("2.5.29.19")
_OID_KEY_USAGE = oid("2.5.29.15")
_OID_EXT_KEY_USAGE = oid("2.5.29.37")
_OID_SUBJECT_KEY_ID = oid("2.5.29.14")
_OID_AUTHORITY_KEY_ID = oid("2.5.29.35")
_OID_CLIENT_AUTH = oid("1.3.6.1.5.5.7.3.2")
# keyUsage bit strings: digitalSignature; digitalSignature + keyEncipherment (RSA)
KEY_USAGE_EC = tlv(TAG_BIT_STRING, b"\x07\x80")
KEY_USAGE_RSA = tlv(TAG_BIT_STRING, b"\x05\xa0")


def _extension(oid_der: bytes, value: bytes, critical: bool = False) -> bytes:
    return sequence(oid_der, _CRITICAL if critical else b"", tlv(TAG_OCTET_STRING, value))


class DeviceCertTemplate:
    """Everything device certificates from one issuer share, encoded once.

    Per certificate only the serial, validity, subject, public key and the key
    identifier that hashes it are new; the extensions have a fixed length (the key
    identifier is always 20 bytes), so they are one constant prefix and suffix.
    """

    def __init__(self, signature_algorithm: bytes, issuer_name: bytes, issuer_key_id: bytes):
        self._algorithm = signature_algorithm
        self._issuer = issuer_name
        authority = _extension(_OID_AUTHORITY_KEY_ID, sequence(tlv(0x80, issuer_key_id)))
        self._extensions: dict[bytes, tuple[bytes, bytes]] = {}
        for usage in (KEY_USAGE_EC, KEY_USAGE_RSA):
            fixed = (
                _extension(_OID_BASIC_CONSTRAINTS, sequence(), critical=True)
                + _extension(_OID_KEY_USAGE, usage, critical=True)
                + _extension(_OID_EXT_KEY_USAGE, sequence(_OID_CLIENT_AUTH))
            )
            subject_key = _extension(_OID_SUBJECT_KEY_ID, tlv(TAG_OCTET_STRING, bytes(20)))
            whole = tlv(0xA3, sequence(fixed + subject_key + authority))
            split = len(whole) - len(authority) - 20
            self._extensions[usage] = (whole[:split], whole[split + 20 :])
        # Where the public key bits start, by SPKI length (one per key type).
        self._bits_offset: dict[int, int] = {}

    def tbs(
        self, serial: bytes, validity_der: bytes, subject_der: bytes, spki: bytes, key_usage: bytes
    ) -> bytes:
        """The TBSCertificate. ``serial`` is big-endian, positive and minimal (its top
        bit clear, and not a leading zero byte)."""
        offset = self._bits_offset.get(len(spki))
        if offset is None:
            offset = self._bits_offset[len(spki)] = len(spki) - len(subject_public_key(spki))
        key_id = hashlib.sha1(spki[offset:], usedforsecurity=False).digest()
        before, after = self._extensions[key_usage]
        body = b"".join(
            (
                _VERSION_3,
                header(TAG_INTEGER, len(serial)),
                serial,
                self._algorithm,
                self._issuer,
                validity_der,
                subject_der,
                spki,
                before,
                key_id,
                after,
            )
        )
        return header(TAG_SEQUENCE, len(body)) + body

    def certificate(self, tbs: bytes, signature: bytes) -> bytes:
        body = b"".join(
            (tbs, self._algorithm, header(TAG_BIT_STRING, len(signature) + 1), b"\x00", signature)
        )
        return header(TAG_SEQUENCE, len(body)) + body
