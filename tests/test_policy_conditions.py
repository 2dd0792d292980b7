"""Policy Condition blocks: a statement applies only when its condition holds,
by IAM's evaluation logic, against what a device session presents."""

from __future__ import annotations

import json

import pytest

from loadgen.emulator import policy

CLIENT = policy.arn("client", "bulb-1")
THING = {
    "iot:ClientId": "bulb-1",
    "iot:Connection.Thing.ThingName": "bulb-1",
    "iot:Connection.Thing.IsAttached": "true",
    "iot:Certificate.Subject.Country": "DE",
}


def _connect_allowed_when(condition, context=THING, effect="Allow"):
    """Whether iot:Connect is allowed by a policy whose one conditioned statement
    is ``effect`` (a Deny comes with an unconditioned Allow of everything)."""
    statements = [{"Effect": effect, "Action": "iot:Connect", "Resource": "*"}]
    statements[0]["Condition"] = condition
    if effect == "Deny":
        statements.append({"Effect": "Allow", "Action": "iot:*", "Resource": "*"})
    policies = [policy.parse(json.dumps({"Version": "2012-10-17", "Statement": statements}))]
    return policy.allowed(policies, "iot:Connect", CLIENT, context)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("StringEquals", "bulb-1", True),
        ("StringEquals", "BULB-1", False),
        ("StringNotEquals", "bulb-1", False),
        ("StringNotEquals", "bulb-2", True),
        ("StringEqualsIgnoreCase", "BULB-1", True),
        ("StringNotEqualsIgnoreCase", "BULB-1", False),
        ("StringLike", "bulb-?", True),
        ("StringLike", "b*1", True),
        ("StringLike", "bulb-??", False),
        ("StringNotLike", "bulb-*", False),
        ("StringNotLike", "lamp-*", True),
    ],
)
def test_string_operators_compare_the_client_id(operator, value, expected):
    assert _connect_allowed_when({operator: {"iot:ClientId": value}}) is expected


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("TRUE", True), (True, True), ("false", False)]
)
def test_bool_takes_true_or_false_in_any_case_or_as_json(value, expected):
    condition = {"Bool": {"iot:Connection.Thing.IsAttached": value}}
    assert _connect_allowed_when(condition) is expected


def test_bool_true_refuses_a_connection_without_an_attached_thing():
    context = {"iot:ClientId": "other", "iot:Connection.Thing.IsAttached": "false"}
    assert not _connect_allowed_when({"Bool": {"iot:Connection.Thing.IsAttached": "true"}}, context)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("NumericEquals", "42", True),
        ("NumericEquals", "42.0", True),
        ("NumericNotEquals", "42", False),
        ("NumericLessThan", "43", True),
        ("NumericLessThan", "42", False),
        ("NumericLessThanEquals", "42", True),
        ("NumericGreaterThan", "41", True),
        ("NumericGreaterThanEquals", "43", False),
        ("NumericEquals", "not a number", False),
    ],
)
def test_numeric_operators_compare_a_thing_attribute_as_a_number(operator, value, expected):
    context = {**THING, "iot:Connection.Thing.Attributes[floor]": "42"}
    condition = {operator: {"iot:Connection.Thing.Attributes[floor]": value}}
    assert _connect_allowed_when(condition, context) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("IpAddress", "127.0.0.0/8", True),
        ("IpAddress", "127.0.0.1", True),
        ("IpAddress", "10.0.0.0/8", False),
        ("IpAddress", "::1/128", False),
        ("NotIpAddress", "10.0.0.0/8", True),
        ("NotIpAddress", "127.0.0.0/8", False),
    ],
)
def test_ip_operators_hold_the_source_address_against_cidr_blocks(operator, value, expected):
    context = {**THING, "aws:SourceIp": "127.0.0.1"}
    assert _connect_allowed_when({operator: {"aws:SourceIp": value}}, context) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("ArnEquals", "arn:aws:iot:us-east-1:123456789012:thing/bulb-1", True),
        ("ArnLike", "arn:aws:iot:*:*:thing/bulb-*", True),
        ("ArnLike", "arn:aws:iot:*:thing/bulb-1", False),  # five components: never an ARN
        ("ArnNotLike", "arn:aws:iot:*:*:thing/lamp-*", True),
        ("ArnNotEquals", "arn:aws:iot:us-east-1:123456789012:thing/bulb-1", False),
    ],
)
def test_arn_operators_match_each_component_with_wildcards(operator, value, expected):
    context = {**THING, "iot:Connection.Thing.Attributes[arn]": policy.arn("thing", "bulb-1")}
    condition = {operator: {"iot:Connection.Thing.Attributes[arn]": value}}
    assert _connect_allowed_when(condition, context) is expected


def test_a_key_s_values_are_alternatives():
    assert _connect_allowed_when({"StringEquals": {"iot:ClientId": ["bulb-2", "bulb-1"]}})
    assert not _connect_allowed_when({"StringEquals": {"iot:ClientId": ["bulb-2", "bulb-3"]}})


def test_a_negated_operator_holds_only_when_no_value_matches():
    condition = {"StringNotEquals": {"iot:ClientId": ["bulb-2", "bulb-1"]}}
    assert not _connect_allowed_when(condition)


def test_every_key_under_an_operator_must_hold():
    condition = {
        "StringEquals": {"iot:ClientId": "bulb-1", "iot:Certificate.Subject.Country": "FR"}
    }
    assert not _connect_allowed_when(condition)


def test_every_operator_of_a_block_must_hold():
    condition = {
        "StringEquals": {"iot:ClientId": "bulb-1"},
        "Bool": {"iot:Connection.Thing.IsAttached": "false"},
    }
    assert not _connect_allowed_when(condition)


def test_a_missing_key_fails_an_operator_and_passes_its_negation():
    assert not _connect_allowed_when({"StringLike": {"iot:Connection.Thing.ThingTypeName": "*"}})
    assert _connect_allowed_when({"StringNotLike": {"iot:Connection.Thing.ThingTypeName": "x"}})


def test_if_exists_passes_a_missing_key_and_tests_a_present_one():
    missing = {"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "lamp"}}
    present = {"StringEqualsIfExists": {"iot:ClientId": "bulb-2"}}
    assert _connect_allowed_when(missing)
    assert not _connect_allowed_when(present)


def test_null_tests_whether_a_key_is_missing():
    assert _connect_allowed_when({"Null": {"iot:Connection.Thing.ThingTypeName": "true"}})
    assert not _connect_allowed_when({"Null": {"iot:Connection.Thing.ThingName": "true"}})
    assert _connect_allowed_when({"Null": {"iot:Connection.Thing.ThingName": "false"}})


def test_for_all_values_passes_a_missing_key_and_for_any_value_fails_it():
    key = "iot:Connection.Thing.ThingTypeName"
    assert _connect_allowed_when({"ForAllValues:StringEquals": {key: "lamp"}})
    assert not _connect_allowed_when({"ForAnyValue:StringEquals": {key: "lamp"}})


def test_policy_variables_in_condition_values_are_substituted():
    condition = {"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}
    assert _connect_allowed_when(condition)
    assert not _connect_allowed_when(condition, {**THING, "iot:ClientId": "bulb-2"})


def test_a_value_whose_variable_has_no_value_matches_nothing():
    condition = {"StringLike": {"iot:ClientId": "${iot:Connection.Thing.ThingTypeName}*"}}
    assert not _connect_allowed_when(condition)


def test_condition_key_names_are_matched_case_insensitively():
    assert _connect_allowed_when({"Bool": {"IOT:connection.thing.isattached": "true"}})
    assert not _connect_allowed_when({"Bool": {"IOT:connection.thing.isattached": "false"}})


def test_a_key_the_emulator_cannot_know_is_missing():
    assert not _connect_allowed_when({"StringLike": {"iot:Certificate.Issuer.CommonName": "*"}})
    assert _connect_allowed_when({"StringLikeIfExists": {"iot:DomainName": "nothing*"}})


def test_a_deny_applies_only_when_its_condition_holds():
    condition = {"StringNotEquals": {"iot:Certificate.Subject.Country": "DE"}}
    assert _connect_allowed_when(condition, effect="Deny")
    assert not _connect_allowed_when(
        condition, {**THING, "iot:Certificate.Subject.Country": "FR"}, "Deny"
    )


def test_an_operator_iam_does_not_define_makes_the_statement_never_apply():
    assert not _connect_allowed_when({"StringEqual": {"iot:ClientId": "bulb-1"}})
    assert _connect_allowed_when({"StringEqual": {"iot:ClientId": "bulb-1"}}, effect="Deny")


def test_a_condition_that_is_not_an_object_of_operators_is_a_policy_error():
    document = {"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": []}}
    with pytest.raises(policy.PolicyError):
        policy.parse(json.dumps(document))


def test_a_connection_keeps_the_condition_keys_and_variables_its_policies_use():
    document = {
        "Statement": {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceIp": "${iot:Certificate.Subject.Country}"}},
        }
    }
    variables = {**THING, "aws:SourceIp": "127.0.0.1"}
    kept = policy.only(variables, [policy.parse(json.dumps(document))])
    assert kept == {"aws:SourceIp": "127.0.0.1", "iot:Certificate.Subject.Country": "DE"}
