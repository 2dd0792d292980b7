"""moto's server (an independent model of AWS's control plane) for the
`loadgen aws` tests, and running `loadgen aws ...` against it as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.certs.ca import CA
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import FleetStore

REGION = "us-east-1"
POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect"}]}
)

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def moto_url():
    """moto's server on loopback, computing certificate ids from the DER as AWS does."""
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    default_user_config["iot"] = {"use_valid_cert": True}
    _add_list_ca_certificates()
    # AWSIoTThingsRegistration, which --create-role attaches, is one of them.
    default_user_config["iam"] = {"load_aws_managed_policies": True}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _add_list_ca_certificates() -> None:
    """AWS's ListCACertificates (one page), which moto lacks: teardown asks it
    which other CAs' templates use what setup created."""
    from moto.core.responses import ActionResult
    from moto.iot.responses import IoTResponse

    def list_ca_certificates(self):
        cas = self.iot_backend.ca_certificates.values()
        return ActionResult(
            {
                "certificates": [
                    {
                        "certificateArn": ca.arn,
                        "certificateId": ca.certificate_id,
                        "status": ca.status,
                        "creationDate": ca.creation_date,
                    }
                    for ca in cas
                ]
            }
        )

    IoTResponse.list_ca_certificates = list_ca_certificates


@pytest.fixture
def moto(moto_url):
    """moto's server, emptied after the test (it keeps its state otherwise)."""
    yield moto_url
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))


def client(url: str, service: str = "iot"):
    import boto3

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def loadgen_aws(*args: str | Path, env: dict[str, str] | None = None):
    """`loadgen aws ARGS` in a fresh process, with moto's credentials."""
    from tests.conftest import Result

    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "aws", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else {**os.environ, **CREDENTIALS},
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def no_credentials_env(tmp_path: Path) -> dict[str, str]:
    """An environment where boto3 finds no credentials at all."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")} | {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }


def provision(iot, ca: CA, fleet: Path, count: int, prefix: str, shared: str) -> list[str]:
    """What JITP does for each device: register the certificate, create its
    thing and its own policy, attach them, and attach the shared policy."""
    mint(MintRequest(fleet, ca.directory, count, None, seed=1))
    ca_pem = (ca.directory / "ca.pem").read_text()
    things = []
    for device in FleetStore(fleet).devices():
        chain = (fleet / device.cert).read_text()
        pem = chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        cert = iot.register_certificate(
            certificatePem=pem, caCertificatePem=ca_pem, setAsActive=True
        )
        thing = f"{prefix}-{device.index}"
        iot.create_thing(thingName=thing)
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        iot.create_policy(policyName=f"{thing}-policy", policyDocument=POLICY)
        iot.attach_policy(policyName=f"{thing}-policy", target=cert["certificateArn"])
        iot.attach_policy(policyName=shared, target=cert["certificateArn"])
        things.append(thing)
    return things
