"""The emulated account: CAs, certificates, things, policies and what attaches
to what. In memory; provisioning either applies whole or changes nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.emulator import template as tpl
from loadgen.emulator.errors import ClientError, StateUnwritten, TemplateError
from loadgen.emulator.names import (
    document_refused,
    refused,
    resource_refused,
    too_many_attributes,
    too_many_groups,
    too_many_policies,
)
from loadgen.emulator.parameters import certificate_id, jitp_parameters
from loadgen.emulator.state import RegistryStore, StateWriteError
from loadgen.emulator.structure import certificate_status, config_problems


class CertStatus(StrEnum):
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"


@dataclass
class CaRecord:
    id: str
    cert: x509.Certificate
    active: bool = True
    auto_registration: bool = True
    template: dict[str, Any] | None = None
    role_arn: str | None = None
    # The registration config as registered (templateBody, roleArn, ...).
    config: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    modified: float = 0.0


@dataclass
class CertRecord:
    id: str
    ca_id: str
    status: CertStatus
    things: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    der: bytes | None = None  # None: provisioned by a version that did not keep it
    created: float = 0.0
    modified: float = 0.0


@dataclass
class Thing:
    name: str
    type_name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    version: int = 1


@dataclass
class PolicyVersion:
    document: str
    created: float


@dataclass
class PolicyInfo:
    """A policy's versions; ``Registry.policies`` holds its default document,
    which is what the MQTT side reads."""

    versions: dict[str, PolicyVersion]
    default: str
    created: float
    modified: float
    next_version: int


@dataclass
class ThingTypeInfo:
    created: float
    description: str | None = None
    searchable: list[str] = field(default_factory=list)
    deprecated: bool = False
    deprecation_date: float | None = None


@dataclass
class ThingGroupInfo:
    created: float
    parent: str | None = None
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    version: int = 1


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
        self.started = time.time()
        self.cas: dict[str, CaRecord] = {}
        # One more at every change of a CA made through these methods: what the
        # TLS side trusts is rebuilt only when it moved.
        self.ca_version = 0
        self.certificates: dict[str, CertRecord] = {}
        self.things: dict[str, Thing] = {}
        self.policies: dict[str, str] = {}  # name -> default version's document
        self.thing_types: set[str] = set()
        self.thing_groups: set[str] = set()
        # What attaches to what, seen from the other end (cert ids), kept with
        # CertRecord.things/.policies so that a listing is not a scan of them all.
        self.thing_principals: dict[str, set[str]] = {}
        self.policy_targets: dict[str, set[str]] = {}
        # Made on first use for what provisioning created (provisioning stays lean).
        self.policy_infos: dict[str, PolicyInfo] = {}
        self.thing_type_infos: dict[str, ThingTypeInfo] = {}
        self.thing_group_infos: dict[str, ThingGroupInfo] = {}
        if store is not None:
            store.load_into(self)
        for record in self.certificates.values():
            self._index(record)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _index(self, record: CertRecord) -> None:
        for name in record.things:
            self.thing_principals.setdefault(name, set()).add(record.id)
        for name in record.policies:
            self.policy_targets.setdefault(name, set()).add(record.id)

    def register_ca(
        self,
        cert: x509.Certificate,
        registration_config: dict[str, Any] | None,
        *,
        active: bool = True,
        auto_registration: bool = True,
        prepare: bool = True,
    ) -> CaRecord:
        """Register (or register again) a CA. ``prepare``: the thing types and
        groups its template names literally exist from now on, as in an account
        prepared for it (the command line's CAs; one registered through the API
        gets what the account really has)."""
        template = None
        role_arn = None
        if registration_config is not None:
            template, problems = config_problems(registration_config)
            if problems:
                raise TemplateError(str(problems[0]))
            role_arn = registration_config.get("roleArn")
            if prepare:
                types, groups = _literal_names(template)
                for name in types - self.thing_types:
                    self.add_thing_type(name, ThingTypeInfo(time.time()))
                for name in groups - self.thing_groups:
                    self.add_thing_group(name, ThingGroupInfo(time.time()))
        ca_id = certificate_id(cert)
        previous = self.cas.get(ca_id)
        now = time.time()
        record = CaRecord(
            ca_id,
            cert,
            active=active,
            auto_registration=auto_registration,
            template=template,
            role_arn=role_arn,
            config=registration_config,
            created=previous.created if previous is not None else now,
            modified=now,
        )
        if self.store is not None:
            self.store.save_ca(record)
        self.cas[record.id] = record
        self.ca_version += 1
        return record

    def set_registration_config(self, ca: CaRecord, config: dict[str, Any] | None) -> None:
        """Replace a CA's registration config (None: remove it) in ``ca``, a copy
        of the registered one that `save_ca` keeps."""
        template = None
        if config is not None:
            template, problems = config_problems(config)
            if problems:
                raise TemplateError(str(problems[0]))
        ca.template, ca.config = template, config
        ca.role_arn = config.get("roleArn") if config is not None else None

    # Every change below is written to the store first and made in memory only
    # once written: a store that cannot be written (StateWriteError) leaves the
    # registry as the state file has it. What a change replaces (a CA, a thing, a
    # policy's versions) is given as a changed copy, never the registered object.

    def save_ca(self, ca: CaRecord) -> None:
        """Keep ``ca``: a changed copy of a registered CA, which it replaces."""
        ca.modified = time.time()
        if self.store is not None:
            self.store.save_ca(ca)
        self.cas[ca.id] = ca
        self.ca_version += 1

    def delete_ca(self, ca_id: str) -> None:
        if self.store is not None:
            self.store.delete_ca(ca_id)
        del self.cas[ca_id]
        self.ca_version += 1

    def set_certificate_status(self, record: CertRecord, status: CertStatus) -> None:
        now = time.time()
        if self.store is not None:
            self.store.save_certificate(record.id, status, now)
        record.status = status
        record.modified = now

    def delete_certificate(self, cert_id: str) -> None:
        if self.store is not None:
            self.store.delete_certificate(cert_id)
        record = self.certificates.pop(cert_id)
        for name in record.things:
            self.thing_principals.get(name, set()).discard(cert_id)
        for name in record.policies:
            self.policy_targets.get(name, set()).discard(cert_id)

    def attach_thing(self, record: CertRecord, name: str) -> None:
        if self.store is not None:
            self.store.attach_thing(record.id, name)
        record.things.add(name)
        self.thing_principals.setdefault(name, set()).add(record.id)

    def detach_thing(self, record: CertRecord, name: str) -> None:
        if self.store is not None:
            self.store.detach_thing(record.id, name)
        record.things.discard(name)
        self.thing_principals.get(name, set()).discard(record.id)

    def attach_policy(self, record: CertRecord, name: str) -> None:
        if self.store is not None:
            self.store.attach_policy(record.id, name)
        record.policies.add(name)
        self.policy_targets.setdefault(name, set()).add(record.id)

    def detach_policy(self, record: CertRecord, name: str) -> None:
        if self.store is not None:
            self.store.detach_policy(record.id, name)
        record.policies.discard(name)
        self.policy_targets.get(name, set()).discard(record.id)

    def save_thing(self, thing: Thing) -> None:
        if self.store is not None:
            self.store.save_thing(thing)
        self.things[thing.name] = thing

    def delete_thing(self, name: str) -> None:
        if self.store is not None:
            self.store.delete_thing(name)
        del self.things[name]
        for cert_id in self.thing_principals.pop(name, set()):
            self.certificates[cert_id].things.discard(name)

    def policy_info(self, name: str) -> PolicyInfo:
        """The versions of policy ``name`` (which exists): the registered ones,
        not to be changed (`save_policy` takes a changed copy)."""
        info = self.policy_infos.get(name)
        if info is None:
            # Made by provisioning (or by a version that kept no versions): one.
            version = PolicyVersion(self.policies[name], self.started)
            info = PolicyInfo({"1": version}, "1", self.started, self.started, 2)
            self.policy_infos[name] = info
        return info

    def save_policy(self, name: str, info: PolicyInfo) -> None:
        """Create or change a policy; its default version is what devices get."""
        info.modified = time.time()
        if self.store is not None:
            self.store.save_policy(name, info)
        self.policy_infos[name] = info
        self.policies[name] = info.versions[info.default].document

    def delete_policy(self, name: str) -> None:
        if self.store is not None:
            self.store.delete_policy(name)
        del self.policies[name]
        self.policy_infos.pop(name, None)
        self.policy_targets.pop(name, None)

    def thing_type_info(self, name: str) -> ThingTypeInfo:
        return self.thing_type_infos.setdefault(name, ThingTypeInfo(self.started))

    def add_thing_type(self, name: str, info: ThingTypeInfo) -> None:
        if self.store is not None:
            self.store.save_thing_type(name, info)
        self.thing_types.add(name)
        self.thing_type_infos[name] = info

    def delete_thing_type(self, name: str) -> None:
        if self.store is not None:
            self.store.delete_thing_type(name)
        self.thing_types.discard(name)
        self.thing_type_infos.pop(name, None)

    def thing_group_info(self, name: str) -> ThingGroupInfo:
        return self.thing_group_infos.setdefault(name, ThingGroupInfo(self.started))

    def add_thing_group(self, name: str, info: ThingGroupInfo) -> None:
        if self.store is not None:
            self.store.save_thing_group(name, info)
        self.thing_groups.add(name)
        self.thing_group_infos[name] = info

    def delete_thing_group(self, name: str) -> None:
        members = [
            dataclasses.replace(thing, groups=thing.groups - {name})
            for thing in self.things.values()
            if name in thing.groups
        ]
        if self.store is not None:
            self.store.delete_thing_group(name, members)
        self.thing_groups.discard(name)
        self.thing_group_infos.pop(name, None)
        for thing in members:
            self.things[thing.name] = thing

    def issuer_of(self, cert: x509.Certificate, *, verified: bool = False) -> CaRecord | None:
        """The registered CA that signed ``cert``, if any. ``verified``: a TLS
        handshake has verified its signature against the CAs trusted then (the
        active ones); when a single registered CA has its issuer's name, that is
        the one, and the signature is not checked again (about 160 us, a tenth of
        the CPU of the connection that triggers JITP)."""
        named = [ca for ca in self.cas.values() if ca.cert.subject == cert.issuer]
        if verified and len(named) == 1:
            return named[0]
        for ca in named:
            try:
                cert.verify_directly_issued_by(ca.cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    def provision(self, cert: x509.Certificate, ca: CaRecord) -> CertRecord:
        """JITP for ``cert``: register it, run the CA's template, activate it.
        Raises ``ProvisioningError`` having changed nothing (``StateUnwritten``:
        the state file could not keep it)."""
        if ca.template is None:
            raise ClientError(f"CA {ca.id[:12]} has no provisioning template")
        der = cert.public_bytes(Encoding.DER)
        cert_id = hashlib.sha256(der).hexdigest()
        resources = tpl.evaluate(ca.template, jitp_parameters(der))
        plan = self._plan(resources, cert_id)
        now = time.time()
        record = CertRecord(
            cert_id,
            ca.id,
            plan.status,
            set(plan.things),
            set(plan.policies),
            der=der,
            created=now,
            modified=now,
        )
        things = self._things_after(plan)
        _check_limits(things.values(), plan)
        policies = {name: self.policies.get(name, doc) for name, doc in plan.policies.items()}
        types = {c.type_name for c in plan.things.values() if c.type_name is not None}
        groups = {g for c in plan.things.values() for g in c.groups}
        if self.store is not None:
            try:
                self.store.save_provisioning(record, things.values(), policies, types, groups)
            except StateWriteError as exc:
                raise StateUnwritten("the emulator could not write its state file") from exc
        self.thing_types |= types
        self.thing_groups |= groups
        for name, document in policies.items():
            self.policies.setdefault(name, document)
        self.things.update(things)
        self.certificates[cert_id] = record
        self._index(record)
        return record

    def _things_after(self, plan: _Plan) -> dict[str, Thing]:
        """The template's things as provisioning leaves them: new ones, and
        copies of existing ones with the template's overrides applied."""
        after: dict[str, Thing] = {}
        for change in plan.changes:
            current = after.get(change.name) or self.things.get(change.name)
            if current is None:
                after[change.name] = Thing(
                    change.name, change.type_name, dict(change.attributes), set(change.groups)
                )
                continue
            thing = dataclasses.replace(
                current, attributes=dict(current.attributes), groups=set(current.groups)
            )
            _override(thing, change.overrides, change.type_name, change.attributes, change.groups)
            after[change.name] = thing
        return after

    def _plan(self, resources: list[tpl.Resource], cert_id: str) -> _Plan:
        """Every change provisioning will make, checked before any is made."""
        plan = _Plan()
        for resource in resources:
            props, where = resource.properties, f"resource {resource.logical_id}"
            if resource.type == "AWS::IoT::Certificate":
                given = props.get("CertificateId")
                if given is not None and given != cert_id:
                    raise ClientError(f"{where}: CertificateId is not the certificate's id")
                status = certificate_status(props.get("Status", "ACTIVE"))
                if status is None:
                    raise ClientError(
                        f"{where}: Status {props.get('Status')!r} is not ACTIVE or INACTIVE"
                    )
                plan.status = CertStatus(status)
            elif resource.type == "AWS::IoT::Policy":
                name, document = self._plan_policy(props, where)
                plan.policies.setdefault(name, document)
            else:
                change = self._plan_thing(props, resource.overrides, where)
                plan.changes.append(change)
                plan.things.setdefault(change.name, change)
        return plan

    def _plan_policy(self, props: dict[str, Any], where: str) -> tuple[str, str]:
        """The policy to attach: its name and its document (used only if no
        policy of that name exists when provisioning is made)."""
        # [PT]: "PolicyName or PolicyDocument, but not both, must be specified."
        if ("PolicyName" in props) == ("PolicyDocument" in props):
            raise ClientError(f"{where}: needs PolicyName or PolicyDocument, not both or neither")
        if "PolicyName" in props:
            name = str(props["PolicyName"])
            if (why := refused([("PolicyName", name)])) is not None:
                raise ClientError(f"{where}: {why}", f"{where}: {why.general}")
            if name not in self.policies:
                raise ClientError(f"{where}: policy {name} does not exist")
            return name, self.policies[name]
        document = props["PolicyDocument"]
        if not isinstance(document, str):
            raise ClientError(f"{where}: PolicyDocument must be a JSON string")
        # What CreatePolicy would refuse, JITP's own policy is refused too.
        if (refusal := document_refused(document)) is not None:
            raise ClientError(f"{where}: {refusal}")
        # [PT]: PolicyName "Defaults to a hash of the policy document", so
        # devices that share a document share the policy.
        return "jitp-" + hashlib.sha256(document.encode()).hexdigest()[:16], document

    def _plan_thing(
        self, props: dict[str, Any], overrides: dict[str, str], where: str
    ) -> _ThingChange:
        name = props.get("ThingName")
        if not isinstance(name, str) or not name:
            raise ClientError(f"{where}: ThingName is required")
        type_name = props.get("ThingTypeName")
        groups = {str(g) for g in props.get("ThingGroups") or []}
        attributes = {str(k): str(v) for k, v in (props.get("AttributePayload") or {}).items()}
        if (why := resource_refused("AWS::IoT::Thing", props)) is not None:
            raise ClientError(f"{where}: {why}", f"{where}: {why.general}")
        missing_type = type_name is not None and type_name not in self.thing_types
        missing_groups = groups - self.thing_groups
        if self.strict_resources and (missing_type or missing_groups):
            what = type_name if missing_type else ", ".join(sorted(missing_groups))
            raise ClientError(f"{where}: {what} does not exist")
        existing = self.things.get(name)
        info = self.thing_type_infos.get(str(type_name)) if type_name is not None else None
        gets_type = existing is None or existing.type_name != type_name
        if info is not None and info.deprecated and gets_type:
            # As CreateThing refuses it: a deprecated type has no new things.
            raise ClientError(f"{where}: thing type {type_name} is deprecated")
        if existing is not None:
            for key in ("AttributePayload", "ThingTypeName", "ThingGroups"):
                if overrides.get(key) == "FAIL":
                    raise ClientError(
                        f"{where}: thing {name} exists and {key} is FAIL",
                        f"{where}: the thing exists and {key} is FAIL",
                    )
        return _ThingChange(name, type_name, attributes, groups, overrides)


@dataclass
class _ThingChange:
    """One AWS::IoT::Thing resource of a template, evaluated and checked."""

    name: str
    type_name: str | None
    attributes: dict[str, str]
    groups: set[str]
    overrides: dict[str, str]


@dataclass
class _Plan:
    """What one provisioning makes, checked, before anything is made."""

    status: CertStatus = CertStatus.ACTIVE
    policies: dict[str, str] = field(default_factory=dict)  # name -> document
    changes: list[_ThingChange] = field(default_factory=list)  # in the template's order
    things: dict[str, _ThingChange] = field(default_factory=dict)  # by name, the first


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
    if overrides.get("ThingTypeName") == "REPLACE" and type_name is not None:
        thing.type_name = type_name
    mode = overrides.get("ThingGroups", "DO_NOTHING")
    if mode == "MERGE":
        thing.groups |= groups
    elif mode == "REPLACE":
        thing.groups = set(groups)


def _check_limits(things: Iterable[Thing], plan: _Plan) -> None:
    """AWS's quotas on what provisioning leaves: a thing's attributes (by whether
    it has a type) and groups, a certificate's policies."""
    for thing in things:
        why = too_many_attributes(len(thing.attributes), thing.type_name is not None)
        if why is None:
            why = too_many_groups(len(thing.groups))
        if why is not None:
            raise ClientError(f"thing {thing.name}: {why}", f"a thing: {why}")
    if (why := too_many_policies(len(plan.policies))) is not None:
        raise ClientError(f"the certificate: {why}")
