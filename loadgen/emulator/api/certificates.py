"""Device certificates: listing (all, or by CA), describing, changing status
and deleting, with AWS's rules for what may be deleted."""

from __future__ import annotations

import ssl

from cryptography import x509

from loadgen.emulator.api import base
from loadgen.emulator.api.base import Account, Params, Result, invalid, not_found
from loadgen.emulator.api.cas import generation_id, validity
from loadgen.emulator.registry import CertRecord, CertStatus

# What UpdateCertificate may set. AWS throws on PENDING_TRANSFER and
# PENDING_ACTIVATION ("used internally by IoT"; its API reference), and
# REGISTER_INACTIVE belongs to RegisterCertificate, which the emulator lacks.
_SETTABLE = {s.value: s for s in CertStatus if s is not CertStatus.PENDING_ACTIVATION}


def _summary(account: Account, record: CertRecord) -> Result:
    return {
        "certificateArn": account.arn("cert", record.id),
        "certificateId": record.id,
        "status": record.status.value,
        "certificateMode": "DEFAULT",
        "creationDate": record.created,
    }


def _listing(account: Account, params: Params, records: list[CertRecord]) -> Result:
    return base.listing(
        params,
        "certificates",
        records,
        lambda r: (r.created, r.id),
        lambda r: _summary(account, r),
        paging=base.MARKER,
        ascending=base.flag(params, "ascendingOrder"),
    )


def list_certificates(account: Account, params: Params) -> Result:
    return _listing(account, params, list(account.registry.certificates.values()))


def list_certificates_by_ca(account: Account, params: Params) -> Result:
    ca_id = base.certificate_id(params, "caCertificateId")
    records = [r for r in account.registry.certificates.values() if r.ca_id == ca_id]
    return _listing(account, params, records)


def certificate(account: Account, params: Params) -> CertRecord:
    cert_id = base.certificate_id(params)
    record = account.registry.certificates.get(cert_id)
    if record is None:
        raise not_found(f"certificate {cert_id} does not exist")
    return record


def describe_certificate(account: Account, params: Params) -> Result:
    record = certificate(account, params)
    description: Result = {
        **_summary(account, record),
        "caCertificateId": record.ca_id,
        "ownedBy": account.account_id,
        "lastModifiedDate": record.modified or record.created,
        "customerVersion": 1,
        "generationId": generation_id(record.id, record.modified),
    }
    if record.der is not None:  # not kept by state files of earlier versions
        description["certificatePem"] = ssl.DER_cert_to_PEM_cert(record.der)
        description["validity"] = validity(x509.load_der_x509_certificate(record.der))
    return {"certificateDescription": description}


def update_certificate(account: Account, params: Params) -> Result:
    record = certificate(account, params)
    new = base.string(params, "newStatus")
    if new not in _SETTABLE:
        raise invalid(f"newStatus {new!r}: one of {', '.join(_SETTABLE)} here")
    if record.status is CertStatus.REVOKED and new != CertStatus.REVOKED.value:
        raise base.state_error(f"certificate {record.id} is REVOKED, which is final")
    account.registry.set_certificate_status(record, _SETTABLE[new])
    return {}


def delete_certificate(account: Account, params: Params) -> Result:
    record = certificate(account, params)
    if record.status is CertStatus.ACTIVE:
        raise base.state_error(
            f"certificate {record.id} is ACTIVE: set it INACTIVE (UpdateCertificate) first"
        )
    if record.things:
        raise base.conflict(
            f"certificate {record.id} is attached to {len(record.things)} thing(s): "
            "detach them (DetachThingPrincipal) first"
        )
    force = base.flag(params, "forceDelete")
    if record.policies and not force:
        raise base.conflict(
            f"certificate {record.id} has {len(record.policies)} policy(ies) attached: "
            "detach them (DetachPolicy) first, or forceDelete"
        )
    account.registry.delete_certificate(record.id)
    return {}


OPERATIONS = {
    "ListCertificates": list_certificates,
    "ListCertificatesByCA": list_certificates_by_ca,
    "DescribeCertificate": describe_certificate,
    "UpdateCertificate": update_certificate,
    "DeleteCertificate": delete_certificate,
}
