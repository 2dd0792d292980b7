"""`loadgen template check`: a template's problems, before a cloud run finds them."""

from __future__ import annotations

import json

import yaml

from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.serve import load_registration_config
from tests.conftest import ROOT, assert_user_error, run_loadgen

ROLE = "arn:aws:iam::123456789012:role/JITPRole"
DATA = ROOT / "tests" / "data"
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
LIGHTBULB = ROOT / "scenarios" / "templates" / "lightbulb.yaml"


def _config(tmp_path, template):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": json.dumps(template), "roleArn": ROLE}))
    return path


def test_the_reference_template_lacks_iot_connect_and_check_says_so():
    result = run_loadgen(
        "template", "check", DATA / "reference-template.json", "--scenario", QUICKSTART
    )
    assert result.code == 1
    assert "error: Resources.policy: no statement allows iot:Connect" in result.out
    assert "lightbulb-000000" in result.out


def test_the_quickstart_template_passes_with_a_warning_about_missing_countries():
    result = run_loadgen("template", "check", LIGHTBULB, "--scenario", QUICKSTART)
    assert result.code == 0, result.out
    assert "warning: AWS::IoT::Certificate::Country" in result.out
    assert "missing_country" in result.out


def test_a_parameter_jitp_does_not_provide_is_an_error(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    template["Parameters"]["AWS::IoT::Certificate::Email"] = {"Type": "String"}
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    assert "Parameters.AWS::IoT::Certificate::Email" in result.out


def _config_with_condition(tmp_path, condition):
    """The quickstart template, its policy's first statement under ``condition``."""
    template = yaml.safe_load(LIGHTBULB.read_text())
    policy_id = next(k for k, v in template["Resources"].items() if v["Type"] == "AWS::IoT::Policy")
    document = json.loads(template["Resources"][policy_id]["Properties"]["PolicyDocument"])
    document["Statement"][0]["Condition"] = condition
    template["Resources"][policy_id]["Properties"]["PolicyDocument"] = json.dumps(document)
    return _config(tmp_path, template), f"Resources.{policy_id}.PolicyDocument.Statement[0]"


def test_a_policy_condition_the_emulator_evaluates_as_aws_does_is_not_flagged(tmp_path):
    config, _ = _config_with_condition(
        tmp_path, {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    )
    result = run_loadgen("template", "check", config)
    assert result.code == 0, result.out
    assert "Condition" not in result.out


def test_a_policy_condition_that_never_holds_for_the_fleet_is_the_missing_connect(tmp_path):
    config, _ = _config_with_condition(
        tmp_path, {"StringEquals": {"iot:Connection.Thing.ThingTypeName": "lightBulb-versionB"}}
    )
    result = run_loadgen("template", "check", config)
    assert result.code == 1
    assert "no statement allows iot:Connect" in result.out


def test_a_policy_condition_on_the_template_s_thing_type_holds(tmp_path):
    config, _ = _config_with_condition(
        tmp_path, {"StringEquals": {"iot:Connection.Thing.ThingTypeName": "lightBulb-versionA"}}
    )
    result = run_loadgen("template", "check", config)
    assert result.code == 0, result.out
    assert "Condition" not in result.out


def test_a_policy_condition_on_a_key_the_emulator_cannot_know_is_a_warning(tmp_path):
    config, statement = _config_with_condition(
        tmp_path, {"StringEquals": {"iot:Certificate.Issuer.CommonName": "Fleet CA"}}
    )
    result = run_loadgen("template", "check", config)
    assert (
        f"warning: {statement}.Condition: the emulator has no value for "
        "iot:Certificate.Issuer.CommonName" in result.out
    )


def test_a_policy_condition_on_the_source_address_is_a_warning(tmp_path):
    config, statement = _config_with_condition(
        tmp_path, {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}
    )
    result = run_loadgen("template", "check", config)
    assert f"warning: {statement}.Condition: aws:SourceIp is the device's address" in result.out


def test_a_policy_condition_operator_iam_does_not_define_is_a_warning(tmp_path):
    config, statement = _config_with_condition(tmp_path, {"StringEqual": {"iot:ClientId": "x"}})
    result = run_loadgen("template", "check", config)
    assert (
        f"warning: {statement}.Condition: StringEqual is not a condition operator IAM defines"
        in result.out
    )


def test_a_parameter_the_profile_never_sets_is_an_error(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    unit = "AWS::IoT::Certificate::OrganizationalUnit"
    template["Parameters"][unit] = {"Type": "String"}
    template["Resources"]["thing"]["Properties"]["AttributePayload"]["site"] = {"Ref": unit}
    scenario = yaml.safe_load(QUICKSTART.read_text())
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(
        "subject: {common_name: 'b{index}', country: US}\n"
    )
    scenario["fleet"]["profile"] = "profiles/p.yaml"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen(
        "template", "check", _config(tmp_path, template), "--scenario", tmp_path / "s.yaml"
    )
    assert result.code == 1
    assert "OrganizationalUnit: the fleet's profile sets no organizational_unit" in result.out


def _check_with_subject(tmp_path, **subject):
    """`template check` of the lightbulb template (ThingName: the CommonName;
    its serialNumber attribute: the SerialNumber) with the quickstart scenario, its fleet's
    profile's subject ``subject``."""
    scenario = yaml.safe_load(QUICKSTART.read_text())
    subject = {"common_name": "lightbulb-{index:06d}", "serial_number": "{uuid}", **subject}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"subject": subject}))
    scenario["fleet"]["profile"] = str(tmp_path / "p.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    return run_loadgen("template", "check", LIGHTBULB, "--scenario", tmp_path / "s.yaml")


def test_a_thing_name_aws_refuses_for_every_device_is_an_error(tmp_path):
    result = _check_with_subject(tmp_path, common_name="bulb {index:06d}", country="US")
    assert result.code == 1, result.out
    assert (
        "error: Resources.thing.Properties: ThingName 'bulb 000000' is not a name AWS IoT "
        "accepts ([a-zA-Z0-9:_-]{1,128}): every device will fail to provision"
    ) in result.out


def test_an_attribute_aws_refuses_for_some_devices_is_a_warning(tmp_path):
    serials = {"choice": ["SN-1", "SN 2"]}  # the serialNumber attribute
    result = _check_with_subject(tmp_path, serial_number=serials, country="US")
    assert result.code == 0, result.out
    assert (
        "warning: Resources.thing.Properties: attribute serialNumber: value 'SN 2' is not"
    ) in result.out
    assert "devices sampled will fail to provision" in result.out


def _check_quickstart_doing(step: dict, name: str):
    """`template check` of the lightbulb template with the quickstart scenario
    whose devices, once connected, do ``step`` (written beside it, where its
    relative paths hold)."""
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["after_connect"] = [step]
    path = QUICKSTART.parent / name
    try:
        path.write_text(yaml.safe_dump(scenario))
        return run_loadgen("template", "check", LIGHTBULB, "--scenario", path)
    finally:
        path.unlink()


def test_a_publish_topic_the_policy_denies_is_an_error(tmp_path):
    step = {"publish": {"topic": "telemetry/{client_id}"}}
    result = _check_quickstart_doing(step, "check-test-scenario.yaml")
    assert result.code == 1
    assert "publishes to 'telemetry/lightbulb-000000', which the policy denies" in result.out


def test_a_subscribe_filter_the_policy_denies_is_an_error():
    """The lightbulb policy allows no iot:Subscribe: the SUBACK would refuse it."""
    step = {"subscribe": {"topic": "cmd/{client_id}/#"}}
    result = _check_quickstart_doing(step, "check-subscribe-scenario.yaml")
    assert result.code == 1
    assert "subscribes to 'cmd/lightbulb-000000/#', which the policy denies" in result.out


def test_a_template_body_over_10240_characters_is_an_error(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    template["Resources"]["thing"]["Properties"]["AttributePayload"]["padding"] = "x" * 11_000
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    assert "over AWS's 10,240" in result.out


# What AWS would refuse: `template check` lists it (exit 1); `emulator serve`
# and a run against the embedded emulator refuse the config with the same
# message, before anything is written.

BROKEN_JOIN = "Resources.thing.Properties.ThingName.Fn::Join[1][1]"


def _broken_template():
    """The lightbulb template, with a thing name that Refs an undeclared parameter."""
    template = yaml.safe_load(LIGHTBULB.read_text())
    template["Resources"]["thing"]["Properties"]["ThingName"] = {
        "Fn::Join": ["-", ["bulb", {"Ref": "AWS::IoT::Certificate::StateName"}]]
    }
    return template


def _check_line(result):
    (line,) = [x for x in result.out.splitlines() if x.startswith("error: ")]
    return line.removeprefix("error: ")


def test_check_names_a_structural_problem_with_its_location_and_exits_1(tmp_path):
    result = run_loadgen("template", "check", _config(tmp_path, _broken_template()))
    assert result.code == 1, result.err
    assert _check_line(result) == (
        f"{BROKEN_JOIN}: Ref AWS::IoT::Certificate::StateName: not declared; "
        "declare it under Parameters"
    )


def test_check_lists_every_structural_problem(tmp_path):
    template = _broken_template()
    template["Resources"]["thing"]["Properties"]["ThingTypeName"] = {"Fn::Select": [4, ["a"]]}
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    assert f"error: {BROKEN_JOIN}: Ref" in result.out
    assert "error: Resources.thing.Properties.ThingTypeName.Fn::Select[0]: index 4" in result.out
    assert result.out.strip().endswith("2 errors, 0 warnings")


def test_check_of_a_template_body_that_is_an_object_is_an_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"templateBody": yaml.safe_load(LIGHTBULB.read_text()), "roleArn": ROLE})
    )
    result = run_loadgen("template", "check", path)
    assert result.code == 1
    assert "error: templateBody: must be the template as an escaped JSON string" in result.out


def test_check_of_a_config_without_a_role_arn_is_an_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": json.dumps(yaml.safe_load(LIGHTBULB.read_text()))}))
    result = run_loadgen("template", "check", path)
    assert result.code == 1
    assert "error: roleArn: missing" in result.out


def test_check_of_a_readable_json_template_checks_it_as_a_template(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(_broken_template()))
    result = run_loadgen("template", "check", path)
    assert result.code == 1
    assert f"error: {BROKEN_JOIN}: Ref" in result.out


def test_check_of_a_missing_file_is_a_one_line_error(tmp_path):
    result = run_loadgen("template", "check", tmp_path / "absent.json")
    assert_user_error(result, "absent.json", "not found")


def test_check_of_a_file_that_is_not_json_is_a_one_line_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("templateBody: not json\n")
    assert_user_error(run_loadgen("template", "check", path), "config.json", "not a JSON")


def test_check_of_a_yaml_file_that_is_not_yaml_is_a_one_line_error(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text("Resources: [unclosed\n")
    assert_user_error(
        run_loadgen("template", "check", path), "template.yaml:2:", "YAML syntax error"
    )


def test_a_readable_template_with_a_key_given_twice_is_a_one_line_error(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text(
        "Resources:\n  thing:\n    Type: AWS::IoT::Thing\n  thing:\n    Type: AWS::IoT::Policy\n"
    )
    assert_user_error(
        run_loadgen("template", "check", path),
        "template.yaml:4:",
        "duplicate key (first given on line 2)",
    )


def test_the_default_registration_config_passes_check(tmp_path):
    path = tmp_path / "default.json"
    path.write_text(json.dumps(REGISTRATION_CONFIG))
    result = run_loadgen("template", "check", path)
    assert result.code == 0, result.out
    assert result.out.strip().endswith("0 errors, 0 warnings")


def test_emulator_serve_refuses_the_config_with_checks_message_and_writes_nothing(tmp_path, ca):
    config = _config(tmp_path, _broken_template())
    state = tmp_path / "state"
    result = run_loadgen(
        "emulator", "serve", "--port", "0", "--ca", ca.directory / "ca.pem",
        "--registration-config", config, "--state-dir", state, "--state", tmp_path / "r.db",
    )  # fmt: skip
    checked = run_loadgen("template", "check", config)
    assert_user_error(result, f"loadgen: error: {config}: {_check_line(checked)}")
    assert not state.exists()
    assert not (tmp_path / "r.db").exists()


def test_a_run_against_the_embedded_emulator_refuses_the_config_before_minting(tmp_path):
    config = _config(tmp_path, _broken_template())
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["fleet"] = {"ca": "ca", "store": "fleet", "count": 5}
    scenario["emulator"] = {"registration_config": str(config)}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", tmp_path / "s.yaml", "--report", tmp_path / "r.json")
    checked = run_loadgen("template", "check", config)
    assert_user_error(result, f"loadgen: error: {config}: {_check_line(checked)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "s.yaml"]


def test_a_run_refuses_a_readable_template_with_the_same_location(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(_broken_template()))
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["fleet"] = {"ca": "ca", "store": "fleet", "count": 5}
    scenario["emulator"] = {"template": str(template)}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", tmp_path / "s.yaml")
    assert_user_error(result, f"{template}: {BROKEN_JOIN}: Ref AWS::IoT::Certificate::StateName")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "template.yaml"]


def test_render_refuses_a_template_with_a_structural_problem_naming_its_location(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(_broken_template()))
    result = run_loadgen("template", "render", template, "--role-arn", ROLE)
    assert_user_error(result, f"{template}: {BROKEN_JOIN}: Ref AWS::IoT::Certificate::StateName")
    assert result.out == ""


def test_render_takes_a_registration_config_in_awss_readable_layout_as_check_does():
    """Its strings hold raw line breaks; the template comes out escaped, with
    the role given."""
    readable = DATA / "reference-template-readable.json"
    assert run_loadgen("template", "check", readable).code == 1  # read: a lint error
    result = run_loadgen("template", "render", readable, "--role-arn", ROLE)
    assert result.code == 0, result.err
    config = json.loads(result.out)
    assert config["roleArn"] == ROLE
    as_read = load_registration_config(readable)["templateBody"]
    assert json.loads(config["templateBody"]) == json.loads(as_read, strict=False)


def test_render_refuses_a_role_arn_that_is_not_an_iam_roles_arn():
    result = run_loadgen("template", "render", LIGHTBULB, "--role-arn", "JITPRole")
    assert_user_error(result, "--role-arn: 'JITPRole' is not an IAM role's ARN")


def test_a_run_refuses_an_emulator_role_arn_that_is_not_an_iam_roles_arn(tmp_path):
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["fleet"] = {"ca": "ca", "store": "fleet", "count": 5}
    scenario["emulator"] = {"template": str(LIGHTBULB), "role_arn": "JITPRole"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", tmp_path / "s.yaml")
    assert_user_error(result, "emulator.role_arn: 'JITPRole' is not an IAM role's ARN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


CIRCULAR = {
    "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}},
    "Conditions": {"A": {"Condition": "B"}, "B": {"Condition": "A"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Condition": "A",
            "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}},
        }
    },
}


def test_check_reports_circular_conditions_as_an_error(tmp_path):
    result = run_loadgen("template", "check", _config(tmp_path, CIRCULAR))
    assert result.code == 1, (result.out, result.err)
    assert _check_line(result).startswith("Conditions.A: refers to itself (A -> B -> A)")


def test_a_run_refuses_circular_conditions_before_the_emulator_starts(tmp_path):
    config = _config(tmp_path, CIRCULAR)
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["fleet"] = {"ca": "ca", "store": "fleet", "count": 5}
    scenario["emulator"] = {"registration_config": str(config)}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen("run", tmp_path / "s.yaml", "--report", tmp_path / "r.json")
    assert_user_error(result, f"{config}: Conditions.A: refers to itself (A -> B -> A)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "s.yaml"]


def test_check_of_json_nested_past_what_python_parses_is_a_one_line_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(run_loadgen("template", "check", path), "config.json", "nested too deep")


def test_a_template_nested_deeper_than_any_real_one_is_an_error(tmp_path):
    value: object = "v"
    for _ in range(600):
        value = {"a": value}
    template = {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": value}}}
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1, result.err
    assert "error: template: nested deeper than 100 levels" in result.out


def test_the_emulator_refuses_a_registration_config_nested_too_deep_in_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": "[" * 5000 + "]" * 5000, "roleArn": ROLE}))
    result = run_loadgen(
        "emulator", "serve", "--port", "0", "--ca", DATA / "x", "--registration-config", path
    )
    assert_user_error(result, f"{path}: templateBody: not JSON: nested too deep")


def test_render_of_a_json_template_that_is_not_utf_8_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b'{"Resources": {}}\n\xff\xfe\x00garbage')
    result = run_loadgen("template", "render", path, "--role-arn", ROLE)
    assert_user_error(
        result, f"{path}:2: not UTF-8 text (byte 0xff): a template is written in UTF-8"
    )


def test_a_run_whose_emulator_template_is_not_utf_8_is_refused_in_one_line(tmp_path):
    template = tmp_path / "t.json"
    template.write_bytes(b"\xff\xfe\x00garbage")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: t\nendpoint: embedded\nemulator: {template: t.json}\n"
        "fleet: {ca: ca, store: fleet, count: 2}\n"
        "load: {executor: constant-arrival-rate, rate: 100/s}\n"
    )
    result = run_loadgen("run", scenario)
    assert_user_error(result, "t.json:1: not UTF-8 text (byte 0xff)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "t.json"]


def test_a_malformed_inline_policy_document_is_an_error_at_its_location(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    policy_id = next(k for k, v in template["Resources"].items() if v["Type"] == "AWS::IoT::Policy")
    template["Resources"][policy_id]["Properties"]["PolicyDocument"] = '{"Statement": ['
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    where = f"Resources.{policy_id}.Properties.PolicyDocument"
    assert f"error: {where}: policy document is not JSON" in result.out


def test_a_certificate_status_aws_does_not_take_is_an_error_at_its_location(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    cert_id = next(
        k for k, v in template["Resources"].items() if v["Type"] == "AWS::IoT::Certificate"
    )
    template["Resources"][cert_id]["Properties"]["Status"] = "Enabled"
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    assert f"error: Resources.{cert_id}.Properties.Status: 'Enabled'" in result.out
