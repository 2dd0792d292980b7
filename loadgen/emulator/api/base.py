"""What every control-plane operation shares: the account it acts on, its
parameters, AWS's errors, and paging."""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.names import NAME
from loadgen.emulator.registry import CertRecord, Registry

Params = dict[str, Any]
Result = dict[str, Any]
T = TypeVar("T")

# Members' limits in botocore's model for iot (PageSize, RegistryMaxResults).
MAX_PAGE = 250
# AWS documents no default page size; this one makes paging show at small scale.
DEFAULT_PAGE = 25
CERTIFICATE_ID = re.compile(r"(0x)?[a-fA-F0-9]{64}")


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", message, 404)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message, 400)


def conflict(message: str) -> ApiError:
    return ApiError("DeleteConflictException", message, 409)


def already_exists(message: str) -> ApiError:
    return ApiError("ResourceAlreadyExistsException", message, 409)


def state_error(message: str) -> ApiError:
    return ApiError("CertificateStateException", message, 406)


@dataclass(frozen=True)
class Account:
    """The account and region the control plane answers for."""

    registry: Registry
    region: str
    account_id: str
    # Where its devices connect; None: no MQTT side trusts this region's CAs.
    mqtt_address: str | None

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:{kind}/{name}"

    def certificate_of(self, principal: str) -> CertRecord:
        """The certificate a principal ARN names; certificates are the only
        principals here (AWS also has Cognito identities)."""
        prefix = self.arn("cert", "")
        if not principal.startswith(prefix):
            if ":cert/" in principal:
                raise not_found(f"{principal}: not a certificate of this account and region")
            raise invalid(f"{principal}: not a certificate ARN ({prefix}ID)")
        record = self.registry.certificates.get(principal.removeprefix(prefix))
        if record is None:
            raise not_found(f"certificate {principal} does not exist")
        return record


def string(params: Params, name: str) -> str:
    """A required string member."""
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{name} is required")
    return value


def optional_string(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value


def structure(params: Params, name: str) -> Params:
    """A structure member; {} when not given."""
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{name} must be a structure")
    return value


def strings(params: Params, name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"{name} must be a list of strings")
    return value


def string_map(params: Params, name: str) -> dict[str, str]:
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise invalid(f"{name} must be a map of strings")
    return {str(k): v for k, v in value.items()}


def flag(params: Params, name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean")
    return value


def name(params: Params, member: str, pattern: re.Pattern[str] = NAME) -> str:
    value = string(params, member)
    if not pattern.fullmatch(value):
        raise invalid(f"{member} {value!r} does not match {pattern.pattern}")
    return value


def certificate_id(params: Params, member: str = "certificateId") -> str:
    value = string(params, member)
    if not CERTIFICATE_ID.fullmatch(value):
        raise invalid(f"{member} {value!r} is not a certificate id (64 hex digits)")
    return value.removeprefix("0x").lower()


@dataclass(frozen=True)
class Paging:
    """How a listing pages: the members of its page size, of the token in, and
    of the token out."""

    size: str
    token: str
    next_token: str


MARKER = Paging("pageSize", "marker", "nextMarker")
TOKEN = Paging("maxResults", "nextToken", "nextToken")


def by_name(name: str) -> tuple[str]:
    return (name,)


def listing(
    params: Params,
    member: str,
    items: Iterable[T],
    key: Callable[[T], tuple[Any, ...]],
    render: Callable[[T], Any],
    *,
    paging: Paging,
    ascending: bool = True,
) -> Result:
    """One page of ``items`` in ``key`` order, rendered under ``member``, from
    where the request's token says, and the token of the next page unless it is
    the last. A token holds the last key returned, so that what is deleted
    between pages (a teardown deletes as it goes) skips nothing."""
    count = params.get(paging.size)
    if count is None:
        count = DEFAULT_PAGE
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_PAGE:
        raise invalid(f"{paging.size} must be from 1 to {MAX_PAGE}")
    given = params.get(paging.token)
    if given:
        after = _decode(paging.token, given)
        if ascending:
            items = [i for i in items if _beyond(key(i), after, paging)]
        else:
            items = [i for i in items if _beyond(after, key(i), paging)]
    # One more than the page tells whether there is a next one; cheaper than
    # sorting a whole listing of tens of thousands of certificates per page.
    pick = heapq.nsmallest if ascending else heapq.nlargest
    chosen = pick(count + 1, items, key=key)
    result: Result = {member: [render(i) for i in chosen[:count]]}
    if len(chosen) > count:
        last = json.dumps(key(chosen[count - 1])).encode()
        result[paging.next_token] = base64.b64encode(last).decode()
    return result


def _beyond(key: tuple[Any, ...], after: tuple[Any, ...], paging: Paging) -> bool:
    try:
        return key > after
    except TypeError:  # a token of another listing
        raise invalid(f"{paging.token}: not a token this API gave") from None


def _decode(member: str, value: Any) -> tuple[Any, ...]:
    try:
        decoded = json.loads(base64.b64decode(str(value), validate=True))
    except (ValueError, binascii.Error, RecursionError):
        decoded = None
    if not isinstance(decoded, list):
        raise invalid(f"{member}: not a token this API gave")
    return tuple(decoded)
