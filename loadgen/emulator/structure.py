"""What AWS refuses when a registration config is registered: its shape, and every
intrinsic function of its template, each problem with a JSON-path-like location
(``Resources.thing.Properties.ThingName.Fn::Join[1][0]``).

One checker for every path: the emulator's loading of a config refuses on the
first problem, and ``loadgen template check`` lists them all as findings.
Whatever passes here can only fail at provisioning time for a reason that
depends on the certificate (a subject field it lacks, an index past the end of
a list it computed), as on AWS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loadgen.emulator import names
from loadgen.nesting import MAX_DEPTH, parse_json, too_deep

PARAMETER_PREFIX = "AWS::IoT::Certificate::"
PARAMETERS = tuple(
    PARAMETER_PREFIX + name
    for name in (
        "Country",
        "Organization",
        "OrganizationalUnit",
        "DistinguishedNameQualifier",
        "StateName",
        "CommonName",
        "SerialNumber",
        "Id",
    )
)
RESOURCE_TYPES = ("AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy")
OVERRIDES = ("MERGE", "REPLACE", "DO_NOTHING", "FAIL")
# [PT], Override settings: "When you declare a thing resource, you can specify
# OverrideSettings for" its attributes, type and groups, "When you declare a
# certificate resource ... for the Status property", and "OverrideSettings are
# not available for policy resources". MERGE is "Valid only for the ThingGroups
# and AttributePayload properties of a thing".
OVERRIDABLE = {
    "AWS::IoT::Thing": ("AttributePayload", "ThingTypeName", "ThingGroups"),
    "AWS::IoT::Certificate": ("Status",),
    "AWS::IoT::Policy": (),
}
MERGEABLE = ("AttributePayload", "ThingGroups")
# [PT]'s prose names a thing's overridable properties ATTRIBUTE_PAYLOAD,
# THING_TYPE_NAME and THING_GROUPS, its examples AttributePayload and so on:
# both are taken, as the same property.
_OVERRIDE_ALIASES = {
    "ATTRIBUTE_PAYLOAD": "AttributePayload",
    "THING_TYPE_NAME": "ThingTypeName",
    "THING_GROUPS": "ThingGroups",
}


def override_key(key: str) -> str:
    """The property an OverrideSettings key stands for."""
    return _OVERRIDE_ALIASES.get(key, key)


# [PT]: a certificate's "Status: Optional. String that can be ACTIVE or
# INACTIVE. Defaults to ACTIVE." Its own fleet provisioning example writes
# "Active", so the case is not what AWS goes by.
CERTIFICATE_STATUSES = ("ACTIVE", "INACTIVE")
NO_VALUE = "AWS::NoValue"
# The property a Ref to a resource's logical id gives (a certificate's, when
# its template gives no CertificateId, is the certificate's own id).
NAME_PROPERTY = {
    "AWS::IoT::Thing": "ThingName",
    "AWS::IoT::Certificate": "CertificateId",
    "AWS::IoT::Policy": "PolicyName",
}
SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")
# AWS's RegistrationConfig limits: templateBody up to 10,240 characters, roleArn
# 20 to 2,048 and an IAM role's ARN.
MAX_TEMPLATE_BODY = 10_240
ROLE_ARN = re.compile(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
MAX_ROLE_ARN = 2048

VALUE_FUNCTIONS = (
    "Fn::Join",
    "Fn::Select",
    "Fn::Split",
    "Fn::Sub",
    "Fn::FindInMap",
    "Fn::If",
)
CONDITION_FUNCTIONS = ("Fn::Equals", "Fn::And", "Fn::Or", "Fn::Not")
_SUPPORTED = "Ref, " + ", ".join(VALUE_FUNCTIONS + CONDITION_FUNCTIONS)
# What each argument may be, besides a literal of the right kind (CloudFormation's
# "supported functions" for each, narrowed to those JITP has).
_LIST_FUNCTIONS = ("Fn::Split", "Fn::FindInMap", "Fn::If", "Fn::Select")
_STRING_FUNCTIONS = ("Ref", "Fn::Join", "Fn::Select", "Fn::Sub", "Fn::FindInMap", "Fn::If")
_KEY_FUNCTIONS = ("Ref", "Fn::FindInMap")
_MIN_CONDITIONS, _MAX_CONDITIONS = 2, 10


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def config_problems(config: Any) -> tuple[Any, list[Problem]]:
    """The template a registration config holds (None when its body is not one)
    and everything AWS would refuse in the config."""
    if not isinstance(config, dict):
        return None, [Problem("registration config", "must be a JSON object")]
    problems: list[Problem] = []
    template = None
    body = config.get("templateBody")
    if body is None:
        # Newer accounts may attach a template by name; the emulator has none by name.
        by_name = " (the emulator has no templates by name)" if "templateName" in config else ""
        problems.append(
            Problem("templateBody", f"missing: the template, as an escaped JSON string{by_name}")
        )
    elif not isinstance(body, str):
        problems.append(
            Problem(
                "templateBody",
                f"must be the template as an escaped JSON string, not {_kind(body)} "
                "(AWS refuses it; `loadgen template render` makes one)",
            )
        )
    else:
        problems += body_problems(body)
        try:
            # strict=False: the reference document's readable example has raw
            # line breaks inside strings, and AWS accepts it.
            template = parse_json(body, strict=False)
        except ValueError as exc:
            problems.append(Problem("templateBody", f"not JSON: {exc}"))
        else:
            problems += template_problems(template)
    role = config.get("roleArn")
    if role is None:
        problems.append(Problem("roleArn", "missing: the IAM role JITP provisions with"))
    elif not isinstance(role, str) or len(role) > MAX_ROLE_ARN or not ROLE_ARN.fullmatch(role):
        problems.append(
            Problem(
                "roleArn",
                f"{role!r} is not an IAM role's ARN (arn:aws:iam::ACCOUNT:role/NAME): "
                "the role JITP provisions with",
            )
        )
    return template, problems


def certificate_status(value: Any) -> str | None:
    """The status a template's certificate Status gives (ACTIVE, INACTIVE), None
    when AWS would refuse it."""
    if isinstance(value, str) and value.upper() in CERTIFICATE_STATUSES:
        return value.upper()
    return None


def body_problems(body: str) -> list[Problem]:
    """What AWS refuses in a templateBody's text, whatever the template says."""
    if len(body) <= MAX_TEMPLATE_BODY:
        return []
    return [
        Problem(
            "templateBody",
            f"{len(body):,} characters, over AWS's {MAX_TEMPLATE_BODY:,}: "
            "move the policy to a named policy (PolicyName) or shorten it",
        )
    ]


def template_problems(template: Any) -> list[Problem]:
    """Everything AWS would refuse in a provisioning template."""
    if not isinstance(template, dict):
        return [Problem("template", f"must be a JSON object, not {_kind(template)}")]
    if too_deep(template):
        # The checker walks values by recursion: a template of hundreds of
        # levels ended in a RecursionError traceback.
        return [Problem("template", f"nested deeper than {MAX_DEPTH} levels")]
    return _Checker(template).run()


def _kind(value: Any) -> str:
    """What a JSON value is, with its article: "an object", "a list"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _is_function(node: Any) -> str | None:
    """The intrinsic function (or Condition) a node calls, if it is one."""
    if isinstance(node, dict) and len(node) == 1:
        (key,) = node
        if key in ("Ref", "Condition") or (isinstance(key, str) and key.startswith("Fn::")):
            return str(key)
    return None


def _condition_references(node: Any) -> list[str]:
    """The conditions a condition's body names: by {"Condition": name}, and by an
    Fn::If's first argument. Walked without recursion: a body nested thousands
    deep is JSON that loads."""
    found: list[str] = []
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
            continue
        if not isinstance(item, dict):
            continue
        name = _is_function(item)
        named = item[name] if name == "Condition" else None
        if name == "Fn::If" and isinstance(item[name], list) and item[name]:
            named = item[name][0]
        if isinstance(named, str):
            found.append(named)
        pending.extend(reversed(list(item.values())))
    return found


def _circles(conditions: dict[str, Any]) -> list[list[str]]:
    """Each circle of conditions naming each other (A names B, B names A), as the
    names along it from the first found; once each, by a depth-first walk. The
    evaluator would recurse around one until Python's stack ran out, at every
    provisioning."""
    names = {name: _condition_references(body) for name, body in conditions.items()}
    done: set[str] = set()
    circles: list[list[str]] = []
    for start in names:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        branches = [iter(names[start])]
        while branches:
            following = next(branches[-1], None)
            if following is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                branches.pop()
                continue
            if following in on_path:
                circle = path[path.index(following) :]
                if not any(set(circle) == set(seen) for seen in circles):  # named twice
                    circles.append(circle)
            elif following in names and following not in done:
                path.append(following)
                on_path.add(following)
                branches.append(iter(names[following]))
    return circles


class _Checker:
    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template
        self.problems: list[Problem] = []
        parameters = template.get("Parameters")
        resources = template.get("Resources")
        conditions = template.get("Conditions")
        self.parameters = set(parameters) if isinstance(parameters, dict) else set()
        self.resources: dict[str, Any] = resources if isinstance(resources, dict) else {}
        self.conditions = set(conditions) if isinstance(conditions, dict) else set()
        mappings = template.get("Mappings")
        self.mappings: dict[str, Any] | None = mappings if isinstance(mappings, dict) else None

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def run(self) -> list[Problem]:
        self.check_parameters()
        self.check_mappings()
        self.check_resources()
        conditions = self.section("Conditions")
        for name, condition in conditions.items():
            self.condition(condition, f"Conditions.{name}")
        for cycle in _circles(conditions):
            self.add(
                f"Conditions.{cycle[0]}",
                f"refers to itself ({' -> '.join([*cycle, cycle[0]])}): "
                "CloudFormation refuses circular conditions, and no value could be found",
            )
        return self.problems

    def section(self, name: str) -> dict[str, Any]:
        """An optional top-level section ({} when absent or not an object)."""
        value = self.template.get(name)
        if isinstance(value, dict):
            return value
        if value is not None:
            self.add(name, f"must be an object, not {_kind(value)}")
        return {}

    def check_parameters(self) -> None:
        for name, spec in self.section("Parameters").items():
            where = f"Parameters.{name}"
            if name not in PARAMETERS:
                self.add(
                    where,
                    "JITP provides only AWS::IoT::Certificate:: Country, Organization, "
                    "OrganizationalUnit, DistinguishedNameQualifier, StateName, CommonName, "
                    "SerialNumber and Id: remove it or derive it from those",
                )
            elif not isinstance(spec, dict) or not isinstance(spec.get("Type"), str):
                self.add(where, 'must be an object with a Type ({"Type": "String"})')

    def check_mappings(self) -> None:
        for name, top in self.section("Mappings").items():
            if not isinstance(top, dict):
                self.add(f"Mappings.{name}", "must map top-level keys to objects")
                continue
            for key, second in top.items():
                if not isinstance(second, dict):
                    self.add(f"Mappings.{name}.{key}", "must map second-level keys to values")

    def check_resources(self) -> None:
        resources = self.template.get("Resources")
        if not isinstance(resources, dict):
            what = "missing" if resources is None else _kind(resources)
            self.add("Resources", f"{what}: a template needs a Resources object")
            return
        for logical_id, resource in resources.items():
            where = f"Resources.{logical_id}"
            if not isinstance(resource, dict) or resource.get("Type") not in RESOURCE_TYPES:
                kind = resource.get("Type") if isinstance(resource, dict) else resource
                self.add(
                    f"{where}.Type",
                    f"unsupported type {kind!r}: JITP creates {', '.join(RESOURCE_TYPES)}",
                )
                continue
            overrides = resource.get("OverrideSettings")
            if isinstance(overrides, dict):
                self.overrides(resource["Type"], overrides, f"{where}.OverrideSettings")
            elif overrides is not None:
                self.add(f"{where}.OverrideSettings", "must be an object")
            condition = resource.get("Condition")
            if condition is not None:
                self.condition_name(condition, f"{where}.Condition")
            properties = resource.get("Properties")
            if properties is None:
                properties = {}  # as the evaluator takes it
            if not isinstance(properties, dict):
                self.add(f"{where}.Properties", f"must be an object, not {_kind(properties)}")
                continue
            self.value(properties, f"{where}.Properties")
            document = properties.get("PolicyDocument")
            literal = isinstance(document, (dict, list)) and _is_function(document) is None
            if resource["Type"] == "AWS::IoT::Policy" and literal:
                self.add(
                    f"{where}.Properties.PolicyDocument",
                    "must be the policy as a JSON string, not a JSON object",
                )
            _PROPERTY_CHECKS[resource["Type"]](self, properties, f"{where}.Properties")
        self.policy_count()

    def overrides(self, kind: str, overrides: dict[str, Any], where: str) -> None:
        allowed = OVERRIDABLE[kind]
        if not allowed:
            self.add(where, "AWS allows no OverrideSettings on a policy resource: remove it")
            return
        for written, value in overrides.items():
            at, key = f"{where}.{written}", override_key(written)
            if key not in allowed:
                self.add(at, f"{kind} can override only {', '.join(allowed)}, not {key!r}")
            elif value not in OVERRIDES:
                self.add(at, f"{value!r} is not one of {', '.join(OVERRIDES)}")
            elif value == "MERGE" and key not in MERGEABLE:
                self.add(at, "MERGE is valid only for a thing's ThingGroups and AttributePayload")

    def thing_properties(self, properties: dict[str, Any], where: str) -> None:
        attributes = properties.get("AttributePayload")
        if isinstance(attributes, dict) and _is_function(attributes) is None:
            count = sum(not _may_vanish(v) for v in attributes.values())
            typed = "ThingTypeName" in properties
            if (why := names.too_many_attributes(count, typed)) is not None:
                self.add(f"{where}.AttributePayload", why)
        groups = properties.get("ThingGroups")
        if isinstance(groups, list):
            count = sum(not _may_vanish(g) for g in groups)
            if (why := names.too_many_groups(count)) is not None:
                self.add(f"{where}.ThingGroups", why)

    def certificate_properties(self, properties: dict[str, Any], where: str) -> None:
        status = properties.get("Status")
        if status is None or _is_function(status) is not None:
            return  # the default, ACTIVE, or known only at provisioning
        if certificate_status(status) is None:
            self.add(
                f"{where}.Status",
                f"{status!r} is not a status a template sets: ACTIVE or INACTIVE",
            )

    def policy_properties(self, properties: dict[str, Any], where: str) -> None:
        named, document = properties.get("PolicyName"), properties.get("PolicyDocument")
        if named is None and document is None:
            self.add(where, "needs PolicyName (an existing policy) or PolicyDocument")
        elif not (named is None or document is None or _may_vanish(named) or _may_vanish(document)):
            self.add(
                where,
                "PolicyName or PolicyDocument, not both: name an existing policy, or "
                "give a document (its policy is named for a hash of it)",
            )
        if isinstance(document, str) and (why := names.document_refused(document)) is not None:
            self.add(f"{where}.PolicyDocument", why)

    def policy_count(self) -> None:
        """Every policy a certificate could get, when more than AWS attaches."""
        policies = {
            repr(spec["Properties"].get("PolicyName") or spec["Properties"].get("PolicyDocument"))
            for spec in self.resources.values()
            if isinstance(spec, dict)
            and spec.get("Type") == "AWS::IoT::Policy"
            and spec.get("Condition") is None
            and isinstance(spec.get("Properties"), dict)
        }
        if (why := names.too_many_policies(len(policies))) is not None:
            self.add("Resources", f"{why}: the template's policies without a Condition")

    # -- values -------------------------------------------------------------------

    def value(self, node: Any, where: str) -> None:
        """A resource property value: literals, and the value functions."""
        name = _is_function(node)
        if name is not None and name != "Condition":  # a plain key outside Conditions
            self.function(name, node[name], where, in_conditions=False)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                self.value(item, f"{where}[{i}]")
        elif isinstance(node, dict):
            for key, item in node.items():
                if key == "Ref" or (isinstance(key, str) and key.startswith("Fn::")):
                    self.add(
                        f"{where}.{key}",
                        f"{key} must be the only key of its object (it has {len(node)})",
                    )
                self.value(item, f"{where}.{key}")

    def condition(self, node: Any, where: str) -> None:
        """A condition: a condition function, or a Condition naming another."""
        name = _is_function(node)
        if name in CONDITION_FUNCTIONS or name in ("Condition", "Fn::If"):
            assert name is not None
            self.function(name, node[name], where, in_conditions=True)
        else:
            self.add(
                where,
                "a condition must be Fn::Equals, Fn::And, Fn::Or, Fn::Not, Fn::If or Condition",
            )

    def operand(self, node: Any, where: str, in_conditions: bool) -> None:
        """An argument of a function: a value, or (under Conditions) a condition too."""
        name = _is_function(node)
        if in_conditions and name in (*CONDITION_FUNCTIONS, "Condition"):
            self.condition(node, where)
        elif name is not None:
            self.function(name, node[name], where, in_conditions=in_conditions)
        else:
            self.value(node, where)

    def function(self, name: str, arg: Any, where: str, *, in_conditions: bool) -> None:
        at = f"{where}.{name}"
        if name == "Ref":
            self.ref(arg, where)
        elif name == "Condition":
            self.condition_name(arg, at)
        elif name in CONDITION_FUNCTIONS:
            if not in_conditions:
                self.add(
                    at,
                    f"{name} is a condition function: define the condition under Conditions "
                    "and choose with Fn::If",
                )
                return
            self.condition_function(name, arg, at)
        elif name in _VALUE_CHECKS:
            _VALUE_CHECKS[name](self, arg, at, in_conditions)
        else:
            self.add(at, f"unknown intrinsic function {name}: JITP templates support {_SUPPORTED}")

    def ref(self, arg: Any, where: str) -> None:
        at = where  # a Ref is one name: its object is the location
        if not isinstance(arg, str):
            self.add(at, f"Ref takes the name of a parameter or resource, not {_kind(arg)}")
        elif arg == NO_VALUE or arg in self.parameters:
            return
        elif arg in self.resources:
            self.resource_name(arg, at, f"Ref {arg}")
        elif arg in PARAMETERS:
            self.add(at, f"Ref {arg}: not declared; declare it under Parameters")
        else:
            self.add(
                at,
                f"Ref {arg}: no parameter or resource of that name is declared "
                "(JITP parameters are AWS::IoT::Certificate::*)",
            )

    def resource_name(self, logical_id: str, where: str, label: str) -> None:
        """A reference to a resource gives its name: it must have one."""
        resource = self.resources[logical_id]
        if not isinstance(resource, dict) or resource.get("Type") == "AWS::IoT::Certificate":
            return  # a certificate's name is its id, always known
        prop = NAME_PROPERTY.get(str(resource.get("Type")))
        properties = resource.get("Properties")
        if prop is not None and not (isinstance(properties, dict) and prop in properties):
            self.add(where, f"{label}: that resource has no {prop} to refer to")

    def condition_name(self, arg: Any, where: str) -> None:
        if not isinstance(arg, str):
            self.add(where, f"must name a condition, not be {_kind(arg)}")
        elif arg not in self.conditions:
            self.add(where, f"condition {arg} is not defined under Conditions")

    def arguments(self, name: str, arg: Any, where: str, shape: str, count: int) -> bool:
        if isinstance(arg, list) and len(arg) == count:
            return True
        got = f"a list of {len(arg)}" if isinstance(arg, list) else _kind(arg)
        self.add(where, f"{name} takes {shape}, got {got}")
        return False

    def argument(
        self,
        node: Any,
        where: str,
        in_conditions: bool,
        *,
        literal: tuple[type, ...],
        functions: tuple[str, ...],
        what: str,
    ) -> None:
        name = _is_function(node)
        if name is not None and name in functions:
            self.operand(node, where, in_conditions)
        elif name is not None and name.startswith("Fn::") and name not in VALUE_FUNCTIONS:
            self.operand(node, where, in_conditions)  # reported as unknown there
        elif isinstance(node, literal) and not isinstance(node, bool):
            if isinstance(node, (list, dict)):
                self.operand(node, where, in_conditions)
        else:
            given = name if name is not None else _kind(node)
            self.add(where, f"must be {what}, not {given}")

    def list_argument(self, node: Any, where: str, in_conditions: bool) -> None:
        self.argument(
            node,
            where,
            in_conditions,
            literal=(list,),
            functions=_LIST_FUNCTIONS,
            what="a list of values (or a function giving one)",
        )

    def fn_join(self, arg: Any, at: str, in_conditions: bool) -> None:
        if not self.arguments("Fn::Join", arg, at, "[delimiter, [values]]", 2):
            return
        delimiter, values = arg
        if not isinstance(delimiter, str):
            self.add(f"{at}[0]", f"the delimiter must be a string, not {_kind(delimiter)}")
        self.list_argument(values, f"{at}[1]", in_conditions)
        if isinstance(values, list):
            for i, item in enumerate(values):
                self.string(item, f"{at}[1][{i}]")

    def string(self, node: Any, where: str) -> None:
        """A node that must give a string: not a literal list or object (what is
        wrong inside a function is reported by ``operand``)."""
        if isinstance(node, (list, dict)) and _is_function(node) is None:
            self.add(where, f"must be a string (or a function giving one), not {_kind(node)}")

    def fn_select(self, arg: Any, at: str, in_conditions: bool) -> None:
        if not self.arguments("Fn::Select", arg, at, "[index, [values]]", 2):
            return
        index, values = arg
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if _is_function(index) is not None:
            self.argument(
                index,
                f"{at}[0]",
                in_conditions,
                literal=(),
                functions=_KEY_FUNCTIONS,
                what="an index (a number, Ref or Fn::FindInMap)",
            )
            index = None
        elif not isinstance(index, int) or isinstance(index, bool) or index < 0:
            self.add(f"{at}[0]", f"the index must be a number from 0, not {index!r}")
            index = None
        self.list_argument(values, f"{at}[1]", in_conditions)
        length = _static_length(values)
        if index is not None and length is not None and index >= length:
            self.add(f"{at}[0]", f"index {index} is out of range: the list has {length} items")

    def fn_split(self, arg: Any, at: str, in_conditions: bool) -> None:
        if not self.arguments("Fn::Split", arg, at, "[delimiter, string]", 2):
            return
        delimiter, source = arg
        if not isinstance(delimiter, str) or not delimiter:
            self.add(f"{at}[0]", f"the delimiter must be a non-empty string, not {delimiter!r}")
        self.argument(
            source,
            f"{at}[1]",
            in_conditions,
            literal=(str,),
            functions=_STRING_FUNCTIONS,
            what="a string (or a function giving one)",
        )

    def fn_sub(self, arg: Any, at: str, in_conditions: bool) -> None:
        variables: dict[str, Any] = {}
        if isinstance(arg, list):
            if not self.arguments("Fn::Sub", arg, at, "a string or [string, {variables}]", 2):
                return
            text, given = arg
            where = f"{at}[0]"
            if not isinstance(given, dict):
                self.add(f"{at}[1]", f"the variables must be an object, not {_kind(given)}")
            else:
                variables = given
                for key, value in given.items():
                    self.operand(value, f"{at}[1].{key}", in_conditions)
        else:
            text, where = arg, at
        if not isinstance(text, str):
            self.add(where, f"Fn::Sub takes a literal string, not {_kind(text)}")
            return
        for name in SUB_VARIABLE.findall(text):
            if name in variables or name in self.parameters:
                continue
            if name in self.resources:
                self.resource_name(name, where, f"${{{name}}}")
            elif name in PARAMETERS:
                self.add(where, f"${{{name}}}: not declared; declare it under Parameters")
            else:
                self.add(
                    where,
                    f"${{{name}}}: no variable, parameter or resource of that name "
                    f"(write ${{!{name}}} for the text itself)",
                )

    def fn_findinmap(self, arg: Any, at: str, in_conditions: bool) -> None:
        if not self.arguments(
            "Fn::FindInMap", arg, at, "[MapName, TopLevelKey, SecondLevelKey]", 3
        ):
            return
        for i, key in enumerate(arg):
            self.argument(
                key,
                f"{at}[{i}]",
                in_conditions,
                literal=(str,),
                functions=_KEY_FUNCTIONS,
                what="a string key (or Ref or Fn::FindInMap)",
            )
        if self.mappings is None:
            self.add(at, "Fn::FindInMap needs a Mappings section; the template has none")
            return
        level: Any = self.mappings
        path = "Mappings"
        for i, key in enumerate(arg):
            if not isinstance(key, str) or not isinstance(level, dict):
                return  # computed: known only per certificate
            if key not in level:
                self.add(f"{at}[{i}]", f"{path} has no key {key!r}")
                return
            level, path = level[key], f"{path}.{key}"

    def fn_if(self, arg: Any, at: str, in_conditions: bool) -> None:
        if not self.arguments("Fn::If", arg, at, "[condition, value if true, value if false]", 3):
            return
        self.condition_name(arg[0], f"{at}[0]")
        self.operand(arg[1], f"{at}[1]", in_conditions)
        self.operand(arg[2], f"{at}[2]", in_conditions)

    def condition_function(self, name: str, arg: Any, at: str) -> None:
        if name == "Fn::Equals":
            if self.arguments(name, arg, at, "[value, value]", 2):
                for i, item in enumerate(arg):
                    self.operand(item, f"{at}[{i}]", True)
            return
        if name == "Fn::Not":
            if self.arguments(name, arg, at, "[condition]", 1):
                self.condition(arg[0], f"{at}[0]")
            return
        if not isinstance(arg, list) or not _MIN_CONDITIONS <= len(arg) <= _MAX_CONDITIONS:
            got = f"a list of {len(arg)}" if isinstance(arg, list) else _kind(arg)
            self.add(
                at,
                f"{name} takes a list of {_MIN_CONDITIONS} to {_MAX_CONDITIONS} conditions, "
                f"got {got}",
            )
            return
        for i, item in enumerate(arg):
            self.condition(item, f"{at}[{i}]")


_PROPERTY_CHECKS = {
    "AWS::IoT::Thing": _Checker.thing_properties,
    "AWS::IoT::Certificate": _Checker.certificate_properties,
    "AWS::IoT::Policy": _Checker.policy_properties,
}

_VALUE_CHECKS = {
    "Fn::Join": _Checker.fn_join,
    "Fn::Select": _Checker.fn_select,
    "Fn::Split": _Checker.fn_split,
    "Fn::Sub": _Checker.fn_sub,
    "Fn::FindInMap": _Checker.fn_findinmap,
    "Fn::If": _Checker.fn_if,
}


def _may_vanish(node: Any) -> bool:
    """Whether a value may be Ref AWS::NoValue, which leaves its key or item out."""
    return _is_function(node) == "Fn::If" or node == {"Ref": NO_VALUE}


def _static_length(values: Any) -> int | None:
    """How many items a list has at most, when that is known without a certificate."""
    if isinstance(values, list):
        # Ref AWS::NoValue and Fn::If can only drop items, so this is an upper bound.
        return len(values)
    if _is_function(values) == "Fn::Split":
        arg = values["Fn::Split"]
        if isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, str) for a in arg):
            delimiter, text = arg
            if delimiter:
                return len(text.split(delimiter))
    return None
