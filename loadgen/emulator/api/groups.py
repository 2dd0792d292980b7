"""Thing types and thing groups: what a template names and RegisterThing needs
to exist (with --strict-resources), and what `loadgen aws setup` creates."""

from __future__ import annotations

import dataclasses
import time

from loadgen.emulator.api import base
from loadgen.emulator.api.base import Account, Params, Result, invalid, not_found
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.api.things import thing_id
from loadgen.emulator.registry import ThingGroupInfo, ThingTypeInfo

# -- thing types -----------------------------------------------------------------


def _type_properties(info: ThingTypeInfo) -> Result:
    properties: Result = {"searchableAttributes": list(info.searchable)}
    if info.description is not None:
        properties["thingTypeDescription"] = info.description
    return properties


def _type_metadata(info: ThingTypeInfo) -> Result:
    metadata: Result = {"deprecated": info.deprecated, "creationDate": info.created}
    if info.deprecation_date is not None:
        metadata["deprecationDate"] = info.deprecation_date
    return metadata


def _existing_type(account: Account, params: Params) -> tuple[str, ThingTypeInfo]:
    name = base.string(params, "thingTypeName")
    if name not in account.registry.thing_types:
        raise not_found(f"thing type {name} does not exist")
    return name, account.registry.thing_type_info(name)


def create_thing_type(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.name(params, "thingTypeName")
    given = base.structure(params, "thingTypeProperties")
    info = ThingTypeInfo(
        time.time(),
        description=base.optional_string(given, "thingTypeDescription"),
        searchable=base.strings(given, "searchableAttributes"),
    )
    arn = account.arn("thingtype", name)
    if name in registry.thing_types:
        existing = registry.thing_type_info(name)
        if (existing.description, existing.searchable) != (info.description, info.searchable):
            raise base.already_exists(f"thing type {name} exists with other properties")
    else:
        registry.add_thing_type(name, info)
    return {"thingTypeName": name, "thingTypeArn": arn, "thingTypeId": thing_id(arn)}


def describe_thing_type(account: Account, params: Params) -> Result:
    name, info = _existing_type(account, params)
    arn = account.arn("thingtype", name)
    return {
        "thingTypeName": name,
        "thingTypeId": thing_id(arn),
        "thingTypeArn": arn,
        "thingTypeProperties": _type_properties(info),
        "thingTypeMetadata": _type_metadata(info),
    }


def deprecate_thing_type(account: Account, params: Params) -> Result:
    name, info = _existing_type(account, params)
    undo = base.flag(params, "undoDeprecate")
    changed = dataclasses.replace(
        info, deprecated=not undo, deprecation_date=None if undo else time.time()
    )
    account.registry.add_thing_type(name, changed)
    return {}


def delete_thing_type(account: Account, params: Params) -> Result:
    name, info = _existing_type(account, params)
    # AWS also makes a deprecated type wait five minutes before it may be
    # deleted; the emulator does not make its users wait.
    if not info.deprecated:
        raise invalid(f"thing type {name} is not deprecated: DeprecateThingType first")
    users = sum(1 for t in account.registry.things.values() if t.type_name == name)
    if users:
        raise invalid(f"thing type {name} is still the type of {users} thing(s)")
    account.registry.delete_thing_type(name)
    return {}


def list_thing_types(account: Account, params: Params) -> Result:
    registry = account.registry
    names = sorted(registry.thing_types)
    wanted = base.optional_string(params, "thingTypeName")
    if wanted is not None:
        names = [n for n in names if n == wanted]

    def render(name: str) -> Result:
        info = registry.thing_type_info(name)
        return {
            "thingTypeName": name,
            "thingTypeArn": account.arn("thingtype", name),
            "thingTypeProperties": _type_properties(info),
            "thingTypeMetadata": _type_metadata(info),
        }

    return base.listing(params, "thingTypes", names, base.by_name, render, paging=base.TOKEN)


# -- thing groups ---------------------------------------------------------------


def _group_properties(info: ThingGroupInfo) -> Result:
    properties: Result = {"attributePayload": {"attributes": dict(info.attributes)}}
    if info.description is not None:
        properties["thingGroupDescription"] = info.description
    return properties


def create_thing_group(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.name(params, "thingGroupName")
    parent = base.optional_string(params, "parentGroupName")
    if parent is not None and parent not in registry.thing_groups:
        raise invalid(f"parent group {parent} does not exist")
    given = base.structure(params, "thingGroupProperties")
    info = ThingGroupInfo(
        time.time(),
        parent=parent,
        description=base.optional_string(given, "thingGroupDescription"),
        attributes=base.string_map(base.structure(given, "attributePayload"), "attributes"),
    )
    arn = account.arn("thinggroup", name)
    if name in registry.thing_groups:
        # As AWS (and moto) do: the same group again is the group; another is refused.
        existing = registry.thing_group_info(name)
        same = (existing.parent, existing.description, existing.attributes) == (
            info.parent,
            info.description,
            info.attributes,
        )
        if not same:
            raise base.already_exists(f"thing group {name} exists with other properties")
    else:
        registry.add_thing_group(name, info)
    return {"thingGroupName": name, "thingGroupArn": arn, "thingGroupId": thing_id(arn)}


def _lineage(account: Account, name: str) -> list[Result]:
    """The groups from the root down to ``name``'s parent."""
    chain: list[Result] = []
    parent = account.registry.thing_group_info(name).parent
    while parent is not None and parent not in {c["groupName"] for c in chain}:
        chain.insert(0, {"groupName": parent, "groupArn": account.arn("thinggroup", parent)})
        parent = account.registry.thing_group_info(parent).parent
    return chain


def describe_thing_group(account: Account, params: Params) -> Result:
    name = base.string(params, "thingGroupName")
    if name not in account.registry.thing_groups:
        raise not_found(f"thing group {name} does not exist")
    info = account.registry.thing_group_info(name)
    arn = account.arn("thinggroup", name)
    metadata: Result = {
        "rootToParentThingGroups": _lineage(account, name),
        "creationDate": info.created,
    }
    if info.parent is not None:
        metadata["parentGroupName"] = info.parent
    return {
        "thingGroupName": name,
        "thingGroupId": thing_id(arn),
        "thingGroupArn": arn,
        "version": info.version,
        "thingGroupProperties": _group_properties(info),
        "thingGroupMetadata": metadata,
    }


def delete_thing_group(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.string(params, "thingGroupName")
    if name not in registry.thing_groups:
        return {}  # as DeleteThing: gone already is done
    info = registry.thing_group_info(name)
    expected = params.get("expectedVersion")
    if expected is not None and expected != info.version:
        raise ApiError(
            "VersionConflictException", f"thing group {name} is at version {info.version}", 409
        )
    children = [g for g in registry.thing_groups if registry.thing_group_info(g).parent == name]
    if children:
        raise invalid(f"thing group {name} has child groups: {', '.join(sorted(children))}")
    registry.delete_thing_group(name)
    return {}


def list_thing_groups(account: Account, params: Params) -> Result:
    registry = account.registry
    names = list(registry.thing_groups)
    parent = base.optional_string(params, "parentGroup")
    if parent is not None:
        if parent not in registry.thing_groups:
            raise not_found(f"thing group {parent} does not exist")
        recursive = base.flag(params, "recursive", True)
        names = [
            n
            for n in names
            if (
                parent in {g["groupName"] for g in _lineage(account, n)}
                if recursive
                else registry.thing_group_info(n).parent == parent
            )
        ]
    prefix = base.optional_string(params, "namePrefixFilter")
    if prefix is not None:
        names = [n for n in names if n.startswith(prefix)]
    return base.listing(
        params,
        "thingGroups",
        names,
        base.by_name,
        lambda n: {"groupName": n, "groupArn": account.arn("thinggroup", n)},
        paging=base.TOKEN,
    )


def list_things_in_thing_group(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.string(params, "thingGroupName")
    if name not in registry.thing_groups:
        raise not_found(f"thing group {name} does not exist")
    groups = {name}
    if base.flag(params, "recursive"):
        groups |= {
            g
            for g in registry.thing_groups
            if name in {p["groupName"] for p in _lineage(account, g)}
        }
    things = [t.name for t in registry.things.values() if t.groups & groups]
    return base.listing(params, "things", things, lambda n: (n,), str, paging=base.TOKEN)


OPERATIONS = {
    "CreateThingType": create_thing_type,
    "DescribeThingType": describe_thing_type,
    "DeprecateThingType": deprecate_thing_type,
    "DeleteThingType": delete_thing_type,
    "ListThingTypes": list_thing_types,
    "CreateThingGroup": create_thing_group,
    "DescribeThingGroup": describe_thing_group,
    "DeleteThingGroup": delete_thing_group,
    "ListThingGroups": list_thing_groups,
    "ListThingsInThingGroup": list_things_in_thing_group,
}
