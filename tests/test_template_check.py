"""`loadgen template check`: a template's problems, before a cloud run finds them."""

from __future__ import annotations

import json

import yaml

from tests.conftest import ROOT, run_loadgen

DATA = ROOT / "tests" / "data"
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
LIGHTBULB = ROOT / "scenarios" / "templates" / "lightbulb.yaml"


def _config(tmp_path, template):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": json.dumps(template), "roleArn": "arn:x"}))
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


def test_a_publish_topic_the_policy_denies_is_an_error(tmp_path):
    scenario = yaml.safe_load(QUICKSTART.read_text())
    scenario["after_connect"] = [{"publish": {"topic": "telemetry/{client_id}"}}]
    path = QUICKSTART.parent / "check-test-scenario.yaml"
    try:
        path.write_text(yaml.safe_dump(scenario))
        result = run_loadgen("template", "check", LIGHTBULB, "--scenario", path)
    finally:
        path.unlink()
    assert result.code == 1
    assert "publishes to 'telemetry/lightbulb-000000', which the policy denies" in result.out


def test_a_template_body_over_10240_characters_is_an_error(tmp_path):
    template = yaml.safe_load(LIGHTBULB.read_text())
    template["Resources"]["thing"]["Properties"]["AttributePayload"]["padding"] = "x" * 11_000
    result = run_loadgen("template", "check", _config(tmp_path, template))
    assert result.code == 1
    assert "over AWS's 10,240" in result.out
