"""Things and the certificates (principals) attached to them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from loadgen.emulator.api import base
from loadgen.emulator.api.base import Account, Params, Result, invalid, not_found
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.names import refused, too_many_attributes
from loadgen.emulator.registry import Thing


def thing_id(arn: str) -> str:
    """A thing's id: stable for its name, as nothing asks more of it here."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, arn))


def _thing(account: Account, params: Params) -> Thing:
    name = base.string(params, "thingName")
    thing = account.registry.things.get(name)
    if thing is None:
        raise not_found(f"thing {name} does not exist")
    return thing


def _attributes(params: Params) -> dict[str, str]:
    attributes = base.string_map(base.structure(params, "attributePayload"), "attributes")
    if (why := refused((), attributes)) is not None:
        raise invalid(str(why))
    return attributes


def create_thing(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.name(params, "thingName")
    type_name = base.optional_string(params, "thingTypeName")
    if params.get("billingGroupName") is not None:
        raise invalid("billingGroupName: the emulator has no billing groups")
    attributes = _attributes(params)
    if type_name is not None:
        if type_name not in registry.thing_types:
            raise not_found(f"thing type {type_name} does not exist")
        if registry.thing_type_info(type_name).deprecated:
            raise invalid(f"thing type {type_name} is deprecated: no new things of it")
    if (why := too_many_attributes(len(attributes), type_name is not None)) is not None:
        raise invalid(why)
    arn = account.arn("thing", name)
    existing = registry.things.get(name)
    if existing is not None:
        # AWS answers a create that changes nothing as it answered the first.
        if (existing.type_name, existing.attributes) != (type_name, attributes):
            raise base.already_exists(f"thing {name} exists with other properties")
    else:
        registry.save_thing(Thing(name, type_name, attributes))
    return {"thingName": name, "thingArn": arn, "thingId": thing_id(arn)}


def describe_thing(account: Account, params: Params) -> Result:
    thing = _thing(account, params)
    arn = account.arn("thing", thing.name)
    result: Result = {
        "defaultClientId": thing.name,
        "thingName": thing.name,
        "thingId": thing_id(arn),
        "thingArn": arn,
        "attributes": dict(thing.attributes),
        "version": thing.version,
    }
    if thing.type_name is not None:
        result["thingTypeName"] = thing.type_name
    return result


def list_things(account: Account, params: Params) -> Result:
    things = list(account.registry.things.values())
    type_name = base.optional_string(params, "thingTypeName")
    if type_name is not None:
        things = [t for t in things if t.type_name == type_name]
    attribute = base.optional_string(params, "attributeName")
    value = base.optional_string(params, "attributeValue")
    prefix = base.flag(params, "usePrefixAttributeValue")
    if prefix and (attribute is None or value is None):
        raise invalid("usePrefixAttributeValue needs attributeName and attributeValue")
    if attribute is not None:
        things = [t for t in things if attribute in t.attributes]
        if value is not None:
            things = [
                t
                for t in things
                if (
                    t.attributes[attribute].startswith(value)
                    if prefix
                    else t.attributes[attribute] == value
                )
            ]
    elif value is not None:
        things = [t for t in things if value in t.attributes.values()]
    return base.listing(
        params, "things", things, lambda t: (t.name,), _thing_summary(account), paging=base.TOKEN
    )


def _thing_summary(account: Account) -> Callable[[Thing], Result]:
    def render(thing: Thing) -> Result:
        item: Result = {
            "thingName": thing.name,
            "thingArn": account.arn("thing", thing.name),
            "attributes": dict(thing.attributes),
            "version": thing.version,
        }
        if thing.type_name is not None:
            item["thingTypeName"] = thing.type_name
        return item

    return render


def delete_thing(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.string(params, "thingName")
    thing = registry.things.get(name)
    if thing is None:
        return {}  # AWS: "returns successfully ... if you specify a thing that doesn't exist"
    expected = params.get("expectedVersion")
    if expected is not None and expected != thing.version:
        raise ApiError(
            "VersionConflictException",
            f"thing {name} is at version {thing.version}, not {expected}",
            409,
        )
    if registry.thing_principals.get(name):
        raise invalid(
            f"cannot delete thing {name}: it is still attached to "
            f"{len(registry.thing_principals[name])} principal(s)"
        )
    registry.delete_thing(name)
    return {}


def list_principal_things(account: Account, params: Params) -> Result:
    record = account.certificate_of(base.string(params, "principal"))
    return base.listing(
        params, "things", record.things, base.by_name, lambda n: n, paging=base.TOKEN
    )


def list_thing_principals(account: Account, params: Params) -> Result:
    thing = _thing(account, params)
    ids = account.registry.thing_principals.get(thing.name, set())
    return base.listing(
        params,
        "principals",
        ids,
        base.by_name,
        lambda cert_id: account.arn("cert", cert_id),
        paging=base.TOKEN,
    )


def attach_thing_principal(account: Account, params: Params) -> Result:
    thing = _thing(account, params)
    record = account.certificate_of(base.string(params, "principal"))
    kind = params.get("thingPrincipalType") or "NON_EXCLUSIVE_THING"
    if kind not in ("EXCLUSIVE_THING", "NON_EXCLUSIVE_THING"):
        raise invalid(f"thingPrincipalType {kind!r}: EXCLUSIVE_THING or NON_EXCLUSIVE_THING")
    if kind == "EXCLUSIVE_THING" and record.things - {thing.name}:
        raise invalid(f"certificate {record.id} is attached to another thing already")
    account.registry.attach_thing(record, thing.name)
    return {}


def detach_thing_principal(account: Account, params: Params) -> Result:
    thing = _thing(account, params)
    record = account.certificate_of(base.string(params, "principal"))
    if thing.name in record.things:
        account.registry.detach_thing(record, thing.name)
    return {}


OPERATIONS = {
    "CreateThing": create_thing,
    "DescribeThing": describe_thing,
    "ListThings": list_things,
    "DeleteThing": delete_thing,
    "ListPrincipalThings": list_principal_things,
    "ListThingPrincipals": list_thing_principals,
    "AttachThingPrincipal": attach_thing_principal,
    "DetachThingPrincipal": detach_thing_principal,
}
