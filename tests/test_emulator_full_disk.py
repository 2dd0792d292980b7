"""The `--state` file on a disk that fills: a change the file cannot keep is not
made at all, so the registry and the file never disagree and a restart
provisions nothing twice. The disk is a real one: a small tmpfs each test
mounts, fills with a file of its own and frees."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from loadgen.certs.ca import CA, init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import Device, FleetStore
from loadgen.emulator.api.control import ControlPlane
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.registry import Registry
from loadgen.emulator.serve import EmbeddedEmulator, start_embedded
from loadgen.emulator.server import Emulator
from loadgen.emulator.state import RegistryStore
from tests.conftest import minted_certificates
from tests.test_control_plane import POLICY, _arn, _CheckedControlPlane, _register
from tests.test_emulator_processes import QUOTAS_OFF, connect_all

CANNOT_WRITE = "cannot write the state file"


@pytest.fixture(scope="module")
def certs(tmp_path_factory, device_ca) -> list[x509.Certificate]:
    """Six devices of the device CA (CN disk-0 ...)."""
    path = tmp_path_factory.mktemp("full-disk") / "fleet"
    return minted_certificates(path, device_ca, 6, "disk-{index}", seed=21)


def _plane(db: Path) -> ControlPlane:
    return _CheckedControlPlane(Registry(store=RegistryStore(db)))


def _contents(registry: Registry) -> dict[str, Any]:
    """What the registry holds, as the state file keeps it (no timestamps)."""
    return {
        "cas": {
            ca_id: (ca.active, ca.auto_registration, ca.config)
            for ca_id, ca in registry.cas.items()
        },
        "certificates": {
            cert_id: (r.status, sorted(r.things), sorted(r.policies))
            for cert_id, r in registry.certificates.items()
        },
        "things": {
            name: (t.type_name, t.attributes, sorted(t.groups), t.version)
            for name, t in registry.things.items()
        },
        "policies": {
            name: (
                registry.policy_info(name).default,
                {v: pv.document for v, pv in registry.policy_info(name).versions.items()},
            )
            for name in registry.policies
        },
        "thing_types": {
            name: registry.thing_type_info(name).deprecated for name in registry.thing_types
        },
        "thing_groups": sorted(registry.thing_groups),
    }


def test_devices_provisioned_while_the_disk_is_full_are_not_provisioned_at_all(
    disk, device_ca, certs, tmp_path
):
    db = disk.path / "state.db"
    plane = _plane(db)
    _register(plane, device_ca, tmp_path)
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    before, during = certs[:3], certs[3:]
    assert all("provisioned" in str(emulator.admit(c)) for c in before)
    disk.fill()
    assert [emulator.admit(c) for c in during] == [
        "provisioning failed: the emulator could not write its state file"
    ] * len(during)
    assert set(plane.registry.certificates) == {certificate_id(c) for c in before}
    assert emulator.stats.provision == Counter(Success=3, ServerError=3)
    remembered = _contents(plane.registry)
    plane.registry.close()
    disk.free()

    restarted = Registry(store=RegistryStore(db))
    assert _contents(restarted) == remembered
    again = Emulator(restarted, "unused.pem", "unused.key")
    assert [str(again.admit(c)).startswith("provisioned") for c in certs] == [False] * 3 + [
        True
    ] * 3
    assert again.stats.provision == Counter(Success=3)


def test_a_full_disk_is_one_line_on_stderr_and_another_when_it_is_written_again(
    disk, device_ca, certs, tmp_path, capfd
):
    plane = _plane(disk.path / "state.db")
    _register(plane, device_ca, tmp_path)
    emulator = Emulator(plane.registry, "unused.pem", "unused.key")
    disk.fill()
    for cert in certs[:4]:
        emulator.admit(cert)
    disk.free()
    assert "provisioned" in str(emulator.admit(certs[4]))
    err = capfd.readouterr().err
    assert err.count(CANNOT_WRITE) == 1, err
    assert "database or disk is full" in err
    assert "is written again (4 change(s) refused meanwhile)" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CA:
    return init_ca(tmp_path_factory.mktemp("full-disk-ca") / "ca", subject="CN=another CA")


@dataclass
class _Account:
    """An account on the disk: a CA, a device it provisioned (its thing and
    policy), a thing of no certificate, a policy, a thing type and a thing group."""

    plane: ControlPlane
    ca_id: str
    cert_arn: str
    thing: str
    other_ca: CA
    tmp_path: Path


def _account(db: Path, device_ca: CA, other_ca: CA, cert: x509.Certificate, tmp_path: Path):
    plane = _plane(db)
    ca_id = _register(plane, device_ca, tmp_path)
    assert "provisioned" in str(Emulator(plane.registry, "u.pem", "u.key").admit(cert))
    (thing,) = plane.registry.certificates[certificate_id(cert)].things
    plane.call("CreateThing", {"thingName": "spare"})
    plane.call("CreatePolicy", {"policyName": "p", "policyDocument": POLICY})
    plane.call("CreateThingType", {"thingTypeName": "lamp"})
    plane.call("CreateThingGroup", {"thingGroupName": "fleet"})
    cert_arn = _arn("cert", certificate_id(cert))
    return _Account(plane, ca_id, cert_arn, thing, other_ca, tmp_path)


_WRITES: dict[str, Callable[[_Account], object]] = {
    "RegisterCACertificate": lambda a: _register(a.plane, a.other_ca, a.tmp_path),
    "UpdateCACertificate": lambda a: a.plane.call(
        "UpdateCACertificate", {"certificateId": a.ca_id, "newStatus": "INACTIVE"}
    ),
    "UpdateCertificate": lambda a: a.plane.call(
        "UpdateCertificate", {"certificateId": a.cert_arn[-64:], "newStatus": "INACTIVE"}
    ),
    "CreateThing": lambda a: a.plane.call("CreateThing", {"thingName": "new"}),
    "DeleteThing": lambda a: a.plane.call("DeleteThing", {"thingName": "spare"}),
    "AttachThingPrincipal": lambda a: a.plane.call(
        "AttachThingPrincipal", {"thingName": "spare", "principal": a.cert_arn}
    ),
    "DetachThingPrincipal": lambda a: a.plane.call(
        "DetachThingPrincipal", {"thingName": a.thing, "principal": a.cert_arn}
    ),
    "CreatePolicy": lambda a: a.plane.call(
        "CreatePolicy", {"policyName": "new", "policyDocument": POLICY}
    ),
    "CreatePolicyVersion": lambda a: a.plane.call(
        "CreatePolicyVersion", {"policyName": "p", "policyDocument": POLICY, "setAsDefault": True}
    ),
    "DeletePolicy": lambda a: a.plane.call("DeletePolicy", {"policyName": "p"}),
    "AttachPolicy": lambda a: a.plane.call(
        "AttachPolicy", {"policyName": "p", "target": a.cert_arn}
    ),
    "DeprecateThingType": lambda a: a.plane.call("DeprecateThingType", {"thingTypeName": "lamp"}),
    "CreateThingGroup": lambda a: a.plane.call("CreateThingGroup", {"thingGroupName": "new"}),
    "DeleteThingGroup": lambda a: a.plane.call("DeleteThingGroup", {"thingGroupName": "fleet"}),
}


@pytest.mark.parametrize("write", sorted(_WRITES))
def test_an_api_write_the_disk_cannot_keep_answers_internal_failure_and_changes_nothing(
    write, disk, device_ca, other_ca, certs, tmp_path
):
    db = disk.path / "state.db"
    account = _account(db, device_ca, other_ca, certs[0], tmp_path)
    remembered = _contents(account.plane.registry)
    disk.fill()

    with pytest.raises(ApiError) as refused:
        _WRITES[write](account)
    assert (refused.value.code, refused.value.status) == ("InternalFailureException", 500)
    assert _contents(account.plane.registry) == remembered
    account.plane.registry.close()
    disk.free()
    assert _contents(Registry(store=RegistryStore(db))) == remembered


def test_an_api_write_goes_through_once_the_disk_has_room_again(
    disk, device_ca, other_ca, certs, tmp_path
):
    db = disk.path / "state.db"
    account = _account(db, device_ca, other_ca, certs[0], tmp_path)
    disk.fill()
    with pytest.raises(ApiError):
        account.plane.call("CreateThing", {"thingName": "new"})
    disk.free()
    account.plane.call("CreateThing", {"thingName": "new"})
    account.plane.registry.close()
    assert "new" in Registry(store=RegistryStore(db)).things


@dataclass
class _Part:
    """Some devices of a fleet store, as `connect_all` reads a store."""

    path: Path
    chosen: list[Device]

    def devices(self) -> Iterator[Device]:
        return iter(self.chosen)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_served_emulator_on_a_full_disk_provisions_nothing_its_file_does_not_keep(
    disk, device_ca, tmp_path, processes
):
    fleet_path = tmp_path / "fleet"
    profile = Profile.model_validate({"subject": {"common_name": "served-{index:02d}"}})
    mint(MintRequest(fleet_path, device_ca.directory, 20, profile, seed=22))
    devices = list(FleetStore(fleet_path).devices())
    first_half = _Part(fleet_path, devices[:10])
    second_half = _Part(fleet_path, devices[10:])
    db = disk.path / "state.db"

    def start() -> EmbeddedEmulator:
        return start_embedded(
            device_ca.directory,
            None,
            tmp_path / "emulator",
            quotas=QUOTAS_OFF,
            state_db=db,
            processes=processes,
        )

    emulator = start()
    try:
        assert connect_all(emulator, first_half) == Counter(closed=10)  # JITP
        disk.fill()
        assert connect_all(emulator, second_half) == Counter(closed=10)  # JITP fails
        # Not provisioned in memory either: they are refused again, not let in.
        assert connect_all(emulator, second_half) == Counter(closed=10)
        assert connect_all(emulator, first_half) == Counter(connack=10)
        stats = emulator.stats(timeout=30)
    finally:
        emulator.stop()
    assert stats is not None
    assert stats["provision"] == {"Success": 10, "ServerError": 20}
    assert emulator.log is not None
    err = emulator.log.read_text()
    assert err.count(CANNOT_WRITE) == 1, err
    assert "Traceback" not in err
    disk.free()

    again = start()
    try:
        assert connect_all(again, first_half) == Counter(connack=10)  # kept: no JITP
        assert connect_all(again, second_half) == Counter(closed=10)  # JITP now
        stats = again.stats(timeout=30)
    finally:
        again.stop()
    assert stats is not None
    assert stats["provision"] == {"Success": 10}
