"""The emulator's AWS IoT control plane (ControlPlane.call), on the registry the
MQTT side provisions into: AWS's rules, errors, paging, and the SQLite state."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.aws.teardown import Summary
from loadgen.certs.ca import CA, init_ca, verification_cert
from loadgen.emulator.api.control import ControlPlane
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.registry import Registry
from loadgen.emulator.server import Emulator
from loadgen.emulator.state import RegistryStore
from tests.conftest import minted_certificates

ROLE = REGISTRATION_CONFIG["roleArn"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, device_ca) -> list[x509.Certificate]:
    """Twelve devices of the device CA (CN dev-000 ...)."""
    path = tmp_path_factory.mktemp("control") / "fleet"
    return minted_certificates(path, device_ca, 12, "dev-{index:03d}", seed=7)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return init_ca(tmp_path_factory.mktemp("other-ca") / "ca", subject="CN=another CA")


def _error(plane: ControlPlane, operation: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        plane.call(operation, params)
    return caught.value


def _error_of(action) -> ApiError:
    with pytest.raises(ApiError) as caught:
        action()
    return caught.value


def _register(plane: ControlPlane, ca, tmp_path, **extra) -> str:
    code = plane.call("GetRegistrationCode", {})["registrationCode"]
    proof = verification_cert(ca, code, tmp_path / "verification.pem")
    params = {
        "caCertificate": ca.cert_pem.decode(),
        "verificationCertificate": proof.public_bytes(Encoding.PEM).decode(),
        "setAsActive": True,
        "allowAutoRegistration": True,
        "registrationConfig": dict(REGISTRATION_CONFIG),
        **extra,
    }
    return str(plane.call("RegisterCACertificate", params)["certificateId"])


def _provision(plane: ControlPlane, certs: list[x509.Certificate]) -> list[str]:
    """JITP for each certificate, as the MQTT side runs it at a first connect."""
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    for cert in certs:
        assert "provisioned" in emulator.admit(cert)
    return [certificate_id(c) for c in certs]


class _CheckedControlPlane(ControlPlane):
    """Every answer checked against the operation's output shape in botocore's
    model: only its members, of its types."""

    def call(self, operation, params):
        result = super().call(operation, params)
        shape = _MODEL.operation_model(operation).output_shape
        _check_shape(result, shape, operation)
        return result


def _iot_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("iot")


_MODEL = _iot_model()
_TYPES = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "long": int,
    "timestamp": float,
    "map": dict,
    "list": list,
    "structure": dict,
}


def _check_shape(value, shape, where):
    if shape is None:
        assert value == {}, where
        return
    assert isinstance(value, _TYPES[shape.type_name]), f"{where}: {value!r} is no {shape.type_name}"
    if shape.type_name == "structure":
        for name, member in value.items():
            assert name in shape.members, f"{where}: {name} is not a member of {shape.name}"
            _check_shape(member, shape.members[name], f"{where}.{name}")
    elif shape.type_name == "list":
        for item in value:
            _check_shape(item, shape.member, f"{where}[]")
    elif shape.type_name == "string" and shape.enum:
        assert value in shape.enum, f"{where}: {value!r} not one of {shape.enum}"


@pytest.fixture
def plane() -> ControlPlane:
    return _CheckedControlPlane(Registry(), mqtt_address="127.0.0.1:18883")


# -- CAs ---------------------------------------------------------------------


def test_the_registration_code_is_the_accounts_and_stays_the_same(plane):
    code = plane.call("GetRegistrationCode", {})["registrationCode"]
    assert len(code) == 64 and int(code, 16) >= 0
    assert plane.call("GetRegistrationCode", {})["registrationCode"] == code
    other = ControlPlane(Registry(), region="eu-west-1")
    assert other.call("GetRegistrationCode", {})["registrationCode"] != code


def test_a_ca_registered_through_the_api_provisions_its_devices_by_jitp(
    plane, device_ca, fleet, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path)
    assert ca_id == device_ca.fingerprint
    described = plane.call("DescribeCACertificate", {"certificateId": ca_id})
    description = described["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert description["autoRegistrationStatus"] == "ENABLE"
    assert description["certificateArn"] == f"arn:aws:iot:us-east-1:123456789012:cacert/{ca_id}"
    assert description["certificatePem"] == device_ca.cert_pem.decode()
    assert described["registrationConfig"]["roleArn"] == ROLE
    (cert_id,) = _provision(plane, fleet[:1])
    assert plane.registry.certificates[cert_id].ca_id == ca_id


def test_registering_a_registered_ca_again_is_refused(plane, device_ca, tmp_path):
    _register(plane, device_ca, tmp_path)
    error = _error_of(lambda: _register(plane, device_ca, tmp_path))
    assert (error.code, error.status) == ("ResourceAlreadyExistsException", 409)


def test_a_verification_certificate_without_the_registration_code_is_refused(
    plane, device_ca, tmp_path
):
    proof = verification_cert(device_ca, "not-the-code", tmp_path / "v.pem")
    error = _error(
        plane,
        "RegisterCACertificate",
        caCertificate=device_ca.cert_pem.decode(),
        verificationCertificate=proof.public_bytes(Encoding.PEM).decode(),
    )
    assert error.code == "RegistrationCodeValidationException"
    assert plane.registry.cas == {}


def test_a_verification_certificate_another_ca_signed_is_refused(
    plane, device_ca, other_ca, tmp_path
):
    code = plane.call("GetRegistrationCode", {})["registrationCode"]
    proof = verification_cert(other_ca, code, tmp_path / "v.pem")
    error = _error(
        plane,
        "RegisterCACertificate",
        caCertificate=device_ca.cert_pem.decode(),
        verificationCertificate=proof.public_bytes(Encoding.PEM).decode(),
    )
    assert error.code == "CertificateValidationException"


def test_a_registration_config_aws_would_refuse_is_refused_with_its_problem(
    plane, device_ca, tmp_path
):
    config = {"templateBody": json.dumps({"Resources": {}}), "roleArn": "not-a-role"}
    error = _error_of(lambda: _register(plane, device_ca, tmp_path, registrationConfig=config))
    assert error.code == "InvalidRequestException" and "roleArn" in error.message
    assert plane.registry.cas == {}


def test_a_ca_registered_without_set_as_active_is_inactive_and_trusts_nobody(
    plane, device_ca, fleet, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path, setAsActive=False)
    described = plane.call("DescribeCACertificate", {"certificateId": ca_id})
    assert described["certificateDescription"]["status"] == "INACTIVE"
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    assert emulator.admit(fleet[0]) == "unknown CA"


def test_update_ca_certificate_turns_status_and_auto_registration(
    plane, device_ca, fleet, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path)
    plane.call(
        "UpdateCACertificate", {"certificateId": ca_id, "newAutoRegistrationStatus": "DISABLE"}
    )
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    assert "auto-registration off" in emulator.admit(fleet[0])
    plane.call("UpdateCACertificate", {"certificateId": ca_id, "newStatus": "INACTIVE"})
    description = plane.call("DescribeCACertificate", {"certificateId": ca_id})[
        "certificateDescription"
    ]
    assert (description["status"], description["autoRegistrationStatus"]) == (
        "INACTIVE",
        "DISABLE",
    )


def test_update_ca_certificate_replaces_or_removes_the_registration_config(
    plane, device_ca, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path)
    role = "arn:aws:iam::123456789012:role/Other"
    config = {**REGISTRATION_CONFIG, "roleArn": role}
    plane.call("UpdateCACertificate", {"certificateId": ca_id, "registrationConfig": config})
    described = plane.call("DescribeCACertificate", {"certificateId": ca_id})
    assert described["registrationConfig"]["roleArn"] == role
    plane.call("UpdateCACertificate", {"certificateId": ca_id, "removeAutoRegistration": True})
    described = plane.call("DescribeCACertificate", {"certificateId": ca_id})
    assert described["registrationConfig"] == {}
    assert described["certificateDescription"]["autoRegistrationStatus"] == "DISABLE"


def test_an_active_ca_cannot_be_deleted_and_an_inactive_one_can(plane, device_ca, tmp_path):
    ca_id = _register(plane, device_ca, tmp_path)
    error = _error(plane, "DeleteCACertificate", certificateId=ca_id)
    assert (error.code, error.status) == ("CertificateStateException", 406)
    plane.call("UpdateCACertificate", {"certificateId": ca_id, "newStatus": "INACTIVE"})
    plane.call("DeleteCACertificate", {"certificateId": ca_id})
    error = _error(plane, "DescribeCACertificate", certificateId=ca_id)
    assert (error.code, error.status) == ("ResourceNotFoundException", 404)


def test_list_ca_certificates_lists_every_registered_ca(plane, device_ca, other_ca, tmp_path):
    ids = {_register(plane, device_ca, tmp_path), _register(plane, other_ca, tmp_path)}
    first = plane.call("ListCACertificates", {"pageSize": 1})
    second = plane.call("ListCACertificates", {"pageSize": 1, "marker": first["nextMarker"]})
    assert "nextMarker" not in second
    listed = first["certificates"] + second["certificates"]
    assert {c["certificateId"] for c in listed} == ids
    assert {c["status"] for c in listed} == {"ACTIVE"}


def test_a_malformed_certificate_id_is_an_invalid_request(plane):
    error = _error(plane, "DescribeCACertificate", certificateId="abc")
    assert error.code == "InvalidRequestException"


# -- certificates -------------------------------------------------------------


def test_list_certificates_by_ca_pages_through_every_certificate_once(
    plane, device_ca, fleet, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path)
    ids = _provision(plane, fleet[:7])
    seen: list[str] = []
    params: dict = {"caCertificateId": ca_id, "pageSize": 3}
    while True:
        page = plane.call("ListCertificatesByCA", params)
        assert len(page["certificates"]) <= 3
        seen += [c["certificateId"] for c in page["certificates"]]
        if "nextMarker" not in page:
            break
        params["marker"] = page["nextMarker"]
    assert sorted(seen) == sorted(ids)
    assert plane.call("ListCertificatesByCA", {"caCertificateId": "0" * 64}) == {"certificates": []}


def test_certificates_deleted_between_pages_skip_nothing_that_remains(
    plane, device_ca, fleet, tmp_path
):
    ca_id = _register(plane, device_ca, tmp_path)
    ids = _provision(plane, fleet[:6])
    first = plane.call("ListCertificatesByCA", {"caCertificateId": ca_id, "pageSize": 2})
    for cert in first["certificates"]:  # as teardown does, deleting as it goes
        _force_delete(plane, cert["certificateId"])
    rest = plane.call(
        "ListCertificatesByCA",
        {"caCertificateId": ca_id, "pageSize": 250, "marker": first["nextMarker"]},
    )
    listed = [c["certificateId"] for c in first["certificates"] + rest["certificates"]]
    assert sorted(listed) == sorted(ids)


def _force_delete(plane: ControlPlane, cert_id: str) -> None:
    record = plane.registry.certificates[cert_id]
    arn = f"arn:aws:iot:us-east-1:123456789012:cert/{cert_id}"
    for thing in sorted(record.things):
        plane.registry.detach_thing(record, thing)
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "INACTIVE"})
    plane.call("DeleteCertificate", {"certificateId": cert_id, "forceDelete": True})
    assert arn not in str(plane.call("ListCertificates", {"pageSize": 250}))


def test_a_page_size_outside_aws_limits_is_an_invalid_request(plane):
    for size in (0, 251):
        assert _error(plane, "ListCertificates", pageSize=size).code == "InvalidRequestException"
    assert _error(plane, "ListCertificates", marker="bm9wZQ==").code == "InvalidRequestException"


def test_describe_certificate_gives_its_pem_ca_and_status(plane, device_ca, fleet, tmp_path):
    ca_id = _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    description = plane.call("DescribeCertificate", {"certificateId": cert_id})[
        "certificateDescription"
    ]
    assert description["caCertificateId"] == ca_id
    assert description["status"] == "ACTIVE"
    assert x509.load_pem_x509_certificate(description["certificatePem"].encode()) == fleet[0]
    assert description["validity"]["notAfter"] > description["validity"]["notBefore"]


def test_a_certificate_set_inactive_is_refused_at_its_next_connect(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "INACTIVE"})
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    assert emulator.admit(fleet[0]) == "certificate INACTIVE"
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "ACTIVE"})
    assert not isinstance(emulator.admit(fleet[0]), str)


def test_a_revoked_certificate_cannot_be_activated_again(plane, device_ca, fleet, tmp_path):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "REVOKED"})
    error = _error(plane, "UpdateCertificate", certificateId=cert_id, newStatus="ACTIVE")
    assert error.code == "CertificateStateException"


def test_a_certificate_cannot_be_set_pending_activation(plane, device_ca, fleet, tmp_path):
    """AWS keeps PENDING_ACTIVATION for itself: UpdateCertificate throws."""
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    error = _error(
        plane, "UpdateCertificate", certificateId=cert_id, newStatus="PENDING_ACTIVATION"
    )
    assert error.code == "InvalidRequestException"
    described = plane.call("DescribeCertificate", {"certificateId": cert_id})
    assert described["certificateDescription"]["status"] == "ACTIVE"


def test_an_active_certificate_cannot_be_deleted(plane, device_ca, fleet, tmp_path):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    error = _error(plane, "DeleteCertificate", certificateId=cert_id)
    assert (error.code, error.status) == ("CertificateStateException", 406)


def test_a_certificate_attached_to_a_thing_cannot_be_deleted_even_forced(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "INACTIVE"})
    error = _error(plane, "DeleteCertificate", certificateId=cert_id, forceDelete=True)
    assert (error.code, error.status) == ("DeleteConflictException", 409)


def test_a_certificate_with_policies_is_deleted_only_when_forced(plane, device_ca, fleet, tmp_path):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    record = plane.registry.certificates[cert_id]
    (policy,) = record.policies
    plane.registry.detach_thing(record, next(iter(record.things)))
    plane.call("UpdateCertificate", {"certificateId": cert_id, "newStatus": "INACTIVE"})
    assert _error(plane, "DeleteCertificate", certificateId=cert_id).code == (
        "DeleteConflictException"
    )
    plane.call("DeleteCertificate", {"certificateId": cert_id, "forceDelete": True})
    assert cert_id not in plane.registry.certificates
    assert plane.registry.policy_targets[policy] == set()


def test_a_deleted_certificate_is_gone(plane):
    error = _error(plane, "DescribeCertificate", certificateId="a" * 64)
    assert (error.code, error.status) == ("ResourceNotFoundException", 404)


# -- the state file -------------------------------------------------------------


def test_a_ca_registered_through_the_api_survives_a_restart_with_state(device_ca, fleet, tmp_path):
    db = tmp_path / "state.sqlite"
    plane = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    ca_id = _register(plane, device_ca, tmp_path)
    plane.call(
        "UpdateCACertificate", {"certificateId": ca_id, "newAutoRegistrationStatus": "DISABLE"}
    )
    restarted = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    description = restarted.call("DescribeCACertificate", {"certificateId": ca_id})
    assert description["certificateDescription"]["autoRegistrationStatus"] == "DISABLE"
    assert description["registrationConfig"]["templateBody"] == REGISTRATION_CONFIG["templateBody"]
    assert restarted.registry.cas[ca_id].template is not None


def test_certificate_changes_survive_a_restart_with_state(device_ca, fleet, tmp_path):
    db = tmp_path / "state.sqlite"
    plane = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    _register(plane, device_ca, tmp_path)
    kept, deleted = _provision(plane, fleet[:2])
    plane.call("UpdateCertificate", {"certificateId": kept, "newStatus": "INACTIVE"})
    _force_delete(plane, deleted)
    restarted = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    description = restarted.call("DescribeCertificate", {"certificateId": kept})
    assert description["certificateDescription"]["status"] == "INACTIVE"
    assert "certificatePem" in description["certificateDescription"]
    assert deleted not in restarted.registry.certificates


# -- the rest --------------------------------------------------------------------


def test_describe_endpoint_gives_the_emulators_mqtt_address(plane):
    assert plane.call("DescribeEndpoint", {"endpointType": "iot:Data-ATS"}) == {
        "endpointAddress": "127.0.0.1:18883"
    }
    assert _error(plane, "DescribeEndpoint", endpointType="iot:Jobs").code == (
        "InvalidRequestException"
    )


def test_an_unknown_operation_is_refused(plane):
    assert _error(plane, "DeleteEverything").status == 404


# -- things ------------------------------------------------------------------------


def _arn(kind: str, name: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:{kind}/{name}"


def test_a_thing_provisioned_by_jitp_is_described_and_listed_with_its_principal(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    (name,) = plane.registry.certificates[cert_id].things
    described = plane.call("DescribeThing", {"thingName": name})
    assert described["thingArn"] == _arn("thing", name) and described["version"] == 1
    assert plane.call("ListThingPrincipals", {"thingName": name})["principals"] == [
        _arn("cert", cert_id)
    ]
    assert plane.call("ListPrincipalThings", {"principal": _arn("cert", cert_id)}) == {
        "things": [name]
    }


def test_a_thing_with_a_principal_cannot_be_deleted_until_it_is_detached(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    (name,) = plane.registry.certificates[cert_id].things
    error = _error(plane, "DeleteThing", thingName=name)
    assert error.code == "InvalidRequestException"
    plane.call("DetachThingPrincipal", {"thingName": name, "principal": _arn("cert", cert_id)})
    assert plane.call("ListThingPrincipals", {"thingName": name})["principals"] == []
    plane.call("DeleteThing", {"thingName": name})
    assert _error(plane, "DescribeThing", thingName=name).code == "ResourceNotFoundException"


def test_deleting_a_thing_that_does_not_exist_succeeds_as_on_aws(plane):
    assert plane.call("DeleteThing", {"thingName": "never-was"}) == {}


def test_delete_thing_with_another_expected_version_is_a_version_conflict(plane):
    plane.call("CreateThing", {"thingName": "t1"})
    error = _error(plane, "DeleteThing", thingName="t1", expectedVersion=7)
    assert (error.code, error.status) == ("VersionConflictException", 409)


def test_detaching_what_is_not_attached_succeeds_and_an_unknown_thing_is_not_found(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    plane.call("CreateThing", {"thingName": "loose"})
    principal = _arn("cert", cert_id)
    assert plane.call("DetachThingPrincipal", {"thingName": "loose", "principal": principal}) == {}
    error = _error(plane, "DetachThingPrincipal", thingName="nope", principal=principal)
    assert error.code == "ResourceNotFoundException"
    error = _error(plane, "ListPrincipalThings", principal=_arn("cert", "b" * 64))
    assert error.code == "ResourceNotFoundException"


def test_create_thing_again_with_the_same_properties_is_the_same_thing(plane):
    first = plane.call(
        "CreateThing", {"thingName": "t1", "attributePayload": {"attributes": {"a": "1"}}}
    )
    again = plane.call(
        "CreateThing", {"thingName": "t1", "attributePayload": {"attributes": {"a": "1"}}}
    )
    assert first == again
    error = _error(
        plane, "CreateThing", thingName="t1", attributePayload={"attributes": {"a": "2"}}
    )
    assert error.code == "ResourceAlreadyExistsException"
    assert _error(plane, "CreateThing", thingName="bad name").code == "InvalidRequestException"
    spaced = {"attributes": {"a": "has space"}}
    error = _error(plane, "CreateThing", thingName="t2", attributePayload=spaced)
    assert error.code == "InvalidRequestException"


def test_a_thing_of_a_type_that_does_not_exist_is_not_created(plane):
    error = _error(plane, "CreateThing", thingName="t1", thingTypeName="lamp")
    assert error.code == "ResourceNotFoundException"
    assert "t1" not in plane.registry.things


def test_list_things_filters_by_type_and_attribute_and_pages(plane):
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    for i in range(5):
        plane.call(
            "CreateThing",
            {
                "thingName": f"t{i}",
                "thingTypeName": "lamp" if i % 2 else None,
                "attributePayload": {"attributes": {"factory": f"f{i % 3}"}},
            },
        )
    assert [
        t["thingName"] for t in plane.call("ListThings", {"thingTypeName": "lamp"})["things"]
    ] == ["t1", "t3"]
    by_attribute = plane.call("ListThings", {"attributeName": "factory", "attributeValue": "f0"})
    assert [t["thingName"] for t in by_attribute["things"]] == ["t0", "t3"]
    first = plane.call("ListThings", {"maxResults": 4})
    rest = plane.call("ListThings", {"maxResults": 4, "nextToken": first["nextToken"]})
    assert [t["thingName"] for t in first["things"] + rest["things"]] == [f"t{i}" for i in range(5)]
    assert "nextToken" not in rest


def test_an_exclusive_principal_is_attached_to_one_thing_only(plane, device_ca, fleet, tmp_path):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    plane.call("CreateThing", {"thingName": "other"})
    error = _error(
        plane,
        "AttachThingPrincipal",
        thingName="other",
        principal=_arn("cert", cert_id),
        thingPrincipalType="EXCLUSIVE_THING",
    )
    assert error.code == "InvalidRequestException"
    plane.call("AttachThingPrincipal", {"thingName": "other", "principal": _arn("cert", cert_id)})
    assert plane.call("ListThingPrincipals", {"thingName": "other"})["principals"] == [
        _arn("cert", cert_id)
    ]


# -- thing types and groups -------------------------------------------------------


def test_a_thing_type_is_deleted_only_deprecated_and_unused(plane):
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    plane.call("CreateThing", {"thingName": "t1", "thingTypeName": "lamp"})
    assert _error(plane, "DeleteThingType", thingTypeName="lamp").code == "InvalidRequestException"
    plane.call("DeprecateThingType", {"thingTypeName": "lamp"})
    metadata = plane.call("DescribeThingType", {"thingTypeName": "lamp"})["thingTypeMetadata"]
    assert metadata["deprecated"] is True and "deprecationDate" in metadata
    assert _error(plane, "CreateThing", thingName="t2", thingTypeName="lamp").code == (
        "InvalidRequestException"
    )
    assert _error(plane, "DeleteThingType", thingTypeName="lamp").code == "InvalidRequestException"
    plane.call("DeleteThing", {"thingName": "t1"})
    plane.call("DeleteThingType", {"thingTypeName": "lamp"})
    assert plane.call("ListThingTypes", {}) == {"thingTypes": []}


def test_create_thing_type_again_with_other_properties_is_refused(plane):
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    error = _error(
        plane,
        "CreateThingType",
        thingTypeName="lamp",
        thingTypeProperties={"thingTypeDescription": "other"},
    )
    assert error.code == "ResourceAlreadyExistsException"


def test_thing_groups_nest_list_by_parent_and_delete_leaves_first(plane):
    plane.call("CreateThingGroup", {"thingGroupName": "fleet"})
    plane.call("CreateThingGroup", {"thingGroupName": "us", "parentGroupName": "fleet"})
    plane.call("CreateThingGroup", {"thingGroupName": "us-east", "parentGroupName": "us"})

    def names(**params):
        return [g["groupName"] for g in plane.call("ListThingGroups", params)["thingGroups"]]

    assert names() == ["fleet", "us", "us-east"]
    assert names(parentGroup="fleet") == ["us", "us-east"]
    assert names(parentGroup="fleet", recursive=False) == ["us"]
    assert names(namePrefixFilter="us-") == ["us-east"]
    metadata = plane.call("DescribeThingGroup", {"thingGroupName": "us-east"})["thingGroupMetadata"]
    assert [g["groupName"] for g in metadata["rootToParentThingGroups"]] == ["fleet", "us"]
    assert _error(plane, "DeleteThingGroup", thingGroupName="us").code == "InvalidRequestException"
    plane.call("DeleteThingGroup", {"thingGroupName": "us-east"})
    plane.call("DeleteThingGroup", {"thingGroupName": "us-east"})  # gone already: done
    assert names() == ["fleet", "us"]


def test_the_things_in_a_thing_group_are_listed(plane, device_ca, fleet, tmp_path):
    template = {
        "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
                    "ThingGroups": ["lamps"],
                },
            }
        },
    }
    config = {"templateBody": json.dumps(template), "roleArn": ROLE}
    _register(plane, device_ca, tmp_path, registrationConfig=config)
    _provision(plane, fleet[:3])
    listed = plane.call("ListThingsInThingGroup", {"thingGroupName": "lamps"})
    assert sorted(listed["things"]) == ["dev-000", "dev-001", "dev-002"]
    plane.call("CreateThingGroup", {"thingGroupName": "empty"})
    assert plane.call("ListThingsInThingGroup", {"thingGroupName": "empty"})["things"] == []
    missing = _error(plane, "ListThingsInThingGroup", thingGroupName="none")
    assert missing.code == "ResourceNotFoundException"


def test_a_ca_registered_through_the_api_needs_the_thing_types_its_template_names(
    device_ca, fleet, tmp_path
):
    """With --strict-resources, as on AWS: RegisterThing fails for a thing type
    nobody created, and succeeds once setup created it."""
    template = json.loads(REGISTRATION_CONFIG["templateBody"])
    template["Resources"]["thing"]["Properties"]["ThingTypeName"] = "lamp"
    config = {**REGISTRATION_CONFIG, "templateBody": json.dumps(template)}
    plane = _CheckedControlPlane(Registry(strict_resources=True))
    _register(plane, device_ca, tmp_path, registrationConfig=config)
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    assert "lamp does not exist" in emulator.admit(fleet[0])
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    assert "provisioned" in emulator.admit(fleet[0])


# -- policies ---------------------------------------------------------------------

POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
)


def test_a_policy_attached_to_a_certificate_cannot_be_deleted_until_detached(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    target = _arn("cert", cert_id)
    plane.call("CreatePolicy", {"policyName": "shared", "policyDocument": POLICY})
    plane.call("AttachPolicy", {"policyName": "shared", "target": target})
    attached = plane.call("ListAttachedPolicies", {"target": target})["policies"]
    assert "shared" in {p["policyName"] for p in attached} and len(attached) == 2
    assert plane.call("ListTargetsForPolicy", {"policyName": "shared"}) == {"targets": [target]}
    error = _error(plane, "DeletePolicy", policyName="shared")
    assert (error.code, error.status) == ("DeleteConflictException", 409)
    plane.call("DetachPolicy", {"policyName": "shared", "target": target})
    plane.call("DetachPolicy", {"policyName": "shared", "target": target})  # detached already
    plane.call("DeletePolicy", {"policyName": "shared"})
    assert _error(plane, "GetPolicy", policyName="shared").code == "ResourceNotFoundException"


def test_a_policy_with_versions_besides_the_default_cannot_be_deleted(plane):
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    created = plane.call("CreatePolicyVersion", {"policyName": "p", "policyDocument": POLICY})
    assert created["policyVersionId"] == "2" and created["isDefaultVersion"] is False
    assert _error(plane, "DeletePolicy", policyName="p").code == "DeleteConflictException"
    assert _error(plane, "DeletePolicyVersion", policyName="p", policyVersionId="1").code == (
        "DeleteConflictException"
    )
    versions = plane.call("ListPolicyVersions", {"policyName": "p"})["policyVersions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [
        ("2", False),
        ("1", True),
    ]
    plane.call("DeletePolicyVersion", {"policyName": "p", "policyVersionId": "2"})
    plane.call("DeletePolicy", {"policyName": "p"})
    assert plane.call("ListPolicies", {}) == {"policies": []}


def test_the_default_version_is_the_document_devices_get(plane):
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    other = POLICY.replace("iot:*", "iot:Connect")
    plane.call(
        "CreatePolicyVersion", {"policyName": "p", "policyDocument": other, "setAsDefault": True}
    )
    assert plane.registry.policies["p"] == other
    got = plane.call("GetPolicy", {"policyName": "p"})
    assert (got["defaultVersionId"], got["policyDocument"]) == ("2", other)
    plane.call("SetDefaultPolicyVersion", {"policyName": "p", "policyVersionId": "1"})
    assert plane.registry.policies["p"] == POLICY


def test_a_policy_has_at_most_five_versions(plane):
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    for _ in range(4):
        plane.call("CreatePolicyVersion", {"policyName": "p", "policyDocument": POLICY})
    error = _error(plane, "CreatePolicyVersion", policyName="p", policyDocument=POLICY)
    assert (error.code, error.status) == ("VersionsLimitExceededException", 409)


def test_a_malformed_policy_document_is_refused(plane):
    for document in (
        "{",
        json.dumps({"Statement": [1]}),
        json.dumps({"Statement": [{"Effect": "Maybe"}]}),
    ):
        error = _error(plane, "CreatePolicy", policyName="p", policyDocument=document)
        assert error.code == "MalformedPolicyException"
    assert plane.registry.policies == {}


def test_a_policy_document_over_2048_characters_without_whitespace_is_refused(plane):
    resources = [f"arn:aws:iot:*:*:topic/t{i:04d}" for i in range(80)]
    large = json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": resources}]})
    error = _error(plane, "CreatePolicy", policyName="p", policyDocument=large)
    assert error.code == "MalformedPolicyException" and "over AWS's 2,048" in str(error)
    padded = json.dumps(json.loads(POLICY), indent=200)  # whitespace does not count
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": padded})


def test_a_thing_has_at_most_three_attributes_without_a_type_and_fifty_with_one(plane):
    four = {"attributes": {f"a{i}": "v" for i in range(4)}}
    error = _error(plane, "CreateThing", thingName="t1", attributePayload=four)
    assert error.code == "InvalidRequestException"
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    plane.call(
        "CreateThing", {"thingName": "t1", "thingTypeName": "lamp", "attributePayload": four}
    )
    many = {"attributes": {f"a{i}": "v" for i in range(51)}}
    error = _error(
        plane, "CreateThing", thingName="t2", thingTypeName="lamp", attributePayload=many
    )
    assert error.code == "InvalidRequestException"


def test_list_policies_pages_with_next_marker(plane):
    for i in range(5):
        plane.call("CreatePolicy", {"policyName": f"p{i}", "policyDocument": POLICY})
    first = plane.call("ListPolicies", {"pageSize": 2})
    second = plane.call("ListPolicies", {"pageSize": 2, "marker": first["nextMarker"]})
    third = plane.call("ListPolicies", {"pageSize": 2, "marker": second["nextMarker"]})
    listed = [p["policyName"] for page in (first, second, third) for p in page["policies"]]
    assert listed == [f"p{i}" for i in range(5)] and "nextMarker" not in third


def test_attach_policy_to_a_certificate_that_does_not_exist_is_not_found(plane):
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    error = _error(plane, "AttachPolicy", policyName="p", target=_arn("cert", "c" * 64))
    assert error.code == "ResourceNotFoundException"
    error = _error(plane, "AttachPolicy", policyName="p", target="not-an-arn")
    assert error.code == "InvalidRequestException"


def test_things_groups_and_policy_versions_survive_a_restart_with_state(tmp_path):
    db = tmp_path / "state.sqlite"
    plane = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    plane.call(
        "CreateThingType",
        {"thingTypeName": "lamp", "thingTypeProperties": {"thingTypeDescription": "d"}},
    )
    plane.call("DeprecateThingType", {"thingTypeName": "lamp"})
    plane.call("CreateThingGroup", {"thingGroupName": "fleet"})
    plane.call("CreateThingGroup", {"thingGroupName": "us", "parentGroupName": "fleet"})
    plane.call("CreateThing", {"thingName": "t1", "attributePayload": {"attributes": {"a": "1"}}})
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    plane.call(
        "CreatePolicyVersion", {"policyName": "p", "policyDocument": POLICY, "setAsDefault": True}
    )
    plane.call("CreateThing", {"thingName": "gone"})
    plane.call("DeleteThing", {"thingName": "gone"})
    restarted = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    described = restarted.call("DescribeThingType", {"thingTypeName": "lamp"})
    assert described["thingTypeMetadata"]["deprecated"] is True
    assert described["thingTypeProperties"]["thingTypeDescription"] == "d"
    group = restarted.call("DescribeThingGroup", {"thingGroupName": "us"})
    assert group["thingGroupMetadata"]["parentGroupName"] == "fleet"
    assert restarted.call("DescribeThing", {"thingName": "t1"})["attributes"] == {"a": "1"}
    assert restarted.call("GetPolicy", {"policyName": "p"})["defaultVersionId"] == "2"
    assert restarted.call("DeleteThing", {"thingName": "gone"}) == {}
    assert "gone" not in restarted.registry.things


def test_attachments_made_and_removed_through_the_api_survive_a_restart(device_ca, fleet, tmp_path):
    db = tmp_path / "state.sqlite"
    plane = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    target = _arn("cert", cert_id)
    (thing,) = plane.registry.certificates[cert_id].things
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    plane.call("AttachPolicy", {"policyName": "p", "target": target})
    plane.call("DetachThingPrincipal", {"thingName": thing, "principal": target})
    restarted = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    assert restarted.call("ListThingPrincipals", {"thingName": thing})["principals"] == []
    assert restarted.call("ListTargetsForPolicy", {"policyName": "p"})["targets"] == [target]


# -- teardown on these rules ---------------------------------------------------------


class _Client:
    """boto3's iot client methods by their names, straight onto ControlPlane.call,
    failing as botocore fails (the HTTP between them is the API server's, tested
    with boto3 itself in test_emulator_api.py)."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        deletes_before_kill: int | None = None,
        denied: str | None = None,
    ) -> None:
        from botocore import xform_name

        self._plane = plane
        self._names = {xform_name(op): op for op in _MODEL.operation_names}
        # After so many DeleteCertificate calls, the process is killed.
        self._deletes_left = deletes_before_kill
        # A certificate whose deletion the account's IAM policy denies.
        self._denied = denied

    def __getattr__(self, method: str):
        from botocore.exceptions import ClientError

        operation = self._names[method]

        def call(**params):
            if self._deletes_left is not None and operation == "DeleteCertificate":
                if self._deletes_left == 0:
                    raise _Killed
                self._deletes_left -= 1
            if operation == "DeleteCertificate" and params["certificateId"] == self._denied:
                error = {"Error": {"Code": "AccessDeniedException", "Message": "denied"}}
                raise ClientError(error, operation)
            try:
                return self._plane.call(operation, params)
            except ApiError as exc:
                error = {"Error": {"Code": exc.code, "Message": exc.message}}
                raise ClientError(error, operation) from None

        return call


class _Killed(BaseException):
    """The teardown's process ends here (as by SIGKILL: nothing after runs)."""


@dataclass
class _Leftovers:
    """What JITP left for CA A's devices, beside CA B's devices, a loose thing
    and a policy shared by devices of both."""

    ca: CA
    devices: list[x509.Certificate]
    a_ids: list[str]
    b_ids: list[str]
    b_things: set[str]
    policies: set[str]


def _devices(ca: CA, path, count: int, seed: int) -> list[x509.Certificate]:
    return minted_certificates(path, ca, count, None, seed=seed)


@pytest.fixture
def leftovers(plane, other_ca, tmp_path) -> _Leftovers:
    ca = init_ca(tmp_path / "ca-a")
    devices = _devices(ca, tmp_path / "fleet-a", 4, seed=2)
    _register(plane, ca, tmp_path)
    _register(plane, other_ca, tmp_path)
    a_ids = _provision(plane, devices)
    b_ids = _provision(plane, _devices(other_ca, tmp_path / "fleet-b", 2, seed=3))
    plane.call("CreateThing", {"thingName": "loose"})
    plane.call("CreatePolicy", {"policyName": "shared", "policyDocument": POLICY})
    for cert_id in (a_ids[0], b_ids[0]):
        plane.call("AttachPolicy", {"policyName": "shared", "target": _arn("cert", cert_id)})
    b_things = {t for i in b_ids for t in plane.registry.certificates[i].things}
    return _Leftovers(ca, devices, a_ids, b_ids, b_things, set(plane.registry.policies))


def _teardown(client: _Client, ca: CA, *, listed_first: bool = True) -> Summary:
    from loadgen.aws.ratelimit import AWS_RATES, RateLimits
    from loadgen.aws.teardown import Teardown

    limits = RateLimits(rates={k: 1e6 for k in AWS_RATES})
    teardown = Teardown(client, ca.directory, limits, sleep=lambda _: None)
    return teardown.run(teardown.find(attachments=listed_first))


def _only_b_is_left(plane: ControlPlane, left: _Leftovers, other_ca: CA) -> None:
    assert set(plane.registry.certificates) == set(left.b_ids)
    assert set(plane.registry.things) == left.b_things | {"loose"}
    # JITP's policy and the shared one are still attached to B's devices.
    assert set(plane.registry.policies) == left.policies
    assert set(plane.registry.cas) == {other_ca.fingerprint}


@pytest.mark.parametrize("listed_first", [True, False], ids=["listed-first", "listed-as-it-goes"])
def test_teardown_removes_what_jitp_made_for_a_ca_registered_through_the_api_and_nothing_else(
    plane, leftovers, other_ca, listed_first
):
    summary = _teardown(_Client(plane), leftovers.ca, listed_first=listed_first)
    assert summary.complete and summary.certificates.deleted == len(leftovers.a_ids)
    _only_b_is_left(plane, leftovers, other_ca)
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    assert emulator.admit(leftovers.devices[0]) == "unknown CA"


def test_a_teardown_killed_halfway_and_run_again_finishes_the_job(plane, leftovers, other_ca):
    with pytest.raises(_Killed):
        _teardown(_Client(plane, deletes_before_kill=2), leftovers.ca, listed_first=False)
    assert len(plane.registry.certificates) == len(leftovers.b_ids) + len(leftovers.a_ids) - 2
    again = _teardown(_Client(plane), leftovers.ca)
    assert again.complete
    _only_b_is_left(plane, leftovers, other_ca)


def test_a_certificate_the_account_refuses_to_delete_keeps_the_ca_for_the_next_run(
    plane, leftovers, other_ca
):
    summary = _teardown(_Client(plane, denied=leftovers.a_ids[0]), leftovers.ca)
    assert not summary.complete
    assert summary.certificates.refused == {"AccessDeniedException": 1}
    # The CA stays registered: a later run still finds the refused certificate.
    assert leftovers.ca.fingerprint in plane.registry.cas
    assert leftovers.a_ids[0] in plane.registry.certificates
    again = _teardown(_Client(plane), leftovers.ca)
    assert again.complete
    _only_b_is_left(plane, leftovers, other_ca)


def test_a_state_file_of_an_earlier_version_opens_and_its_certificates_describe(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE certificates (id TEXT PRIMARY KEY, ca_id TEXT, status TEXT);
        CREATE TABLE things (name TEXT PRIMARY KEY, type_name TEXT, attributes TEXT, groups_ TEXT);
        INSERT INTO certificates VALUES ('{cert}', '{ca}', 'ACTIVE');
        INSERT INTO things VALUES ('t1', NULL, '{{}}', '[]');
        """.format(cert="d" * 64, ca="e" * 64)
    )
    old.commit()
    old.close()
    plane = _CheckedControlPlane(Registry(store=RegistryStore(db)))
    description = plane.call("DescribeCertificate", {"certificateId": "d" * 64})
    assert description["certificateDescription"]["status"] == "ACTIVE"
    assert "certificatePem" not in description["certificateDescription"]
    assert plane.call("DescribeThing", {"thingName": "t1"})["version"] == 1


def test_every_change_of_a_ca_moves_the_registrys_ca_version(plane, device_ca, tmp_path):
    """What the TLS side watches to rebuild what it trusts, and only then."""
    versions = [plane.registry.ca_version]
    ca_id = _register(plane, device_ca, tmp_path)
    versions.append(plane.registry.ca_version)
    plane.call("DescribeCACertificate", {"certificateId": ca_id})
    versions.append(plane.registry.ca_version)
    plane.call("UpdateCACertificate", {"certificateId": ca_id, "newStatus": "INACTIVE"})
    versions.append(plane.registry.ca_version)
    plane.call("DeleteCACertificate", {"certificateId": ca_id})
    versions.append(plane.registry.ca_version)
    assert versions[0] < versions[1] == versions[2] < versions[3] < versions[4]


def test_a_member_given_as_none_is_a_member_not_given(plane):
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    listed = plane.call("ListPolicies", {"pageSize": None, "marker": None, "ascendingOrder": None})
    assert [p["policyName"] for p in listed["policies"]] == ["p"]


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("CreateThing", {"thingName": "t", "attributePayload": {"attributes": {"a": 1}}}),
        ("CreateThing", {"thingName": 5}),
        (
            "CreateThingType",
            {"thingTypeName": "t", "thingTypeProperties": {"searchableAttributes": True}},
        ),
        (
            "CreateThingGroup",
            {"thingGroupName": "g", "thingGroupProperties": {"attributePayload": 1.5}},
        ),
        ("RegisterCACertificate", {"caCertificate": "x", "registrationConfig": "x"}),
        ("ListThings", {"maxResults": "10"}),
        ("DeleteCertificate", {"certificateId": "a" * 64, "forceDelete": "yes"}),
    ],
)
def test_a_member_of_the_wrong_type_is_an_invalid_request_not_a_failure(plane, operation, params):
    error = _error(plane, operation, **params)
    assert error.status < 500 and error.code != "InternalFailureException"


def test_a_new_default_policy_version_is_what_the_next_connection_is_granted(
    plane, device_ca, fleet, tmp_path
):
    _register(plane, device_ca, tmp_path)
    (cert_id,) = _provision(plane, fleet[:1])
    record = plane.registry.certificates[cert_id]
    (name,) = record.policies
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    before = emulator.policies_of(record)
    deny = json.dumps({"Statement": [{"Effect": "Deny", "Action": "iot:*", "Resource": "*"}]})
    plane.call(
        "CreatePolicyVersion", {"policyName": name, "policyDocument": deny, "setAsDefault": True}
    )
    (after,) = emulator.policies_of(record)
    assert before != [after] and [s.allow for s in after] == [False]


def test_a_ca_in_sni_only_mode_is_refused_as_the_emulator_has_one_account(plane, device_ca):
    error = _error(
        plane,
        "RegisterCACertificate",
        caCertificate=device_ca.cert_pem.decode(),
        certificateMode="SNI_ONLY",
    )
    assert error.code == "InvalidRequestException" and plane.registry.cas == {}
