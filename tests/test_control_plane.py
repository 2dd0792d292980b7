"""The emulator's AWS IoT control plane (ControlPlane.call), on the registry the
MQTT side provisions into: AWS's rules, errors, paging, and the SQLite state."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.certs.ca import init_ca, verification_cert
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import FleetStore
from loadgen.emulator.api.control import ControlPlane
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.registry import Registry, certificate_id
from loadgen.emulator.server import Emulator
from loadgen.emulator.state import RegistryStore

ROLE = REGISTRATION_CONFIG["roleArn"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, device_ca) -> list[x509.Certificate]:
    """Twelve devices of the device CA (CN dev-000 ...)."""
    path = tmp_path_factory.mktemp("control") / "fleet"
    profile = Profile.model_validate({"subject": {"common_name": "dev-{index:03d}"}})
    mint(MintRequest(path, device_ca.directory, 12, profile, seed=7))
    store = FleetStore(path)
    return [x509.load_pem_x509_certificate((path / d.cert).read_bytes()) for d in store.devices()]


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


@pytest.fixture
def plane() -> ControlPlane:
    return ControlPlane(Registry(), mqtt_address="127.0.0.1:18883")


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
    plane = ControlPlane(Registry(store=RegistryStore(db)))
    ca_id = _register(plane, device_ca, tmp_path)
    plane.call(
        "UpdateCACertificate", {"certificateId": ca_id, "newAutoRegistrationStatus": "DISABLE"}
    )
    restarted = ControlPlane(Registry(store=RegistryStore(db)))
    description = restarted.call("DescribeCACertificate", {"certificateId": ca_id})
    assert description["certificateDescription"]["autoRegistrationStatus"] == "DISABLE"
    assert description["registrationConfig"]["templateBody"] == REGISTRATION_CONFIG["templateBody"]
    assert restarted.registry.cas[ca_id].template is not None


def test_certificate_changes_survive_a_restart_with_state(device_ca, fleet, tmp_path):
    db = tmp_path / "state.sqlite"
    plane = ControlPlane(Registry(store=RegistryStore(db)))
    _register(plane, device_ca, tmp_path)
    kept, deleted = _provision(plane, fleet[:2])
    plane.call("UpdateCertificate", {"certificateId": kept, "newStatus": "INACTIVE"})
    _force_delete(plane, deleted)
    restarted = ControlPlane(Registry(store=RegistryStore(db)))
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
