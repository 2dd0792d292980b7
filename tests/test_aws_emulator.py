"""The whole path against the emulator's control plane, throttled at AWS's
default rates: `aws setup` registers a CA the emulator was not started with, a
storm provisions through JITP, `aws status` counts it, `aws teardown` removes it
(and, killed halfway, finishes when run again), and the devices are refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from loadgen.certs.ca import init_ca
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from tests.api_server import client
from tests.aws_cli import aws_iot
from tests.conftest import assert_user_error, run_loadgen
from tests.moto_aws import CREDENTIALS, loadgen_aws

ROOT = Path(__file__).resolve().parent.parent
LIGHTBULB = ROOT / "scenarios" / "templates" / "lightbulb.yaml"
PROFILE = ROOT / "scenarios" / "profiles" / "lightbulb-healthy.yaml"
_API = re.compile(r"control plane on (http://\S+:\d+)")
_READY = re.compile(r"ready on (\S+):(\d+) \(server CA: (.+)\)")


@dataclass
class Emulator:
    url: str
    server_ca: Path


@pytest.fixture
def emulator(tmp_path):
    """`loadgen emulator serve` with no CA, its control plane at AWS's rates."""
    yield from _serve(tmp_path)


@pytest.fixture
def slow_emulator(tmp_path):
    """The same, deleting certificates at 3 a second: slower than teardown's own
    limit of AWS's 10, so it is throttled for real."""
    yield from _serve(tmp_path, "--api-rate", "DeleteCertificate=3/s")


def _serve(tmp_path, *args):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "loadgen", "emulator", "serve", "--port", "0",
            "--api-port", "0", "--state-dir", str(tmp_path / "emu"), "--strict-resources",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        url = server_ca = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while (url is None or server_ca is None) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if (api := _API.search(line)) is not None:
                url = api.group(1)
            if (ready := _READY.search(line)) is not None:
                server_ca = Path(ready.group(3))
        assert url is not None and server_ca is not None, "the emulator did not say it was ready"
        yield Emulator(url, server_ca)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _iot(url):
    import boto3

    return boto3.client(
        "iot", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    )  # fmt: skip


def _set_up(emulator, tmp_path, count):
    ca = init_ca(tmp_path / "ca")
    fleet = tmp_path / "fleet"
    minted = run_loadgen(
        "certs", "mint", "--ca", ca.directory, "--out", fleet, "--count", count,
        "--profile", PROFILE,
    )  # fmt: skip
    assert minted.code == 0, minted.err
    scenario = tmp_path / "aws.yaml"
    setup = loadgen_aws(
        "setup", "--ca", ca.directory, "--template", LIGHTBULB, "--create-role",
        "--fleet", fleet, "--server-ca", emulator.server_ca, "--write-scenario", scenario,
        "--endpoint-url", emulator.url, "--region", "us-east-1",
    )  # fmt: skip
    assert setup.code == 0, setup.out + setup.err
    return ca, scenario


def _outcomes(scenario: Path, tmp_path: Path, name: str) -> dict[str, int]:
    report = tmp_path / f"{name}.json"
    run_loadgen("run", scenario, "--report", report)
    data = yaml.safe_load(report.read_text())
    return {k: v for k, v in data["outcomes"].items() if v}


def test_setup_a_storm_status_and_teardown_against_the_emulator(emulator, tmp_path):
    ca, scenario = _set_up(emulator, tmp_path, 12)
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 12}
    status = loadgen_aws("status", "--ca", ca.directory)
    assert status.code == 0, status.err
    assert "certificates signed by the CA: 12 (12 ACTIVE)" in status.out
    assert "of all: 12 attached to a thing (12 things)" in status.out
    teardown = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert teardown.code == 0, teardown.out + teardown.err
    assert "certificates: 12 deleted" in teardown.out
    assert _iot(emulator.url).list_thing_groups()["thingGroups"] == []
    # The CA is gone from the account: its devices are refused, as on AWS.
    after = _outcomes(scenario, tmp_path, "after")
    assert set(after) == {"tls_rejected"}, after


def test_setup_in_a_region_the_emulators_mqtt_side_does_not_serve_is_refused_creating_nothing(
    emulator, tmp_path
):
    ca = init_ca(tmp_path / "ca")
    scenario = tmp_path / "aws.yaml"
    setup = loadgen_aws(
        "setup", "--ca", ca.directory, "--template", LIGHTBULB, "--create-role",
        "--server-ca", emulator.server_ca, "--write-scenario", scenario,
        "--endpoint-url", emulator.url, "--region", "eu-west-1",
    )  # fmt: skip
    assert_user_error(setup, "--region eu-west-1:", "use region us-east-1")
    assert sorted(p.name for p in ca.directory.iterdir()) == ["ca.key", "ca.pem"]
    assert not scenario.exists()
    iam = client("iam", emulator.url)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=f"loadgen-jitp-{ca.fingerprint[:12]}")


def test_a_teardown_killed_halfway_finishes_when_run_again(emulator, tmp_path):
    """At AWS's 10 DeleteCertificate a second, 40 devices take seconds: the
    first teardown is killed once some certificates are gone."""
    ca, scenario = _set_up(emulator, tmp_path, 40)
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 40}
    iot = _iot(emulator.url)
    first = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "aws", "teardown", "--ca", str(ca.directory), "--yes"],
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            left = iot.list_certificates_by_ca(caCertificateId=ca.fingerprint)["certificates"]
            if len(left) < 40:
                break
            time.sleep(0.1)
        first.kill()
    finally:
        first.wait(timeout=30)
    second = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert second.code == 0, second.out + second.err
    assert iot.list_things()["things"] == []
    assert iot.list_policies()["policies"] == []
    assert not list(ca.directory.glob("aws-*.json*"))


def _teardown_in_a_terminal(ca, *args: str) -> subprocess.Popen[str]:
    """`loadgen aws teardown --ca CA ARGS` in a process group of its own, as a
    terminal's job: what Ctrl-C reaches."""
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", "aws", "teardown", "--ca", str(ca.directory), *args],
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def test_ctrl_c_stops_a_teardown_at_once_and_counts_what_it_did(emulator, tmp_path):
    """At one call a second per API, 40 devices take minutes and every thread
    waits its turn: Ctrl-C cancels the waits instead of finishing the queues,
    the summary is what the account shows, and a second run finishes."""
    ca, scenario = _set_up(emulator, tmp_path, 40)
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 40}
    iot = _iot(emulator.url)

    def left() -> int:
        pages = iot.get_paginator("list_certificates_by_ca").paginate(
            caCertificateId=ca.fingerprint
        )
        return sum(len(page["certificates"]) for page in pages)

    first = _teardown_in_a_terminal(ca, "--yes", "--rate", "1")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None and left() == 40:
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGINT)
        # Before, the queues were finished first: about 16 calls at 1 a second.
        out, err = first.communicate(timeout=10)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == 130, out + err
    remaining = left()
    assert 0 < remaining < 40
    assert f"certificates: {40 - remaining} deleted, 0 already gone" in out
    assert f"interrupted with {remaining} of 40 certificates left; run it again" in err
    assert "Traceback" not in err
    second = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert second.code == 0, second.out + second.err
    assert f"certificates: {remaining} deleted" in second.out
    assert iot.list_things()["things"] == [] and iot.list_policies()["policies"] == []


def test_ctrl_c_stops_a_teardown_dry_run_listing_at_once(emulator, tmp_path):
    """Listing each certificate's attachments waits its turn at the API's rate:
    Ctrl-C cancels the waits instead of listing what is left (`aws status`
    lists through the same pool)."""
    ca, scenario = _set_up(emulator, tmp_path, 40)
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 40}
    listing = _teardown_in_a_terminal(ca, "--dry-run", "--rate", "1")
    try:
        time.sleep(2)  # into its listing (wherever it is, the stop must be prompt)
        os.killpg(listing.pid, signal.SIGINT)
        # Before, the listing's queue was finished first: tens of seconds.
        out, err = listing.communicate(timeout=10)
    finally:
        listing.kill()
        listing.wait(timeout=30)
    assert listing.returncode == 130, out + err
    assert "Traceback" not in err


def test_a_throttled_teardown_slows_down_and_finishes(slow_emulator, tmp_path):
    ca, scenario = _set_up(slow_emulator, tmp_path, 15)
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 15}
    teardown = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert teardown.code == 0, teardown.out + teardown.err
    assert "certificates: 15 deleted, 0 already gone" in teardown.out
    assert "refused" not in teardown.out


def test_a_ca_registered_by_hand_with_the_aws_cli_is_torn_down_just_the_same(emulator, tmp_path):
    """As docs/scenarios.md told users before `aws setup`: the aws CLI registers
    the CA and finds the endpoint; teardown has no record of setup to go by."""
    ca = init_ca(tmp_path / "ca")

    def aws(*args: str) -> dict:
        return aws_iot(emulator.url, tmp_path, *args)

    code = aws("get-registration-code")["registrationCode"]
    verification = tmp_path / "verification.pem"
    made = run_loadgen(
        "ca", "verification-cert", "--ca", ca.directory, "--registration-code", code,
        "--out", verification,
    )  # fmt: skip
    assert made.code == 0, made.err
    config = tmp_path / "registration-config.json"
    config.write_text(json.dumps(REGISTRATION_CONFIG))
    ca_id = aws(
        "register-ca-certificate", "--ca-certificate", f"file://{ca.directory / 'ca.pem'}",
        "--verification-cert", f"file://{verification}", "--set-as-active",
        "--allow-auto-registration", "--registration-config", f"file://{config}",
    )["certificateId"]  # fmt: skip
    endpoint = aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS")["endpointAddress"]
    fleet = tmp_path / "fleet"
    minted = run_loadgen("certs", "mint", "--ca", ca.directory, "--out", fleet, "--count", 6)
    assert minted.code == 0, minted.err
    scenario = tmp_path / "by-hand.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "by-hand",
                "endpoint": endpoint,
                "tls": {"ca_file": str(emulator.server_ca), "server_name": "localhost"},
                "fleet": {"ca": str(ca.directory), "store": str(fleet), "count": 6},
                "jitp": {"expect_first_connect_rejected": True},
                "retry": {"initial": "0.2s", "max": "1s", "max_attempts": 6},
                "load": {"executor": "constant-arrival-rate", "rate": "20/s"},
            }
        )
    )
    assert _outcomes(scenario, tmp_path, "storm") == {"connected": 6}
    assert len(aws("list-certificates-by-ca", "--ca-certificate-id", ca_id)["certificates"]) == 6
    assert len(aws("list-things")["things"]) == 6
    assert not (ca.directory / "aws-setup.json").exists()
    teardown = loadgen_aws(
        "teardown", "--ca", ca.directory, "--yes", "--endpoint-url", emulator.url,
        "--region", "us-east-1",
    )  # fmt: skip
    assert teardown.code == 0, teardown.out + teardown.err
    assert "certificates: 6 deleted" in teardown.out and "things: 6 deleted" in teardown.out
    assert aws("list-ca-certificates")["certificates"] == []
    assert aws("list-certificates")["certificates"] == []
    assert aws("list-things")["things"] == []
    assert aws("list-policies")["policies"] == []
    assert set(_outcomes(scenario, tmp_path, "after")) == {"tls_rejected"}
