"""`loadgen aws status`: where the account stands for a CA's devices: the CA and
its template, the certificates it signed by status, what they are attached to,
and the quotas that bound a storm, where the account tells them."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.aws.account import error_code
from loadgen.aws.calls import Api, is_registered, not_registered
from loadgen.aws.ratelimit import cancelling_pool
from loadgen.aws.teardown import ca_certificate_id
from loadgen.aws.template import read_template

_THREADS = 4
_PAGE = 250
# The quotas that bound a storm of JITP (by words of their names in Service Quotas).
_STORM_WORDS = ("connect", "provision", "registerthing", "certificate", "thing", "policy")


@dataclass
class Attachments:
    """What a sample of the CA's certificates is attached to."""

    sampled: int = 0
    with_things: int = 0
    with_policies: int = 0
    things: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)


@dataclass
class Status:
    ca_id: str
    ca_status: str
    auto_registration: str
    template: list[str]  # a summary, a line each
    role_arn: str | None
    certificates: Counter[str]  # by status
    attachments: Attachments
    quotas: list[str]  # "name: value", or why the account did not tell

    def lines(self) -> list[str]:
        total = sum(self.certificates.values())
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(self.certificates.items()))
        a = self.attachments
        of = "all" if a.sampled == total else f"a sample of {a.sampled}"
        lines = [
            f"CA {self.ca_id[:16]}…: {self.ca_status}, auto-registration {self.auto_registration}",
            *(f"  {line}" for line in self.template),
            f"  role {self.role_arn or '(none)'}",
            f"certificates signed by the CA: {total}" + (f" ({by_status})" if total else ""),
        ]
        if a.sampled:
            lines += [
                f"  of {of}: {a.with_things} attached to a thing ({len(a.things)} things), "
                f"{a.with_policies} with policies ({len(a.policies)} distinct)"
            ]
        return [*lines, "quotas:", *(f"  {q}" for q in self.quotas)]


def status(api: Api, ca_dir: Path, *, sample: int, quotas: Any) -> Status:
    """``sample`` certificates (0: every one) are looked at for attachments, at
    two calls each: at AWS's 10 a second, all of 20,000 would take half an hour."""
    ca_id = ca_certificate_id(ca_dir)
    if not is_registered(api, ca_id):
        raise not_registered(ca_dir, ca_id)
    described = api.call("DescribeCACertificate", certificateId=ca_id)
    description = described["certificateDescription"]
    config = described.get("registrationConfig") or {}
    certificates = list(
        api.pages(
            "ListCertificatesByCA",
            "certificates",
            "marker",
            "nextMarker",
            caCertificateId=ca_id,
            pageSize=_PAGE,
        )
    )
    by_status = Counter(str(c.get("status", "?")) for c in certificates)
    picked = (
        certificates
        if sample == 0 or sample >= len(certificates)
        else random.Random(0).sample(certificates, sample)
    )
    return Status(
        ca_id,
        str(description.get("status", "?")),
        str(description.get("autoRegistrationStatus", "?")),
        template_summary(config.get("templateBody")),
        config.get("roleArn"),
        by_status,
        _attachments(api, picked),
        storm_quotas(quotas),
    )


def _attachments(api: Api, certificates: list[dict[str, Any]]) -> Attachments:
    out = Attachments(sampled=len(certificates))

    def one(cert: dict[str, Any]) -> tuple[list[str], list[str]]:
        arn = cert["certificateArn"]
        things = list(
            api.pages("ListPrincipalThings", "things", "nextToken", "nextToken", principal=arn)
        )
        policies = [
            p["policyName"]
            for p in api.pages(
                "ListAttachedPolicies", "policies", "marker", "nextMarker", target=arn
            )
        ]
        return things, policies

    with cancelling_pool(api.limits, _THREADS) as pool:
        for things, policies in pool.map(one, certificates):
            out.with_things += bool(things)
            out.with_policies += bool(policies)
            out.things.update(things)
            out.policies.update(policies)
    return out


def template_summary(body: Any) -> list[str]:
    """The registered template in a few lines: its resources and parameters."""
    if not isinstance(body, str):
        return ["template: none (auto-registration without JITP provisions nothing)"]
    template = read_template(body)
    if template is None:
        return ["template: not a template AWS would run"]
    resources = template["Resources"]
    lines = []
    for logical_id, spec in resources.items():
        kind = spec.get("Type", "?") if isinstance(spec, dict) else "?"
        props = (spec.get("Properties") or {}) if isinstance(spec, dict) else {}
        detail = []
        if isinstance(props.get("ThingTypeName"), str):
            detail.append(f"type {props['ThingTypeName']}")
        groups = props.get("ThingGroups")
        if isinstance(groups, list):
            static = [g for g in groups if isinstance(g, str)]
            computed = len(groups) - len(static)
            detail.append(
                "groups " + ", ".join([*static, *([f"{computed} computed"] if computed else [])])
            )
        if "PolicyName" in props:
            detail.append(f"policy {props['PolicyName']} (in the account)")
        elif "PolicyDocument" in props:
            detail.append("inline policy")
        lines.append(f"template: {logical_id} ({kind}" + "".join(f"; {d}" for d in detail) + ")")
    parameters = template.get("Parameters") or {}
    if isinstance(parameters, dict) and parameters:
        names = ", ".join(p.rsplit("::", 1)[-1] for p in parameters)
        lines.append(f"template parameters: {names}")
    return lines


def storm_quotas(client: Any) -> list[str]:
    """The account's AWS IoT Core quotas that bound a storm, from Service Quotas
    (the account's applied values, else AWS's defaults); where the account does not
    tell, why."""
    reason = ""
    for method in ("list_service_quotas", "list_aws_default_service_quotas"):
        try:
            quotas = []
            for page in client.get_paginator(method).paginate(ServiceCode="iotcore"):
                quotas += page.get("Quotas", [])
        except Exception as exc:
            reason = error_code(exc) or type(exc).__name__
            continue
        found = [
            f"{q['QuotaName']}: {q['Value']:g}"
            for q in quotas
            if any(w in q.get("QuotaName", "").lower().replace(" ", "") for w in _STORM_WORDS)
        ]
        if found:
            return sorted(found)
        reason = "no AWS IoT Core quotas listed"
    return [
        f"the account did not tell ({reason}); AWS's defaults: docs/aws.md, "
        "and teardown keeps to them (loadgen.aws.ratelimit)"
    ]
