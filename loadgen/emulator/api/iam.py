"""The little of IAM and STS that `loadgen aws` needs of an account: the role
JITP acts as (created, checked, policies attached, deleted) and who the caller
is. In memory: the emulator's IAM lasts as long as the process."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.api.query import QueryHandler

_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}")
# AWS's managed policies exist in every account; the emulator has no others.
_MANAGED = re.compile(r"arn:aws:iam::aws:policy/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)")


@dataclass
class Role:
    name: str
    path: str
    arn: str
    role_id: str
    created: float
    trust_policy: str
    description: str | None
    policies: list[str] = field(default_factory=list)  # attached managed policy ARNs

    def shape(self) -> dict[str, Any]:
        return {
            "Path": self.path,
            "RoleName": self.name,
            "RoleId": self.role_id,
            "Arn": self.arn,
            "CreateDate": self.created,
            # IAM returns policy documents URL-encoded; botocore decodes them.
            "AssumeRolePolicyDocument": quote(self.trust_policy),
            "Description": self.description,
        }


class Iam:
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.roles: dict[str, Role] = {}

    def handlers(self) -> dict[str, QueryHandler]:
        return {
            "CreateRole": self.create_role,
            "GetRole": self.get_role,
            "DeleteRole": self.delete_role,
            "AttachRolePolicy": self.attach_role_policy,
            "DetachRolePolicy": self.detach_role_policy,
            "ListAttachedRolePolicies": self.list_attached_role_policies,
            "ListRolePolicies": self.list_role_policies,
        }

    def _role(self, params: dict[str, str]) -> Role:
        name = _required(params, "RoleName")
        role = self.roles.get(name)
        if role is None:
            raise ApiError("NoSuchEntity", f"The role with name {name} cannot be found.", 404)
        return role

    def create_role(self, params: dict[str, str]) -> dict[str, Any]:
        name = _required(params, "RoleName")
        document = _required(params, "AssumeRolePolicyDocument")
        if not _ROLE_NAME.fullmatch(name):
            raise ApiError("ValidationError", f"RoleName {name!r} is not a valid role name")
        try:
            json.loads(document)
        except (ValueError, RecursionError):
            raise ApiError(
                "MalformedPolicyDocument", "AssumeRolePolicyDocument is not JSON", 400
            ) from None
        if name in self.roles:
            raise ApiError("EntityAlreadyExists", f"Role with name {name} already exists.", 409)
        path = params.get("Path") or "/"
        role_id = "AROA" + hashlib.sha256(name.encode()).hexdigest()[:17].upper()
        role = Role(
            name,
            path,
            f"arn:aws:iam::{self.account_id}:role{path}{name}",
            role_id,
            time.time(),
            document,
            params.get("Description"),
        )
        self.roles[name] = role
        return {"Role": role.shape()}

    def get_role(self, params: dict[str, str]) -> dict[str, Any]:
        return {"Role": self._role(params).shape()}

    def delete_role(self, params: dict[str, str]) -> dict[str, Any]:
        role = self._role(params)
        if role.policies:
            raise ApiError(
                "DeleteConflict", "Cannot delete entity, must detach all policies first.", 409
            )
        del self.roles[role.name]
        return {}

    def attach_role_policy(self, params: dict[str, str]) -> dict[str, Any]:
        role = self._role(params)
        arn = _required(params, "PolicyArn")
        if not _MANAGED.fullmatch(arn):
            raise ApiError(
                "NoSuchEntity", f"Policy {arn} does not exist or is not attachable.", 404
            )
        if arn not in role.policies:
            role.policies.append(arn)
        return {}

    def detach_role_policy(self, params: dict[str, str]) -> dict[str, Any]:
        role = self._role(params)
        arn = _required(params, "PolicyArn")
        if arn not in role.policies:
            raise ApiError("NoSuchEntity", f"Policy {arn} was not found.", 404)
        role.policies.remove(arn)
        return {}

    def list_attached_role_policies(self, params: dict[str, str]) -> dict[str, Any]:
        role = self._role(params)
        attached = [
            {"PolicyName": _MANAGED.fullmatch(a)[1], "PolicyArn": a}  # type: ignore[index]
            for a in role.policies
        ]
        page, marker = _page(attached, params)
        return {"AttachedPolicies": page, "IsTruncated": marker is not None, "Marker": marker}

    def list_role_policies(self, params: dict[str, str]) -> dict[str, Any]:
        self._role(params)  # (inline policies: the emulator has none)
        return {"PolicyNames": [], "IsTruncated": False}


class Sts:
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    def handlers(self) -> dict[str, QueryHandler]:
        return {"GetCallerIdentity": self.get_caller_identity}

    def get_caller_identity(self, params: dict[str, str]) -> dict[str, Any]:
        return {
            "UserId": "AIDAEMULATOR",
            "Account": self.account_id,
            "Arn": f"arn:aws:iam::{self.account_id}:user/loadgen-emulator",
        }


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise ApiError(
            "ValidationError",
            f"1 validation error detected: Value null at '{name}' failed to satisfy "
            "constraint: Member must not be null",
        )
    return value


def _page(items: list[Any], params: dict[str, str]) -> tuple[list[Any], str | None]:
    try:
        start = int(params.get("Marker") or 0)
        size = int(params.get("MaxItems") or 100)
    except ValueError:
        raise ApiError("ValidationError", "Marker and MaxItems are numbers here") from None
    end = start + max(1, min(size, 1000))
    return items[start:end], str(end) if end < len(items) else None
