"""The emulator's registry and JITP flow, and `loadgen run` against the embedded
endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from loadgen.certs.store import FleetStore
from loadgen.emulator.errors import ClientError
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.registry import CertStatus, Registry, Thing, ThingTypeInfo
from loadgen.emulator.serve import load_registration_config
from tests.conftest import LIGHTBULB_PROFILE, run_loadgen

DATA = Path(__file__).parent / "data"


def _cert(fleet: FleetStore, fault=None) -> x509.Certificate:
    device = next(d for d in fleet.devices() if d.fault == fault)
    return x509.load_pem_x509_certificate((fleet.path / device.cert).read_bytes())


@pytest.fixture(scope="module")
def lightbulbs(tmp_path_factory, device_ca):
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import load_profile

    path = tmp_path_factory.mktemp("emu") / "fleet"
    mint(MintRequest(path, device_ca.directory, 400, load_profile(LIGHTBULB_PROFILE), seed=3))
    return FleetStore(path)


def _registry(device_ca, **kw) -> Registry:
    registry = Registry(**kw)
    registry.register_ca(device_ca.cert, load_registration_config(DATA / "reference-template.json"))
    return registry


def test_jitp_registers_the_certificate_creates_the_thing_and_attaches_the_policy(
    lightbulbs, device_ca
):
    registry = _registry(device_ca)
    cert = _cert(lightbulbs)
    record = registry.provision(cert, registry.issuer_of(cert))
    assert record.status is CertStatus.ACTIVE and record.id == certificate_id(cert)
    (thing_name,) = record.things
    thing = registry.things[thing_name]
    assert thing.type_name == "lightBulb-versionA"
    assert "v1-lightbulbs" in thing.groups and thing.attributes["version"] == "v1"
    (policy,) = record.policies
    assert "iot:Publish" in registry.policies[policy]


def test_failed_provisioning_leaves_nothing_behind(lightbulbs, device_ca):
    registry = _registry(device_ca)
    cert = _cert(lightbulbs, fault="missing_country")
    with pytest.raises(ClientError, match="Country"):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.certificates == {} and registry.things == {} and registry.policies == {}


def test_strict_resources_fail_on_a_thing_group_that_does_not_exist(lightbulbs, device_ca):
    registry = _registry(device_ca, strict_resources=True)
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match="does not exist"):
        registry.provision(cert, registry.issuer_of(cert))  # the country's group
    assert registry.certificates == {}


def test_jitp_fails_a_thing_of_a_deprecated_type_as_create_thing_does(lightbulbs, device_ca):
    registry = _registry(device_ca)
    registry.add_thing_type("lightBulb-versionA", ThingTypeInfo(0.0, deprecated=True))
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match="thing type lightBulb-versionA is deprecated"):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.certificates == {} and registry.things == {}


def _registry_of(template: dict, device_ca, tmp_path) -> Registry:
    """A registry with the device CA registered with ``template``."""
    config = tmp_path / "config.json"
    role = "arn:aws:iam::123456789012:role/r"
    config.write_text(json.dumps({"templateBody": json.dumps(template), "roleArn": role}))
    registry = Registry()
    registry.register_ca(device_ca.cert, load_registration_config(config))
    return registry


@pytest.mark.parametrize(
    ("properties", "refused"),
    [
        (
            {"ThingName": {"Fn::Join": [" ", ["Acme", {"Ref": "AWS::IoT::Certificate::Id"}]]}},
            "ThingName 'Acme ",
        ),
        ({"ThingName": "t1", "ThingGroups": ["group one"]}, "ThingGroupName 'group one'"),
        ({"ThingName": "t1", "AttributePayload": {"org unit": "x"}}, "attribute name 'org unit'"),
        ({"ThingName": "t1", "AttributePayload": {"v": "has space"}}, "value 'has space'"),
    ],
)
def test_a_template_rendering_a_name_aws_refuses_fails_provisioning(
    lightbulbs, device_ca, tmp_path, properties, refused
):
    template = {
        "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": properties}},
    }
    registry = _registry_of(template, device_ca, tmp_path)
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match=f"{re.escape(refused)}.*not .* AWS IoT accepts"):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.certificates == {} and registry.things == {}


def test_a_policy_named_as_aws_refuses_fails_provisioning(lightbulbs, device_ca, tmp_path):
    policy = {"PolicyName": "bad policy name!"}
    template = {"Resources": {"policy": {"Type": "AWS::IoT::Policy", "Properties": policy}}}
    registry = _registry_of(template, device_ca, tmp_path)
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match="PolicyName 'bad policy name!'"):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.policies == {}


def _refused_at_provisioning(template: dict, lightbulbs, device_ca, tmp_path, match: str):
    """Provisioning ``template`` fails with ``match`` and leaves nothing behind."""
    registry = _registry_of(template, device_ca, tmp_path)
    before = dict(registry.things)
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match=match):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.certificates == {} and registry.policies == {}
    assert registry.things == before


def test_a_certificate_status_in_any_case_provisions_as_aws_fleet_example_writes_active(
    lightbulbs, device_ca, tmp_path
):
    certificate = {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "Inactive"}}
    registry = _registry_of({"Resources": {"certificate": certificate}}, device_ca, tmp_path)
    cert = _cert(lightbulbs)
    assert registry.provision(cert, registry.issuer_of(cert)).status is CertStatus.INACTIVE


def test_a_computed_certificate_status_other_than_active_or_inactive_fails_provisioning(
    lightbulbs, device_ca, tmp_path
):
    status = {"Fn::Join": ["", ["REV", "OKED"]]}
    certificate = {"Type": "AWS::IoT::Certificate", "Properties": {"Status": status}}
    template = {"Resources": {"certificate": certificate}}
    _refused_at_provisioning(template, lightbulbs, device_ca, tmp_path, "'REVOKED' is not ACTIVE")


def test_a_computed_policy_document_createpolicy_would_refuse_fails_provisioning(
    lightbulbs, device_ca, tmp_path
):
    document = {"Fn::Join": ["", ['{"Version": ', '"2012-10-17"}']]}
    policy = {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": document}}
    template = {"Resources": {"policy": policy}}
    _refused_at_provisioning(template, lightbulbs, device_ca, tmp_path, "has no Statement")


def test_a_policy_given_both_a_name_and_a_document_once_evaluated_fails_provisioning(
    lightbulbs, device_ca, tmp_path
):
    name = {"Fn::If": ["always", "mine", {"Ref": "AWS::NoValue"}]}
    document = json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    template = {
        "Conditions": {"always": {"Fn::Equals": ["a", "a"]}},
        "Resources": {
            "policy": {
                "Type": "AWS::IoT::Policy",
                "Properties": {"PolicyName": name, "PolicyDocument": document},
            }
        },
    }
    _refused_at_provisioning(template, lightbulbs, device_ca, tmp_path, "not both")


def test_merging_attributes_past_aws_limit_into_an_existing_thing_fails_provisioning(
    lightbulbs, device_ca, tmp_path
):
    thing = {
        "Type": "AWS::IoT::Thing",
        "Properties": {"ThingName": "t1", "AttributePayload": {"a": "1"}},
        "OverrideSettings": {"AttributePayload": "MERGE"},
    }
    registry = _registry_of({"Resources": {"thing": thing}}, device_ca, tmp_path)
    registry.save_thing(Thing("t1", None, {"b": "2", "c": "3", "d": "4"}))
    cert = _cert(lightbulbs)
    with pytest.raises(ClientError, match="thing t1: 4 attributes"):
        registry.provision(cert, registry.issuer_of(cert))
    assert registry.things["t1"].attributes == {"b": "2", "c": "3", "d": "4"}
    assert registry.certificates == {}


def test_a_certificate_from_another_ca_has_no_issuer(lightbulbs, device_ca):
    registry = _registry(device_ca)
    assert registry.issuer_of(_cert(lightbulbs, fault="unknown_ca")) is None


def _embedded_run(tmp_path, lightbulbs, device_ca, registration_config=None):
    scenario = {
        "name": "embedded-test",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}"},
        "fleet": {"ca": str(device_ca.directory), "store": str(lightbulbs.path), "count": 400},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {"initial": "20ms", "max": "100ms", "max_attempts": 4},
        "load": {"executor": "constant-arrival-rate", "rate": "400/s", "max_in_flight": 200},
        "after_connect": [{"publish": {"topic": "dt/{client_id}/x", "qos": 1}}],
    }
    # Quotas off: these runs are about JITP and policies (quotas have their own test).
    scenario["emulator"] = {"quotas": {"provision": "off", "connect-per-client": "off"}}
    if registration_config is not None:
        scenario["emulator"]["registration_config"] = str(registration_config)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", path, "--workers", "2", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    faults = [d.fault for d in lightbulbs.devices()]
    return json.loads((tmp_path / "r.json").read_text()), faults


def test_a_run_against_the_embedded_endpoint_lives_through_jitp(tmp_path, lightbulbs, device_ca):
    report, faults = _embedded_run(tmp_path, lightbulbs, device_ca)
    bad_tls = sum(f in ("unknown_ca", "expired", "not_yet_valid") for f in faults)
    healthy = 400 - bad_tls  # the built-in template does not read Country
    assert report["outcomes"]["connected"] == healthy
    assert report["outcomes"]["tls_rejected"] == bad_tls
    assert report["attempts"]["per_device"]["2"] == healthy  # the trigger, then success
    assert report["attempts"]["provisioning_triggered"] == 400


def test_devices_provisioned_with_the_reference_template_cannot_connect(
    tmp_path, lightbulbs, device_ca
):
    # Its policy grants iot:Publish only: provisioning works, iot:Connect is denied.
    report, faults = _embedded_run(
        tmp_path, lightbulbs, device_ca, DATA / "reference-template.json"
    )
    bad_tls = sum(f in ("unknown_ca", "expired", "not_yet_valid") for f in faults)
    no_country = faults.count("missing_country")  # the reference template reads Country
    assert report["outcomes"]["not_authorized"] == 400 - bad_tls - no_country
    assert report["outcomes"]["closed"] == no_country
    assert report["outcomes"]["connected"] == 0
    assert any("0x87" in reason for reason in report["reasons"]["not_authorized"])


def test_emulator_serve_says_when_it_is_ready_and_stops_on_sigterm(tmp_path, device_ca):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadgen",
            "emulator",
            "serve",
            "--port",
            "0",
            "--ca",
            str(device_ca.directory / "ca.pem"),
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("loadgen emulator: ready on 127.0.0.1:")
        assert f"server CA: {tmp_path / 'server-ca' / 'ca.pem'}" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_a_bad_registration_config_is_a_one_line_error(tmp_path, device_ca):
    from tests.conftest import assert_user_error

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"templateBody": json.dumps({"Resources": {"x": {"Type": "AWS::S3::Bucket"}}})})
    )
    result = run_loadgen(
        "emulator",
        "serve",
        "--port",
        "0",
        "--ca",
        device_ca.directory / "ca.pem",
        "--registration-config",
        config,
        "--state-dir",
        tmp_path,
    )
    assert_user_error(result, "unsupported type")


def test_a_provisioning_quota_throttles_jitp_and_the_retries_get_through(
    tmp_path, lightbulbs, device_ca
):
    from tests.brokers import free_port

    metrics_port = free_port()
    scenario = {
        "name": "quota-test",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}"},
        "fleet": {"ca": str(device_ca.directory), "store": str(lightbulbs.path), "count": 100},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {"initial": "200ms", "max": "1s", "max_attempts": 10},
        "load": {"executor": "burst", "max_in_flight": 100},
        "emulator": {"quotas": {"provision": "50/s"}, "metrics_port": metrics_port},
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    faults = [d.fault for d in lightbulbs.devices()][:100]
    bad_tls = sum(f in ("unknown_ca", "expired", "not_yet_valid") for f in faults)
    assert report["outcomes"]["connected"] == 100 - bad_tls
    assert report["attempts"]["total"] > 2 * (100 - bad_tls)  # throttled ones came back


def test_the_emulator_serves_its_metrics(tmp_path, device_ca):
    import time
    import urllib.request

    from loadgen.emulator.serve import start_embedded
    from tests.brokers import free_port

    port = free_port()
    emulator = start_embedded(device_ca.directory, None, tmp_path, metrics_port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        emulator.stop()
    text = body.decode()
    assert 'loadgen_emulator_provision_thing_total{result="Success"} 0.0' in text
    assert 'loadgen_emulator_registry_size{kind="ca"} 1.0' in text
    assert 'loadgen_emulator_throttles_total{quota="provision"} 0.0' in text


def test_the_quickstart_shows_the_whole_jitp_flow(tmp_path):
    import shutil

    from tests.conftest import ROOT

    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios", scenarios, ignore=shutil.ignore_patterns(".loadgen"))
    result = run_loadgen(
        "run",
        scenarios / "quickstart.yaml",
        "--count",
        "120",
        "--rate",
        "200/s",
        "--report",
        tmp_path / "r.json",
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    manifest = [
        json.loads(line)
        for line in (tmp_path / ".loadgen" / "fleets" / "quickstart" / "manifest.jsonl").open()
    ][:120]
    bad_tls = sum(d["fault"] in ("unknown_ca", "expired", "not_yet_valid") for d in manifest)
    no_country = sum(d["fault"] == "missing_country" for d in manifest)
    jitp = report["jitp"]
    assert jitp["first_connect_rejected"] == 120
    assert report["outcomes"]["connected"] == 120 - bad_tls - no_country
    assert jitp["provisioning"]["Success"] == 120 - bad_tls - no_country
    if no_country:
        assert any("Country" in reason for reason in jitp["provisioning_failures"])
    assert "JITP: 120 first connects rejected" in result.out


def test_template_render_makes_the_registration_config_aws_takes(tmp_path):
    from tests.conftest import ROOT

    result = run_loadgen(
        "template",
        "render",
        ROOT / "scenarios" / "templates" / "lightbulb.yaml",
        "--role-arn",
        "arn:aws:iam::123456789012:role/JITPRole",
    )
    assert result.code == 0, result.err
    config = json.loads(result.out)
    assert config["roleArn"] == "arn:aws:iam::123456789012:role/JITPRole"
    body = json.loads(config["templateBody"])  # an escaped JSON string, as AWS expects
    assert set(body["Resources"]) == {"thing", "certificate", "policy"}
    assert "iot:Connect" in body["Resources"]["policy"]["Properties"]["PolicyDocument"]


def _emulator(device_ca, **ca_flags):
    from loadgen.emulator.defaults import REGISTRATION_CONFIG
    from loadgen.emulator.server import Emulator

    registry = Registry()
    registry.register_ca(device_ca.cert, REGISTRATION_CONFIG, **ca_flags)
    return Emulator(registry, "unused.pem", "unused.key")


def test_an_active_ca_with_auto_registration_provisions_then_accepts(lightbulbs, device_ca):
    emulator = _emulator(device_ca)
    cert = _cert(lightbulbs)
    assert "provisioned" in emulator.admit(cert)
    assert emulator.admit(cert).status is CertStatus.ACTIVE
    assert emulator.stats.provision["Success"] == 1


def test_a_ca_without_auto_registration_closes_unknown_devices(lightbulbs, device_ca):
    emulator = _emulator(device_ca, auto_registration=False)
    assert "auto-registration off" in emulator.admit(_cert(lightbulbs))
    assert emulator.registry.certificates == {}


def test_an_inactive_ca_is_not_trusted_and_its_devices_are_refused(lightbulbs, device_ca):
    emulator = _emulator(device_ca, active=False)
    assert emulator.admit(_cert(lightbulbs)) == "unknown CA"


@pytest.mark.parametrize("status", [CertStatus.INACTIVE, CertStatus.REVOKED])
def test_an_inactive_or_revoked_certificate_is_refused(lightbulbs, device_ca, status):
    emulator = _emulator(device_ca)
    cert = _cert(lightbulbs)
    emulator.admit(cert)
    emulator.registry.certificates[certificate_id(cert)].status = status
    assert emulator.admit(cert) == f"certificate {status.value}"


def test_devices_whose_thing_names_aws_refuses_alike_fail_under_one_reason(
    lightbulbs, device_ca, tmp_path
):
    from cryptography.hazmat.primitives.serialization import Encoding

    from loadgen.emulator.server import Emulator

    name = {"Fn::Join": [" ", ["bulb", {"Ref": "AWS::IoT::Certificate::Id"}]]}
    template = {
        "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": name}}},
    }
    emulator = Emulator(_registry_of(template, device_ca, tmp_path), "unused.pem", "unused.key")
    assert emulator.local is not None
    devices = [d for d in lightbulbs.devices() if d.fault is None][:5]
    for device in devices:
        der = x509.load_pem_x509_certificate((lightbulbs.path / device.cert).read_bytes())
        assert "ThingName 'bulb " in emulator.local.admission(der.public_bytes(Encoding.DER))
    assert emulator.stats.provision_reasons == {
        "resource thing: ThingName is not a name AWS IoT accepts ([a-zA-Z0-9:_-]{1,128})": 5
    }


def test_the_emulator_keeps_as_many_failure_reasons_as_a_run_keeps():
    from loadgen.emulator.server import EmulatorStats
    from loadgen.metrics.stats import OTHER_REASONS, REASONS_KEPT

    stats = EmulatorStats()
    for i in range(REASONS_KEPT + 5):
        stats.failed(f"reason {i}")
    assert len(stats.provision_reasons) == REASONS_KEPT
    assert sum(stats.provision_reasons.values()) == REASONS_KEPT + 5
    assert stats.provision_reasons[OTHER_REASONS] == 6
