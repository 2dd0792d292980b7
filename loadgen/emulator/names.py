"""The names and attributes AWS IoT accepts (its API model's patterns): the
control plane refuses others, and so does provisioning, when a template renders
one (a thing named ``Acme Lighting bulb-1``, say)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# ThingName, ThingTypeName, ThingGroupName.
NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")


def refused(
    names: Iterable[tuple[str, str]], attributes: dict[str, str] | None = None
) -> str | None:
    """Why AWS IoT would refuse one of ``names`` (each ``(what, name)``, ``what``
    a ThingName, ThingTypeName, ThingGroupName or PolicyName) or one of
    ``attributes``; None when it takes them all."""
    for what, name in names:
        pattern = POLICY_NAME if what == "PolicyName" else NAME
        if not pattern.fullmatch(name):
            return f"{what} {name!r} is not a name AWS IoT accepts ({pattern.pattern})"
    for key, value in (attributes or {}).items():
        if not ATTRIBUTE_NAME.fullmatch(key):
            return f"attribute name {key!r} is not one AWS IoT accepts ({ATTRIBUTE_NAME.pattern})"
        if not ATTRIBUTE_VALUE.fullmatch(value):
            return (
                f"attribute {key}: value {value!r} is not one AWS IoT accepts "
                f"({ATTRIBUTE_VALUE.pattern})"
            )
    return None
