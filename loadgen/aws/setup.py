"""`loadgen aws setup`: an account made ready for a JITP storm of a CA's devices.

Everything that can be refused is checked before the account is changed: the
template (as `template check` checks it), the role, the record of an earlier
setup. Then, each step idempotent: the IAM role (with ``--create-role``), the
thing type and thing groups the template names, the CA registered with
auto-registration and the registration config (or updated when it is already
registered). What setup created is recorded in the CA folder as it goes, so a
setup that fails halfway leaves teardown all it needs.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.aws.account import Account, error_code
from loadgen.aws.calls import Api, is_registered
from loadgen.aws.ratelimit import RateLimits
from loadgen.aws.record import Created, SetupRecord, load_record, record_path, save_record
from loadgen.certs.ca import CA, load_ca, verification_cert
from loadgen.certs.store import FleetStore
from loadgen.emulator import check as emu_check
from loadgen.emulator import template as tpl
from loadgen.emulator.errors import ClientError
from loadgen.emulator.parameters import subject_parameters
from loadgen.emulator.render import registration_config
from loadgen.emulator.serve import read_registration_config
from loadgen.emulator.structure import config_problems
from loadgen.errors import ConfigError, FleetError, UserError

_GONE = "ResourceNotFoundException"
# The managed policy the JITP document names for the provisioning role.
REGISTRATION_POLICY = "service-role/AWSIoTThingsRegistration"
_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "iot.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
# A role just created is not at once assumable everywhere (IAM is eventually
# consistent): registering a CA naming it may be refused for some seconds.
_NEW_ROLE_DELAYS = (1, 2, 4, 8, 15)


@dataclass(frozen=True)
class SetupRequest:
    ca_dir: Path
    config: Path
    readable: bool  # --template (a readable template) rather than --registration-config
    role_arn: str | None = None
    create_role: bool = False
    allow_lint_errors: bool = False
    fleet: Path | None = None

    @property
    def option(self) -> str:
        return "--template" if self.readable else "--registration-config"


@dataclass
class Names:
    """The thing types and groups RegisterThing needs to exist, and the names the
    template computes per device that could not be listed (no fleet given)."""

    thing_types: set[str] = field(default_factory=set)
    thing_groups: set[str] = field(default_factory=set)
    unlisted: list[str] = field(default_factory=list)  # where, in the template


@dataclass
class Prepared:
    """A setup checked locally, before any call: the CA, the template and what
    its lint found (warnings, and errors allowed by --allow-lint-errors)."""

    request: SetupRequest
    ca: CA
    template: dict[str, Any]
    template_body: str
    config_role: str | None  # the registration config's roleArn
    findings: list[emu_check.Finding]
    names: Names


def prepare(request: SetupRequest) -> Prepared:
    """Refuse, before the account is touched, what setup cannot do: a CA folder
    without its key, a template AWS would refuse or whose lint finds errors (unless
    allowed), a role neither given nor to be created, a fleet of another CA."""
    ca = load_ca(request.ca_dir)
    path = request.config
    loaded = emu_check.load_config(path)
    data = None if request.readable else read_registration_config(path)
    if request.readable and _is_config(path):
        raise ConfigError(
            f"{path}: a registration config (it has templateBody): give it as --registration-config"
        )
    if not request.readable and not (isinstance(data, dict) and "templateBody" in data):
        raise ConfigError(f"{path}: a readable template: give it as --template")
    role_given = request.role_arn is not None or request.create_role
    # The config's own roleArn is replaced by --role-arn or the created role.
    problems = [p for p in loaded.problems if not (role_given and p.where == "roleArn")]
    if problems:
        raise ConfigError(f"{path}: {problems[0]} (AWS would refuse it)")
    assert isinstance(loaded.template, dict)
    findings = emu_check.check(emu_check.Loaded(loaded.template, []), None)
    errors = [f for f in findings if f.error]
    if errors and not request.allow_lint_errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(
            f"{path}: {errors[0]}{more}; see `loadgen template check {path}`, or give "
            "--allow-lint-errors"
        )
    config_role = data.get("roleArn") if isinstance(data, dict) else None
    if not role_given and config_role is None:
        raise UserError(f"{request.option} {path}: give --role-arn ARN or --create-role")
    if request.role_arn is not None:
        _, role_problems = config_problems({"templateBody": "{}", "roleArn": request.role_arn})
        if any(p.where == "roleArn" for p in role_problems):
            raise UserError(f"--role-arn {request.role_arn!r} is not an IAM role's ARN")
    if request.readable:
        body = registration_config(loaded.template, "")["templateBody"]
    else:
        assert isinstance(data, dict)
        body = data["templateBody"]
    names = template_names(loaded.template, _fleet(request.fleet, ca))
    return Prepared(request, ca, loaded.template, body, config_role, findings, names)


def _is_config(path: Path) -> bool:
    if path.suffix in (".yaml", ".yml"):
        return False
    data = read_registration_config(path)
    return isinstance(data, dict) and "templateBody" in data


def _fleet(fleet: Path | None, ca: CA) -> FleetStore | None:
    if fleet is None:
        return None
    store = FleetStore(fleet)
    meta = store.read_meta()
    if meta.ca_fingerprint != ca.fingerprint:
        raise FleetError(
            f"--fleet {fleet}: minted with another CA ({meta.ca_subject}), not {ca.directory}"
        )
    return store


def template_names(template: dict[str, Any], fleet: FleetStore | None) -> Names:
    """The thing types and groups the template's things name: literal ones as
    written, computed ones as each of the fleet's devices computes them."""
    names = Names()
    for logical_id, spec in template["Resources"].items():
        if spec.get("Type") != "AWS::IoT::Thing":
            continue
        props = spec.get("Properties") or {}
        where = f"Resources.{logical_id}.Properties"
        thing_type = props.get("ThingTypeName")
        if isinstance(thing_type, str):
            names.thing_types.add(thing_type)
        elif thing_type is not None:
            names.unlisted.append(f"{where}.ThingTypeName")
        groups = props.get("ThingGroups")
        for i, group in enumerate(groups if isinstance(groups, list) else []):
            if isinstance(group, str):
                names.thing_groups.add(group)
            else:
                names.unlisted.append(f"{where}.ThingGroups[{i}]")
        if groups is not None and not isinstance(groups, list):
            names.unlisted.append(f"{where}.ThingGroups")
    if fleet is not None and names.unlisted:
        for thing_type, groups in _computed(template, fleet):
            if thing_type:
                names.thing_types.add(thing_type)
            names.thing_groups.update(groups)
        names.unlisted = []
    return names


def _computed(
    template: dict[str, Any], fleet: FleetStore
) -> Iterator[tuple[str | None, list[str]]]:
    """Each device's thing type and groups, as RegisterThing would compute them."""
    for device in fleet.devices(checked=True):
        parameters = subject_parameters(device.subject, device.certificate_id)
        try:
            resources = tpl.evaluate(template, parameters)
        except ClientError:
            continue  # a device that will fail to provision creates nothing
        for resource in resources:
            if resource.type != "AWS::IoT::Thing":
                continue
            thing_type = resource.properties.get("ThingTypeName")
            groups = resource.properties.get("ThingGroups") or []
            yield (
                thing_type if isinstance(thing_type, str) else None,
                [g for g in groups if isinstance(g, str)],
            )


@dataclass
class SetupResult:
    record: SetupRecord
    registered: bool  # the CA was registered now (else updated)
    found: Created  # what existed already and was left as it was
    # Thing types of the template found deprecated and not setup's to undo:
    # JITP fails every device whose thing has one.
    deprecated: list[str] = field(default_factory=list)


class Setup:
    def __init__(
        self,
        account: Account,
        limits: RateLimits,
        *,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import time

        self.account = account
        self.api = Api(account.iot(), limits)
        self.iam = account.iam()
        self.sts = account.sts()
        self.sleep = sleep or time.sleep

    def run(self, prepared: Prepared) -> SetupResult:
        request, ca = prepared.request, prepared.ca
        account_id = str(self.sts.get_caller_identity()["Account"])
        region = self.account.region_name
        earlier = load_record(request.ca_dir)
        if earlier is not None and earlier.ca_id != ca.fingerprint:
            # What it created belongs to a CA no longer in the folder: only a
            # teardown of that CA (by its id, from the record) can still find it.
            raise UserError(
                f"{record_path(request.ca_dir)}: a record of another CA (id "
                f"{earlier.ca_id[:16]}…), not of {request.ca_dir}'s: tear that one down "
                "first, with its ca.pem back in the folder, or remove the record"
            )
        if earlier is not None and (earlier.account, earlier.region) != (account_id, region):
            raise UserError(
                f"{record_path(request.ca_dir)}: this CA was set up in account "
                f"{earlier.account}, region {earlier.region}: tear that down first "
                f"(loadgen aws teardown --ca {request.ca_dir}), or remove the record"
            )
        role_arn, role_name, role_exists = self._role(prepared, account_id)
        endpoint = self._endpoint()
        record = SetupRecord(
            ca_id=ca.fingerprint,
            account=account_id,
            region=region,
            endpoint=endpoint,
            role_arn=role_arn,
            endpoint_url=self.account.recorded_endpoint_url,
            profile=self.account.profile,
            created=earlier.created if earlier is not None else Created(),
        )
        found = Created()
        # From here the account changes: each creation is recorded before it is
        # made, so a setup that fails or is killed halfway leaves teardown all
        # it needs (a name recorded and never created is counted already gone).
        if role_name is not None:
            if not role_exists:
                self._recorded(request.ca_dir, record, "roles", role_name)
                try:
                    self._create_role(role_name)
                    record.created.add_role(role_name)
                except Exception as exc:
                    if error_code(exc) != "EntityAlreadyExists":
                        raise
                    # Created meanwhile by someone else: theirs.
                    self._recorded(request.ca_dir, record, "roles", role_name, created=False)
                save_record(request.ca_dir, record)
            self._attach_registration_policy(role_name)
        deprecated: list[str] = []
        for name in sorted(prepared.names.thing_types):
            described = self._ensure(
                "ThingType", name, self._intent(request.ca_dir, record, "thing_types", name)
            )
            if described is None:
                continue
            found.thing_types.append(name)
            if described.get("thingTypeMetadata", {}).get("deprecated"):
                if name in record.created.thing_types:
                    # Ours, left deprecated by a teardown cut short: AWS creates
                    # no thing of a deprecated type, so every JITP would fail.
                    self.api.call("DeprecateThingType", thingTypeName=name, undoDeprecate=True)
                else:
                    deprecated.append(name)
        for name in sorted(prepared.names.thing_groups):
            intent = self._intent(request.ca_dir, record, "thing_groups", name)
            if self._ensure("ThingGroup", name, intent) is not None:
                found.thing_groups.append(name)
        config = {"templateBody": prepared.template_body, "roleArn": role_arn}
        registered = self._register_ca(
            ca, config, new_role=role_name is not None and not role_exists
        )
        record.created.ca = record.created.ca or registered
        save_record(request.ca_dir, record)
        return SetupResult(record, registered, found, deprecated)

    def _endpoint(self) -> str:
        """Where the account's devices connect. Asked before anything is
        created: the emulator's control plane refuses it for a region its MQTT
        side does not serve (every device would be refused there)."""
        try:
            answer = self.api.call("DescribeEndpoint", endpointType="iot:Data-ATS")
        except Exception as exc:
            if error_code(exc) != "InvalidRequestException":
                raise
            message = getattr(exc, "response", {}).get("Error", {}).get("Message", exc)
            raise UserError(f"--region {self.account.region_name}: {message}") from None
        return str(answer["endpointAddress"])

    # -- the role ---------------------------------------------------------

    def _role(self, prepared: Prepared, account_id: str) -> tuple[str, str | None, bool]:
        """(role ARN, the name of the role to create or complete, whether it exists).
        A role given and not to be created must exist."""
        request = prepared.request
        arn = request.role_arn or prepared.config_role
        where = "--role-arn" if request.role_arn is not None else f"{request.config}: roleArn"
        owner = arn.split(":")[4] if arn is not None and arn.count(":") >= 5 else None
        if owner and owner != account_id:
            # IAM passes only a role of the caller's own account to AWS IoT; the
            # role's name alone was taken for this account's role of that name.
            raise UserError(
                f"{where}: a role of account {owner}, but these credentials are account "
                f"{account_id}'s: JITP's provisioning role must be in the CA's account"
            )
        if request.create_role:
            name = (
                arn.rsplit("/", 1)[-1]
                if arn is not None
                else f"loadgen-jitp-{prepared.ca.fingerprint[:12]}"
            )
            exists = self._get_role(name) is not None
            return self._role_arn(account_id, name), name, exists
        assert arn is not None  # prepare() refused a config without one
        name = arn.rsplit("/", 1)[-1]
        role = self._get_role(name)
        if role is None:
            raise UserError(
                f"{where}: no role {name!r} in account {account_id} (or give --create-role)"
            )
        return str(role["Arn"]), None, True

    def _role_arn(self, account_id: str, name: str) -> str:
        partition = "aws-cn" if self.account.region_name.startswith("cn-") else "aws"
        return f"arn:{partition}:iam::{account_id}:role/{name}"

    def _get_role(self, name: str) -> dict[str, Any] | None:
        try:
            role: dict[str, Any] = self.iam.get_role(RoleName=name)["Role"]
        except Exception as exc:
            if error_code(exc) == "NoSuchEntity":
                return None
            raise
        return role

    def _create_role(self, name: str) -> None:
        self.iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(_TRUST),
            Description="JITP provisioning for loadgen (loadgen aws setup)",
        )

    def _attach_registration_policy(self, name: str) -> None:
        partition = "aws-cn" if self.account.region_name.startswith("cn-") else "aws"
        # Attaching an attached policy again is a no-op.
        self.iam.attach_role_policy(
            RoleName=name, PolicyArn=f"arn:{partition}:iam::aws:policy/{REGISTRATION_POLICY}"
        )

    # -- what RegisterThing needs -----------------------------------------

    def _ensure(
        self, kind: str, name: str, intent: Callable[[bool], None]
    ) -> dict[str, Any] | None:
        """Create the thing type or group ``name`` unless it exists; None when
        created now, else what describing it said. ``intent(True)`` records the
        creation before it is made, ``intent(False)`` takes it back."""
        key = "thingTypeName" if kind == "ThingType" else "thingGroupName"
        try:
            return self.api.call(f"Describe{kind}", **{key: name})
        except Exception as exc:
            if error_code(exc) != _GONE:
                raise
        intent(True)
        try:
            self.api.call(f"Create{kind}", **{key: name})
        except Exception as exc:
            if error_code(exc) == "ResourceAlreadyExistsException":
                intent(False)
                return {}  # created meanwhile by someone else: theirs
            raise
        return None

    @staticmethod
    def _intent(ca_dir: Path, record: SetupRecord, names: str, name: str) -> Callable[[bool], None]:
        return functools.partial(Setup._recorded, ca_dir, record, names, name)

    @staticmethod
    def _recorded(
        ca_dir: Path, record: SetupRecord, names: str, name: str, created: bool = True
    ) -> None:
        """``name`` added to (or, not created after all, taken from) the record's
        list ``names`` of what setup created, and the record saved."""
        listed = set(getattr(record.created, names)) - {name}
        setattr(record.created, names, sorted(listed | ({name} if created else set())))
        save_record(ca_dir, record)

    # -- the CA -----------------------------------------------------------

    def _register_ca(self, ca: CA, config: dict[str, str], *, new_role: bool) -> bool:
        """Register the CA, or update it when registered; True when registered now."""
        # No listing: a CA registered under another id than its DER's hash would
        # be refused as already there by RegisterCACertificate below, and updated.
        if is_registered(self.api, ca.fingerprint, listing=False):
            self._update_ca(ca.fingerprint, config)
            return False
        code = str(self.api.call("GetRegistrationCode")["registrationCode"])
        with tempfile.TemporaryDirectory() as tmp:
            verification = verification_cert(ca, code, Path(tmp) / "verification.pem")
        from cryptography.hazmat.primitives import serialization

        params = {
            "caCertificate": ca.cert_pem.decode(),
            "verificationCertificate": verification.public_bytes(
                serialization.Encoding.PEM
            ).decode(),
            "setAsActive": True,
            "allowAutoRegistration": True,
            "registrationConfig": config,
        }
        for delay in (*(_NEW_ROLE_DELAYS if new_role else ()), None):
            try:
                self.api.call("RegisterCACertificate", **params)
                return True
            except Exception as exc:
                code_ = error_code(exc)
                if code_ == "ResourceAlreadyExistsException":
                    self._update_ca(ca.fingerprint, config)
                    return False
                if code_ != "InvalidRequestException" or delay is None:
                    raise
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _update_ca(self, ca_id: str, config: dict[str, str]) -> None:
        self.api.call(
            "UpdateCACertificate",
            certificateId=ca_id,
            newStatus="ACTIVE",
            newAutoRegistrationStatus="ENABLE",
            registrationConfig=config,
        )
