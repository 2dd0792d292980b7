"""The control plane's HTTP side, read from botocore's model: what boto3 sends
reaches the handler as typed input members, what the handler answers (or
refuses) reaches boto3 as AWS's would; throttling; and the server's bounds.
In front of a handler of the test's own, so that only the wire is tested."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import botocore.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.api.http import HttpLimits
from loadgen.emulator.api.throttle import ApiThrottle, parse_api_rates
from loadgen.errors import UserError
from tests.api_server import client, raw_http, running_api

CERT_ID = "c0" * 32
CERT_ARN = f"arn:aws:iot:us-east-1:123456789012:cert/{CERT_ID}"


class Recorder:
    """Answers each operation with ``answers[operation]`` (a dict, or an
    ApiError to raise), and keeps what it was called with."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((operation, params))
        answer = self.answers.get(operation, {})
        if isinstance(answer, ApiError):
            raise answer
        return dict(answer)


def test_query_string_uri_and_header_members_reach_the_handler_typed():
    recorder = Recorder()
    with running_api(recorder) as api:
        iot = client("iot", api.url)
        iot.list_certificates_by_ca(caCertificateId="ca" * 32, pageSize=25, ascendingOrder=True)
        iot.update_ca_certificate(certificateId="ca" * 32, newStatus="INACTIVE")
        iot.list_principal_things(principal=CERT_ARN, maxResults=5)
        iot.list_attached_policies(target=CERT_ARN, recursive=False)
        iot.delete_certificate(certificateId=CERT_ID, forceDelete=True)
    assert recorder.calls == [
        # isAscendingOrder on the wire, ascendingOrder in the model
        (
            "ListCertificatesByCA",
            {"caCertificateId": "ca" * 32, "pageSize": 25, "ascendingOrder": True},
        ),
        # the URI label is caCertificateId, the member certificateId
        ("UpdateCACertificate", {"certificateId": "ca" * 32, "newStatus": "INACTIVE"}),
        # the principal travels in the x-amzn-principal header
        ("ListPrincipalThings", {"principal": CERT_ARN, "maxResults": 5}),
        # an ARN in the path, percent-encoded by botocore, decoded here
        ("ListAttachedPolicies", {"target": CERT_ARN, "recursive": False}),
        ("DeleteCertificate", {"certificateId": CERT_ID, "forceDelete": True}),
    ]


def test_json_body_members_reach_the_handler_as_sent():
    recorder = Recorder(RegisterCACertificate={"certificateId": "ca" * 32, "certificateArn": "arn"})
    config = {"templateBody": '{"Resources": {}}', "roleArn": "arn:aws:iam::123456789012:role/R"}
    with running_api(recorder) as api:
        out = client("iot", api.url).register_ca_certificate(
            caCertificate="CA PEM",
            verificationCertificate="VERIFICATION PEM",
            setAsActive=True,
            allowAutoRegistration=False,
            registrationConfig=config,
        )
    assert out["certificateId"] == "ca" * 32
    assert recorder.calls == [
        (
            "RegisterCACertificate",
            {
                "caCertificate": "CA PEM",
                "verificationCertificate": "VERIFICATION PEM",
                "setAsActive": True,
                "allowAutoRegistration": False,
                "registrationConfig": config,
            },
        )
    ]


def test_output_members_timestamps_and_markers_reach_boto3():
    created = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)
    recorder = Recorder(
        ListCertificates={
            "certificates": [
                {"certificateId": CERT_ID, "status": "ACTIVE", "creationDate": created.timestamp()}
            ],
            "nextMarker": "page-2",
        },
        DescribeCertificate={
            "certificateDescription": {"certificateId": CERT_ID, "lastModifiedDate": created}
        },
    )
    with running_api(recorder) as api:
        iot = client("iot", api.url)
        page = iot.list_certificates(pageSize=1)
        described = iot.describe_certificate(certificateId=CERT_ID)["certificateDescription"]
    assert page["nextMarker"] == "page-2"
    assert page["certificates"][0]["certificateId"] == CERT_ID
    assert page["certificates"][0]["creationDate"] == created
    assert described["lastModifiedDate"] == created


def test_a_paginator_follows_next_marker_to_the_last_page():
    pages = {None: (["a", "b"], "m1"), "m1": (["c"], None)}

    def call(operation: str, params: dict[str, Any]) -> dict[str, Any]:
        names, marker = pages[params.get("marker")]
        return {"policies": [{"policyName": n} for n in names], "nextMarker": marker}

    with running_api(call) as api:
        paginator = client("iot", api.url).get_paginator("list_policies")
        names = [p["policyName"] for page in paginator.paginate() for p in page["policies"]]
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ResourceNotFoundException", 404),
        ("DeleteConflictException", 409),
        ("CertificateStateException", 406),
        ("InvalidRequestException", 400),
    ],
)
def test_what_the_handler_refuses_is_the_exception_boto3_raises(code, status):
    # The status is the model's for that error, whatever the handler said.
    recorder = Recorder(DeleteCertificate=ApiError(code, "refused for a reason", 400))
    with running_api(recorder) as api:
        iot = client("iot", api.url)
        with pytest.raises(getattr(iot.exceptions, code)) as caught:
            iot.delete_certificate(certificateId=CERT_ID)
    error = caught.value.response
    assert error["Error"] == {"Code": code, "Message": "refused for a reason"}
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status


def test_a_bug_in_the_handler_is_a_500_internal_failure_and_the_server_goes_on():
    def call(operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation == "ListThings":
            raise KeyError("a bug")
        return {"registrationCode": "code"}

    with running_api(call) as api:
        iot = client("iot", api.url)
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            iot.list_things()
        assert caught.value.response["Error"]["Code"] == "InternalFailureException"
        assert iot.get_registration_code()["registrationCode"] == "code"


def test_an_unknown_route_is_a_404_unknown_operation():
    with running_api(Recorder()) as api:
        answer = raw_http(
            api.port, b"GET /no/such/thing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"x-amzn-ErrorType: UnknownOperationException" in answer


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000], ids=["broken", "too deep"])
def test_a_body_that_is_not_json_is_a_400_serialization_exception(body):
    request = (
        b"POST /cacertificate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    recorder = Recorder()
    with running_api(recorder) as api:
        answer = raw_http(api.port, request)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"x-amzn-ErrorType: SerializationException" in answer
    assert recorder.calls == []


def test_a_missing_required_member_is_a_400_invalid_request():
    # (boto3 checks this itself; a client that does not meets AWS's answer.)
    request = (
        b"POST /cacertificate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    with running_api(Recorder()) as api:
        answer = raw_http(api.port, request)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"InvalidRequestException" in answer and b"caCertificate" in answer


def test_a_query_value_of_the_wrong_type_is_a_400_invalid_request():
    with running_api(Recorder()) as api:
        answer = raw_http(
            api.port,
            b"GET /certificates?pageSize=many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"pageSize" in answer


# IAM and STS, on the same port


def test_a_role_is_created_checked_given_a_policy_and_deleted_with_boto3():
    policy = "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"
    statement = {
        "Effect": "Allow",
        "Principal": {"Service": "iot.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
    trust = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    with running_api(Recorder()) as api:
        iam = client("iam", api.url)
        created = iam.create_role(RoleName="JITPRole", AssumeRolePolicyDocument=trust)["Role"]
        assert created["Arn"] == "arn:aws:iam::123456789012:role/JITPRole"
        role = iam.get_role(RoleName="JITPRole")["Role"]
        assert role["AssumeRolePolicyDocument"]["Statement"][0]["Action"] == "sts:AssumeRole"
        iam.attach_role_policy(RoleName="JITPRole", PolicyArn=policy)
        attached = iam.list_attached_role_policies(RoleName="JITPRole")["AttachedPolicies"]
        assert attached == [{"PolicyName": "AWSIoTThingsRegistration", "PolicyArn": policy}]
        with pytest.raises(iam.exceptions.DeleteConflictException):
            iam.delete_role(RoleName="JITPRole")
        iam.detach_role_policy(RoleName="JITPRole", PolicyArn=policy)
        iam.delete_role(RoleName="JITPRole")
        with pytest.raises(iam.exceptions.NoSuchEntityException):
            iam.get_role(RoleName="JITPRole")


def test_creating_a_role_twice_is_entity_already_exists():
    with running_api(Recorder()) as api:
        iam = client("iam", api.url)
        iam.create_role(RoleName="R", AssumeRolePolicyDocument="{}")
        with pytest.raises(iam.exceptions.EntityAlreadyExistsException):
            iam.create_role(RoleName="R", AssumeRolePolicyDocument="{}")


def test_sts_says_which_account_the_emulator_is():
    with running_api(Recorder()) as api:
        identity = client("sts", api.url).get_caller_identity()
    assert identity["Account"] == "123456789012"


# Throttling


def test_past_its_rate_an_operation_is_a_throttling_exception_for_a_client_without_retries():
    recorder = Recorder()
    with running_api(recorder, rates={"DeleteThing": 2}) as api:
        iot = client("iot", api.url)
        with pytest.raises(iot.exceptions.ThrottlingException):
            for _ in range(50):  # a burst of 2, then 2 a second: bounded by far
                iot.delete_thing(thingName="t")
        iot.list_things()  # another operation has its own bucket
    assert 2 <= len([c for c in recorder.calls if c[0] == "DeleteThing"]) < 50
    assert api.api.stats.throttled["DeleteThing"] >= 1


def test_botocore_retries_absorb_the_throttling():
    recorder = Recorder()
    with running_api(recorder, rates={"all": 5}) as api:
        iot = client("iot", api.url, retries=10)
        for _ in range(12):  # past the burst of 5: some are throttled, then retried
            iot.delete_thing(thingName="t")
    assert len(recorder.calls) == 12
    assert api.api.stats.throttled["DeleteThing"] >= 1


def test_aws_default_rates_apply_unless_set():
    throttle = ApiThrottle(parse_api_rates(["DeleteCertificate=2/s"], ["DeleteCertificate"]))
    assert throttle.rate("DeleteCertificate") == 2
    assert throttle.rate("DeleteThing") == 15  # loadgen.aws.ratelimit.AWS_RATES
    assert throttle.rate("ListJobs") == 10  # DEFAULT_RATE


def test_an_operation_own_rate_wins_over_all_in_any_order():
    rates = parse_api_rates(["DeleteThing=3/s", "all=off"], ["DeleteThing", "ListThings"])
    throttle = ApiThrottle(rates)
    assert throttle.rate("DeleteThing") == 3
    assert throttle.rate("ListThings") is None
    assert all(throttle.allow("ListThings") for _ in range(1000))


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("DeleteThings=1/s", "DeleteThings is not an operation"),
        ("DeleteThing", "NAME=RATE"),
        ("DeleteThing=fast", "'fast' is not a rate"),
        ("DeleteThing=0", "above zero"),
    ],
)
def test_a_bad_api_rate_names_itself(item, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_api_rates([item], ["DeleteThing"])


# The server's bounds: whatever a client sends, the others are served


def test_botocore_keeps_its_connection_alive_across_calls():
    with running_api(Recorder()) as api:
        iot = client("iot", api.url)
        for _ in range(5):
            iot.list_things()
        assert api.on_loop(lambda: len(api.http.connections)) == 1


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    one = b"GET /registrationcode HTTP/1.1\r\nHost: x\r\n\r\n"
    recorder = Recorder(GetRegistrationCode={"registrationCode": "abc"})
    with running_api(recorder) as api:
        last = one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        answer = raw_http(api.port, one * 2 + last)
    assert answer.count(b"HTTP/1.1 200 ") == 3
    assert len(recorder.calls) == 3


def test_garbage_is_a_400_and_the_server_goes_on():
    with running_api(Recorder()) as api:
        answer = raw_http(api.port, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert client("iot", api.url).list_things() is not None


def test_a_body_over_the_limit_is_a_413_without_reading_it():
    limits = HttpLimits(max_body=1000)
    request = b"POST /things/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    with running_api(Recorder(), limits=limits) as api:
        answer = raw_http(api.port, request + b"x" * 5000)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_headers_over_the_limit_are_refused():
    limits = HttpLimits(max_header_bytes=4096, max_headers=20)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(50))
    huge = b"X-Huge: " + b"v" * 10000 + b"\r\n"
    with running_api(Recorder(), limits=limits) as api:
        too_many = raw_http(api.port, b"GET /things HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        too_big = raw_http(api.port, b"GET /things HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")
    assert too_many.startswith(b"HTTP/1.1 431 ")
    assert too_big.startswith(b"HTTP/1.1 431 ")


def test_a_request_that_trickles_in_is_cut_at_the_request_timeout():
    limits = HttpLimits(request_timeout=0.5)
    with (
        running_api(Recorder(), limits=limits) as api,
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock,
    ):
        sock.sendall(b"GET /things HTTP/1.1\r\n")
        deadline = time.monotonic() + 20
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                closed = sock.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                time.sleep(0.1)
            except OSError:
                closed = True
        assert closed


def test_an_idle_connection_is_closed_at_the_idle_timeout():
    limits = HttpLimits(idle_timeout=0.5)
    with (
        running_api(Recorder(), limits=limits) as api,
        socket.create_connection(("127.0.0.1", api.port), timeout=20) as sock,
    ):
        assert sock.recv(1) == b""  # closed by the server, not by the 20 s timeout


def test_connections_past_the_limit_are_closed_and_the_first_ones_served():
    limits = HttpLimits(max_connections=5)
    with running_api(Recorder(), limits=limits) as api:
        held = [socket.create_connection(("127.0.0.1", api.port), timeout=10) for _ in range(5)]
        try:
            deadline = time.monotonic() + 10
            while api.on_loop(lambda: len(api.http.connections)) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert raw_http(api.port, b"GET /things HTTP/1.1\r\nHost: x\r\n\r\n") == b""
            held[0].sendall(b"GET /things HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held[0].recv(100).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in held:
                sock.close()
        assert api.http.refused >= 1


def test_curl_gets_its_100_continue_before_sending_a_large_body():
    # A client that asks (Expect: 100-continue; curl does before large bodies)
    # would otherwise wait a second for the answer before sending it anyway.
    recorder = Recorder(CreatePolicy={"policyName": "p"})
    document = json.dumps({"Version": "2012-10-17", "Statement": [], "pad": "x" * 4000})
    with running_api(recorder) as api:
        proc = subprocess.run(
            [
                "curl",
                "-sS",
                "-v",
                "-X",
                "POST",
                f"{api.url}/policies/p",
                "-H",
                "Content-Type: application/json",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                json.dumps({"policyDocument": document}),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "< HTTP/1.1 100" in proc.stderr
    assert json.loads(proc.stdout) == {"policyName": "p"}
    assert recorder.calls == [("CreatePolicy", {"policyName": "p", "policyDocument": document})]


def test_a_head_request_gets_the_status_and_no_body():
    # (No IoT operation is a HEAD: it is the 404 a GET of nothing would be.)
    with running_api(Recorder()) as api:
        request = b"HEAD /things HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = raw_http(api.port, request)
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert answer.endswith(b"\r\n\r\n")


def test_a_service_the_emulator_does_not_serve_is_an_error_its_client_reads():
    with running_api(Recorder()) as api:
        quotas = client("service-quotas", api.url)
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            quotas.list_service_quotas(ServiceCode="iotcore")
    assert caught.value.response["Error"]["Code"] == "UnknownOperationException"
    assert "servicequotas" in caught.value.response["Error"]["Message"]


# Whatever a request holds, parsing it is an input or an AWS error, never a crash


@pytest.fixture(scope="module")
def iot_service() -> Any:
    import botocore.session

    from loadgen.emulator.api.rest import RestJsonService

    return RestJsonService(botocore.session.get_session().get_service_model("iot"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_request_to_any_operation_parses_or_is_an_aws_error(iot_service, data):
    service = iot_service
    name = data.draw(st.sampled_from(sorted(service.model.operation_names)))
    op = service.model.operation_model(name)
    shape = op.input_shape
    members = dict(shape.members) if shape is not None else {}
    path = op.http["requestUri"]
    for label in re.findall(r"{([^}]+)}", path):
        value = data.draw(st.text(min_size=1, max_size=8))
        path = path.replace("{" + label + "}", quote(value, safe=""))
    query = {
        m.serialization.get("name", n): data.draw(st.text(max_size=8))
        for n, m in members.items()
        if m.serialization.get("location") == "querystring" and data.draw(st.booleans())
    }
    headers = {
        m.serialization["name"].lower(): data.draw(st.text(max_size=8).map(lambda t: t.strip()))
        for n, m in members.items()
        if m.serialization.get("location") == "header" and data.draw(st.booleans())
    }
    body_members = [n for n, m in members.items() if "location" not in m.serialization]
    body = {n: data.draw(_json) for n in body_members if data.draw(st.booleans())}
    raw = data.draw(st.sampled_from([json.dumps(body).encode(), b"", b"{", b"[1]"]))
    target = path + ("?" + urlencode(query) if query else "")
    try:
        parsed, params = service.parse(op.http["method"], target, headers, raw)
    except ApiError as error:
        assert error.code in (
            "InvalidRequestException",
            "SerializationException",
            "UnknownOperationException",
        )
        return
    assert (
        parsed == name
        or service.route(op.http["method"], target.partition("?")[0])[0].name == parsed
    )
    assert set(params) <= set(members)


def test_a_chunked_body_is_read_whole():
    body = json.dumps({"policyDocument": "{}"}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = (
        b"POST /policies/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    recorder = Recorder(CreatePolicy={"policyName": "p"})
    with running_api(recorder) as api:
        answer = raw_http(api.port, request)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert recorder.calls == [("CreatePolicy", {"policyName": "p", "policyDocument": "{}"})]


def test_a_chunked_body_over_the_limit_is_a_413():
    limits = HttpLimits(max_body=1000)
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    request = b"POST /policies/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with running_api(Recorder(), limits=limits) as api:
        answer = raw_http(api.port, request + chunk * 3)
    assert answer.startswith(b"HTTP/1.1 413 ")
