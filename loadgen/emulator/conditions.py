"""A policy statement's ``Condition`` block, compiled once per policy document
and held against a connection's request context (its policy variables: the
same names serve as condition keys).

The evaluation logic is IAM's, which AWS IoT policies share
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_multi-value-conditions.html):
every operator of a block must hold (AND), and every key under an operator
(AND); a key's values are alternatives (OR), and for a negated operator
(``StringNotEquals``...) none may match (NOR).

A key the request context lacks (IAM's condition operators page,
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html):
"the values do not match and the condition is false", except that a negated
operator then holds, an ``...IfExists`` operator holds, and ``Null`` tests
exactly that. ``ForAllValues:`` holds on a missing key and ``ForAnyValue:``
does not (IAM's single- vs multivalued keys page); every key a device session
has is single-valued, so otherwise they compare as the bare operator.

A key the emulator cannot know (``iot:DomainName``, ``iot:Certificate.Issuer.*``,
``iot:ConnectAttributes``, ``aws:CurrentTime``...) is a missing one, by the same
rules: that is what AWS does with a key a request does not carry. `template
check` names each such key, since on AWS it may be present.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadgen.emulator.wildcards import VARIABLE, expand, glob

SOURCE_IP = "aws:SourceIp"
ATTRIBUTES = "iot:Connection.Thing.Attributes["

# What the emulator gives a connection (``policy.connection_variables``) when
# AWS would: a key here that a connection lacks is missing on AWS too.
KNOWN_KEYS = frozenset(
    {
        "iot:ClientId",
        "iot:Certificate.Id",
        "iot:Connection.Thing.ThingName",
        "iot:Connection.Thing.ThingTypeName",
        "iot:Connection.Thing.IsAttached",
        SOURCE_IP,
        # The subject fields JITP reads, which are those the emulator reads.
        *(
            f"iot:Certificate.Subject.{name}"
            for name in (
                "CommonName",
                "SerialNumber",
                "Country",
                "Organization",
                "OrganizationalUnit",
                "State",
                "DistinguishedNameQualifier",
            )
        ),
    }
)
_KNOWN_PREFIXES = (ATTRIBUTES,)


class ConditionError(ValueError):
    """A Condition block that is not one: not an object of operators, each an
    object of keys."""


Compare = Callable[[str, Any], bool]


def _equals(value: str, pattern: Any) -> bool:
    return bool(value == pattern)


def _equals_ignoring_case(value: str, pattern: Any) -> bool:
    return bool(value.lower() == str(pattern).lower())


def _like(value: str, pattern: Any) -> bool:
    return glob(value, pattern)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _numeric(test: Callable[[float, float], bool]) -> Compare:
    def compare(value: str, pattern: Any) -> bool:
        number = _number(value)
        return number is not None and pattern is not None and test(number, pattern)

    return compare


def _in_network(value: str, pattern: Any) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return pattern is not None and address in pattern


def _arn_like(value: str, pattern: Any) -> bool:
    # "Each of the six colon-delimited components of the ARN is checked
    # separately and each can include ... wildcards" (IAM, ARN condition
    # operators): a wildcard never spans a colon between components.
    values = value.split(":", 5)
    patterns = str(pattern).split(":", 5)
    return len(values) == len(patterns) == 6 and all(
        glob(v, p) for v, p in zip(values, patterns, strict=True)
    )


def _never(value: str, pattern: Any) -> bool:
    # Date and binary operators: no key a device session has is a date or
    # binary data, so only their missing-key rules ever decide.
    return False


def _network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None  # a value that is no address or CIDR matches no address


@dataclass(frozen=True, slots=True)
class _Operator:
    compare: Compare
    negated: bool = False
    # Policy variables are substituted in String, Bool and ARN values only (IAM's
    # condition operators page says which operator families support them).
    variables: bool = True
    prepare: Callable[[str], Any] = str


def _numeric_operator(test: Callable[[float, float], bool], *, negated: bool = False) -> _Operator:
    # A key's value that is no number matches no value (so a negated operator
    # holds); so does a policy value that is none.
    return _Operator(_numeric(test), negated=negated, variables=False, prepare=_number)


_OPERATORS: dict[str, _Operator] = {
    "StringEquals": _Operator(_equals),
    "StringNotEquals": _Operator(_equals, negated=True),
    "StringEqualsIgnoreCase": _Operator(_equals_ignoring_case),
    "StringNotEqualsIgnoreCase": _Operator(_equals_ignoring_case, negated=True),
    "StringLike": _Operator(_like),
    "StringNotLike": _Operator(_like, negated=True),
    "Bool": _Operator(_equals_ignoring_case),
    "NumericEquals": _numeric_operator(float.__eq__),
    "NumericNotEquals": _numeric_operator(float.__eq__, negated=True),
    "NumericLessThan": _numeric_operator(float.__lt__),
    "NumericLessThanEquals": _numeric_operator(float.__le__),
    "NumericGreaterThan": _numeric_operator(float.__gt__),
    "NumericGreaterThanEquals": _numeric_operator(float.__ge__),
    "IpAddress": _Operator(_in_network, variables=False, prepare=_network),
    "NotIpAddress": _Operator(_in_network, negated=True, variables=False, prepare=_network),
    "ArnEquals": _Operator(_arn_like),
    "ArnNotEquals": _Operator(_arn_like, negated=True),
    "ArnLike": _Operator(_arn_like),
    "ArnNotLike": _Operator(_arn_like, negated=True),
    "BinaryEquals": _Operator(_never, variables=False),
    **{
        f"Date{name}": _Operator(_never, negated=name == "NotEquals", variables=False)
        for name in (
            "Equals",
            "NotEquals",
            "LessThan",
            "LessThanEquals",
            "GreaterThan",
            "GreaterThanEquals",
        )
    },
}
_CANONICAL = {key.lower(): key for key in KNOWN_KEYS}


def canonical_key(key: str) -> str:
    """A condition key as the request context names it: IAM matches condition
    key names case-insensitively; an attribute's own name keeps its case."""
    known = _CANONICAL.get(key.lower())
    if known is not None:
        return known
    for prefix in _KNOWN_PREFIXES:
        if key.lower().startswith(prefix.lower()):
            return prefix + key[len(prefix) :]
    return key


def known(key: str) -> bool:
    """Whether the emulator gives this key a value whenever AWS would."""
    return key in KNOWN_KEYS or key.startswith(_KNOWN_PREFIXES)


@dataclass(frozen=True, slots=True)
class _KeyTest:
    """One key under one operator."""

    key: str
    operator: _Operator
    values: tuple[Any, ...]  # prepared once; with variables, expanded per test
    expand: bool  # some value holds a policy variable
    if_exists: bool
    # ForAllValues: / ForAnyValue: on a missing key (None: neither qualifier).
    when_missing: bool | None

    def holds(self, context: dict[str, str]) -> bool:
        value = context.get(self.key)
        if value is None:
            if self.when_missing is not None:
                return self.when_missing
            return self.if_exists or self.operator.negated
        operator = self.operator
        compare = operator.compare
        # Loops, not any() over a generator: this runs at every CONNECT and
        # PUBLISH a conditioned statement matches, mostly over one value.
        if self.expand:
            for pattern in self.values:
                expanded = expand(pattern, context)
                if expanded is not None and compare(value, operator.prepare(expanded)):
                    return not operator.negated
        else:
            for pattern in self.values:
                if compare(value, pattern):
                    return not operator.negated
        return operator.negated


@dataclass(frozen=True, slots=True)
class _NullTest:
    """``Null``: "true" holds when the key is missing, "false" when present."""

    key: str
    values: tuple[bool, ...]

    def holds(self, context: dict[str, str]) -> bool:
        return (self.key not in context) in self.values


@dataclass(frozen=True, slots=True)
class _Unknown:
    """An operator IAM does not define: no request can satisfy it, so the
    statement never applies (an Allow grants nothing, a Deny denies nothing)."""

    operator: str

    def holds(self, context: dict[str, str]) -> bool:
        return False


Test = _KeyTest | _NullTest | _Unknown


@dataclass(frozen=True, slots=True)
class Condition:
    tests: tuple[Test, ...]

    def holds(self, context: dict[str, str]) -> bool:
        return all(test.holds(context) for test in self.tests)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(t.key for t in self.tests if not isinstance(t, _Unknown))

    @property
    def variables(self) -> frozenset[str]:
        """The policy variables its values use."""
        return frozenset(
            name
            for t in self.tests
            if isinstance(t, _KeyTest) and t.expand
            for v in t.values
            for name in VARIABLE.findall(v)
        )

    @property
    def unknown_operators(self) -> tuple[str, ...]:
        return tuple(t.operator for t in self.tests if isinstance(t, _Unknown))


def _text(value: Any) -> str:
    """A condition value as IAM compares it: JSON true/false/numbers as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_condition(block: Any) -> Condition:
    if not isinstance(block, dict):
        raise ConditionError("a statement's Condition is not a JSON object")
    tests: list[Test] = []
    for name, keys in block.items():
        if not isinstance(keys, dict):
            raise ConditionError(f"Condition operator {name} does not hold an object of keys")
        qualifier, _, base = str(name).rpartition(":")
        when_missing = {"ForAllValues": True, "ForAnyValue": False, "": None}.get(qualifier)
        if_exists = base.endswith("IfExists")
        base = base.removesuffix("IfExists")
        null = base == "Null" and not qualifier and not if_exists
        operator = _OPERATORS.get(base)
        if not null and (operator is None or (qualifier and when_missing is None)):
            tests.append(_Unknown(str(name)))
            continue
        for raw_key, raw_values in keys.items():
            key = canonical_key(str(raw_key))
            items = raw_values if isinstance(raw_values, list) else [raw_values]
            values = tuple(_text(v) for v in items)
            if operator is None:  # Null
                tests.append(_NullTest(key, tuple(v.lower() == "true" for v in values)))
                continue
            expands = operator.variables and any("${" in v for v in values)
            prepared = values if expands else tuple(operator.prepare(v) for v in values)
            tests.append(_KeyTest(key, operator, prepared, expands, if_exists, when_missing))
    return Condition(tuple(tests))
