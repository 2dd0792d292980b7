"""Policy evaluation: what a provisioned device may do."""

from __future__ import annotations

import fnmatch
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.emulator import policy


def _policy(*statements):
    return [policy.parse(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))]


def _allow(action, resource):
    return {"Effect": "Allow", "Action": action, "Resource": resource}


CLIENT = policy.arn("client", "bulb-1")
VARS = {"iot:ClientId": "bulb-1", "iot:Connection.Thing.ThingName": "bulb-1"}


def test_nothing_is_allowed_without_an_allow():
    assert not policy.allowed(_policy(_allow("iot:Publish", "*")), "iot:Connect", CLIENT, VARS)


def test_an_explicit_deny_wins_over_any_allow():
    policies = _policy(
        _allow("iot:*", "*"), {"Effect": "Deny", "Action": "iot:Connect", "Resource": CLIENT}
    )
    assert not policy.allowed(policies, "iot:Connect", CLIENT, VARS)
    assert policy.allowed(policies, "iot:Publish", policy.arn("topic", "a"), VARS)


@pytest.mark.parametrize(
    ("action", "resource", "expected"),
    [
        ("iot:Connect", "arn:aws:iot:*:*:client/${iot:ClientId}", True),
        ("iot:Connect", "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}", True),
        ("iot:Connect", "arn:aws:iot:us-east-1:123456789012:client/bulb-?", True),
        ("iot:Connect", "arn:aws:iot:*:*:client/other", False),
        ("IOT:CONNECT", "arn:aws:iot:*:*:client/*", True),
        ("iot:Conn*", "arn:aws:iot:*:*:client/*", True),
        ("iot:Connect", "arn:aws:iot:*:*:client/${iot:Certificate.Subject.Country}", False),
    ],
)
def test_wildcards_and_policy_variables(action, resource, expected):
    assert (
        policy.allowed(_policy(_allow(action, resource)), "iot:Connect", CLIENT, VARS) is expected
    )


def test_topics_are_matched_case_sensitively():
    policies = _policy(_allow("iot:Publish", "arn:aws:iot:*:*:topic/dt/${iot:ClientId}/*"))
    assert policy.allowed(policies, "iot:Publish", policy.arn("topic", "dt/bulb-1/t"), VARS)
    assert not policy.allowed(policies, "iot:Publish", policy.arn("topic", "DT/bulb-1/t"), VARS)


def test_a_document_without_statements_is_refused():
    with pytest.raises(policy.PolicyError):
        policy.parse('{"Version": "2012-10-17"}')


_GLOB_CHARS = st.sampled_from("ab/*?[]")


@given(st.text(_GLOB_CHARS, max_size=8), st.text(_GLOB_CHARS, max_size=8))
def test_wildcards_match_as_fnmatch_with_brackets_plain(value, pattern):
    assert policy.glob(value, pattern) == fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def test_a_wildcard_takes_any_characters_slashes_too_and_a_question_mark_one():
    assert policy.glob("topic/dt/bulb-1/status", "topic/*/bulb-1/*")
    assert policy.glob("topic/dt/bulb-1/", "topic/*/bulb-1/*")
    assert not policy.glob("topic/dt/bulb-12/status", "topic/*/bulb-1/*x")
    assert policy.glob("bulb-1", "bulb-?")
    assert not policy.glob("bulb-10", "bulb-?")
    assert policy.glob("a[1]", "a[1]")


def test_a_connection_keeps_only_the_variables_its_policies_use_and_gets_the_same_answers():
    policies = _policy(
        _allow("iot:Connect", "arn:aws:iot:*:*:client/${iot:ClientId}"),
        _allow("iot:Publish", "arn:aws:iot:*:*:topic/${iot:Certificate.Subject.Country}/*"),
        _allow("iot:Subscribe", "arn:aws:iot:*:*:topicfilter/${iot:Connection.Thing.ThingName}"),
    )
    parameters = {"AWS::IoT::Certificate::Country": "DE", "AWS::IoT::Certificate::Id": "ab" * 32}
    variables = policy.connection_variables("bulb-1", "ab" * 32, parameters, None)
    kept = policy.only(variables, policies)
    assert kept == {"iot:ClientId": "bulb-1", "iot:Certificate.Subject.Country": "DE"}
    for action, resource in [
        ("iot:Connect", CLIENT),
        ("iot:Connect", policy.arn("client", "bulb-2")),
        ("iot:Publish", policy.arn("topic", "DE/bulb-1")),
        ("iot:Publish", policy.arn("topic", "FR/bulb-1")),
        ("iot:Subscribe", policy.arn("topicfilter", "bulb-1")),  # no thing: never
    ]:
        expected = policy.allowed(policies, action, resource, variables)
        assert policy.allowed(policies, action, resource, kept) == expected, (action, resource)
