"""`loadgen emulator serve --api-port`: the AWS IoT control plane a real
emulator process serves, driven by boto3 and by the aws CLI, and what it
changes on the MQTT side at the next TLS handshake."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadgen import mqtt
from loadgen.certs.ca import CA, init_ca, verification_cert
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import Device, FleetStore
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.serve import start_embedded
from tests.api_server import client, raw_http
from tests.aws_cli import aws_cli, aws_iot
from tests.brokers import free_port
from tests.conftest import Result, assert_user_error, run_loadgen


@dataclass
class Served:
    process: subprocess.Popen[str]
    api_url: str
    mqtt_port: int
    server_ca: Path

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(state_dir: Path, *args: str) -> Served:
    """`loadgen emulator serve` on free ports, once it says it is ready."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "emulator", "serve"),
            *("--port", "0", "--api-port", "0", "--state-dir", str(state_dir), *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    api_url = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # (The ready line follows the API's at once: it may be in the buffer already.)
        if api_url is None:
            select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("loadgen emulator: control plane on "):
            api_url = line.split()[-1]
        elif line.startswith("loadgen emulator: ready on "):
            address, server_ca = line.split()[4], line.split("(server CA: ")[1].rstrip(")\n")
            assert api_url is not None, "the API's line comes before the ready line"
            return Served(process, api_url, int(address.rsplit(":", 1)[1]), Path(server_ca))
    process.kill()
    process.wait()
    raise AssertionError("the emulator did not say it was ready")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    emulator = serve(tmp_path / "emulator", "--api-rate", "all=off")
    yield emulator
    emulator.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[CA, FleetStore]:
    ca = init_ca(tmp_path / "ca")
    path = tmp_path / "fleet"
    profile = Profile.model_validate({"subject": {"common_name": "dev-{index:03d}"}})
    mint(MintRequest(path, ca.directory, 2, profile, seed=1))
    return ca, FleetStore(path)


def register(iot: object, ca: CA, tmp_path: Path) -> str:
    """The CA registered as `loadgen aws setup` does it: ACTIVE, with
    auto-registration and a template; its id."""
    code = iot.get_registration_code()["registrationCode"]  # type: ignore[attr-defined]
    verification = tmp_path / "verification.pem"
    verification_cert(ca, code, verification)
    answer = iot.register_ca_certificate(  # type: ignore[attr-defined]
        caCertificate=(ca.directory / "ca.pem").read_text(),
        verificationCertificate=verification.read_text(),
        setAsActive=True,
        allowAutoRegistration=True,
        registrationConfig=REGISTRATION_CONFIG,
    )
    return str(answer["certificateId"])


def connect(emulator: Served, fleet: FleetStore, device: Device, *, sni: bool = True) -> str:
    """What a device meets: "tls refused", "closed" (JITP, or refused after
    the handshake) or "connack"."""
    context = ssl.create_default_context(cafile=str(emulator.server_ca))
    context.check_hostname = sni
    # TLS 1.2: the server's verdict on the client's certificate is part of the
    # handshake (in 1.3 it comes after, and may be a bare close).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(fleet.path / device.cert, fleet.path / device.key)
    hello = mqtt.encode(mqtt.Connect(device.client_id, mqtt.MQTT_3_1_1), mqtt.MQTT_3_1_1)
    with socket.create_connection(("127.0.0.1", emulator.mqtt_port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost" if sni else None)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return "tls refused"
        with tls:
            try:
                tls.sendall(hello)
                first = tls.recv(4)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                first = b""
    if not first:
        return "closed"
    assert first[0] == 0x20, first
    return "connack"


def test_the_emulator_starts_with_no_ca_and_says_where_devices_connect(served):
    iot = client("iot", served.api_url)
    assert iot.list_ca_certificates()["certificates"] == []
    address = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert address == f"127.0.0.1:{served.mqtt_port}"


def test_a_ca_registered_through_the_api_is_trusted_at_once_and_its_devices_provision(
    served, fleet, tmp_path
):
    ca, store = fleet
    device = next(store.devices())
    assert connect(served, store, device) == "tls refused"  # no CA yet
    iot = client("iot", served.api_url)
    ca_id = register(iot, ca, tmp_path)
    assert connect(served, store, device) == "closed"  # JITP closes the first connection
    assert connect(served, store, device) == "connack"
    certificates = iot.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    assert [c["status"] for c in certificates] == ["ACTIVE"]


def test_a_handshake_without_sni_trusts_the_registered_cas_too(served, fleet, tmp_path):
    ca, store = fleet
    register(client("iot", served.api_url), ca, tmp_path)
    device = next(store.devices())
    assert connect(served, store, device, sni=False) == "closed"
    assert connect(served, store, device, sni=False) == "connack"


def test_a_certificate_set_inactive_is_refused_and_a_ca_set_inactive_fails_tls(
    served, fleet, tmp_path
):
    ca, store = fleet
    iot = client("iot", served.api_url)
    ca_id = register(iot, ca, tmp_path)
    first, second = list(store.devices())
    connect(served, store, first)
    assert connect(served, store, first) == "connack"
    iot.update_certificate(certificateId=first.certificate_id, newStatus="INACTIVE")
    assert connect(served, store, first) == "closed"
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    assert connect(served, store, second) == "tls refused"
    iot.update_ca_certificate(certificateId=ca_id, newStatus="ACTIVE")
    assert connect(served, store, second) == "closed"  # trusted again: JITP


def test_after_the_ca_is_deleted_its_devices_fail_tls(served, fleet, tmp_path):
    ca, store = fleet
    iot = client("iot", served.api_url)
    ca_id = register(iot, ca, tmp_path)
    device = next(store.devices())
    connect(served, store, device)
    for certificate in iot.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]:
        arn, cert_id = certificate["certificateArn"], certificate["certificateId"]
        for thing in iot.list_principal_things(principal=arn)["things"]:
            iot.detach_thing_principal(thingName=thing, principal=arn)
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        iot.delete_certificate(certificateId=cert_id, forceDelete=True)  # its policies too
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
    iot.delete_ca_certificate(certificateId=ca_id)
    assert connect(served, store, device) == "tls refused"


def test_a_ca_registered_through_the_api_survives_a_restart_with_state(fleet, tmp_path):
    ca, store = fleet
    state = ["--state", str(tmp_path / "registry.db"), "--api-rate", "all=off"]
    first = serve(tmp_path / "emulator", *state)
    try:
        register(client("iot", first.api_url), ca, tmp_path)
    finally:
        first.stop()
    again = serve(tmp_path / "emulator", *state)
    try:
        assert len(client("iot", again.api_url).list_ca_certificates()["certificates"]) == 1
        assert connect(again, store, next(store.devices())) == "closed"  # trusted: JITP
    finally:
        again.stop()


def test_the_api_throttles_at_aws_default_rates(tmp_path):
    emulator = serve(tmp_path / "emulator")  # no --api-rate: AWS's rates
    try:
        port = int(emulator.api_url.rsplit(":", 1)[1])
        one = b"GET /endpoint?endpointType=iot%3AData-ATS HTTP/1.1\r\nHost: x\r\n\r\n"
        last = one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        # Pipelined: 30 calls within a few milliseconds, past DescribeEndpoint's
        # 10 a second (a burst of 10), however loaded the machine is.
        answers = raw_http(port, one * 29 + last)
    finally:
        emulator.stop()
    assert answers.count(b"HTTP/1.1 200 ") >= 1
    assert answers.count(b"x-amzn-ErrorType: ThrottlingException") >= 1
    assert answers.count(b"HTTP/1.1 ") == 30


def test_the_aws_cli_registers_lists_and_deletes_a_ca(served, fleet, tmp_path):
    ca, _ = fleet

    def aws(*args: str) -> dict:
        return aws_iot(served.api_url, tmp_path, *args)

    code = aws("get-registration-code")["registrationCode"]
    verification = tmp_path / "verification.pem"
    verification_cert(ca, code, verification)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(REGISTRATION_CONFIG))
    ca_id = aws(
        "register-ca-certificate",
        "--ca-certificate",
        f"file://{ca.directory / 'ca.pem'}",
        "--verification-cert",
        f"file://{verification}",
        "--set-as-active",
        "--allow-auto-registration",
        "--registration-config",
        f"file://{config}",
    )["certificateId"]
    described = aws("describe-ca-certificate", "--certificate-id", ca_id)
    assert described["certificateDescription"]["status"] == "ACTIVE"
    assert described["certificateDescription"]["autoRegistrationStatus"] == "ENABLE"
    assert json.loads(described["registrationConfig"]["templateBody"])["Resources"]
    listed = aws("list-ca-certificates")["certificates"]
    assert [c["certificateId"] for c in listed] == [ca_id]
    aws("update-ca-certificate", "--certificate-id", ca_id, "--new-status", "INACTIVE")
    aws("delete-ca-certificate", "--certificate-id", ca_id)
    assert aws("list-ca-certificates")["certificates"] == []


def test_the_aws_cli_reports_aws_errors(served, tmp_path):
    proc = aws_cli(served.api_url, tmp_path, "iot", "describe-thing", "--thing-name", "x")
    assert proc.returncode != 0
    assert "(ResourceNotFoundException) when calling the DescribeThing operation" in proc.stderr


def test_the_aws_cli_creates_and_checks_a_role(served, tmp_path):
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    created = aws_cli(
        served.api_url,
        tmp_path,
        *("iam", "create-role", "--role-name", "JITPRole"),
        *("--assume-role-policy-document", trust),
    )
    assert created.returncode == 0, created.stderr
    got = aws_cli(served.api_url, tmp_path, "iam", "get-role", "--role-name", "JITPRole")
    assert json.loads(got.stdout)["Role"]["Arn"] == "arn:aws:iam::123456789012:role/JITPRole"
    who = aws_cli(served.api_url, tmp_path, "sts", "get-caller-identity")
    assert json.loads(who.stdout)["Account"] == "123456789012"


def test_an_embedded_emulator_serves_the_api_on_the_port_asked(fleet, tmp_path):
    ca, _ = fleet
    port = free_port()
    emulator = start_embedded(ca.directory, None, tmp_path / "emulator", api_port=port)
    try:
        assert emulator.api_url == f"http://127.0.0.1:{port}"
        listed = client("iot", emulator.api_url).list_ca_certificates()["certificates"]
        assert [c["certificateId"] for c in listed] == [certificate_id(ca.cert)]
    finally:
        emulator.stop()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--api-port", "0", "--api-rate", "DeleteCertificates=1/s"], "--api-rate"),
        (["--api-port", "0", "--api-rate", "all=fast"], "--api-rate 'all=fast'"),
        (["--ca", "x.pem", "--api-rate", "all=off"], "give --api-port too"),
        (["--port", "18883", "--api-port", "18883"], "--api-port 18883: the same port as --port"),
        ([], "--api-port"),
    ],
)
def test_a_bad_api_option_is_a_one_line_error(tmp_path, args, fragment):
    result = run_loadgen("emulator", "serve", "--state-dir", tmp_path, *args)
    assert_user_error(result, fragment)
    assert not (tmp_path / "server-ca").exists()


def loadgen_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment with made-up credentials and none of the
    user's AWS configuration, for `loadgen aws` against the emulator."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDEMULATOR",
        "AWS_SECRET_ACCESS_KEY": "emulator-secret",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }


def test_aws_teardown_through_the_api_at_aws_rates_leaves_the_devices_refused(fleet, tmp_path):
    ca, store = fleet
    emulator = serve(tmp_path / "emulator")  # AWS's default rates: teardown paces itself
    try:
        iot = client("iot", emulator.api_url)
        register(iot, ca, tmp_path)
        for device in store.devices():
            assert connect(emulator, store, device) == "closed"  # JITP
        teardown = subprocess.run(
            [
                *(sys.executable, "-m", "loadgen", "aws", "teardown", "--ca", str(ca.directory)),
                *("--endpoint-url", emulator.api_url, "--region", "us-east-1", "--yes"),
            ],
            capture_output=True,
            text=True,
            env=loadgen_env(tmp_path),
            timeout=300,
        )
        assert teardown.returncode == 0, teardown.stdout + teardown.stderr
        assert iot.list_ca_certificates()["certificates"] == []
        assert iot.list_certificates()["certificates"] == []
        assert iot.list_things()["things"] == []
        assert iot.list_policies()["policies"] == []
        assert connect(emulator, store, next(store.devices())) == "tls refused"
    finally:
        emulator.stop()


def test_the_api_calls_are_counted_in_the_emulator_metrics(fleet, tmp_path):
    ca, _ = fleet
    metrics_port = free_port()
    emulator = start_embedded(
        ca.directory,
        None,
        tmp_path / "emulator",
        metrics_port=metrics_port,
        api_port=free_port(),
        api_rates={"DescribeEndpoint": "1/s"},
    )
    try:
        iot = client("iot", emulator.api_url)
        iot.list_ca_certificates()
        with pytest.raises(iot.exceptions.ThrottlingException):
            for _ in range(20):  # a burst of 1, then 1 a second
                iot.describe_endpoint(endpointType="iot:Data-ATS")
        with pytest.raises(iot.exceptions.ResourceNotFoundException):
            iot.describe_thing(thingName="nothing-here")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        text = text.read().decode()
    finally:
        emulator.stop()
    assert 'loadgen_emulator_api_calls_total{operation="ListCACertificates"} 1.0' in text
    assert 'loadgen_emulator_api_throttles_total{operation="DescribeEndpoint"} 1.0' in text
    assert 'loadgen_emulator_api_errors_total{code="ResourceNotFoundException"} 1.0' in text


def test_another_region_is_an_account_region_of_its_own(served, fleet, tmp_path):
    ca, _ = fleet
    ca_id = register(client("iot", served.api_url), ca, tmp_path)
    elsewhere = client("iot", served.api_url, region="eu-west-1")
    assert elsewhere.list_ca_certificates()["certificates"] == []
    with pytest.raises(elsewhere.exceptions.ResourceNotFoundException):
        elsewhere.describe_ca_certificate(certificateId=ca_id)


def test_another_regions_describe_endpoint_says_the_mqtt_side_serves_one_region(served):
    elsewhere = client("iot", served.api_url, region="eu-west-1")
    with pytest.raises(elsewhere.exceptions.InvalidRequestException) as refused:
        elsewhere.describe_endpoint(endpointType="iot:Data-ATS")
    assert "use region us-east-1" in str(refused.value)


def test_teardown_in_the_wrong_region_is_a_one_line_error(served, fleet, tmp_path):
    ca, _ = fleet
    register(client("iot", served.api_url), ca, tmp_path)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "loadgen", "aws", "teardown", "--ca", str(ca.directory)),
            *("--endpoint-url", served.api_url, "--region", "eu-west-1", "--yes"),
        ],
        capture_output=True,
        text=True,
        env=loadgen_env(tmp_path),
        timeout=120,
    )
    assert_user_error(Result(proc.returncode, proc.stdout, proc.stderr), "is not registered")
    assert len(client("iot", served.api_url).list_ca_certificates()["certificates"]) == 1
