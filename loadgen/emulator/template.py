"""AWS IoT provisioning templates: parameters from the certificate, intrinsic
functions, conditions and mappings, and the resources they describe.

``evaluate`` turns a template and the certificate's parameters into the list of
resources to create, or raises ``ClientError`` without touching anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loadgen.emulator.errors import ClientError, TemplateError
from loadgen.emulator.structure import (
    NAME_PROPERTY,
    NO_VALUE,
    OVERRIDES,
    PARAMETER_PREFIX,
    PARAMETERS,
    RESOURCE_TYPES,
    SUB_VARIABLE,
    override_key,
    template_problems,
)
from loadgen.nesting import parse_json

__all__ = [
    "OVERRIDES",
    "PARAMETERS",
    "PARAMETER_PREFIX",
    "RESOURCE_TYPES",
    "Resource",
    "evaluate",
    "parse",
    "referenced_parameters",
]

_NO_VALUE = object()  # Ref AWS::NoValue: the property is left out


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    properties: dict[str, Any]
    overrides: dict[str, str] = field(default_factory=dict)


def parse(template_body: str | dict[str, Any]) -> dict[str, Any]:
    """A template from its JSON text (the escaped ``templateBody``) or a dict,
    refused (``TemplateError``, naming the first problem's location) unless AWS
    would accept it."""
    if isinstance(template_body, dict):
        template = template_body
    else:
        try:
            # strict=False: the reference document's readable example has raw
            # line breaks inside strings, and AWS accepts it.
            template = parse_json(template_body, strict=False)
        except ValueError as exc:
            raise TemplateError(f"templateBody is not JSON: {exc}") from None
    problems = template_problems(template)
    if problems:
        raise TemplateError(str(problems[0]))
    return template


def referenced_parameters(template: dict[str, Any]) -> set[str]:
    """Every parameter the template reads (Ref, and ${...} in Fn::Sub)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and isinstance(node["Ref"], str):
                found.add(node["Ref"])
            elif set(node) == {"Fn::Sub"}:
                text = node["Fn::Sub"][0] if isinstance(node["Fn::Sub"], list) else node["Fn::Sub"]
                if isinstance(text, str):
                    found.update(SUB_VARIABLE.findall(text))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(template.get("Resources"))
    walk(template.get("Conditions"))
    return {name for name in found if name.startswith(PARAMETER_PREFIX)}


class _Evaluator:
    def __init__(self, template: dict[str, Any], parameters: dict[str, str]) -> None:
        self.template = template
        self.parameters = dict(parameters)
        for name, spec in (template.get("Parameters") or {}).items():
            if name not in self.parameters and isinstance(spec, dict) and "Default" in spec:
                self.parameters[name] = spec["Default"]
        self.mappings = template.get("Mappings") or {}
        self.conditions = template.get("Conditions") or {}
        self._condition_values: dict[str, bool] = {}
        # {"Condition": name} names a condition only inside a condition's body;
        # elsewhere it is a plain object (a thing attribute, say).
        self._in_condition = 0
        self._naming: set[str] = set()

    def ref(self, name: str) -> Any:
        if name == NO_VALUE:
            return _NO_VALUE
        if name in self.template["Resources"] and name not in self.parameters:
            return self.resource_name(name)
        if name not in self.parameters:
            raise ClientError(f"parameter {name} has no value (the certificate lacks it)")
        return self.parameters[name]

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self.conditions:
                raise TemplateError(f"condition {name} is not defined")
            self._in_condition += 1
            try:
                self._condition_values[name] = bool(self.value(self.conditions[name]))
            finally:
                self._in_condition -= 1
        return self._condition_values[name]

    def resource_name(self, logical_id: str) -> Any:
        """What a Ref to a resource gives: its thing name, certificate id or policy name."""
        spec = self.template["Resources"][logical_id]
        prop = NAME_PROPERTY[spec["Type"]]
        properties = spec.get("Properties") or {}
        if prop not in properties:
            if spec["Type"] == "AWS::IoT::Certificate":
                return self.ref(PARAMETER_PREFIX + "Id")
            raise TemplateError(f"Ref {logical_id}: it has no {prop}")
        if logical_id in self._naming:
            raise TemplateError(f"Ref {logical_id}: its {prop} refers to itself")
        self._naming.add(logical_id)
        try:
            return self.value(properties[prop])
        finally:
            self._naming.discard(logical_id)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition" and self._in_condition:
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self.function(key, arg)
        out = {}
        for key, item in node.items():
            resolved = self.value(item)
            if resolved is not _NO_VALUE:
                out[key] = resolved
        return out

    def function(self, name: str, arg: Any) -> Any:
        try:
            return _FUNCTIONS[name](self, arg)
        except KeyError:
            if name not in _FUNCTIONS:
                raise TemplateError(f"unsupported intrinsic function {name}") from None
            raise
        except (TypeError, ValueError, IndexError) as exc:
            raise TemplateError(f"{name}: {exc}") from None


def _join(ev: _Evaluator, arg: Any) -> str:
    delimiter, items = arg
    return str(delimiter).join(str(v) for v in ev.value(items))


def _select(ev: _Evaluator, arg: Any) -> Any:
    index, items = arg
    values, i = ev.value(items), int(ev.value(index))
    # [PT]: an index "out of bounds of the array" is "a provisioning error";
    # Python would count a negative one from the end.
    if not 0 <= i < len(values):
        raise ClientError(f"Fn::Select: index {i} is out of bounds of a list of {len(values)}")
    return values[i]


def _split(ev: _Evaluator, arg: Any) -> list[str]:
    delimiter, text = arg
    return str(ev.value(text)).split(str(delimiter))


# A variable, or an escape: ``${!Name}`` is written ``${Name}`` (as CloudFormation
# does), the way a policy document keeps its policy variables (``${!iot:ClientId}``).
_SUB_OR_ESCAPE = re.compile(r"\$\{(?:!([^}]*)|([^}!][^}]*))\}")


def _sub(ev: _Evaluator, arg: Any) -> str:
    text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
    local = {k: ev.value(v) for k, v in variables.items()}

    def one(m: re.Match[str]) -> str:
        escaped, name = m[1], m[2]
        if escaped is not None:
            return "${" + escaped + "}"
        return str(local[name] if name in local else ev.ref(name))

    return _SUB_OR_ESCAPE.sub(one, text)


def _find_in_map(ev: _Evaluator, arg: Any) -> Any:
    name, top, second = (ev.value(a) for a in arg)
    try:
        return ev.mappings[name][top][second]
    except KeyError:
        raise ClientError(f"Fn::FindInMap: no {name}.{top}.{second} in Mappings") from None


def _if(ev: _Evaluator, arg: Any) -> Any:
    name, when_true, when_false = arg
    return ev.value(when_true if ev.condition(name) else when_false)


def _equals(ev: _Evaluator, arg: Any) -> bool:
    a, b = arg
    return bool(ev.value(a) == ev.value(b))


def _and(ev: _Evaluator, arg: Any) -> bool:
    return all(ev.value(c) for c in arg)


def _or(ev: _Evaluator, arg: Any) -> bool:
    return any(ev.value(c) for c in arg)


def _not(ev: _Evaluator, arg: Any) -> bool:
    (only,) = arg
    return not ev.value(only)


_FUNCTIONS = {
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::Sub": _sub,
    "Fn::FindInMap": _find_in_map,
    "Fn::If": _if,
    "Fn::Equals": _equals,
    "Fn::And": _and,
    "Fn::Or": _or,
    "Fn::Not": _not,
}


def evaluate(template: dict[str, Any], parameters: dict[str, str]) -> list[Resource]:
    """The resources ``template`` describes for a certificate's ``parameters``."""
    ev = _Evaluator(template, parameters)
    for name in referenced_parameters(template):
        ev.ref(name)  # a parameter the certificate lacks fails provisioning, as on AWS
    resources = []
    for logical_id, spec in template["Resources"].items():
        condition = spec.get("Condition")
        if condition is not None and not ev.condition(condition):
            continue
        properties = ev.value(spec.get("Properties") or {})
        if not isinstance(properties, dict):
            raise TemplateError(f"resource {logical_id}: Properties must be an object")
        overrides = {override_key(k): v for k, v in (spec.get("OverrideSettings") or {}).items()}
        resources.append(Resource(logical_id, spec["Type"], properties, overrides))
    return resources
