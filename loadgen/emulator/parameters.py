"""The parameters JITP gives a provisioning template (``iot:Certificate.*``),
read from a device certificate's DER in place.

A serving process of the emulator reads them at every CONNECT and has nothing
else to do with certificates: this module loads ``cryptography`` only for what
it cannot read in place, so that such a process does without it (16 MB each).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from loadgen.certs.der import read_tlv
from loadgen.certs.subject import BY_NAME, BY_OID, FIELDS
from loadgen.emulator import template as tpl

if TYPE_CHECKING:
    from cryptography import x509


def certificate_id(cert: x509.Certificate) -> str:
    """What AWS IoT calls a certificate's id: hex SHA-256 of its DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# The subject fields JITP reads, by their OID's DER; and the string types a
# subject's values come in (anything else: cryptography reads it).
_FIELDS_BY_OID = {f.oid_der: f for f in FIELDS}
_TEXT = {12: "utf-8", 18: "ascii", 19: "ascii", 22: "ascii", 26: "ascii"}
_SEQUENCE, _SET, _VERSION = 0x30, 0x31, 0xA0


def _der_subject(der: bytes) -> dict[str, str] | None:
    """The subject fields JITP reads, by profile name, read in place from a
    certificate's DER; None where it is not plain (another string type, or not
    where it belongs): then cryptography reads it."""
    try:
        _, tbs, _ = read_tlv(der)
        _, at, _ = read_tlv(der, tbs)
        if der[at] == _VERSION:
            at = read_tlv(der, at)[2]
        for _ in range(4):  # serial number, signature algorithm, issuer, validity
            at = read_tlv(der, at)[2]
        tag, at, end = read_tlv(der, at)
        if tag != _SEQUENCE or end > len(der):
            return None
        subject = {}
        while at < end:  # the relative distinguished names, each a SET
            tag, attribute, rdn_end = read_tlv(der, at)
            if tag != _SET or rdn_end > end:
                return None
            at = rdn_end
            while attribute < rdn_end:  # SEQUENCE {OID, value}
                tag, oid, next_attribute = read_tlv(der, attribute)
                if tag != _SEQUENCE or next_attribute > rdn_end:
                    return None
                attribute = next_attribute
                oid_end = read_tlv(der, oid)[2]
                field_ = _FIELDS_BY_OID.get(der[oid:oid_end])
                if field_ is None:
                    continue
                tag, value, value_end = read_tlv(der, oid_end)
                encoding = _TEXT.get(tag)
                if encoding is None or value_end > next_attribute:
                    return None
                subject[field_.name] = der[value:value_end].decode(encoding)
        return subject
    except (IndexError, UnicodeDecodeError):
        return None


def jitp_parameters(cert: x509.Certificate | bytes) -> dict[str, str]:
    """The eight values JITP reads: the subject fields present, and the id; of a
    certificate, or of its DER (read in place: a session has the DER, and
    parsing it into Python objects cost more than the rest of the CONNECT)."""
    if isinstance(cert, bytes):
        fields = _der_subject(cert)
        if fields is not None:
            return subject_parameters(fields, hashlib.sha256(cert).hexdigest())
        # Only for a subject not read in place: cryptography is 16 MB of a
        # serving process's memory, which otherwise never needs it.
        from cryptography import x509 as parsing

        cert = parsing.load_der_x509_certificate(cert)
    subject = {}
    for attribute in cert.subject:
        field_ = BY_OID.get(attribute.oid.dotted_string)
        if field_ is not None:
            subject[field_.name] = str(attribute.value)
    return subject_parameters(subject, certificate_id(cert))


def subject_parameters(subject: dict[str, str], cert_id: str) -> dict[str, str]:
    """JITP parameters from subject fields by profile name, and the certificate id."""
    params = {tpl.PARAMETER_PREFIX + "Id": cert_id}
    for name, value in subject.items():
        params[tpl.PARAMETER_PREFIX + BY_NAME[name].jitp_parameter] = value
    return params
