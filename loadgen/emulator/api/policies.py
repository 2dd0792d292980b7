"""Policies, their versions, and the certificates (targets) they attach to."""

from __future__ import annotations

import copy
import time

from loadgen.emulator.api import base
from loadgen.emulator.api.base import Account, Params, Result, not_found
from loadgen.emulator.api.cas import generation_id
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.names import POLICY_NAME, document_refused, too_many_policies
from loadgen.emulator.registry import PolicyInfo, PolicyVersion

# AWS's limit: versions per policy.
MAX_VERSIONS = 5


def _name(account: Account, params: Params) -> str:
    name = base.string(params, "policyName")
    if name not in account.registry.policies:
        raise not_found(f"policy {name} does not exist")
    return name


def _document(params: Params) -> str:
    document = base.string(params, "policyDocument")
    if (why := document_refused(document)) is not None:
        raise ApiError("MalformedPolicyException", f"policyDocument: {why}")
    return document


def create_policy(account: Account, params: Params) -> Result:
    registry = account.registry
    name = base.name(params, "policyName", POLICY_NAME)
    document = _document(params)
    if name in registry.policies:
        raise base.already_exists(f"policy {name} exists")
    now = time.time()
    registry.save_policy(name, PolicyInfo({"1": PolicyVersion(document, now)}, "1", now, now, 2))
    return {
        "policyName": name,
        "policyArn": account.arn("policy", name),
        "policyDocument": document,
        "policyVersionId": "1",
    }


def get_policy(account: Account, params: Params) -> Result:
    name = _name(account, params)
    info = account.registry.policy_info(name)
    return {
        "policyName": name,
        "policyArn": account.arn("policy", name),
        "policyDocument": info.versions[info.default].document,
        "defaultVersionId": info.default,
        "creationDate": info.created,
        "lastModifiedDate": info.modified,
        "generationId": generation_id(name, info.modified),
    }


def list_policies(account: Account, params: Params) -> Result:
    return base.listing(
        params,
        "policies",
        account.registry.policies,
        base.by_name,
        lambda n: _policy(account, n),
        paging=base.MARKER,
        ascending=base.flag(params, "ascendingOrder", True),
    )


def _policy(account: Account, name: str) -> Result:
    return {"policyName": name, "policyArn": account.arn("policy", name)}


def delete_policy(account: Account, params: Params) -> Result:
    registry = account.registry
    name = _name(account, params)
    targets = registry.policy_targets.get(name)
    if targets:
        raise base.conflict(
            f"policy {name} is attached to {len(targets)} target(s): DetachPolicy first"
        )
    info = registry.policy_info(name)
    if len(info.versions) > 1:
        raise base.conflict(
            f"policy {name} has {len(info.versions) - 1} version(s) besides the default: "
            "DeletePolicyVersion first"
        )
    registry.delete_policy(name)
    return {}


def list_policy_versions(account: Account, params: Params) -> Result:
    info = account.registry.policy_info(_name(account, params))
    return {
        "policyVersions": [
            {"versionId": v, "isDefaultVersion": v == info.default, "createDate": version.created}
            for v, version in sorted(info.versions.items(), key=lambda i: -int(i[0]))
        ]
    }


def create_policy_version(account: Account, params: Params) -> Result:
    registry = account.registry
    name = _name(account, params)
    document = _document(params)
    info = copy.deepcopy(registry.policy_info(name))  # the registered one changes once saved
    if len(info.versions) >= MAX_VERSIONS:
        raise ApiError(
            "VersionsLimitExceededException",
            f"policy {name} has {MAX_VERSIONS} versions, AWS's limit: delete one first",
            409,
        )
    version = str(info.next_version)
    info.versions[version] = PolicyVersion(document, time.time())
    info.next_version += 1
    default = base.flag(params, "setAsDefault")
    if default:
        info.default = version
    registry.save_policy(name, info)
    return {
        "policyArn": account.arn("policy", name),
        "policyDocument": document,
        "policyVersionId": version,
        "isDefaultVersion": default,
    }


def _version(account: Account, params: Params) -> tuple[str, PolicyInfo, str]:
    """The policy, a copy of its versions to change and save, and the version."""
    name = _name(account, params)
    info = copy.deepcopy(account.registry.policy_info(name))
    version = base.string(params, "policyVersionId")
    if version not in info.versions:
        raise not_found(f"policy {name} has no version {version}")
    return name, info, version


def set_default_policy_version(account: Account, params: Params) -> Result:
    name, info, version = _version(account, params)
    info.default = version
    account.registry.save_policy(name, info)
    return {}


def delete_policy_version(account: Account, params: Params) -> Result:
    name, info, version = _version(account, params)
    if version == info.default:
        raise base.conflict(
            f"version {version} is policy {name}'s default: delete the policy (DeletePolicy)"
        )
    del info.versions[version]
    account.registry.save_policy(name, info)
    return {}


def attach_policy(account: Account, params: Params) -> Result:
    name = _name(account, params)
    record = account.certificate_of(base.string(params, "target"))
    if name not in record.policies and (why := too_many_policies(len(record.policies) + 1)):
        raise ApiError("LimitExceededException", f"certificate {record.id}: {why}", 410)
    account.registry.attach_policy(record, name)
    return {}


def detach_policy(account: Account, params: Params) -> Result:
    name = _name(account, params)
    record = account.certificate_of(base.string(params, "target"))
    if name in record.policies:
        account.registry.detach_policy(record, name)
    return {}


def list_attached_policies(account: Account, params: Params) -> Result:
    record = account.certificate_of(base.string(params, "target"))
    return base.listing(
        params,
        "policies",
        record.policies,
        base.by_name,
        lambda n: _policy(account, n),
        paging=base.MARKER,
    )


def list_targets_for_policy(account: Account, params: Params) -> Result:
    name = _name(account, params)
    return base.listing(
        params,
        "targets",
        account.registry.policy_targets.get(name, set()),
        base.by_name,
        lambda cert_id: account.arn("cert", cert_id),
        paging=base.MARKER,
    )


OPERATIONS = {
    "CreatePolicy": create_policy,
    "GetPolicy": get_policy,
    "ListPolicies": list_policies,
    "DeletePolicy": delete_policy,
    "ListPolicyVersions": list_policy_versions,
    "CreatePolicyVersion": create_policy_version,
    "SetDefaultPolicyVersion": set_default_policy_version,
    "DeletePolicyVersion": delete_policy_version,
    "AttachPolicy": attach_policy,
    "DetachPolicy": detach_policy,
    "ListAttachedPolicies": list_attached_policies,
    "ListTargetsForPolicy": list_targets_for_policy,
}
