"""What the account's other CAs use of what setup created for one CA: their
registration configs name a provisioning role, and their templates the thing
types and groups JITP gives their devices' things. Teardown keeps those."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadgen.aws.account import error_code
from loadgen.aws.calls import Api
from loadgen.aws.template import read_template


@dataclass
class OthersUse:
    roles: set[str] = field(default_factory=set)
    thing_types: set[str] = field(default_factory=set)
    thing_groups: set[str] = field(default_factory=set)
    # A template that computes the names per device may name any of them.
    computed_types: bool = False
    computed_groups: bool = False

    def reason(self, kind: str, name: str) -> str | None:
        """Why ``name`` (a "role", "thing type" or "thing group") is another
        CA's too, if it is."""
        names, computed = {
            "role": (self.roles, False),
            "thing type": (self.thing_types, self.computed_types),
            "thing group": (self.thing_groups, self.computed_groups),
        }[kind]
        if name in names:
            return f"{kind} another CA's template uses"
        if computed:
            return f"another CA's template computes its {kind} names"
        return None


def others_use(api: Api, ca_id: str) -> OthersUse:
    """Every other registered CA's use (raises the account's refusal: without
    the list, nothing setup created may be taken for this CA's alone)."""
    use = OthersUse()
    for ca in api.pages("ListCACertificates", "certificates", "marker", "nextMarker"):
        if ca["certificateId"] == ca_id:
            continue
        try:
            described = api.call("DescribeCACertificate", certificateId=ca["certificateId"])
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                continue  # deleted since the listing
            raise
        _add(use, described.get("registrationConfig") or {})
    return use


def _add(use: OthersUse, config: dict[str, Any]) -> None:
    role = config.get("roleArn")
    if isinstance(role, str):
        use.roles.add(role.rsplit("/", 1)[-1])
    body = config.get("templateBody")
    template = read_template(body) if isinstance(body, str) else None
    for spec in (template or {}).get("Resources", {}).values():
        props = spec.get("Properties") if isinstance(spec, dict) else None
        if not isinstance(props, dict) or spec.get("Type") != "AWS::IoT::Thing":
            continue
        thing_type = props.get("ThingTypeName")
        if isinstance(thing_type, str):
            use.thing_types.add(thing_type)
        elif thing_type is not None:
            use.computed_types = True
        groups = props.get("ThingGroups")
        for group in groups if isinstance(groups, list) else [groups]:
            if isinstance(group, str):
                use.thing_groups.add(group)
            elif group is not None:
                use.computed_groups = True
