"""CA certificates: the registration code, registering a CA (proved by its
verification certificate), updating, describing, listing and deleting it."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from loadgen.certs.ca import marked_ca
from loadgen.emulator.api import base
from loadgen.emulator.api.base import Account, Params, Result, invalid, not_found
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.errors import TemplateError
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.registry import CaRecord


def registration_code(account: Account) -> str:
    """The account's registration code: fixed per account and region, as on AWS
    (64 hex digits, as AWS's are)."""
    return hashlib.sha256(
        f"jitp-loadgen:{account.account_id}:{account.region}".encode()
    ).hexdigest()


def generation_id(key: str, modified: float) -> str:
    """A value that changes with every change of the resource, as AWS's does."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}@{modified!r}"))


def validity(cert: x509.Certificate) -> dict[str, float]:
    return {
        "notBefore": cert.not_valid_before_utc.timestamp(),
        "notAfter": cert.not_valid_after_utc.timestamp(),
    }


def get_registration_code(account: Account, params: Params) -> Result:
    return {"registrationCode": registration_code(account)}


def _certificate_error(message: str) -> ApiError:
    return ApiError("CertificateValidationException", message, 400)


def _load_pem(params: Params, member: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(base.string(params, member).encode())
    except ValueError as exc:
        raise _certificate_error(f"{member} is not a PEM certificate: {exc}") from None


def _check_is_ca(cert: x509.Certificate) -> None:
    if not marked_ca(cert):
        raise _certificate_error("caCertificate is not a CA certificate (basicConstraints CA:TRUE)")


def _check_verification(account: Account, ca: x509.Certificate, params: Params) -> None:
    """The proof that the registrant holds the CA's key: a certificate the CA
    signed whose CN is the account's registration code."""
    if params.get("verificationCertificate") is None:
        raise invalid("verificationCertificate is required for a CA in DEFAULT mode")
    proof = _load_pem(params, "verificationCertificate")
    try:
        proof.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise _certificate_error(
            "the verification certificate is not signed by the CA certificate"
        ) from None
    names = proof.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(n.value) for n in names] != [registration_code(account)]:
        raise ApiError(
            "RegistrationCodeValidationException",
            "the verification certificate's CN is not this account's registration code",
        )


def _registration_config(params: Params) -> dict[str, Any] | None:
    if params.get("registrationConfig") is None:
        return None
    config = base.structure(params, "registrationConfig")
    return {k: v for k, v in config.items() if v is not None}


def register_ca_certificate(account: Account, params: Params) -> Result:
    registry = account.registry
    cert = _load_pem(params, "caCertificate")
    _check_is_ca(cert)
    mode = params.get("certificateMode") or "DEFAULT"
    if mode != "DEFAULT":
        # SNI_ONLY (multi-account registration) has no verification certificate
        # and other trust rules; the emulator has one account.
        raise invalid(f"certificateMode {mode!r}: the emulator registers CAs in DEFAULT mode")
    _check_verification(account, cert, params)
    ca_id = certificate_id(cert)
    arn = account.arn("cacert", ca_id)
    if ca_id in registry.cas:
        raise base.already_exists(f"the CA certificate is already registered ({arn})")
    try:
        registry.register_ca(
            cert,
            _registration_config(params),
            active=base.flag(params, "setAsActive"),
            auto_registration=base.flag(params, "allowAutoRegistration"),
            prepare=False,
        )
    except TemplateError as exc:
        raise invalid(f"registrationConfig: {exc}") from None
    return {"certificateArn": arn, "certificateId": ca_id}


def _ca(account: Account, params: Params) -> CaRecord:
    ca_id = base.certificate_id(params)
    ca = account.registry.cas.get(ca_id)
    if ca is None:
        raise not_found(f"CA certificate {ca_id} does not exist")
    return ca


def update_ca_certificate(account: Account, params: Params) -> Result:
    ca = dataclasses.replace(_ca(account, params))  # the registered one changes once saved
    status = params.get("newStatus")
    auto = params.get("newAutoRegistrationStatus")
    if status not in (None, "ACTIVE", "INACTIVE"):
        raise invalid(f"newStatus {status!r}: ACTIVE or INACTIVE")
    if auto not in (None, "ENABLE", "DISABLE"):
        raise invalid(f"newAutoRegistrationStatus {auto!r}: ENABLE or DISABLE")
    config = _registration_config(params)
    remove = base.flag(params, "removeAutoRegistration")
    if remove and (config is not None or auto == "ENABLE"):
        raise invalid("removeAutoRegistration goes with no registrationConfig and no ENABLE")
    # Checked whole before anything changes.
    if config is not None:
        try:
            account.registry.set_registration_config(ca, config)
        except TemplateError as exc:
            raise invalid(f"registrationConfig: {exc}") from None
    if remove:
        account.registry.set_registration_config(ca, None)
        ca.auto_registration = False
    if status is not None:
        ca.active = status == "ACTIVE"
    if auto is not None:
        ca.auto_registration = auto == "ENABLE"
    account.registry.save_ca(ca)
    return {}


def _ca_status(ca: CaRecord) -> str:
    return "ACTIVE" if ca.active else "INACTIVE"


def describe_ca_certificate(account: Account, params: Params) -> Result:
    ca = _ca(account, params)
    description = {
        "certificateArn": account.arn("cacert", ca.id),
        "certificateId": ca.id,
        "status": _ca_status(ca),
        "certificatePem": ca.cert.public_bytes(Encoding.PEM).decode(),
        "ownedBy": account.account_id,
        "creationDate": ca.created,
        "autoRegistrationStatus": "ENABLE" if ca.auto_registration else "DISABLE",
        "lastModifiedDate": ca.modified or ca.created,
        "customerVersion": 1,
        "generationId": generation_id(ca.id, ca.modified),
        "validity": validity(ca.cert),
        "certificateMode": "DEFAULT",
    }
    return {"certificateDescription": description, "registrationConfig": dict(ca.config or {})}


def list_ca_certificates(account: Account, params: Params) -> Result:
    cas: list[CaRecord] = list(account.registry.cas.values())
    template = base.optional_string(params, "templateName")
    if template is not None:
        cas = [ca for ca in cas if (ca.config or {}).get("templateName") == template]
    return base.listing(
        params,
        "certificates",
        cas,
        lambda ca: (ca.created, ca.id),
        lambda ca: {
            "certificateArn": account.arn("cacert", ca.id),
            "certificateId": ca.id,
            "status": _ca_status(ca),
            "creationDate": ca.created,
        },
        paging=base.MARKER,
        ascending=base.flag(params, "ascendingOrder"),
    )


def delete_ca_certificate(account: Account, params: Params) -> Result:
    ca = _ca(account, params)
    if ca.active:
        raise base.state_error(
            f"CA certificate {ca.id} is ACTIVE: set it INACTIVE (UpdateCACertificate) first"
        )
    # The certificates it signed stay registered, as on AWS; with the CA gone
    # their devices no longer pass the TLS handshake.
    account.registry.delete_ca(ca.id)
    return {}


OPERATIONS = {
    "GetRegistrationCode": get_registration_code,
    "RegisterCACertificate": register_ca_certificate,
    "UpdateCACertificate": update_ca_certificate,
    "DescribeCACertificate": describe_ca_certificate,
    "ListCACertificates": list_ca_certificates,
    "DeleteCACertificate": delete_ca_certificate,
}
