"""Removing what JITP created for one CA's devices, and nothing else.

For every certificate the CA signed in the account: list what it is attached
to, detach its policies, detach it from its things, set it INACTIVE, delete it,
and delete those of its things left with no principal. Then delete the policies
left with no target (a policy or thing still attached to anything else stays,
and so does a policy JITP only attached, the account's own: see
``TemplatePolicies``), then the CA itself unless asked to keep it: its
auto-registration turned off first, so that no device registers behind the
removal's back, its certificates listed again at the end, and the CA deleted
only when none is left. What setup created goes with it, except what anything
else uses (another CA's template, other things).

All of a certificate's calls are made in one pass, many certificates at once:
each API is then called about once per device and all of them run at their own
rate together, so the run takes as long as the slowest API needs for the
devices (at AWS's 10 calls a second, 10 devices a second), not a phase per API.

Every step is idempotent (what is already gone counts as such), and what a
certificate was attached to is journaled in the CA folder before it is
detached: a teardown killed halfway and run again finds the things and policies
of certificates it had already deleted, and finishes the job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loadgen.aws.account import error_code
from loadgen.aws.calls import Api, is_registered, not_registered
from loadgen.aws.ratelimit import RateLimits, cancelling_pool
from loadgen.aws.record import Created, record_path
from loadgen.aws.shared import OthersUse, others_use
from loadgen.aws.template import TemplatePolicies, template_policies
from loadgen.certs.ca import CERT_FILE
from loadgen.errors import CAError
from loadgen.files import REPORT_LIMIT, read_limited
from loadgen.nesting import parse_json

_GONE = "ResourceNotFoundException"
# Detaching is eventually consistent on AWS (seconds for a thing's principal,
# up to minutes for a policy): a delete refused as still attached is tried again.
_CONFLICTS = {"DeleteConflictException", "InvalidRequestException"}
_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)
# Enough certificates in flight that every API's rate is used at once (about
# eight calls per device, each a round trip): the rates remain the limit.
_THREADS = 16
_PAGE = 250
# AWS deletes a deprecated thing type only five minutes after its deprecation.
_THING_TYPE_WAIT = 6 * 60


def ca_certificate_id(ca_dir: Path) -> str:
    """The CA's id as AWS computes certificate ids: the hex SHA-256 of its DER."""
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CERT_FILE).read_bytes())
    except FileNotFoundError:
        raise CAError(f"{ca_dir}: no CA certificate ({CERT_FILE})") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"{ca_dir / CERT_FILE}: not a PEM certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass
class Tally:
    """What happened to one kind of resource."""

    deleted: int = 0
    already_gone: int = 0
    kept: Counter[str] = field(default_factory=Counter)  # why, e.g. still attached
    refused: Counter[str] = field(default_factory=Counter)  # the account's reason

    def line(self, kind: str) -> str:
        parts = [f"{self.deleted} deleted", f"{self.already_gone} already gone"]
        parts += [f"{n} kept ({why})" for why, n in self.kept.items()]
        parts += [f"{n} refused ({why})" for why, n in self.refused.items()]
        return f"{kind}: " + ", ".join(parts)


@dataclass
class Found:
    """What the CA's devices left, as found (a dry run stops here)."""

    ca_id: str
    certificates: list[dict[str, Any]]
    things: set[str]
    policies: set[str]
    # Per certificate id, the things and policies it was attached to: listed once,
    # here (at 10 calls a second per API, listing again would double the time).
    attached: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    # What `loadgen aws setup` created, from its record in the CA folder.
    created: Created = field(default_factory=Created)
    ca_registered: bool = True  # False: a teardown that deleted it was cut short
    # Whether ``attached`` lists every certificate's attachments (a dry run's
    # counts); else ``things`` and ``policies`` hold only what was journaled.
    listed: bool = True
    # Whose the attached policies are, as the CA's template tells: JITP's are
    # deleted, the account's own (which JITP only attaches) never.
    template_policies: TemplatePolicies = field(default_factory=TemplatePolicies)

    @property
    def steps(self) -> int:
        """What the progress counts first: each certificate (with its things),
        each policy known; the run adds what it finds on the way."""
        return len(self.certificates) + len(self.policies)


@dataclass
class Summary:
    found: Found
    certificates: Tally = field(default_factory=Tally)
    things: Tally = field(default_factory=Tally)
    policies: Tally = field(default_factory=Tally)
    ca: Tally = field(default_factory=Tally)
    setup: Tally = field(default_factory=Tally)  # what `aws setup` created
    interrupted: bool = False  # cut short: what is counted was done, the rest not
    # Certificates of the CA still in the account at the end (registered while
    # the run removed the others): the CA and its record stay for a rerun.
    left: int = 0
    # Thing types this run deprecated and left so (cut short): AWS creates no
    # thing of them until `loadgen aws setup` or a rerun deals with them.
    deprecated: set[str] = field(default_factory=set)
    registration_stopped: bool = False  # the CA's auto-registration turned off

    @property
    def complete(self) -> bool:
        """Everything teardown owns is gone (kept shared resources do not count)."""
        tallies = (self.certificates, self.things, self.policies, self.ca, self.setup)
        return not self.interrupted and not self.left and not any(t.refused for t in tallies)

    def lines(self) -> list[str]:
        lines = [
            self.certificates.line("certificates"),
            self.things.line("things"),
            self.policies.line("policies"),
        ]
        if self.found.created.names():
            lines.append(self.setup.line("created by setup"))
        lines.append(self.ca.line("CA"))
        if self.deprecated:
            lines.append(
                f"thing types left deprecated: {', '.join(sorted(self.deprecated))} (AWS "
                "creates no thing of them: run teardown again, or `loadgen aws setup` to "
                "use them again)"
            )
        if self.registration_stopped and not self.ca.deleted:
            lines.append("the CA's auto-registration is off: `loadgen aws setup` turns it on")
        return lines


class Teardown:
    def __init__(
        self,
        iot: Any,
        ca_dir: Path,
        limits: RateLimits,
        *,
        sleep: Callable[[float], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        iam: Any = None,
        created: Created | None = None,
        probe: Any = None,
    ) -> None:
        self.api = Api(iot, limits, probe=probe)
        self.iam = iam  # for the role setup created
        self.created = created or Created()
        self.ca_dir = ca_dir
        self.limits = limits
        self.sleep = sleep if sleep is not None else limits.wait
        self.on_progress = on_progress
        self.ca_id = ca_certificate_id(ca_dir)
        self.journal = ca_dir / f"aws-teardown-{self.ca_id[:16]}.jsonl"

    # -- finding ----------------------------------------------------------

    def find(self, *, attachments: bool = True) -> Found:
        """The CA's certificates in the account and, with ``attachments``, what
        they are attached to (plus what an interrupted teardown had journaled).
        Changes nothing. Without ``attachments`` (one listing call per 250
        certificates), ``run`` lists each certificate's as it removes it."""
        registered = self._check_registered()
        if not registered:
            return Found(self.ca_id, [], set(), set(), {}, self.created, ca_registered=False)
        certificates = self._certificates()
        config = self.api.call("DescribeCACertificate", certificateId=self.ca_id).get(
            "registrationConfig"
        )
        things, policies = self._journaled()
        attached = {}
        if attachments:
            with cancelling_pool(self.limits, _THREADS) as pool:
                for cert, (cert_things, cert_policies) in zip(
                    certificates, pool.map(self._attachments, certificates), strict=True
                ):
                    attached[cert["certificateId"]] = (cert_things, cert_policies)
                    things |= cert_things
                    policies |= cert_policies
        return Found(
            self.ca_id,
            certificates,
            things,
            policies,
            attached,
            self.created,
            listed=attachments,
            template_policies=template_policies(config),
        )

    def _check_registered(self) -> bool:
        """Whether the CA is registered; a CA not registered is a mistake unless
        setup's record says what is left to delete."""
        if is_registered(self.api, self.ca_id):
            return True
        if self.created.names():
            return False  # the CA is gone, not what setup created for it: finish those
        raise not_registered(self.ca_dir, self.ca_id)

    def _attachments(self, cert: dict[str, Any]) -> tuple[set[str], set[str]]:
        arn = cert["certificateArn"]
        policies = {
            p["policyName"]
            for p in self.api.pages(
                "ListAttachedPolicies", "policies", "marker", "nextMarker", target=arn
            )
        }
        things = set(
            self.api.pages("ListPrincipalThings", "things", "nextToken", "nextToken", principal=arn)
        )
        return things, policies

    # -- removing ---------------------------------------------------------

    def run(self, found: Found, *, keep_ca: bool = False) -> Summary:
        """Delete what was found; with ``keep_ca``, the CA stays registered with
        what setup created for it (its role, thing type, groups): ready for the
        next storm. The CA and setup's resources also stay when anything of its
        devices was refused: a later run must still find them through the CA.

        Interrupted (Ctrl-C or a stop signal), the calls waiting their turn are
        cancelled, the summary counts what was done, and ``interrupted`` says
        so: the journal lets a later run finish."""
        summary = Summary(found)
        if found.things or found.policies:
            self._journal(found.things, found.policies)
        try:
            self._run(found, summary, keep_ca=keep_ca)
        except KeyboardInterrupt:
            summary.interrupted = True
            return summary
        if summary.complete:
            self.journal.unlink(missing_ok=True)
            if not keep_ca:
                record_path(self.ca_dir).unlink(missing_ok=True)
        return summary

    def _run(self, found: Found, summary: Summary, *, keep_ca: bool) -> None:
        removing = not keep_ca
        others: OthersUse | tuple[str, str] = OthersUse()
        if removing and found.ca_registered:
            # No device of the CA registers from here on (JITP needs
            # auto-registration): none arrives behind the removal's back.
            stopped = self._call_outcome(
                "UpdateCACertificate", certificateId=self.ca_id, newAutoRegistrationStatus="DISABLE"
            )
            summary.registration_stopped = stopped[0] == "deleted"
            if not summary.registration_stopped:
                _count(summary.ca, stopped)
        refused_types: dict[str, tuple[str, str]] = {}
        if removing and found.created.names():
            others = self._others_use()
            for name in found.created.thing_types:
                if isinstance(others, OthersUse) and others.reason("thing type", name) is None:
                    # AWS deletes a thing type five minutes after its deprecation:
                    # start now, once no other CA's devices need it.
                    outcome = self._call_outcome("DeprecateThingType", thingTypeName=name)
                    if outcome[0] == "deleted":
                        summary.deprecated.add(name)
                    elif outcome[0] == "refused":
                        refused_types[name] = outcome
        progress = _Progress(self.on_progress, len(found.certificates) + len(found.policies))
        ours = {c["certificateArn"] for c in found.certificates}
        # Outcomes are counted by the threads as each step ends (under the lock),
        # so that an interrupted run's summary has every step that was done.
        lock = threading.Lock()
        things: dict[str, tuple[str, str]] = {}  # a thing's outcome, once it has one
        policies = set(found.policies)

        def certificate(cert: dict[str, Any]) -> None:
            outcome, cert_things, cert_policies = self._tear_certificate(cert, found)
            with lock:
                _count(summary.certificates, outcome)
                progress.add(len(cert_policies - policies))
                policies.update(cert_policies)
            if outcome[0] in ("deleted", "already_gone"):
                # Each of its things that has no principal left ("pending":
                # another of our certificates still holds it).
                for name in sorted(cert_things):
                    thing_outcome = self._remove_thing(name, ours, removed=cert["certificateArn"])
                    with lock:
                        # A thing shared by two of our certificates is decided by
                        # the last one removed; one decided twice keeps its first
                        # verdict unless the later one deleted it.
                        if name not in things or thing_outcome[0] == "deleted":
                            _decide(summary.things, things, name, thing_outcome)
            with lock:
                progress.step()

        def thing(name: str) -> None:
            outcome = self._remove_thing(name, ours)
            with lock:
                _decide(summary.things, things, name, outcome)
                progress.step()

        def policy(name: str) -> None:
            outcome = self._remove_policy(name, found.template_policies)
            with lock:
                _count(summary.policies, outcome)
                progress.step()

        with cancelling_pool(self.limits, _THREADS) as pool:
            for _ in pool.map(certificate, found.certificates):
                pass
            if summary.registration_stopped:
                # Those JITP registered between the listing and the stop.
                seen = {c["certificateId"] for c in found.certificates}
                arrived = [c for c in self._listed(summary) if c["certificateId"] not in seen]
                ours |= {c["certificateArn"] for c in arrived}
                progress.add(len(arrived))
                for _ in pool.map(certificate, arrived):
                    pass
            # Things still waiting for another of our certificates when theirs was
            # removed, and those only the journal knows of: decided now.
            pending = sorted(
                {n for n, o in things.items() if o[0] == "pending"} | (found.things - set(things))
            )
            progress.add(len(pending))
            for _ in pool.map(thing, pending):
                pass
            for _ in pool.map(policy, sorted(policies)):
                pass
        if removing and found.ca_registered and summary.complete:
            # Nothing of the CA may remain when it goes: a certificate it signed
            # would be out of any later teardown's reach.
            summary.left = len(self._listed(summary))
        created = found.created.names()
        if keep_ca:
            summary.ca.kept["--keep-ca"] += 1
            summary.setup.kept["--keep-ca"] += len(created)
        elif not summary.complete:
            why = "the CA's devices are not all removed: run again"
            if summary.left:
                why = f"{summary.left} certificates it signed registered meanwhile: run again"
            summary.ca.kept[why] += 1
            summary.setup.kept[why] += len(created)
            for name in sorted(summary.deprecated):
                # The CA stays for a second run: its devices may need the type.
                if (
                    self._call_outcome(
                        "DeprecateThingType", thingTypeName=name, undoDeprecate=True
                    )[0]
                    == "deleted"
                ):
                    summary.deprecated.discard(name)
        else:
            for outcome in self._remove_created(found.created, others, refused_types, summary):
                _count(summary.setup, outcome)
            if found.ca_registered:
                _count(summary.ca, self._remove_ca())
            else:
                summary.ca.already_gone += 1

    def _others_use(self) -> OthersUse | tuple[str, str]:
        """What other CAs use, or the refusal to tell (then nothing setup created
        may be taken for this CA's alone)."""
        try:
            return others_use(self.api, self.ca_id)
        except Exception as exc:
            kind, why = _refused(exc)
            return (kind, f"{why} listing the other CAs")

    def _certificates(self) -> list[dict[str, Any]]:
        """The CA's certificates in the account now, every page."""
        return list(
            self.api.pages(
                "ListCertificatesByCA",
                "certificates",
                "marker",
                "nextMarker",
                caCertificateId=self.ca_id,
                pageSize=_PAGE,
            )
        )

    def _listed(self, summary: Summary) -> list[dict[str, Any]]:
        """The CA's certificates in the account now (a refusal is counted)."""
        try:
            return self._certificates()
        except Exception as exc:
            _count(summary.certificates, _refused(exc))
            return []

    def _tear_certificate(
        self, cert: dict[str, Any], found: Found
    ) -> tuple[tuple[str, str], set[str], set[str]]:
        """One certificate removed: its outcome, and the things and policies it
        had (its things are decided by the caller, once this is counted)."""
        listed = found.attached.get(cert["certificateId"])
        if listed is None:
            try:
                listed = self._attachments(cert)
            except Exception as exc:
                return _refused(exc), set(), set()
            # Before anything is detached: a rerun after a kill finds them here.
            self._journal(*listed)
        cert_things, cert_policies = listed
        return self._remove_certificate(cert, cert_things, cert_policies), *listed

    # -- what setup created -------------------------------------------------

    def _remove_created(
        self,
        created: Created,
        others: OthersUse | tuple[str, str],
        refused_types: dict[str, tuple[str, str]],
        summary: Summary,
    ) -> Iterator[tuple[str, str]]:
        """What setup created, except what anything else uses: another CA's
        template (its devices get them), or things of other CAs' devices."""
        for kind, names in (
            ("thing group", created.thing_groups),
            ("thing type", created.thing_types),
            ("role", created.roles),
        ):
            for name in names:
                if not isinstance(others, OthersUse):
                    yield others
                elif (why := others.reason(kind, name)) is not None:
                    yield ("kept", why)
                elif kind == "thing group":
                    yield self._remove_thing_group(name)
                elif kind == "role":
                    yield self._removed(functools.partial(self._remove_role, name))
                elif name in refused_types:
                    yield refused_types[name]
                else:
                    outcome = self._remove_thing_type(name)
                    if outcome[0] != "refused":
                        summary.deprecated.discard(name)
                    yield outcome

    def _remove_thing_group(self, name: str) -> tuple[str, str]:
        try:
            # DeleteThingGroup succeeds for a group that is not there: ask first,
            # or one deleted by hand would be counted as deleted here.
            self.api.call("DescribeThingGroup", thingGroupName=name)
            listed = self.api.call("ListThingsInThingGroup", thingGroupName=name, maxResults=1)
            if listed.get("things"):
                return ("kept", "thing group of other things")
            self._retrying("DeleteThingGroup", thingGroupName=name)
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    def _remove_thing_type(self, name: str) -> tuple[str, str]:
        try:
            users = self.api.call("ListThings", thingTypeName=name, maxResults=1)["things"]
            if users:
                # Deprecated at the start: let the others' devices have it again.
                self._gone_is_fine("DeprecateThingType", thingTypeName=name, undoDeprecate=True)
                return ("kept", "thing type of other things")
            self._gone_is_fine("DeprecateThingType", thingTypeName=name)
            # Refused until five minutes after the deprecation (started at the
            # beginning of the run, so usually past by now).
            deadline = time.monotonic() + _THING_TYPE_WAIT
            while True:
                try:
                    self._retrying("DeleteThingType", thingTypeName=name)
                    return ("deleted", "")
                except Exception as exc:
                    if error_code(exc) != "InvalidRequestException" or time.monotonic() > deadline:
                        raise
                self.sleep(15)
        except Exception as exc:
            return _refused(exc)

    def _remove_role(self, name: str) -> None:
        assert self.iam is not None, "a Teardown of a record with a role needs iam"
        try:
            attached = self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
            for policy in attached:
                self.iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
            self.iam.delete_role(RoleName=name)
        except Exception as exc:
            if error_code(exc) == "NoSuchEntity":
                raise _Gone from None
            raise

    @staticmethod
    def _removed(remove: Callable[[], object]) -> tuple[str, str]:
        try:
            remove()
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    def _remove_certificate(
        self, cert: dict[str, Any], things: set[str], policies: set[str]
    ) -> tuple[str, str]:
        arn, cert_id = cert["certificateArn"], cert["certificateId"]
        try:
            for policy in sorted(policies):
                self._gone_is_fine("DetachPolicy", policyName=policy, target=arn)
            for thing in sorted(things):
                self._gone_is_fine("DetachThingPrincipal", thingName=thing, principal=arn)
            if cert.get("status") in ("ACTIVE", "PENDING_ACTIVATION", None):
                self.api.call("UpdateCertificate", certificateId=cert_id, newStatus="INACTIVE")
            self._retrying("DeleteCertificate", certificateId=cert_id)
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    def _remove_thing(
        self, name: str, ours: set[str], *, removed: str | None = None
    ) -> tuple[str, str]:
        """A thing deleted unless another principal has it. Given the certificate
        just ``removed`` from it (which a listing may still show for a few
        seconds: detaching is eventually consistent), "pending" while another of
        our certificates, removed later, still has it."""
        try:
            principals = set(
                self.api.pages(
                    "ListThingPrincipals", "principals", "nextToken", "nextToken", thingName=name
                )
            )
            if principals - ours:
                return ("kept", "attached to another principal")
            if removed is not None and principals - {removed}:
                return ("pending", "")
            self._retrying("DeleteThing", thingName=name)
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    def _remove_policy(self, name: str, template: TemplatePolicies) -> tuple[str, str]:
        try:
            owner = template.owner(name, lambda: self._policy_document(name))
            if owner is not None:
                return ("kept", owner)
            targets = list(
                self.api.pages(
                    "ListTargetsForPolicy", "targets", "marker", "nextMarker", policyName=name
                )
            )
            if targets:
                return ("kept", "still attached to another target")
            versions = self.api.call("ListPolicyVersions", policyName=name)["policyVersions"]
            for version in versions:
                if not version.get("isDefaultVersion"):
                    self._gone_is_fine(
                        "DeletePolicyVersion", policyName=name, policyVersionId=version["versionId"]
                    )
            self._retrying("DeletePolicy", policyName=name)
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    def _call_outcome(self, api: str, **kwargs: Any) -> tuple[str, str]:
        """A call's outcome as counted: "deleted" for done."""
        return self._removed(functools.partial(self.api.call, api, **kwargs))

    def _policy_document(self, name: str) -> str:
        return str(self.api.call("GetPolicy", policyName=name)["policyDocument"])

    def _remove_ca(self) -> tuple[str, str]:
        try:
            self.api.call("UpdateCACertificate", certificateId=self.ca_id, newStatus="INACTIVE")
            self._retrying("DeleteCACertificate", certificateId=self.ca_id)
        except Exception as exc:
            return _refused(exc)
        return ("deleted", "")

    # -- calls ------------------------------------------------------------

    def _gone_is_fine(self, api: str, **kwargs: Any) -> None:
        try:
            self.api.call(api, **kwargs)
        except Exception as exc:
            if error_code(exc) != _GONE:
                raise

    def _retrying(self, api: str, **kwargs: Any) -> None:
        """A delete, tried again while the account still sees an attachment that
        was just removed; one already gone raises ``_Gone``."""
        for delay in (*_RETRY_DELAYS, None):
            try:
                self.api.call(api, **kwargs)
                return
            except Exception as exc:
                code = error_code(exc)
                if code == _GONE:
                    raise _Gone from None
                if code not in _CONFLICTS or delay is None:
                    raise
            self.sleep(delay)

    # -- the journal --------------------------------------------------------

    def _journal(self, things: set[str], policies: set[str]) -> None:
        line = json.dumps({"things": sorted(things), "policies": sorted(policies)}) + "\n"
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _journaled(self) -> tuple[set[str], set[str]]:
        things: set[str] = set()
        policies: set[str] = set()
        try:
            # A line or two per certificate: bounded as a report is.
            lines = read_limited(self.journal, REPORT_LIMIT, "teardown journal").splitlines()
        except FileNotFoundError:
            return things, policies
        for line in lines:
            try:
                entry = parse_json(line)
            except ValueError:
                continue  # a line cut short by a kill: the rerun finds the rest again
            things.update(entry.get("things", ()))
            policies.update(entry.get("policies", ()))
        return things, policies


class _Gone(Exception):
    """The resource was already gone."""


def _refused(exc: BaseException) -> tuple[str, str]:
    code = error_code(exc)
    if isinstance(exc, _Gone) or code == _GONE:
        return ("already_gone", "")
    return ("refused", code or type(exc).__name__)


class _Progress:
    """Steps done of a total that grows as the run finds more to do."""

    def __init__(self, report: Callable[[int, int], None] | None, total: int) -> None:
        self.report = report
        self.total = total
        self.done = 0

    def add(self, steps: int) -> None:
        self.total += steps

    def step(self) -> None:
        self.done += 1
        if self.report is not None:
            self.report(self.done, self.total)


def _decide(
    tally: Tally, things: dict[str, tuple[str, str]], name: str, outcome: tuple[str, str]
) -> None:
    """A thing's outcome, counted once it is final: a later verdict on the same
    thing replaces the count of the earlier one."""
    before = things.get(name)
    if before is not None and before[0] != "pending":
        _uncount(tally, before)
    things[name] = outcome
    if outcome[0] != "pending":
        _count(tally, outcome)


def _uncount(tally: Tally, outcome: tuple[str, str]) -> None:
    kind, why = outcome
    if kind == "deleted":
        tally.deleted -= 1
    elif kind == "already_gone":
        tally.already_gone -= 1
    else:
        counter = tally.kept if kind == "kept" else tally.refused
        counter[why] -= 1
        if counter[why] == 0:
            del counter[why]


def _count(tally: Tally, outcome: tuple[str, str]) -> None:
    kind, why = outcome
    if kind == "deleted":
        tally.deleted += 1
    elif kind == "already_gone":
        tally.already_gone += 1
    elif kind == "kept":
        tally.kept[why] += 1
    else:
        tally.refused[why] += 1
