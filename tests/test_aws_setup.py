"""`loadgen aws setup` against moto: the CA registered for JITP (or updated), what
its template needs created and recorded, a scenario ready to run; bad input is
one line and nothing changed or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.aws.record import RECORD_FILE, load_record
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import load_profile
from loadgen.scenario.schema import load_scenario
from tests.conftest import assert_user_error
from tests.moto_aws import CREDENTIALS, REGION, client, loadgen_aws, no_credentials_env

ROOT = Path(__file__).resolve().parent.parent
LIGHTBULB = ROOT / "scenarios" / "templates" / "lightbulb.yaml"
PROFILE = ROOT / "scenarios" / "profiles" / "lightbulb.yaml"
ROLE = "arn:aws:iam::123456789012:role/JITPRole"


@pytest.fixture
def ca(tmp_path):
    return init_ca(tmp_path / "ca")


def _setup(url, ca_dir, *args):
    return loadgen_aws("setup", "--ca", ca_dir, "--endpoint-url", url, "--region", REGION, *args)


def _role(url, name="JITPRole"):
    import json as json_

    iam = client(url, "iam")
    trust = {"Version": "2012-10-17", "Statement": []}
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json_.dumps(trust))["Role"]


def test_setup_registers_the_ca_active_with_auto_registration_and_the_template(moto, ca):
    _role(moto)
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert result.code == 0, result.err
    described = client(moto).describe_ca_certificate(certificateId=ca.fingerprint)
    assert described["certificateDescription"]["status"] == "ACTIVE"
    config = described["registrationConfig"]
    assert config["roleArn"] == ROLE
    assert json.loads(config["templateBody"])["Resources"]["thing"]["Type"] == "AWS::IoT::Thing"
    assert "registered (ACTIVE, auto-registration on)" in result.out


def test_setup_creates_the_thing_type_and_static_groups_and_warns_of_computed_ones(moto, ca):
    _role(moto)
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert result.code == 0, result.err
    iot = client(moto)
    assert iot.describe_thing_type(thingTypeName="lightBulb-versionA")
    assert iot.describe_thing_group(thingGroupName="v1-lightbulbs")
    assert "Resources.thing.Properties.ThingGroups[1] is computed per device" in result.err
    record = load_record(ca.directory)
    assert record is not None
    assert record.created.thing_types == ["lightBulb-versionA"]
    assert record.created.thing_groups == ["v1-lightbulbs"]


def test_with_a_fleet_the_groups_its_devices_compute_are_created(moto, ca, tmp_path):
    _role(moto)
    fleet = tmp_path / "fleet"
    mint(MintRequest(fleet, ca.directory, 30, load_profile(PROFILE), seed=3))
    result = _setup(
        moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE, "--fleet", fleet
    )
    assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None
    countries = set(record.created.thing_groups) - {"v1-lightbulbs"}
    assert countries and all(len(c) == 2 for c in countries), record.created.thing_groups
    names = {g["groupName"] for g in client(moto).list_thing_groups()["thingGroups"]}
    assert names == {"v1-lightbulbs", *countries}
    assert "computed per device" not in result.err


def test_running_setup_twice_updates_the_ca_and_keeps_what_the_first_created(moto, ca):
    _role(moto)
    first = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert first.code == 0, first.err
    client(moto).update_ca_certificate(certificateId=ca.fingerprint, newStatus="INACTIVE")
    second = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert second.code == 0, second.err
    assert "was registered: updated" in second.out
    assert "thing type lightBulb-versionA: created by setup (an earlier run), still there" in (
        second.out
    )
    assert "already there" not in second.out  # not also said of what setup made
    described = client(moto).describe_ca_certificate(certificateId=ca.fingerprint)
    assert described["certificateDescription"]["status"] == "ACTIVE"
    record = load_record(ca.directory)
    assert record is not None and record.created.ca
    assert record.created.thing_types == ["lightBulb-versionA"]


def test_things_already_in_the_account_are_not_setups_to_delete(moto, ca):
    _role(moto)
    client(moto).create_thing_type(thingTypeName="lightBulb-versionA")
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert result.code == 0, result.err
    assert "thing type lightBulb-versionA: already there, left as it is" in result.out
    record = load_record(ca.directory)
    assert record is not None and record.created.thing_types == []


def test_create_role_makes_a_role_iot_may_assume_with_the_registration_policy(moto, ca):
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--create-role")
    assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None and record.created.role is not None
    iam = client(moto, "iam")
    role = iam.get_role(RoleName=record.created.role)["Role"]
    assert role["Arn"] == record.role_arn
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "iot.amazonaws.com"}
    attached = iam.list_attached_role_policies(RoleName=record.created.role)["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["AWSIoTThingsRegistration"]
    config = client(moto).describe_ca_certificate(certificateId=ca.fingerprint)
    assert config["registrationConfig"]["roleArn"] == record.role_arn


def test_a_registration_config_file_is_registered_as_it_is(moto, ca, tmp_path):
    _role(moto)
    body = json.dumps({"Resources": {"certificate": {"Type": "AWS::IoT::Certificate"}}})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"templateBody": body, "roleArn": ROLE}))
    result = _setup(moto, ca.directory, "--registration-config", config, "--allow-lint-errors")
    assert result.code == 0, result.err
    described = client(moto).describe_ca_certificate(certificateId=ca.fingerprint)
    assert described["registrationConfig"] == {"templateBody": body, "roleArn": ROLE}


def test_the_scenario_written_points_at_the_ats_endpoint_and_loads(moto, ca, tmp_path):
    _role(moto)
    out = tmp_path / "aws.yaml"
    result = _setup(
        moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE, "--write-scenario", out
    )
    assert result.code == 0, result.err
    scenario = load_scenario(out)
    record = load_record(ca.directory)
    assert record is not None and record.endpoint.endswith("-ats.iot.us-east-1.amazonaws.com")
    assert scenario.endpoint == f"{record.endpoint}:8883"
    assert scenario.tls.server_name == record.endpoint
    assert scenario.jitp.expect_first_connect_rejected
    assert scenario.fleet.ca == ca.directory.resolve()


def test_the_scenario_trusts_amazon_root_ca_1_from_the_system_store():
    from cryptography import x509

    from loadgen.aws.snippet import amazon_root_ca

    found = amazon_root_ca()
    if found is None:
        pytest.skip("this system's trust store has no Amazon Root CA 1 as a file")
    cert = x509.load_pem_x509_certificate(found.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"


def test_an_endpoint_with_a_port_keeps_it():
    from loadgen.aws.snippet import endpoint_address

    assert endpoint_address("127.0.0.1:18883") == ("127.0.0.1:18883", "127.0.0.1")
    assert endpoint_address("abc-ats.iot.eu-west-1.amazonaws.com") == (
        "abc-ats.iot.eu-west-1.amazonaws.com:8883",
        "abc-ats.iot.eu-west-1.amazonaws.com",
    )


def test_without_write_scenario_the_scenario_is_printed(moto, ca):
    _role(moto)
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert result.code == 0, result.err
    assert "expect_first_connect_rejected: true" in result.out


# -- bad input: one line, exit 2, nothing changed or written ------------------


def _nothing_done(url, ca_dir: Path) -> None:
    assert not (ca_dir / RECORD_FILE).exists()
    assert client(url).list_thing_types()["thingTypes"] == []
    iot = client(url)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_ca_certificate(certificateId=init_ca_id(ca_dir))


def init_ca_id(ca_dir: Path) -> str:
    from loadgen.aws.teardown import ca_certificate_id

    return ca_certificate_id(ca_dir)


def test_a_template_whose_policy_lacks_iot_connect_is_refused(moto, ca, tmp_path):
    _role(moto)
    template = tmp_path / "no-connect.yaml"
    template.write_text(
        LIGHTBULB.read_text().replace('"Action": "iot:Connect"', '"Action": "iot:Subscribe"')
    )
    result = _setup(moto, ca.directory, "--template", template, "--role-arn", ROLE)
    assert_user_error(result, str(template), "iot:Connect", "--allow-lint-errors")
    _nothing_done(moto, ca.directory)


def test_lint_errors_allowed_are_warnings(moto, ca, tmp_path):
    _role(moto)
    template = tmp_path / "no-connect.yaml"
    template.write_text(
        LIGHTBULB.read_text().replace('"Action": "iot:Connect"', '"Action": "iot:Subscribe"')
    )
    result = _setup(
        moto, ca.directory, "--template", template, "--role-arn", ROLE, "--allow-lint-errors"
    )
    assert result.code == 0, result.err
    assert "warning" in result.err and "iot:Connect" in result.err


def test_a_role_that_does_not_exist_is_refused(moto, ca):
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert_user_error(result, "--role-arn", "no role 'JITPRole'", "--create-role")
    _nothing_done(moto, ca.directory)


@pytest.mark.parametrize("create", [False, True], ids=["existing role", "--create-role"])
def test_a_role_of_another_account_is_refused(moto, ca, create):
    # IAM passes AWS IoT only a role of the caller's account: the name alone was
    # taken, and this account's role of that name (or a new one) used instead.
    other = "arn:aws:iam::999999999999:role/JITPRole"
    extra = ["--create-role"] if create else []
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", other, *extra)
    assert_user_error(result, "--role-arn: a role of account 999999999999", "123456789012")
    _nothing_done(moto, ca.directory)


def test_no_role_at_all_is_refused(moto, ca):
    result = _setup(moto, ca.directory, "--template", LIGHTBULB)
    assert_user_error(result, "--role-arn ARN or --create-role")
    _nothing_done(moto, ca.directory)


def test_neither_or_both_template_options_is_refused(moto, ca):
    assert_user_error(_setup(moto, ca.directory, "--role-arn", ROLE), "--template")
    assert_user_error(
        _setup(moto, ca.directory, "--template", LIGHTBULB, "--registration-config", LIGHTBULB),
        "one of --registration-config FILE and --template FILE",
    )


def test_no_credentials_is_one_line(tmp_path, ca):
    result = loadgen_aws(
        "setup",
        "--ca",
        ca.directory,
        "--template",
        LIGHTBULB,
        "--role-arn",
        ROLE,
        "--region",
        REGION,
        env=no_credentials_env(tmp_path),
    )
    assert_user_error(result, "no AWS credentials found")
    assert not (ca.directory / RECORD_FILE).exists()


def test_a_region_aws_iot_is_not_in_is_one_line(ca):
    result = loadgen_aws(
        "setup", "--ca", ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE,
        "--region", "us-nowhere-7",
    )  # fmt: skip
    assert_user_error(result, "--region us-nowhere-7")
    assert not (ca.directory / RECORD_FILE).exists()


def test_a_ca_folder_set_up_in_another_account_is_refused(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    record_file = ca.directory / RECORD_FILE
    record = json.loads(record_file.read_text())
    record["account"] = "210987654321"
    record_file.write_text(json.dumps(record))
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert_user_error(result, RECORD_FILE, "account 210987654321", "teardown")


def test_a_ca_folder_whose_record_is_of_another_ca_is_refused(moto, ca, tmp_path):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    other = init_ca(tmp_path / "other")
    for name in ("ca.pem", "ca.key"):
        (ca.directory / name).write_bytes((other.directory / name).read_bytes())
    before = (ca.directory / RECORD_FILE).read_bytes()
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert_user_error(result, RECORD_FILE, "a record of another CA", "tear that one down")
    assert (ca.directory / RECORD_FILE).read_bytes() == before
    iot = client(moto)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_ca_certificate(certificateId=other.fingerprint)


def test_teardown_deletes_what_setup_created_and_the_record(moto, ca, tmp_path):
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--create-role")
    assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None and record.created.role is not None
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")  # the record says where
    assert torn.code == 0, torn.out + torn.err
    assert "created by setup: 3 deleted" in torn.out
    iot, iam = client(moto), client(moto, "iam")
    assert iot.list_thing_types()["thingTypes"] == []
    assert iot.list_thing_groups()["thingGroups"] == []
    assert record.created.role not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert not (ca.directory / RECORD_FILE).exists()


def test_every_role_setup_created_is_torn_down(moto, ca):
    for name in ("first-role", "second-role"):
        arn = f"arn:aws:iam::123456789012:role/{name}"
        args = ("--template", LIGHTBULB, "--create-role", "--role-arn", arn)
        result = _setup(moto, ca.directory, *args)
        assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None and record.created.roles == ["first-role", "second-role"]
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert torn.code == 0, torn.out + torn.err
    roles = {r["RoleName"] for r in client(moto, "iam").list_roles()["Roles"]}
    assert not roles & {"first-role", "second-role"}


def test_a_record_from_before_setup_listed_its_roles_still_names_its_role(tmp_path):
    ca = init_ca(tmp_path / "ca")
    record = {
        "format": 1,
        "ca_id": ca.fingerprint,
        "account": "123456789012",
        "region": REGION,
        "endpoint": "e",
        "role_arn": "arn:aws:iam::123456789012:role/old",
        "created": {"thing_types": [], "thing_groups": [], "role": "old", "ca": True},
    }
    (ca.directory / RECORD_FILE).write_text(json.dumps(record))
    loaded = load_record(ca.directory)
    assert loaded is not None and loaded.created.roles == ["old"]
    assert loaded.created.names() == ["role old"]


def test_teardown_keep_ca_keeps_what_setup_created_for_it(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes", "--keep-ca")
    assert torn.code == 0, torn.out + torn.err
    assert client(moto).describe_thing_type(thingTypeName="lightBulb-versionA")
    assert (ca.directory / RECORD_FILE).exists()


def test_teardown_refuses_a_region_other_than_setups(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes", "--region", "eu-west-1")
    assert_user_error(torn, RECORD_FILE, "region us-east-1, not eu-west-1")


def test_a_scenario_file_that_cannot_be_written_is_refused_before_anything(moto, ca, tmp_path):
    _role(moto)
    out = tmp_path / "missing" / "aws.yaml"
    result = _setup(
        moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE, "--write-scenario", out
    )
    assert_user_error(result, "--write-scenario", "does not exist")
    _nothing_done(moto, ca.directory)


@pytest.mark.parametrize("name", ["ca.pem", "ca.key", RECORD_FILE])
def test_a_scenario_file_that_is_one_of_the_cas_is_refused_before_anything(moto, ca, name):
    _role(moto)
    before = (ca.directory / "ca.pem").read_bytes()
    out = ca.directory / name
    result = _setup(
        moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE, "--write-scenario", out
    )
    assert_user_error(result, f"--write-scenario {out}: would overwrite {name} of the CA")
    _nothing_done(moto, ca.directory)
    assert (ca.directory / "ca.pem").read_bytes() == before


def test_a_scenario_file_that_is_the_template_is_refused_before_anything(moto, ca, tmp_path):
    _role(moto)
    template = tmp_path / "lightbulb.yaml"
    template.write_bytes(LIGHTBULB.read_bytes())
    args = ("--template", template, "--role-arn", ROLE, "--write-scenario", template)
    result = _setup(moto, ca.directory, *args)
    assert_user_error(result, f"--write-scenario {template}: the same file as --template")
    _nothing_done(moto, ca.directory)
    assert template.read_bytes() == LIGHTBULB.read_bytes()


def test_a_scenario_file_in_the_fleet_is_refused_before_anything(moto, ca, tmp_path):
    _role(moto)
    fleet = tmp_path / "fleet"
    mint(MintRequest(fleet, ca.directory, 2, None, seed=1))
    meta = (fleet / "fleet.json").read_bytes()
    out = fleet / "fleet.json"
    args = ("--template", LIGHTBULB, "--role-arn", ROLE, "--fleet", fleet, "--write-scenario", out)
    result = _setup(moto, ca.directory, *args)
    assert_user_error(result, f"--write-scenario {out}: inside the fleet of --fleet {fleet}")
    _nothing_done(moto, ca.directory)
    assert (fleet / "fleet.json").read_bytes() == meta


def test_a_thing_type_other_things_still_have_is_kept_and_usable(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    iot = client(moto)
    iot.create_thing(thingName="someone-elses", thingTypeName="lightBulb-versionA")
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert "1 kept (thing type of other things)" in torn.out, torn.out + torn.err
    described = iot.describe_thing_type(thingTypeName="lightBulb-versionA")
    assert not described["thingTypeMetadata"].get("deprecated")


def test_setup_undoes_the_deprecation_of_a_thing_type_it_created(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    iot = client(moto)
    iot.deprecate_thing_type(thingTypeName="lightBulb-versionA")  # a teardown cut short
    again = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert again.code == 0, again.err
    described = iot.describe_thing_type(thingTypeName="lightBulb-versionA")
    assert not described["thingTypeMetadata"].get("deprecated")


def test_setup_warns_of_a_deprecated_thing_type_it_did_not_create(moto, ca):
    _role(moto)
    iot = client(moto)
    iot.create_thing_type(thingTypeName="lightBulb-versionA")
    iot.deprecate_thing_type(thingTypeName="lightBulb-versionA")
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE)
    assert result.code == 0, result.err
    assert "thing type lightBulb-versionA is deprecated: AWS creates no thing of it" in result.err
    described = iot.describe_thing_type(thingTypeName="lightBulb-versionA")
    assert described["thingTypeMetadata"]["deprecated"]


def test_what_another_cas_template_uses_is_kept_by_teardown(moto, ca, tmp_path):
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--create-role").code == 0
    record = load_record(ca.directory)
    assert record is not None
    other = init_ca(tmp_path / "other", subject="CN=other CA")
    thing = {
        "ThingName": "x",
        "ThingTypeName": "lightBulb-versionA",
        "ThingGroups": ["v1-lightbulbs"],
    }
    template = {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": thing}}}
    iot = client(moto)
    iot.register_ca_certificate(
        caCertificate=other.cert_pem.decode(),
        setAsActive=True,
        allowAutoRegistration=True,
        registrationConfig={"templateBody": json.dumps(template), "roleArn": record.role_arn},
    )
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert torn.code == 0, torn.out + torn.err
    assert "1 kept (thing group another CA's template uses)" in torn.out
    assert "1 kept (thing type another CA's template uses)" in torn.out
    assert "1 kept (role another CA's template uses)" in torn.out
    assert iot.describe_thing_group(thingGroupName="v1-lightbulbs")
    described = iot.describe_thing_type(thingTypeName="lightBulb-versionA")
    assert not described["thingTypeMetadata"].get("deprecated")
    assert client(moto, "iam").get_role(RoleName=record.created.roles[0])


def test_a_thing_group_setup_created_with_other_things_in_it_is_kept(moto, ca):
    _role(moto)
    assert _setup(moto, ca.directory, "--template", LIGHTBULB, "--role-arn", ROLE).code == 0
    iot = client(moto)
    iot.create_thing(thingName="someone-elses")
    iot.add_thing_to_thing_group(thingGroupName="v1-lightbulbs", thingName="someone-elses")
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert torn.code == 0, torn.out + torn.err
    assert "1 kept (thing group of other things)" in torn.out
    assert iot.describe_thing_group(thingGroupName="v1-lightbulbs")


def test_an_endpoint_given_by_aws_endpoint_url_is_recorded(moto, ca):
    import os

    _role(moto)
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": moto}
    args = ("--ca", ca.directory, "--region", REGION, "--template", LIGHTBULB, "--role-arn", ROLE)
    result = loadgen_aws("setup", *args, env=env)
    assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None and record.endpoint_url == moto


def test_a_setup_killed_right_after_a_creation_has_recorded_it(moto, ca, monkeypatch):
    from loadgen.aws.account import Account
    from loadgen.aws.calls import Api
    from loadgen.aws.ratelimit import RateLimits
    from loadgen.aws.setup import Setup, SetupRequest, prepare

    class KilledAfterCreatingAGroup:
        def __init__(self, iot):
            self._iot = iot

        def __getattr__(self, name):
            method = getattr(self._iot, name)
            if name != "create_thing_group":
                return method

            def create_then_die(**kwargs):
                method(**kwargs)
                raise KeyboardInterrupt

            return create_then_die

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    _role(moto)
    setup = Setup(Account(None, REGION, moto), RateLimits())
    setup.api = Api(KilledAfterCreatingAGroup(client(moto)), RateLimits())
    prepared = prepare(SetupRequest(ca.directory, LIGHTBULB, readable=True, role_arn=ROLE))
    with pytest.raises(KeyboardInterrupt):
        setup.run(prepared)
    record = load_record(ca.directory)
    assert record is not None and record.created.thing_groups == ["v1-lightbulbs"]


def test_an_endpoint_url_that_is_no_url_is_one_line(ca):
    result = _setup("notaurl", ca.directory, "--template", LIGHTBULB, "--create-role")
    assert_user_error(result, "--endpoint-url notaurl: not an http(s) URL")


def test_a_server_ca_that_is_no_certificate_is_refused(moto, ca):
    args = ("--template", LIGHTBULB, "--create-role", "--server-ca", ca.directory / "ca.key")
    assert_user_error(_setup(moto, ca.directory, *args), "--server-ca", "not a PEM certificate")
    _nothing_done(moto, ca.directory)


@pytest.mark.parametrize(
    "command",
    [("setup", "--template", LIGHTBULB, "--create-role"), ("status",), ("teardown", "--yes")],
    ids=["setup", "status", "teardown"],
)
def test_an_endpoint_nobody_answers_is_said_to_be_unreachable(ca, tmp_path, command):
    from tests.brokers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    name, *args = command
    result = loadgen_aws(
        name, "--ca", ca.directory, "--endpoint-url", url, "--region", REGION, *args
    )
    assert result.code == 1, result.err
    assert result.err.startswith("loadgen: failed: the account's API could not be reached: ")
    assert len(result.err.strip().splitlines()) == 1, result.err


def test_a_group_setup_created_and_someone_deleted_is_counted_already_gone(moto, ca):
    """AWS answers DeleteThingGroup alike whether the group was there or not."""
    result = _setup(moto, ca.directory, "--template", LIGHTBULB, "--create-role")
    assert result.code == 0, result.err
    record = load_record(ca.directory)
    assert record is not None and record.created.thing_groups == ["v1-lightbulbs"]
    client(moto).delete_thing_group(thingGroupName="v1-lightbulbs")
    torn = loadgen_aws("teardown", "--ca", ca.directory, "--yes")
    assert torn.code == 0, torn.out + torn.err
    assert "created by setup: 2 deleted, 1 already gone" in torn.out
