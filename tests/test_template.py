"""Provisioning templates: both of the reference document's templates, the
intrinsic functions, and a certificate that lacks what the template reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.emulator import template as tpl
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.errors import ClientError, TemplateError
from loadgen.emulator.render import load_template
from loadgen.emulator.serve import load_registration_config
from loadgen.emulator.structure import config_problems, template_problems
from loadgen.errors import ConfigError

ROLE = "arn:aws:iam::123456789012:role/JITPRole"
DATA = Path(__file__).parent / "data"
SHIPPED = sorted((Path(__file__).parent.parent / "scenarios" / "templates").glob("*.yaml"))
P = tpl.PARAMETER_PREFIX
_ALLOW_ALL = json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
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


def test_sub_writes_an_escaped_name_as_the_text_it_escapes():
    """As CloudFormation does: ``${!iot:ClientId}`` keeps a policy variable."""
    props = _run(
        {
            "ThingName": {"Ref": P + "CommonName"},
            "AttributePayload": {
                "topic": {"Fn::Sub": "dt/${AWS::IoT::Certificate::Country}/${!iot:ClientId}"}
            },
        }
    )
    assert props["AttributePayload"] == {"topic": "dt/DE/${iot:ClientId}"}


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


# The structural check: what AWS refuses when the config is registered, each
# problem with its location. The emulator refuses on the first; `template check`
# lists them all.

THING = "Resources.thing.Properties"


def _problems(properties, **sections):
    template = {
        "Parameters": {P + "CommonName": {"Type": "String"}},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": properties}},
        **sections,
    }
    return [str(p) for p in template_problems(template)]


def test_an_unknown_intrinsic_function_is_refused_at_its_location():
    (problem,) = _problems({"ThingName": {"Fn::Base64": "x"}})
    assert problem.startswith(f"{THING}.ThingName.Fn::Base64: unknown intrinsic function")


def test_parse_refuses_a_template_naming_its_first_problem():
    template = {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {}}}}
    template["Resources"]["thing"]["Properties"]["ThingName"] = {"Fn::GetAtt": ["a", "b"]}
    with pytest.raises(TemplateError, match=rf"^{THING}\.ThingName\.Fn::GetAtt: unknown"):
        tpl.parse(template)


def test_a_ref_to_a_parameter_not_declared_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Join": ["-", ["bulb", {"Ref": P + "Country"}]]}})
    assert problem == (
        f"{THING}.ThingName.Fn::Join[1][1]: Ref {P}Country: not declared; "
        "declare it under Parameters"
    )


def test_a_ref_to_a_name_that_is_neither_parameter_nor_resource_is_refused():
    (problem,) = _problems({"ThingName": {"Ref": "Stage"}})
    assert problem.startswith(f"{THING}.ThingName: Ref Stage: no parameter or resource")


def test_a_ref_to_a_resource_gives_its_name():
    template = {
        "Parameters": {P + "CommonName": {"Type": "String"}, P + "Id": {"Type": "String"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Ref": P + "CommonName"},
                    "AttributePayload": {"certificate": {"Ref": "certificate"}},
                },
            },
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "ACTIVE"}},
            "named": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Fn::Sub": "${thing}-twin"}},
            },
        },
    }
    things = {r.logical_id: r.properties for r in tpl.evaluate(tpl.parse(template), LIGHTBULB)}
    assert things["thing"]["AttributePayload"] == {"certificate": "f" * 64}
    assert things["named"]["ThingName"] == "lightbulb-000001-twin"


def test_a_ref_to_a_policy_without_a_name_is_refused():
    (problem,) = _problems(
        {"ThingName": {"Ref": "policy"}},
        Resources={
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "policy"}}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": _ALLOW_ALL}},
        },
    )
    assert problem == f"{THING}.ThingName: Ref policy: that resource has no PolicyName to refer to"


def test_fn_if_on_an_undefined_condition_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::If": ["InEurope", "eu", "other"]}})
    assert (
        problem
        == f"{THING}.ThingName.Fn::If[0]: condition InEurope is not defined under Conditions"
    )


def test_a_resource_condition_that_is_not_defined_is_refused():
    template = {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Condition": "Never"}}}
    (problem,) = [str(p) for p in template_problems(template)]
    assert problem == "Resources.thing.Condition: condition Never is not defined under Conditions"


def test_fn_join_with_one_argument_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Join": ["-"]}})
    assert problem == (
        f"{THING}.ThingName.Fn::Join: Fn::Join takes [delimiter, [values]], got a list of 1"
    )


def test_fn_join_of_a_string_instead_of_a_list_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Join": ["-", "bulb"]}})
    assert problem == (
        f"{THING}.ThingName.Fn::Join[1]: must be a list of values (or a function giving one), "
        "not a string"
    )


def test_fn_join_with_a_computed_delimiter_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Join": [{"Ref": P + "CommonName"}, ["a"]]}})
    assert (
        problem == f"{THING}.ThingName.Fn::Join[0]: the delimiter must be a string, not an object"
    )


def test_fn_select_past_the_end_of_a_literal_list_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Select": [2, ["a", "b"]]}})
    assert (
        problem == f"{THING}.ThingName.Fn::Select[0]: index 2 is out of range: the list has 2 items"
    )


def test_fn_select_past_the_end_of_a_literal_split_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Select": ["3", {"Fn::Split": ["-", "a-b-c"]}]}})
    assert problem.endswith("index 3 is out of range: the list has 3 items")


def test_fn_select_of_a_list_computed_per_certificate_is_left_to_provisioning():
    properties = {"ThingName": {"Fn::Select": [5, {"Fn::Split": ["-", {"Ref": P + "CommonName"}]}]}}
    assert _problems(properties) == []
    with pytest.raises(ClientError, match="Fn::Select"):
        _run(properties)


def test_fn_select_with_a_negative_index_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Select": [-1, ["a"]]}})
    assert problem == f"{THING}.ThingName.Fn::Select[0]: the index must be a number from 0, not -1"


def test_fn_split_with_an_empty_delimiter_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Split": ["", "a"]}})
    assert problem.startswith(f"{THING}.ThingName.Fn::Split[0]: the delimiter must be a non-empty")


def test_fn_split_of_a_list_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Split": ["-", ["a"]]}})
    assert problem.startswith(f"{THING}.ThingName.Fn::Split[1]: must be a string")


def test_fn_sub_naming_an_undeclared_variable_is_refused():
    (problem,) = _problems(
        {"ThingName": {"Fn::Sub": "${AWS::IoT::Certificate::CommonName}-${Site}"}}
    )
    assert problem.startswith(f"{THING}.ThingName.Fn::Sub: ${{Site}}: no variable, parameter")


def test_fn_sub_with_its_own_variables_and_escapes_passes():
    properties = {"ThingName": {"Fn::Sub": ["${kind}-${!literal}", {"kind": "bulb"}]}}
    assert _problems(properties) == []


def test_fn_sub_with_variables_that_are_not_an_object_is_refused():
    problems = _problems({"ThingName": {"Fn::Sub": ["${kind}", ["bulb"]]}})
    assert f"{THING}.ThingName.Fn::Sub[1]: the variables must be an object, not a list" in problems


def test_fn_sub_of_a_number_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Sub": 7}})
    assert problem == f"{THING}.ThingName.Fn::Sub: Fn::Sub takes a literal string, not a number"


def test_fn_find_in_map_without_mappings_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::FindInMap": ["Sites", "DE", "name"]}})
    assert problem == (
        f"{THING}.ThingName.Fn::FindInMap: Fn::FindInMap needs a Mappings section; "
        "the template has none"
    )


def test_fn_find_in_map_with_a_key_the_mapping_lacks_is_refused():
    properties = {"ThingName": {"Fn::FindInMap": ["Sites", "DE", "nmae"]}}
    (problem,) = _problems(properties, Mappings={"Sites": {"DE": {"name": "berlin"}}})
    assert problem == f"{THING}.ThingName.Fn::FindInMap[2]: Mappings.Sites.DE has no key 'nmae'"


def test_fn_find_in_map_with_two_arguments_is_refused():
    properties = {"ThingName": {"Fn::FindInMap": ["Sites", "DE"]}}
    (problem,) = _problems(properties, Mappings={"Sites": {"DE": {"name": "berlin"}}})
    assert "Fn::FindInMap takes [MapName, TopLevelKey, SecondLevelKey], got a list of 2" in problem


def test_a_condition_function_in_a_resource_is_refused():
    (problem,) = _problems({"ThingName": {"Fn::Equals": ["a", "b"]}})
    assert problem.startswith(f"{THING}.ThingName.Fn::Equals: Fn::Equals is a condition function")


def test_fn_and_with_one_condition_is_refused():
    problems = _problems(
        {"ThingName": "x"},
        Conditions={"Yes": {"Fn::Equals": ["a", "a"]}, "Both": {"Fn::And": [{"Condition": "Yes"}]}},
    )
    assert problems == [
        "Conditions.Both.Fn::And: Fn::And takes a list of 2 to 10 conditions, got a list of 1"
    ]


def test_conditions_that_name_each_other_in_a_circle_are_refused():
    """CloudFormation refuses them; the emulator recursed until RecursionError at
    every provisioning."""
    problems = _problems(
        {"ThingName": {"Fn::If": ["A", "a", "b"]}},
        Conditions={"A": {"Condition": "B"}, "B": {"Condition": "A"}},
    )
    assert problems == [
        "Conditions.A: refers to itself (A -> B -> A): CloudFormation refuses circular "
        "conditions, and no value could be found"
    ]


def test_a_condition_naming_itself_inside_a_function_is_refused():
    problems = _problems(
        {"ThingName": "x"},
        Conditions={
            "Yes": {"Fn::Equals": ["a", "a"]},
            "Loop": {"Fn::And": [{"Condition": "Yes"}, {"Fn::Not": [{"Condition": "Loop"}]}]},
        },
    )
    assert problems == [
        "Conditions.Loop: refers to itself (Loop -> Loop): CloudFormation refuses circular "
        "conditions, and no value could be found"
    ]


def test_conditions_naming_a_shared_condition_are_no_circle():
    both = {"Fn::And": [{"Condition": "Yes"}, {"Condition": "Yes"}]}
    conditions = {"Yes": {"Fn::Equals": ["a", "a"]}, "Both": both, "Either": {"Condition": "Both"}}
    assert _problems({"ThingName": "x"}, Conditions=conditions) == []


def test_a_condition_key_in_a_property_is_a_plain_attribute():
    properties = {"ThingName": "x", "AttributePayload": {"Condition": "refurbished"}}
    assert _problems(properties) == []
    assert _run(properties)["AttributePayload"] == {"Condition": "refurbished"}


def test_every_problem_is_listed_not_only_the_first():
    problems = _problems({"ThingName": {"Ref": "Stage"}, "ThingTypeName": {"Fn::Length": []}})
    assert len(problems) == 2
    assert problems[0].startswith(f"{THING}.ThingName: Ref Stage")
    assert problems[1].startswith(f"{THING}.ThingTypeName.Fn::Length: unknown intrinsic")


def test_a_template_body_that_is_an_object_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": {"Resources": {}}, "roleArn": ROLE}))
    with pytest.raises(ConfigError, match=r"config.json: templateBody: must be the template as an"):
        load_registration_config(path)


def test_a_registration_config_without_a_role_arn_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"templateBody": REGISTRATION_CONFIG["templateBody"]}))
    with pytest.raises(ConfigError, match=r"config.json: roleArn: missing"):
        load_registration_config(path)


def test_the_default_registration_config_has_no_problems():
    assert config_problems(REGISTRATION_CONFIG)[1] == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_template_has_no_problems(path):
    assert template_problems(load_template(path)) == []


def test_the_registry_refuses_a_template_body_that_is_an_object(session_ca):
    from loadgen.emulator.registry import Registry

    config = {"templateBody": json.loads(REGISTRATION_CONFIG["templateBody"]), "roleArn": ROLE}
    with pytest.raises(TemplateError, match=r"^templateBody: must be the template as an escaped"):
        Registry().register_ca(session_ca.cert, config)


def test_a_role_arn_that_is_not_an_iam_roles_arn_is_refused():
    config = dict(REGISTRATION_CONFIG, roleArn="arn:aws:iam::123:user/me")
    (problem,) = [str(p) for p in config_problems(config)[1]]
    assert problem.startswith("roleArn: 'arn:aws:iam::123:user/me' is not an IAM role's ARN")


def test_a_template_body_over_aws_limit_is_refused_when_loaded(tmp_path):
    template = json.loads(REGISTRATION_CONFIG["templateBody"])
    template["Resources"]["thing"]["Properties"]["AttributePayload"] = {"pad": "x" * 11_000}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(REGISTRATION_CONFIG, templateBody=json.dumps(template))))
    over = r"config.json: templateBody: \d\d,\d{3} characters, over AWS.s 10,240"
    with pytest.raises(ConfigError, match=over):
        load_registration_config(path)


def _thing(**extra):
    return {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t1"}, **extra}


def _policy(properties, **extra):
    return {"Type": "AWS::IoT::Policy", "Properties": properties, **extra}


@pytest.mark.parametrize(
    ("resources", "where", "message"),
    [
        pytest.param(
            {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "REVOKED"}}},
            "Resources.c.Properties.Status",
            "ACTIVE or INACTIVE",
            id="status-revoked",
        ),
        pytest.param(
            {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "Enabled"}}},
            "Resources.c.Properties.Status",
            "ACTIVE or INACTIVE",
            id="status-typo",
        ),
        pytest.param(
            {"t": _thing(OverrideSettings={"ThingTypeName": "MERGE"})},
            "Resources.t.OverrideSettings.ThingTypeName",
            "MERGE is valid only for",
            id="merge-thing-type",
        ),
        pytest.param(
            {"t": _thing(OverrideSettings={"ThingName": "REPLACE"})},
            "Resources.t.OverrideSettings.ThingName",
            "can override only",
            id="override-unknown-property",
        ),
        pytest.param(
            {"p": _policy({"PolicyDocument": _ALLOW_ALL}, OverrideSettings={"x": "REPLACE"})},
            "Resources.p.OverrideSettings",
            "no OverrideSettings on a policy",
            id="override-policy",
        ),
        pytest.param(
            {"p": _policy({"PolicyName": "mine", "PolicyDocument": _ALLOW_ALL})},
            "Resources.p.Properties",
            "not both",
            id="policy-name-and-document",
        ),
        pytest.param(
            {"p": _policy({})},
            "Resources.p.Properties",
            "needs PolicyName",
            id="policy-neither",
        ),
        pytest.param(
            {"p": _policy({"PolicyDocument": '{"Statement": ['})},
            "Resources.p.Properties.PolicyDocument",
            "not JSON",
            id="policy-not-json",
        ),
        pytest.param(
            {"p": _policy({"PolicyDocument": json.dumps({"Statement": [{"Sid": "x" * 2100}]})})},
            "Resources.p.Properties.PolicyDocument",
            "over AWS's 2,048",
            id="policy-over-2048",
        ),
        pytest.param(
            {
                "t": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {"AttributePayload": dict.fromkeys("abcd", "v")},
                }
            },
            "Resources.t.Properties.AttributePayload",
            "without a thing type 3",
            id="four-attributes-untyped",
        ),
        pytest.param(
            {
                "t": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {"ThingGroups": [f"g{i}" for i in range(11)]},
                }
            },
            "Resources.t.Properties.ThingGroups",
            "at most 10",
            id="eleven-groups",
        ),
        pytest.param(
            {f"p{i}": _policy({"PolicyName": f"p{i}"}) for i in range(11)},
            "Resources",
            "11 policies",
            id="eleven-policies",
        ),
    ],
)
def test_what_aws_does_not_allow_in_a_resource_is_refused_at_its_location(
    resources, where, message
):
    problems = template_problems({"Resources": resources})
    assert [p.where for p in problems] == [where]
    assert message in problems[0].message


def test_a_things_override_keys_are_taken_as_the_provisioning_templates_page_writes_them():
    # Its prose says ATTRIBUTE_PAYLOAD and so on, its examples AttributePayload.
    overrides = {"ATTRIBUTE_PAYLOAD": "MERGE", "THING_GROUPS": "MERGE", "THING_TYPE_NAME": "FAIL"}
    template = {"Resources": {"t": _thing(OverrideSettings=overrides)}}
    assert template_problems(template) == []
    (thing,) = tpl.evaluate(tpl.parse(template), LIGHTBULB)
    assert thing.overrides == {
        "AttributePayload": "MERGE",
        "ThingGroups": "MERGE",
        "ThingTypeName": "FAIL",
    }


def test_fn_select_with_a_computed_negative_index_fails_provisioning():
    select = {"Fn::Select": [{"Fn::FindInMap": ["m", "k", "i"]}, ["a", "b"]]}
    template = {
        "Mappings": {"m": {"k": {"i": -1}}},
        "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": select}}},
    }
    with pytest.raises(ClientError, match="index -1 is out of bounds"):
        tpl.evaluate(tpl.parse(template), LIGHTBULB)
