"""`loadgen aws teardown` against moto, an independent model of AWS IoT's control
plane and its deletion rules: what JITP left for one CA's devices goes, and
nothing else does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest

from loadgen.aws.ratelimit import Cancelled, RateLimits
from loadgen.aws.record import Created
from loadgen.aws.teardown import Teardown, ca_certificate_id
from loadgen.certs.ca import CA, init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import FleetStore
from tests.conftest import assert_user_error
from tests.moto_aws import POLICY, REGION, client, no_credentials_env
from tests.moto_aws import provision as _provision

_TEARDOWN = (sys.executable, "-m", "loadgen", "aws", "teardown", "--ca")
_ROLE = "arn:aws:iam::123456789012:role/JITPRole"


def _iot(url):
    return client(url)


@dataclass
class Account:
    """The state JITP leaves for CA A's devices, beside another CA's devices, a
    loose thing and a policy A's devices share with B's."""

    a: CA
    b: CA
    a_things: list[str]
    b_things: list[str]


@pytest.fixture
def account(tmp_path, moto_url):
    iot = _iot(moto_url)
    a, b = init_ca(tmp_path / "ca-a"), init_ca(tmp_path / "ca-b", subject="CN=other CA")
    for ca in (a, b):
        iot.register_ca_certificate(
            caCertificate=(ca.directory / "ca.pem").read_text(),
            setAsActive=True,
            allowAutoRegistration=True,
        )
    iot.create_policy(policyName="shared", policyDocument=POLICY)
    iot.create_thing(thingName="loose")
    state = Account(
        a,
        b,
        _provision(iot, a, tmp_path / "fleet-a", 6, "a", "shared"),
        _provision(iot, b, tmp_path / "fleet-b", 2, "b", "shared"),
    )
    yield state
    _forget_everything(iot)


def _forget_everything(iot):
    """moto keeps its state across tests: leave it empty for the next."""
    for page in iot.list_certificates()["certificates"]:
        arn, cert_id = page["certificateArn"], page["certificateId"]
        for policy in iot.list_attached_policies(target=arn)["policies"]:
            iot.detach_policy(policyName=policy["policyName"], target=arn)
        for thing in iot.list_principal_things(principal=arn)["things"]:
            iot.detach_thing_principal(thingName=thing, principal=arn)
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        iot.delete_certificate(certificateId=cert_id)
    for thing in iot.list_things()["things"]:
        iot.delete_thing(thingName=thing["thingName"])
    for policy in iot.list_policies()["policies"]:
        iot.delete_policy(policyName=policy["policyName"])


def _teardown(url, ca_dir, *args):
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = subprocess.run(
        [*_TEARDOWN, str(ca_dir), "--endpoint-url", url, "--region", REGION, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return proc


def _names(iot):
    certificates = iot.list_certificates()["certificates"]
    return (
        {t["thingName"] for t in iot.list_things()["things"]},
        {p["policyName"] for p in iot.list_policies()["policies"]},
        len(certificates),
    )


def _ca_registered(iot, ca: CA) -> bool:
    try:
        iot.describe_ca_certificate(certificateId=ca_certificate_id(ca.directory))
    except iot.exceptions.ResourceNotFoundException:
        return False
    return True


def test_teardown_removes_what_jitp_made_for_the_ca_and_nothing_else(moto_url, account):
    proc = _teardown(moto_url, account.a.directory, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    iot = _iot(moto_url)
    things, policies, certificates = _names(iot)
    assert things == {*account.b_things, "loose"}
    # The shared policy is still attached to B's devices; A's own ones are gone.
    assert policies == {"shared", *(f"{t}-policy" for t in account.b_things)}
    assert certificates == len(account.b_things)
    assert not _ca_registered(iot, account.a) and _ca_registered(iot, account.b)
    assert "certificates: 6 deleted" in proc.stdout
    assert "policies: 6 deleted, 0 already gone, 1 kept (still attached to another target)" in (
        proc.stdout
    )


def test_a_policy_the_template_names_is_the_accounts_own_and_is_kept(moto_url, tmp_path):
    """JITP attaches a policy named by the template (PolicyName alone) but never
    creates one: it was the account's before the storm and stays after it."""
    iot = _iot(moto_url)
    ca = init_ca(tmp_path / "ca")
    _register(iot, ca, {"PolicyName": "fleet-policy"}, {"PolicyDocument": POLICY})
    iot.create_policy(policyName="fleet-policy", policyDocument=POLICY)
    try:
        things = _provision(iot, ca, tmp_path / "fleet", 3, "c", "fleet-policy")
        dry = _teardown(moto_url, ca.directory, "--dry-run")
        proc = _teardown(moto_url, ca.directory, "--yes")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _, policies, certificates = _names(iot)
        assert policies == {"fleet-policy"} and certificates == 0
        assert not iot.list_targets_for_policy(policyName="fleet-policy")["targets"]
        assert "the policies the CA's template names (fleet-policy)" in dry.stdout
        assert (
            f"policies: {len(things)} deleted, 0 already gone, "
            "1 kept (named by the CA's template: the account's own)"
        ) in proc.stdout
    finally:
        _forget_everything(iot)


def test_a_dry_run_counts_and_changes_nothing(moto_url, account):
    iot = _iot(moto_url)
    before = _names(iot)
    proc = _teardown(moto_url, account.a.directory, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "6 certificates, 6 things and 7 policies" in proc.stdout
    assert "nothing was changed" in proc.stdout
    assert _names(iot) == before and _ca_registered(iot, account.a)


def test_keep_ca_leaves_the_ca_registered(moto_url, account):
    proc = _teardown(moto_url, account.a.directory, "--yes", "--keep-ca")
    assert proc.returncode == 0, proc.stderr
    assert _ca_registered(_iot(moto_url), account.a)


def test_without_yes_and_no_terminal_it_asks_for_yes_and_changes_nothing(moto_url, account):
    iot = _iot(moto_url)
    before = _names(iot)
    result = _teardown(moto_url, account.a.directory)
    assert result.returncode == 2 and "--yes" in result.stderr and "Traceback" not in result.stderr
    assert _names(iot) == before


def test_a_teardown_cut_short_and_run_again_finishes_the_job(moto_url, account):
    """The first run deletes two certificates and stops there (as if killed):
    their things and policies are only findable through its journal."""
    iot = _iot(moto_url)
    first = Teardown(iot, account.a.directory, RateLimits())
    found = first.find()
    found.certificates = found.certificates[:2]
    first._journal(found.things, found.policies)  # what run() journals first
    for cert in found.certificates:
        first._remove_certificate(cert, *found.attached[cert["certificateId"]])
    assert first.journal.exists()
    proc = _teardown(moto_url, account.a.directory, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    things, policies, _ = _names(iot)
    assert things == {*account.b_things, "loose"}
    assert policies == {"shared", *(f"{t}-policy" for t in account.b_things)}
    assert not first.journal.exists()


def _register_late(iot, ca: CA, fleet) -> str:
    """A device of ``ca`` JITP registers after teardown listed the CA's."""
    mint(MintRequest(fleet, ca.directory, 1, None, seed=99))
    device = next(FleetStore(fleet).devices())
    pem = (fleet / device.cert).read_text().split("-----END CERTIFICATE-----")[0]
    return iot.register_certificate(
        certificatePem=pem + "-----END CERTIFICATE-----\n",
        caCertificatePem=ca.cert_pem.decode(),
        setAsActive=True,
    )["certificateId"]


class _Recording:
    """A client that notes the operations called, in order, with their arguments."""

    def __init__(self, client):
        self._client, self.calls = client, []

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(**kwargs):
            self.calls.append((name, kwargs))
            return method(**kwargs)

        return call


def test_teardown_first_turns_the_cas_auto_registration_off(moto_url, account):
    recording = _Recording(_iot(moto_url))
    teardown = Teardown(recording, account.a.directory, RateLimits())
    found = teardown.find(attachments=False)
    recording.calls.clear()
    assert teardown.run(found).complete
    name, kwargs = recording.calls[0]
    assert name == "update_ca_certificate" and kwargs["newAutoRegistrationStatus"] == "DISABLE"


def test_certificates_registered_after_the_listing_are_removed_too(moto_url, account, tmp_path):
    iot = _iot(moto_url)
    teardown = Teardown(iot, account.a.directory, RateLimits())
    found = teardown.find(attachments=False)
    late = _register_late(iot, account.a, tmp_path / "late")
    summary = teardown.run(found)
    assert summary.complete, summary.lines()
    assert summary.certificates.deleted == len(account.a_things) + 1
    assert late not in {c["certificateId"] for c in iot.list_certificates()["certificates"]}
    assert not _ca_registered(iot, account.a)


def test_a_ca_that_still_signs_a_certificate_at_the_end_is_kept_with_its_journal(
    moto_url, account, tmp_path
):
    iot = _iot(moto_url)
    teardown = Teardown(iot, account.a.directory, RateLimits())
    found = teardown.find(attachments=False)
    late = []

    def register_at_the_last_step(done, total):
        if done == total and not late:
            late.append(_register_late(iot, account.a, tmp_path / "late"))

    teardown.on_progress = register_at_the_last_step
    summary = teardown.run(found)
    assert late and summary.left == 1 and not summary.complete
    assert "CA: 0 deleted, 0 already gone, 1 kept (1 certificates it signed registered " in (
        "\n".join(summary.lines())
    )
    assert teardown.journal.exists()


class _Refusing:
    """A client that refuses one operation as the account would (AccessDenied)."""

    def __init__(self, client, operation):
        self._client, self._operation = client, operation

    def __getattr__(self, name):
        if name != self._operation:
            return getattr(self._client, name)

        def refuse(**_):
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "AccessDeniedException", "Message": "no"}}
            raise ClientError(error, name)

        return refuse


def test_a_deprecation_refused_is_counted_as_refused(moto_url, account):
    iot = _iot(moto_url)
    iot.create_thing_type(thingTypeName="lamp")
    created = Created(thing_types=["lamp"])
    teardown = Teardown(
        _Refusing(iot, "deprecate_thing_type"), account.a.directory, RateLimits(), created=created
    )
    summary = teardown.run(teardown.find(attachments=False))
    assert summary.setup.refused == {"AccessDeniedException": 1}
    assert not summary.complete
    assert iot.describe_thing_type(thingTypeName="lamp")


def test_a_ca_kept_for_a_second_run_leaves_no_thing_type_deprecated(moto_url, account):
    iot = _iot(moto_url)
    iot.create_thing_type(thingTypeName="lamp")
    created = Created(thing_types=["lamp"])
    teardown = Teardown(
        _Refusing(iot, "delete_certificate"), account.a.directory, RateLimits(), created=created
    )
    summary = teardown.run(teardown.find(attachments=False))
    assert summary.certificates.refused and not summary.complete
    assert _ca_registered(iot, account.a)
    described = iot.describe_thing_type(thingTypeName="lamp")
    assert not described["thingTypeMetadata"].get("deprecated")
    assert not summary.deprecated


def test_a_ca_that_is_not_registered_is_one_line_and_exit_2(moto_url, account, tmp_path):
    stranger = init_ca(tmp_path / "stranger")
    assert_user_error(
        _as_result(_teardown(moto_url, stranger.directory, "--yes")),
        "is not registered in this account and region",
    )


def test_no_credentials_is_one_line_and_exit_2(tmp_path):
    env = no_credentials_env(tmp_path)
    ca = init_ca(tmp_path / "ca")
    proc = subprocess.run(
        [*_TEARDOWN, str(ca.directory), "--region", REGION, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_user_error(_as_result(proc), "no AWS credentials found")


def _register(iot, ca: CA, *policies: dict) -> None:
    """CA registered with a template of a thing and these policies' properties."""
    resources = {
        f"policy{i}": {"Type": "AWS::IoT::Policy", "Properties": p} for i, p in enumerate(policies)
    }
    resources["thing"] = {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}}
    iot.register_ca_certificate(
        caCertificate=(ca.directory / "ca.pem").read_text(),
        setAsActive=True,
        allowAutoRegistration=True,
        registrationConfig={"templateBody": json.dumps({"Resources": resources}), "roleArn": _ROLE},
    )


_COUNTRY_POLICY = {"Fn::Join": ["", ["acct-", {"Ref": "AWS::IoT::Certificate::Country"}]]}
# The account's own: not the document of the template's PolicyDocument.
_ACCOUNT_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*"}]}
)


def test_the_accounts_policies_a_template_names_by_a_computed_name_are_kept(moto_url, tmp_path):
    iot = _iot(moto_url)
    ca = init_ca(tmp_path / "ca")
    _register(iot, ca, {"PolicyName": _COUNTRY_POLICY}, {"PolicyDocument": POLICY})
    iot.create_policy(policyName="acct-US", policyDocument=_ACCOUNT_POLICY)
    try:
        # Each device's own policy has the template's document: JITP's.
        _provision(iot, ca, tmp_path / "fleet", 3, "c", "acct-US")
        proc = _teardown(moto_url, ca.directory, "--yes")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _, policies, _ = _names(iot)
        assert policies == {"acct-US"}
        assert (
            "policies: 3 deleted, 0 already gone, "
            "1 kept (named by the CA's template: the account's own)"
        ) in proc.stdout
    finally:
        _forget_everything(iot)


def test_a_template_without_a_policy_document_created_none_of_the_policies(moto_url, tmp_path):
    iot = _iot(moto_url)
    ca = init_ca(tmp_path / "ca")
    _register(iot, ca, {"PolicyName": _COUNTRY_POLICY})
    iot.create_policy(policyName="acct-US", policyDocument=_ACCOUNT_POLICY)
    try:
        things = _provision(iot, ca, tmp_path / "fleet", 3, "c", "acct-US")
        proc = _teardown(moto_url, ca.directory, "--yes")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _, policies, certificates = _names(iot)
        assert policies == {"acct-US", *(f"{t}-policy" for t in things)} and certificates == 0
        assert not iot.list_targets_for_policy(policyName="acct-US")["targets"]
        assert (
            "policies: 0 deleted, 0 already gone, 4 kept (the CA's template creates no policy"
            in (proc.stdout)
        )
    finally:
        _forget_everything(iot)


def _as_result(proc):
    from tests.conftest import Result

    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_the_rate_limit_spaces_calls_of_one_api_at_its_rate():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limits = RateLimits(cap=5, clock=lambda: now[0], sleep=sleep)
    for _ in range(15):
        limits.acquire("DeleteCertificate")
    # A burst of one second's worth, then one call every 1/5 s.
    assert now[0] == pytest.approx(2.0)
    assert limits.rate("DescribeThing") == 5


def test_a_rate_under_one_call_a_second_still_gives_turns():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        assert now[0] < 60, "still no turn after a minute of 4 s turns"

    limits = RateLimits(cap=0.25, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limits.acquire("DeleteCertificate")
    # The first at once, then one every 4 s.
    assert now[0] == pytest.approx(8.0)


def test_a_cancel_ends_the_waits_for_a_turn_at_once():
    limits = RateLimits(cap=0.001)
    limits.acquire("DeleteCertificate")  # the first turn at once, the next in 1,000 s
    outcome = []

    def waiter():
        try:
            limits.acquire("DeleteCertificate")
            outcome.append("acquired")
        except Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=waiter)
    thread.start()
    limits.cancel()
    thread.join(timeout=30)
    assert outcome == ["cancelled"]
    with pytest.raises(Cancelled):
        limits.wait(1000)


def test_the_journal_survives_a_line_cut_short(tmp_path):
    ca = init_ca(tmp_path / "ca")
    teardown = Teardown(None, ca.directory, RateLimits())
    teardown._journal({"t1"}, {"p1"})
    with teardown.journal.open("a") as f:
        f.write('{"things": ["t2"')  # killed mid-write
    assert teardown._journaled() == ({"t1"}, {"p1"})
    assert json.loads(teardown.journal.read_text().splitlines()[0])["things"] == ["t1"]


def test_a_rate_too_slow_to_finish_is_refused_before_any_call(tmp_path):
    ca = init_ca(tmp_path / "ca")
    result = _as_result(
        _teardown("http://127.0.0.1:9", ca.directory, "--dry-run", "--rate", "1e-9")
    )
    assert_user_error(result, "'--rate'", "x>=0.1")
