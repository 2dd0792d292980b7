"""The certificate subject fields JITP can read, under one set of names.

A profile names them (``common_name``), X.509 encodes them by OID, RFC 4514 strings
abbreviate them (``CN``), and a provisioning template reads them as
``AWS::IoT::Certificate::CommonName``. This table is the one place that ties those
names together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadgen.certs import der

_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*\Z")


class SubjectValueError(ValueError):
    """A generated or given value cannot be encoded in its field."""


@dataclass(frozen=True)
class SubjectField:
    name: str  # the profile's and the manifest's name
    short: str  # RFC 4514 abbreviation
    oid: str
    jitp_parameter: str  # AWS::IoT::Certificate::<this>
    printable: bool  # X.520 makes these PrintableString; the rest are UTF8String
    max_length: int

    @property
    def oid_der(self) -> bytes:
        return der.oid(self.oid)

    @property
    def tag(self) -> int:
        return der.TAG_PRINTABLE if self.printable else der.TAG_UTF8

    def check(self, value: str) -> None:
        if self.name == "country" and not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise SubjectValueError(f"country {value!r} must be a two-letter code")
        if not 1 <= len(value) <= self.max_length:
            raise SubjectValueError(
                f"{self.name} must be 1 to {self.max_length} characters, got {len(value)}"
            )
        if self.printable and not _PRINTABLE.match(value):
            raise SubjectValueError(
                f"{self.name} {value!r} has characters a PrintableString cannot hold"
            )


# The fault of a device minted without one subject field: "missing_" + its name.
# Here, not with the profiles that inject it: outcomes are classified by it in
# the workers, which do not load the profiles' schema.
MISSING_PREFIX = "missing_"

# In the order they appear in a certificate's subject. The OIDs are written out,
# not taken from cryptography's NameOID: workers classify by these fields, and
# importing cryptography costs each of them 16 MB.
FIELDS: tuple[SubjectField, ...] = (
    SubjectField("country", "C", "2.5.4.6", "Country", True, 2),
    SubjectField("state", "ST", "2.5.4.8", "StateName", False, 128),
    SubjectField("organization", "O", "2.5.4.10", "Organization", False, 64),
    SubjectField(
        "organizational_unit",
        "OU",
        "2.5.4.11",
        "OrganizationalUnit",
        False,
        64,
    ),
    SubjectField("common_name", "CN", "2.5.4.3", "CommonName", False, 64),
    SubjectField(
        "serial_number",
        "serialNumber",
        "2.5.4.5",
        "SerialNumber",
        True,
        64,
    ),
    SubjectField(
        "dn_qualifier",
        "dnQualifier",
        "2.5.4.46",
        "DistinguishedNameQualifier",
        True,
        64,
    ),
)
BY_NAME: dict[str, SubjectField] = {f.name: f for f in FIELDS}
BY_OID: dict[str, SubjectField] = {f.oid: f for f in FIELDS}


class SubjectEncoder:
    """DER Names for subjects, fields in ``FIELDS`` order. Each field's encoded RDN is
    remembered for values seen before: most fields repeat (a constant, a choice)."""

    _CACHE_LIMIT = 4096

    def __init__(self) -> None:
        self._fields: list[tuple[str, bytes, int, dict[str, bytes]]] = [
            (f.name, f.oid_der, f.tag, {}) for f in FIELDS
        ]

    def encode(self, subject: dict[str, str]) -> bytes:
        rdns = []
        for name, oid_der, tag, cache in self._fields:
            value = subject.get(name)
            if value is None:
                continue
            rdn = cache.get(value)
            if rdn is None:
                atv = der.sequence(oid_der, der.tlv(tag, value.encode()))
                rdn = der.header(der.TAG_SET, len(atv)) + atv
                if len(cache) < self._CACHE_LIMIT:
                    cache[value] = rdn
            rdns.append(rdn)
        body = b"".join(rdns)
        return der.header(der.TAG_SEQUENCE, len(body)) + body


def encode(subject: dict[str, str]) -> bytes:
    """DER Name for ``subject`` (field name to value)."""
    return SubjectEncoder().encode(subject)
