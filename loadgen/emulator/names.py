"""The names, attributes and policy documents AWS IoT accepts (its API model's
patterns and its quotas): the control plane refuses others, and so does
provisioning, when a template renders one (a thing named ``Acme Lighting
bulb-1``, say)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# ThingName, ThingTypeName, ThingGroupName.
NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
# AWS IoT's thing types page: "Things with a thing type can have up to 50
# attributes. Things without a thing type can have up to three attributes."
MAX_ATTRIBUTES = 3
MAX_ATTRIBUTES_WITH_TYPE = 50
# The static thing groups page: "You can add a thing to a maximum of 10 groups."
MAX_GROUPS_PER_THING = 10
# AWS IoT Core quotas: "Maximum number of policies that can be attached to a
# certificate or Amazon Cognito identity: 10"; "Maximum policy document size:
# 2048 characters (excluding white space)".
MAX_POLICIES_PER_CERTIFICATE = 10
MAX_POLICY_DOCUMENT = 2048


@dataclass(frozen=True)
class Refusal:
    """Why AWS IoT refuses a name or an attribute: ``what`` (a ThingName, an
    attribute's value), the ``value`` refused, and the ``rule`` it breaks."""

    what: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"{self.what} {self.value!r} {self.rule}"

    @property
    def general(self) -> str:
        """Without the value: devices whose names break a rule alike share it."""
        return f"{self.what} {self.rule}"


def refused(
    names: Iterable[tuple[str, str]], attributes: dict[str, str] | None = None
) -> Refusal | None:
    """Why AWS IoT would refuse one of ``names`` (each ``(what, name)``, ``what``
    a ThingName, ThingTypeName, ThingGroupName or PolicyName) or one of
    ``attributes``; None when it takes them all."""
    for what, name in names:
        pattern = POLICY_NAME if what == "PolicyName" else NAME
        if not pattern.fullmatch(name):
            return Refusal(what, name, f"is not a name AWS IoT accepts ({pattern.pattern})")
    for key, value in (attributes or {}).items():
        if not ATTRIBUTE_NAME.fullmatch(key):
            return Refusal(
                "attribute name", key, f"is not one AWS IoT accepts ({ATTRIBUTE_NAME.pattern})"
            )
        if not ATTRIBUTE_VALUE.fullmatch(value):
            return Refusal(
                f"attribute {key}: value",
                value,
                f"is not one AWS IoT accepts ({ATTRIBUTE_VALUE.pattern})",
            )
    return None


def resource_refused(kind: str, properties: dict[str, Any]) -> Refusal | None:
    """Why AWS IoT would refuse the names of an evaluated template resource of
    type ``kind`` (a thing's name, type, groups and attributes; a policy's
    name), as provisioning refuses them; None when it takes them all."""
    if kind == "AWS::IoT::Policy":
        name = properties.get("PolicyName")
        return refused([("PolicyName", str(name))]) if name is not None else None
    if kind != "AWS::IoT::Thing":
        return None
    named = [("ThingName", str(properties.get("ThingName") or ""))]
    groups = sorted({str(g) for g in properties.get("ThingGroups") or []})
    named += [("ThingGroupName", g) for g in groups]
    if (type_name := properties.get("ThingTypeName")) is not None:
        named.append(("ThingTypeName", str(type_name)))
    attributes = {str(k): str(v) for k, v in (properties.get("AttributePayload") or {}).items()}
    return refused(named, attributes)


def too_many_attributes(count: int, typed: bool) -> str | None:
    """Why AWS IoT would refuse a thing of ``count`` attributes, ``typed`` when it
    has a thing type; None when it takes them."""
    limit = MAX_ATTRIBUTES_WITH_TYPE if typed else MAX_ATTRIBUTES
    if count <= limit:
        return None
    kind = "with a thing type" if typed else "without a thing type"
    return f"{count} attributes: AWS IoT allows a thing {kind} {limit}"


def too_many_groups(count: int) -> str | None:
    """Why AWS IoT would refuse a thing in ``count`` thing groups, if it would."""
    if count <= MAX_GROUPS_PER_THING:
        return None
    return f"{count} thing groups: AWS IoT adds a thing to at most {MAX_GROUPS_PER_THING}"


def too_many_policies(count: int) -> str | None:
    """Why AWS IoT would refuse ``count`` policies on one certificate, if it would."""
    if count <= MAX_POLICIES_PER_CERTIFICATE:
        return None
    return (
        f"{count} policies: AWS IoT attaches at most {MAX_POLICIES_PER_CERTIFICATE} "
        "to a certificate"
    )


def document_refused(document: str) -> str | None:
    """Why AWS IoT would refuse ``document`` as a policy (CreatePolicy's
    MalformedPolicyException); None when it takes it."""
    # Not at the top: policy imports template, which imports structure, which
    # imports this module.
    from loadgen.emulator import policy

    size = len("".join(document.split()))
    if size > MAX_POLICY_DOCUMENT:
        return (
            f"the policy document is {size:,} characters without whitespace, over AWS's "
            f"{MAX_POLICY_DOCUMENT:,}"
        )
    try:
        policy.parse(document)
    except policy.PolicyError as exc:
        return str(exc)
    return None
