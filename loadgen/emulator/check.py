"""`loadgen template check`: what will go wrong with a template before a cloud run
finds out. Each finding names the location and the fix. What AWS would refuse
outright comes from ``structure``, the same check the emulator refuses a config
with; the rest (fleet profile, policy) needs the scenario."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen.certs.profile import DEFAULT_PROFILE, DevicePlanner, Profile, load_profile
from loadgen.certs.subject import FIELDS
from loadgen.emulator import conditions, policy
from loadgen.emulator import template as tpl
from loadgen.emulator.errors import ClientError
from loadgen.emulator.names import Refusal, resource_refused
from loadgen.emulator.parameters import subject_parameters
from loadgen.emulator.render import read_template, registration_config
from loadgen.emulator.serve import read_registration_config
from loadgen.emulator.structure import (
    Problem,
    body_problems,
    config_problems,
    template_problems,
)
from loadgen.load.plan import device_client_id, render
from loadgen.scenario.schema import Publish, Scenario, Subscribe

_SAMPLES = 50
_BY_PARAMETER = {tpl.PARAMETER_PREFIX + f.jitp_parameter: f.name for f in FIELDS}


@dataclass(frozen=True)
class Finding:
    error: bool
    where: str
    message: str

    def __str__(self) -> str:
        return f"{'error' if self.error else 'warning'}: {self.where}: {self.message}"


@dataclass(frozen=True)
class Loaded:
    """A config or readable template as read: the template (None when its body is
    not one) and what the structural check found."""

    template: Any
    problems: list[Problem]


def load_config(path: Path) -> Loaded:
    """A registration config or a readable template (.yaml/.yml, or JSON with
    Resources and no templateBody), read and checked as the emulator checks it.
    A file that cannot be read or parsed is a ``ConfigError`` (exit 2)."""
    if path.suffix in (".yaml", ".yml"):
        return _readable(read_template(path))
    data = read_registration_config(path)
    if isinstance(data, dict) and "Resources" in data and "templateBody" not in data:
        return _readable(data)
    template, problems = config_problems(data)
    return Loaded(template, problems)


def _readable(template: Any) -> Loaded:
    """A readable template, with the size of the body `template render` makes of it."""
    problems = template_problems(template)
    if isinstance(template, dict):
        problems += body_problems(registration_config(template, "")["templateBody"])
    return Loaded(template, problems)


def check(loaded: Loaded, scenario: Scenario | None) -> list[Finding]:
    findings = [Finding(True, p.where, p.message) for p in loaded.problems]
    if loaded.problems or not isinstance(loaded.template, dict):
        return findings  # the checks below evaluate the template: it must be sound
    template = loaded.template
    profile, seed = _fleet_profile(scenario)
    findings += _parameters(template, profile)
    findings += _names(template, scenario, profile, seed)
    findings += _policies(template, scenario, profile, seed)
    return findings


def _fleet_profile(scenario: Scenario | None) -> tuple[Profile | None, int]:
    if scenario is None:
        return None, 0
    fleet = scenario.fleet
    profile = load_profile(fleet.profile) if fleet.profile is not None else DEFAULT_PROFILE
    return profile, fleet.seed or 0


def _parameters(template: dict[str, Any], profile: Profile | None) -> list[Finding]:
    findings: list[Finding] = []
    if profile is None:
        return findings
    subject = profile.subject.set_fields()
    for parameter in sorted(tpl.referenced_parameters(template)):
        field = _BY_PARAMETER.get(parameter)
        if field is None:
            continue
        if field not in subject:
            findings.append(
                Finding(
                    True,
                    parameter,
                    (
                        f"the fleet's profile sets no {field}: every device will fail to "
                        f"provision; add subject.{field} to the profile or stop referencing it"
                    ),
                )
            )
        elif (fraction := profile.faults.get(f"missing_{field}", 0)) > 0:
            findings.append(
                Finding(
                    False,
                    parameter,
                    (
                        f"the profile's missing_{field} fault leaves it out of {fraction:.1%} of "
                        "certificates: those devices will fail to provision (ClientError)"
                    ),
                )
            )
    return findings


def _names(
    template: dict[str, Any], scenario: Scenario | None, profile: Profile | None, seed: int
) -> list[Finding]:
    """Names and attributes the sampled devices' resources render that AWS IoT
    refuses, as provisioning refuses them (names.resource_refused): an error
    when every sampled device renders one, else a warning. The first refusal
    of each resource, with its device's value."""
    refusals: dict[str, list[Refusal]] = {}
    samples = _sample_devices(template, scenario, profile, seed)
    for _, _, resources in samples:
        for resource in resources:
            if (why := resource_refused(resource.type, resource.properties)) is not None:
                refusals.setdefault(resource.logical_id, []).append(why)
    findings = []
    for logical_id, refused in refusals.items():
        every = len(refused) == len(samples)
        share = "every device" if every else f"{len(refused)} of {len(samples)} devices sampled"
        findings.append(
            Finding(
                every,
                f"Resources.{logical_id}.Properties",
                (
                    f"{refused[0]}: {share} will fail to provision (ClientError); "
                    "render values AWS IoT accepts"
                ),
            )
        )
    return findings


def _policies(
    template: dict[str, Any], scenario: Scenario | None, profile: Profile | None, seed: int
) -> list[Finding]:
    findings: list[Finding] = []
    inline = {
        logical_id: spec.get("Properties", {}).get("PolicyDocument")
        for logical_id, spec in template["Resources"].items()
        if spec.get("Type") == "AWS::IoT::Policy"
    }
    if not inline:
        return findings
    statements: dict[str, list[policy.Statement]] = {}
    for logical_id, document in inline.items():
        if not isinstance(document, str):
            continue  # a named policy (PolicyName) lives in the account, not here
        # It parses: the structural check refused the template otherwise.
        statements[logical_id] = policy.parse(document)
        for i, statement in enumerate(statements[logical_id]):
            if statement.condition is not None:
                at = f"Resources.{logical_id}.PolicyDocument.Statement[{i}].Condition"
                findings += [Finding(False, at, m) for m in _unknowable(statement)]
    if not statements:
        return findings
    policies = list(statements.values())
    where = f"Resources.{', '.join(statements)}"
    for device, variables, _ in _sample_devices(template, scenario, profile, seed):
        client = device["client_id"]
        if not policy.allowed(policies, "iot:Connect", policy.arn("client", client), variables):
            findings.append(
                Finding(
                    True,
                    where,
                    (
                        f"no statement allows iot:Connect for client id {client!r}: devices will "
                        "provision, then be refused at CONNECT; add an Allow for iot:Connect on "
                        "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName} (when the "
                        "client id is the thing name) or client/${iot:ClientId}"
                    ),
                )
            )
            return findings
        for topic in device["topics"]:
            if not policy.allowed(policies, "iot:Publish", policy.arn("topic", topic), variables):
                findings.append(
                    Finding(
                        True,
                        where,
                        (
                            f"the scenario publishes to {topic!r}, which the policy denies: AWS "
                            "closes the connection; allow iot:Publish on that topic"
                        ),
                    )
                )
                return findings
        for topic_filter in device["filters"]:
            resource = policy.arn("topicfilter", topic_filter)
            if not policy.allowed(policies, "iot:Subscribe", resource, variables):
                findings.append(
                    Finding(
                        True,
                        where,
                        (
                            f"the scenario subscribes to {topic_filter!r}, which the policy "
                            "denies: the SUBACK refuses it (0x87) and the device ends "
                            "not_authorized; allow iot:Subscribe on topicfilter/"
                            f"{topic_filter}"
                        ),
                    )
                )
                return findings
    return findings


def _unknowable(statement: policy.Statement) -> list[str]:
    """What the emulator cannot decide in a statement's condition as AWS will."""
    assert statement.condition is not None
    effect = "Allow" if statement.allow else "Deny"
    out = [
        f"{name} is not a condition operator IAM defines: the emulator never applies this "
        f"{effect} (AWS may refuse the policy)"
        for name in statement.condition.unknown_operators
    ]
    for key in sorted(statement.condition.keys):
        if key == conditions.SOURCE_IP:
            out.append(
                f"{key} is the device's address as the emulator sees it (127.0.0.1 for a "
                "local run), not the public address AWS sees: this condition may decide "
                "otherwise on AWS"
            )
        elif not conditions.known(key):
            out.append(
                f"the emulator has no value for {key}: it evaluates this {effect}'s condition "
                "as if the key were absent, where AWS may have a value"
            )
    return out


def _sample_devices(
    template: dict[str, Any], scenario: Scenario | None, profile: Profile | None, seed: int
) -> list[tuple[dict[str, Any], dict[str, str], list[tpl.Resource]]]:
    """A few of the scenario's devices as the policy will see them, and the
    resources provisioning makes of their certificates; without a scenario, one
    device named like the default profile's."""
    from loadgen.certs.store import Device

    planner = DevicePlanner(profile or DEFAULT_PROFILE, seed)
    out = []
    for index in range(_SAMPLES if scenario is not None else 1):
        plan = planner.plan(index)
        if plan.fault is not None:
            continue
        manifest = Device(
            index, plan.client_id, "0" * 64, plan.subject, plan.key_type.value, None, "", "", "", ""
        )
        template_client = scenario.mqtt.client_id if scenario is not None else "{client_id}"
        client_id = device_client_id(template_client, manifest)
        parameters = subject_parameters(plan.subject, "0" * 64)
        try:
            resources = tpl.evaluate(template, parameters)
        except ClientError:
            continue  # reported by the parameter checks
        things = {
            r.properties.get("ThingName"): r.properties
            for r in resources
            if r.type == "AWS::IoT::Thing"
        }
        thing = client_id if client_id in things else None
        properties = things[client_id] if thing is not None else {}
        thing_type = properties.get("ThingTypeName")
        attributes = properties.get("AttributePayload") or {}
        variables = policy.connection_variables(
            client_id,
            "0" * 64,
            parameters,
            thing,
            str(thing_type) if thing_type else None,
            thing_attributes={str(k): str(v) for k, v in attributes.items()},
        )
        topics, filters = [], []
        if scenario is not None:
            for step in scenario.after_connect:
                if isinstance(step, Publish):
                    topics.append(render(step.publish.topic, manifest, client_id))
                elif isinstance(step, Subscribe):
                    filters.append(render(step.subscribe.topic, manifest, client_id))
        device = {"client_id": client_id, "topics": topics, "filters": filters}
        out.append((device, variables, resources))
    return out
