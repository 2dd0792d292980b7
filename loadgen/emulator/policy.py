"""AWS IoT policy evaluation: Allow and Deny statements over actions and resource
ARNs, with wildcards and policy variables, and their Condition blocks
(``conditions``).

An explicit Deny wins, then any Allow; otherwise the request is denied. A
statement whose resource uses a policy variable that has no value for the
connection does not match (as on AWS, where it cannot grant anything); nor does
one whose condition does not hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loadgen.emulator.conditions import (
    ATTRIBUTES,
    SOURCE_IP,
    Condition,
    ConditionError,
    compile_condition,
)
from loadgen.emulator.template import PARAMETER_PREFIX
from loadgen.emulator.wildcards import VARIABLE, expand, glob

REGION = "us-east-1"
ACCOUNT = "123456789012"


class PolicyError(ValueError):
    """A policy document that does not parse."""


@dataclass(frozen=True)
class Statement:
    allow: bool
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    # Compiled with the document (the emulator parses each document once), and
    # tested only once action and resource match: a statement without one costs
    # nothing more.
    condition: Condition | None = None
    # The policy variables and condition keys it looks at: what a connection
    # keeps of its request context.
    uses: frozenset[str] = frozenset()


def parse(document: str) -> list[Statement]:
    try:
        data = json.loads(document)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PolicyError(f"policy document is not JSON: {exc}") from None
    raw = data.get("Statement") if isinstance(data, dict) else None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise PolicyError("policy document has no Statement")
    statements = []
    for item in raw:
        if not isinstance(item, dict):
            raise PolicyError("a statement is not a JSON object")
        effect = item.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"statement Effect {effect!r}")
        actions, resources = _strings(item.get("Action")), _strings(item.get("Resource"))
        condition = None
        if "Condition" in item:
            try:
                condition = compile_condition(item["Condition"])
            except ConditionError as exc:
                raise PolicyError(str(exc)) from None
        uses = {name for pattern in actions + resources for name in VARIABLE.findall(pattern)}
        if condition is not None:
            uses |= condition.keys | condition.variables
        statements.append(
            Statement(effect == "Allow", actions, resources, condition, frozenset(uses))
        )
    return statements


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def connection_variables(
    client_id: str,
    certificate_id: str,
    parameters: dict[str, str],
    thing_name: str | None,
    thing_type: str | None = None,
    source_ip: str | None = None,
    thing_attributes: dict[str, str] | None = None,
) -> dict[str, str]:
    """The policy variables of a connection, which are its condition keys too:
    its client id, its certificate (the JITP parameters, by AWS's variable
    names), its thing when known, and its peer's address."""
    variables = {"iot:ClientId": client_id, "iot:Certificate.Id": certificate_id}
    if source_ip is not None:
        variables[SOURCE_IP] = source_ip
    for name, value in parameters.items():
        short = name.removeprefix(PARAMETER_PREFIX)
        variables[f"iot:Certificate.Subject.{'State' if short == 'StateName' else short}"] = value
    variables["iot:Connection.Thing.IsAttached"] = "true" if thing_name else "false"
    if thing_name:
        variables["iot:Connection.Thing.ThingName"] = thing_name
        if thing_type:
            variables["iot:Connection.Thing.ThingTypeName"] = thing_type
        for name, value in (thing_attributes or {}).items():
            variables[f"{ATTRIBUTES}{name}]"] = value
    return variables


def only(variables: dict[str, str], policies: list[list[Statement]]) -> dict[str, str]:
    """Those of ``variables`` that ``policies`` refer to: the same answers from
    ``allowed`` for these policies, in what a connection keeps."""
    used = uses(policies)
    return {name: value for name, value in variables.items() if name in used}


def uses(policies: list[list[Statement]]) -> frozenset[str]:
    """The policy variables and condition keys ``policies`` look at."""
    return frozenset().union(*(s.uses for statements in policies for s in statements))


def arn(kind: str, name: str) -> str:
    """client/ID, topic/NAME or topicfilter/FILTER in the emulated account."""
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{name}"


def _matches(
    patterns: tuple[str, ...], value: str, *, fold: bool, variables: dict[str, str]
) -> bool:
    for pattern in patterns:
        expanded = expand(pattern, variables) if "${" in pattern else pattern
        if expanded is None:
            continue
        if fold:
            if glob(value.lower(), expanded.lower()):
                return True
        elif glob(value, expanded):
            return True
    return False


def allowed(
    policies: list[list[Statement]], action: str, resource: str, variables: dict[str, str]
) -> bool:
    verdict = False
    for statements in policies:
        for s in statements:
            if not _matches(s.actions, action, fold=True, variables=variables):
                continue
            if not _matches(s.resources, resource, fold=False, variables=variables):
                continue
            if s.condition is not None and not s.condition.holds(variables):
                continue
            if not s.allow:
                return False
            verdict = True
    return verdict
