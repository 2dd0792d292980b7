"""`loadgen aws status` against moto: the CA, its template, the certificates it
signed by status and what they are attached to, as the account has them."""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.aws.status import storm_quotas, template_summary
from loadgen.certs.ca import init_ca
from tests.conftest import assert_user_error
from tests.moto_aws import (
    CREDENTIALS,
    POLICY,
    REGION,
    client,
    loadgen_aws,
    no_credentials_env,
    provision,
)

ROOT = Path(__file__).resolve().parent.parent
LIGHTBULB = ROOT / "scenarios" / "templates" / "lightbulb.yaml"


def _set_up_and_provision(url, tmp_path, count):
    """setup with its own role, then what JITP would do for ``count`` devices."""
    ca = init_ca(tmp_path / "ca")
    setup = loadgen_aws(
        "setup", "--ca", ca.directory, "--template", LIGHTBULB, "--create-role",
        "--endpoint-url", url, "--region", REGION,
    )  # fmt: skip
    assert setup.code == 0, setup.err
    iot = client(url)
    iot.create_policy(policyName="shared", policyDocument=POLICY)
    provision(iot, ca, tmp_path / "fleet", count, "dev", "shared")
    return ca


def test_status_counts_the_cas_certificates_and_their_attachments(moto, tmp_path):
    ca = _set_up_and_provision(moto, tmp_path, 4)
    cert = client(moto).list_certificates_by_ca(caCertificateId=ca.fingerprint)["certificates"][0]
    client(moto).update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    result = loadgen_aws("status", "--ca", ca.directory)  # the record says where
    assert result.code == 0, result.err
    assert f"CA {ca.fingerprint[:16]}…: ACTIVE" in result.out
    assert "certificates signed by the CA: 4 (3 ACTIVE, 1 INACTIVE)" in result.out
    assert "of all: 4 attached to a thing (4 things), 4 with policies (5 distinct)" in result.out
    assert (
        "template: thing (AWS::IoT::Thing; type lightBulb-versionA; "
        "groups v1-lightbulbs, 1 computed)" in result.out
    )
    assert "thing type lightBulb-versionA (created by setup)" in result.out


def test_status_samples_certificates_when_asked(moto, tmp_path):
    ca = _set_up_and_provision(moto, tmp_path, 5)
    result = loadgen_aws("status", "--ca", ca.directory, "--sample", "2")
    assert result.code == 0, result.err
    assert "of a sample of 2: 2 attached to a thing" in result.out


def test_status_says_when_the_account_does_not_tell_its_quotas(moto, tmp_path):
    ca = _set_up_and_provision(moto, tmp_path, 1)
    result = loadgen_aws("status", "--ca", ca.directory)
    assert result.code == 0, result.err
    quotas = result.out.split("quotas:\n", 1)[1]
    assert quotas.strip(), result.out


def test_status_of_a_ca_not_registered_is_one_line(moto, tmp_path):
    stranger = init_ca(tmp_path / "stranger")
    result = loadgen_aws(
        "status", "--ca", stranger.directory, "--endpoint-url", moto, "--region", REGION
    )
    assert_user_error(result, "is not registered in this account and region")


def test_the_quotas_that_bound_a_storm_are_picked_from_service_quotas():
    class Quotas:
        def get_paginator(self, method):
            class Pages:
                def paginate(self, ServiceCode):
                    assert ServiceCode == "iotcore"
                    return [
                        {
                            "Quotas": [
                                {
                                    "QuotaName": "Connect requests per second per account",
                                    "Value": 500.0,
                                },
                                {"QuotaName": "Rules per account", "Value": 1000.0},
                            ]
                        }
                    ]

            return Pages()

    assert storm_quotas(Quotas()) == ["Connect requests per second per account: 500"]


def test_a_template_summary_names_its_resources_and_parameters():
    body = '{"Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}}, "Resources": {"policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "p"}}}}'  # noqa: E501
    assert template_summary(body) == [
        "template: policy (AWS::IoT::Policy; policy p (in the account))",
        "template parameters: CommonName",
    ]


def test_a_setup_record_of_the_wrong_shape_is_one_line_naming_the_field(tmp_path):
    ca = init_ca(tmp_path / "ca")
    record = ca.directory / "aws-setup.json"
    base = {"format": 1, "ca_id": "c", "account": "123456789012", "region": REGION}
    for fields_, wrong in (
        (
            {**base, "endpoint": "x", "role_arn": "r", "created": {"thing_groups": [5]}},
            "created.thing_groups is not a list of names",
        ),
        ({"format": 1}, "ca_id is missing"),
        ({**base, "endpoint": 7, "role_arn": "r"}, "endpoint is not text"),
    ):
        record.write_text(json.dumps(fields_))
        result = loadgen_aws("status", "--ca", ca.directory, "--endpoint-url", "http://127.0.0.1:9")
        assert_user_error(result, f"{record}: malformed record: field {wrong}")


def test_a_setup_record_no_reader_can_hold_is_one_line(tmp_path):
    ca = init_ca(tmp_path / "ca")
    record = ca.directory / "aws-setup.json"
    record.write_text("[" * 100_000 + "]" * 100_000)
    result = loadgen_aws("status", "--ca", ca.directory, "--endpoint-url", "http://127.0.0.1:9")
    assert_user_error(result, f"{record}: not a record of `loadgen aws setup`", "nested too deep")


def _status(tmp_path, *args, env=None):
    """`aws status` of a fresh CA; nothing answers at 127.0.0.1:9 (none is asked)."""
    ca = init_ca(tmp_path / "ca")
    return loadgen_aws("status", "--ca", ca.directory, "--region", REGION, *args, env=env)


def test_an_endpoint_url_with_an_unclosed_ipv6_bracket_is_one_line(tmp_path):
    result = _status(tmp_path, "--endpoint-url", "http://[::1")
    assert_user_error(result, "--endpoint-url http://[::1: not a URL (Invalid IPv6 URL)")


def test_an_endpoint_url_with_a_port_out_of_range_is_one_line(tmp_path):
    result = _status(tmp_path, "--endpoint-url", "http://127.0.0.1:99999")
    assert_user_error(result, "--endpoint-url http://127.0.0.1:99999: not a URL (Port out of range")


def test_an_aws_endpoint_url_variable_that_is_no_url_is_one_line_naming_it(tmp_path):
    env = no_credentials_env(tmp_path) | CREDENTIALS | {"AWS_ENDPOINT_URL": "notaurl"}
    result = _status(tmp_path, env=env)
    assert_user_error(result, "AWS_ENDPOINT_URL notaurl: not an http(s) URL")


def test_status_with_an_aws_config_file_botocore_cannot_parse_is_bad_input(tmp_path):
    config = tmp_path / "config"
    config.write_bytes(b"\xff\xfe garbage [")
    env = no_credentials_env(tmp_path) | CREDENTIALS | {"AWS_CONFIG_FILE": str(config)}
    result = _status(tmp_path, env=env)
    assert_user_error(result, f"Unable to parse config file: {config}")
