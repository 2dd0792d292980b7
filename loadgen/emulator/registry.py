"""The emulated account: CAs, certificates, things, policies and what attaches
to what. In memory; provisioning either applies whole or changes nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.certs.subject import BY_NAME, BY_OID
from loadgen.emulator import template as tpl
from loadgen.emulator.errors import ClientError, TemplateError
from loadgen.emulator.state import RegistryStore
from loadgen.emulator.structure import config_problems


class CertStatus(StrEnum):
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"


def certificate_id(cert: x509.Certificate) -> str:
    """What AWS IoT calls a certificate's id: hex SHA-256 of its DER."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass
class CaRecord:
    id: str
    cert: x509.Certificate
    active: bool = True
    auto_registration: bool = True
    template: dict[str, Any] | None = None
    role_arn: str | None = None


@dataclass
class CertRecord:
    id: str
    ca_id: str
    status: CertStatus
    things: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)


@dataclass
class Thing:
    name: str
    type_name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)


def jitp_parameters(cert: x509.Certificate) -> dict[str, str]:
    """The eight values JITP reads: the subject fields present, and the id."""
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


def _literal_names(template: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Thing types and groups a template names as plain strings."""
    types: set[str] = set()
    groups: set[str] = set()
    for resource in template["Resources"].values():
        if resource.get("Type") != "AWS::IoT::Thing":
            continue
        props = resource.get("Properties") or {}
        if isinstance(props.get("ThingTypeName"), str):
            types.add(props["ThingTypeName"])
        groups.update(g for g in props.get("ThingGroups") or [] if isinstance(g, str))
    return types, groups


class Registry:
    def __init__(
        self, *, strict_resources: bool = False, store: RegistryStore | None = None
    ) -> None:
        self.strict_resources = strict_resources
        self.store = store
        self.cas: dict[str, CaRecord] = {}
        self.certificates: dict[str, CertRecord] = {}
        self.things: dict[str, Thing] = {}
        self.policies: dict[str, str] = {}  # name -> document
        self.thing_types: set[str] = set()
        self.thing_groups: set[str] = set()
        if store is not None:
            store.load_into(self)

    def register_ca(
        self, cert: x509.Certificate, registration_config: dict[str, Any] | None, **kw: Any
    ) -> CaRecord:
        template = None
        role_arn = None
        if registration_config is not None:
            template, problems = config_problems(registration_config)
            if problems:
                raise TemplateError(str(problems[0]))
            role_arn = registration_config.get("roleArn")
            types, groups = _literal_names(template)
            # An account prepared for its template has these already.
            self.thing_types |= types
            self.thing_groups |= groups
        record = CaRecord(certificate_id(cert), cert, template=template, role_arn=role_arn, **kw)
        self.cas[record.id] = record
        return record

    def issuer_of(self, cert: x509.Certificate) -> CaRecord | None:
        for ca in self.cas.values():
            if ca.cert.subject == cert.issuer:
                try:
                    cert.verify_directly_issued_by(ca.cert)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return ca
        return None

    def provision(self, cert: x509.Certificate, ca: CaRecord) -> CertRecord:
        """JITP for ``cert``: register it, run the CA's template, activate it.
        Raises ``ProvisioningError`` having changed nothing."""
        if ca.template is None:
            raise ClientError(f"CA {ca.id[:12]} has no provisioning template")
        cert_id = certificate_id(cert)
        resources = tpl.evaluate(ca.template, jitp_parameters(cert))
        changes = self._plan(resources, cert_id)
        record = CertRecord(cert_id, ca.id, CertStatus.PENDING_ACTIVATION)
        for change in changes:
            change(record)
        self.certificates[cert_id] = record
        if self.store is not None:
            self.store.save_provisioning(self, record)
        return record

    def _plan(self, resources: list[tpl.Resource], cert_id: str) -> list[Any]:
        """Every change provisioning will make, checked before any is made."""
        changes: list[Any] = []
        status = CertStatus.ACTIVE
        for resource in resources:
            props, where = resource.properties, f"resource {resource.logical_id}"
            if resource.type == "AWS::IoT::Certificate":
                given = props.get("CertificateId")
                if given is not None and given != cert_id:
                    raise ClientError(f"{where}: CertificateId is not the certificate's id")
                try:
                    status = CertStatus(props.get("Status", "ACTIVE"))
                except ValueError:
                    raise ClientError(f"{where}: Status {props.get('Status')!r}") from None
            elif resource.type == "AWS::IoT::Policy":
                changes.append(self._plan_policy(props, where))
            else:
                changes.append(self._plan_thing(props, resource.overrides, where))

        def activate(record: CertRecord) -> None:
            record.status = status

        changes.append(activate)
        return changes

    def _plan_policy(self, props: dict[str, Any], where: str) -> Any:
        if "PolicyName" in props and "PolicyDocument" not in props:
            name = str(props["PolicyName"])
            if name not in self.policies:
                raise ClientError(f"{where}: policy {name} does not exist")
            document = self.policies[name]
        else:
            given = props.get("PolicyDocument")
            if not isinstance(given, str):
                raise ClientError(f"{where}: PolicyDocument must be a JSON string")
            document = given
            # Inline policies get a name from their content, so devices that
            # share a document share the policy.
            name = str(
                props.get("PolicyName")
                or "jitp-" + hashlib.sha256(document.encode()).hexdigest()[:16]
            )

        def attach(record: CertRecord) -> None:
            self.policies.setdefault(name, document)
            record.policies.add(name)

        return attach

    def _plan_thing(self, props: dict[str, Any], overrides: dict[str, str], where: str) -> Any:
        name = props.get("ThingName")
        if not isinstance(name, str) or not name:
            raise ClientError(f"{where}: ThingName is required")
        type_name = props.get("ThingTypeName")
        groups = {str(g) for g in props.get("ThingGroups") or []}
        attributes = {str(k): str(v) for k, v in (props.get("AttributePayload") or {}).items()}
        missing_type = type_name is not None and type_name not in self.thing_types
        missing_groups = groups - self.thing_groups
        if self.strict_resources and (missing_type or missing_groups):
            what = type_name if missing_type else ", ".join(sorted(missing_groups))
            raise ClientError(f"{where}: {what} does not exist")
        existing = self.things.get(name)
        if existing is not None:
            for key in ("AttributePayload", "ThingTypeName", "ThingGroups"):
                if overrides.get(key) == "FAIL":
                    raise ClientError(f"{where}: thing {name} exists and {key} is FAIL")

        def apply(record: CertRecord) -> None:
            if type_name is not None:
                self.thing_types.add(type_name)
            self.thing_groups |= groups
            thing = self.things.get(name)
            if thing is None:
                self.things[name] = Thing(name, type_name, attributes, groups)
            else:
                _override(thing, overrides, type_name, attributes, groups)
            record.things.add(name)

        return apply


def _override(
    thing: Thing,
    overrides: dict[str, str],
    type_name: str | None,
    attributes: dict[str, str],
    groups: set[str],
) -> None:
    """An existing thing meets the template; unset overrides do nothing."""
    mode = overrides.get("AttributePayload", "DO_NOTHING")
    if mode == "MERGE":
        thing.attributes.update(attributes)
    elif mode == "REPLACE":
        thing.attributes = dict(attributes)
    if overrides.get("ThingTypeName") in ("REPLACE", "MERGE") and type_name is not None:
        thing.type_name = type_name
    mode = overrides.get("ThingGroups", "DO_NOTHING")
    if mode == "MERGE":
        thing.groups |= groups
    elif mode == "REPLACE":
        thing.groups = set(groups)
