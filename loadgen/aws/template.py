"""What a CA's provisioning template says, read from its registration config."""

from __future__ import annotations

import json
from typing import Any


def read_template(body: str) -> dict[str, Any] | None:
    """The template of a registration config's ``templateBody``, if it has the
    shape AWS runs (an object with its ``Resources``)."""
    try:
        template = json.loads(body, strict=False)
        resources = template["Resources"]
    except (ValueError, KeyError, TypeError):
        return None
    return template if isinstance(resources, dict) else None


def account_policies(config: Any) -> set[str]:
    """The policies a CA's template attaches by name alone: JITP did not create
    them (it refuses a named policy that does not exist), so they are the
    account's own."""
    body = config.get("templateBody") if isinstance(config, dict) else None
    template = read_template(body) if isinstance(body, str) else None
    names: set[str] = set()
    for spec in (template or {}).get("Resources", {}).values():
        props = spec.get("Properties") if isinstance(spec, dict) else None
        if (
            isinstance(props, dict)
            and spec.get("Type") == "AWS::IoT::Policy"
            and isinstance(props.get("PolicyName"), str)
            and "PolicyDocument" not in props
        ):
            names.add(props["PolicyName"])
    return names
