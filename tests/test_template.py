"""Provisioning templates: both of the reference document's templates, the
intrinsic functions, and a certificate that lacks what the template reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.emulator import template as tpl
from loadgen.emulator.errors import ClientError, TemplateError
from loadgen.emulator.serve import load_registration_config

DATA = Path(__file__).parent / "data"
P = tpl.PARAMETER_PREFIX
LIGHTBULB = {
    P + "CommonName": "lightbulb-000001",
    P + "SerialNumber": "0a1b2c",
    P + "Country": "DE",
    P + "Id": "f" * 64,
}


@pytest.mark.parametrize("name", ["reference-template.json", "reference-template-readable.json"])
def test_the_reference_templates_load_and_run_as_written(name):
    config = load_registration_config(DATA / name)
    resources = {
        r.logical_id: r for r in tpl.evaluate(tpl.parse(config["templateBody"]), LIGHTBULB)
    }
    thing = resources["thing"]
    assert thing.properties["ThingName"] == "lightbulb-000001"
    assert thing.properties["AttributePayload"] == {"version": "v1", "serialNumber": "0a1b2c"}
    assert thing.properties["ThingGroups"] == ["v1-lightbulbs", "DE"]
    assert thing.overrides["ThingGroups"] == "DO_NOTHING"
    assert resources["certificate"].properties == {"CertificateId": "f" * 64, "Status": "ACTIVE"}
    policy = json.loads(resources["policy"].properties["PolicyDocument"])
    assert policy["Statement"][0]["Action"] == ["iot:Publish"]


def test_a_certificate_without_a_referenced_field_fails_provisioning():
    config = load_registration_config(DATA / "reference-template.json")
    parameters = {k: v for k, v in LIGHTBULB.items() if k != P + "Country"}
    with pytest.raises(ClientError, match="Country"):
        tpl.evaluate(tpl.parse(config["templateBody"]), parameters)


def _run(resources_properties, *, conditions=None, mappings=None, parameters=LIGHTBULB):
    template = {
        "Parameters": {name: {"Type": "String"} for name in LIGHTBULB},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": resources_properties}},
        "Conditions": conditions or {},
        "Mappings": mappings or {},
    }
    (thing,) = tpl.evaluate(tpl.parse(template), parameters)
    return thing.properties


def test_join_select_and_split():
    props = _run(
        {
            "ThingName": {"Fn::Join": ["-", ["bulb", {"Ref": P + "Country"}]]},
            "ThingTypeName": {"Fn::Select": [1, {"Fn::Split": ["-", {"Ref": P + "CommonName"}]}]},
        }
    )
    assert props == {"ThingName": "bulb-DE", "ThingTypeName": "000001"}


def test_sub_reads_parameters_and_its_own_variables():
    props = _run(
        {
            "ThingName": {
                "Fn::Sub": "${AWS::IoT::Certificate::CommonName}.${AWS::IoT::Certificate::Country}"
            },
            "ThingTypeName": {"Fn::Sub": ["${kind}-v2", {"kind": "bulb"}]},
        }
    )
    assert props == {"ThingName": "lightbulb-000001.DE", "ThingTypeName": "bulb-v2"}


def test_find_in_map_and_if_with_conditions():
    props = _run(
        {
            "ThingName": {"Ref": P + "CommonName"},
            "ThingTypeName": {"Fn::FindInMap": ["Regions", {"Ref": P + "Country"}, "type"]},
            "AttributePayload": {
                "eu": {"Fn::If": ["InEurope", "yes", "no"]},
                "note": {"Fn::If": ["InJapan", "jp", {"Ref": "AWS::NoValue"}]},
            },
        },
        conditions={
            "InEurope": {
                "Fn::Or": [
                    {"Fn::Equals": [{"Ref": P + "Country"}, "DE"]},
                    {"Fn::Equals": [{"Ref": P + "Country"}, "FR"]},
                ]
            },
            "InJapan": {"Fn::Not": [{"Condition": "InEurope"}]},
        },
        mappings={"Regions": {"DE": {"type": "bulb-eu"}}},
    )
    assert props["ThingTypeName"] == "bulb-eu"
    assert props["AttributePayload"] == {"eu": "yes"}


def test_a_resource_condition_leaves_the_resource_out():
    template = {
        "Conditions": {"Never": {"Fn::Equals": ["a", "b"]}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Condition": "Never",
                "Properties": {"ThingName": "x"},
            },
        },
    }
    assert tpl.evaluate(tpl.parse(template), LIGHTBULB) == []


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}, "unsupported type"),
        ({"Parameters": {"Stage": {"Type": "String"}}, "Resources": {}}, "JITP provides only"),
        (
            {
                "Resources": {
                    "t": {
                        "Type": "AWS::IoT::Thing",
                        "OverrideSettings": {"ThingGroups": "SOMETIMES"},
                    }
                }
            },
            "SOMETIMES",
        ),
        ("{not json", "not JSON"),
    ],
)
def test_a_malformed_template_is_refused_when_registered(template, message):
    with pytest.raises(TemplateError, match=message):
        tpl.parse(template)


def test_an_unknown_intrinsic_function_is_a_template_error():
    with pytest.raises(TemplateError, match="Fn::Base64"):
        _run({"ThingName": {"Fn::Base64": "x"}})
