"""The control plane on the wire: which service a request is for (the SigV4
credential scope names it), throttling per operation, the call, and the answer
in that service's protocol. Signatures are not checked: any credentials do."""

from __future__ import annotations

import json
import re
import sys
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.session

from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.api.http import Request, Response
from loadgen.emulator.api.iam import Iam, Sts
from loadgen.emulator.api.query import QueryService
from loadgen.emulator.api.rest import RestJsonService
from loadgen.emulator.api.throttle import ApiThrottle

# One control-plane call: ControlPlane.call (botocore's operation name, input
# members by name) -> output members by name; raises ApiError.
Call = Callable[[str, dict[str, Any]], dict[str, Any]]

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
# Other regions a client may sign for, each an empty account-region of its own.
_MAX_OTHER_REGIONS = 32


@dataclass
class ApiStats:
    calls: Counter[str] = field(default_factory=Counter)  # by operation, answered
    errors: Counter[str] = field(default_factory=Counter)  # by error code
    throttled: Counter[str] = field(default_factory=Counter)  # by operation


def _models() -> botocore.session.Session:
    return botocore.session.get_session()


class ControlPlaneApi:
    def __init__(
        self,
        call: Call,
        throttle: ApiThrottle | None = None,
        account_id: str = ACCOUNT_ID,
        *,
        region: str = REGION,
        other_region: Callable[[str], Call] | None = None,
    ) -> None:
        """``call`` answers for ``region``; a request signed for another region
        goes to ``other_region(that region)``'s (made once per region), as on
        AWS where each region's registry is its own; without it, to ``call``."""
        session = _models()
        self.call = call
        self.region = region
        self._other_region = other_region
        self._regions: dict[str, Call] = {}
        self.throttle = throttle or ApiThrottle()
        self.stats = ApiStats()
        self.iot = RestJsonService(session.get_service_model("iot"))
        self.iam = QueryService(session.get_service_model("iam"), Iam(account_id).handlers())
        self.sts = QueryService(session.get_service_model("sts"), Sts(account_id).handlers())

    def __call__(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        region, service = _scope(request)
        if service in ("iam", "sts"):  # global services: one for every region
            return self._query(self.iam if service == "iam" else self.sts, request, request_id)
        if service != "iot":
            return self._unknown_service(service, request_id)
        try:
            operation, params = self.iot.parse(
                request.method, request.target, request.headers, request.body
            )
            self._admit(operation)
            result = self._for_region(region)(operation, params)
            status, headers, body = self.iot.render(operation, result or {})
        except ApiError as error:
            return self._rest_error(error, request_id)
        except Exception as exc:
            return self._rest_error(_internal(exc), request_id)
        self.stats.calls[operation] += 1
        headers |= {"content-type": "application/json", "x-amzn-RequestId": request_id}
        return Response(status, headers, body)

    def _for_region(self, region: str | None) -> Call:
        if region is None or region == self.region or self._other_region is None:
            return self.call
        call = self._regions.get(region)
        if call is None:
            if not _REGION.fullmatch(region) or len(self._regions) >= _MAX_OTHER_REGIONS:
                raise ApiError("InvalidRequestException", f"no region {region[:40]!r} here")
            call = self._regions[region] = self._other_region(region)
        return call

    def _admit(self, operation: str) -> None:
        if not self.throttle.allow(operation):
            self.stats.throttled[operation] += 1
            raise ApiError("ThrottlingException", "Rate exceeded", 400)

    def _rest_error(self, error: ApiError, request_id: str) -> Response:
        self.stats.errors[error.code] += 1
        status, headers, body = self.iot.render_error(error)
        headers |= {"content-type": "application/json", "x-amzn-RequestId": request_id}
        return Response(status, headers, body)

    def _unknown_service(self, service: str, request_id: str) -> Response:
        # Its protocol is unknown here: the code is where every JSON protocol
        # of botocore's looks (awsJson reads __type), the status says the rest.
        code = "UnknownOperationException"
        self.stats.errors[code] += 1
        body = {"__type": code, "message": f"the emulator serves no {service} API"}
        headers = {
            "content-type": "application/json",
            "x-amzn-ErrorType": code,
            "x-amzn-RequestId": request_id,
        }
        return Response(404, headers, json.dumps(body).encode())

    def _query(self, service: QueryService, request: Request, request_id: str) -> Response:
        headers = {"content-type": "text/xml", "x-amzn-RequestId": request_id}
        try:
            action, params = service.parse(request.target, request.body)
            self._admit(action)
            body = service.render(action, service.call(action, params), request_id)
        except ApiError as error:
            self.stats.errors[error.code] += 1
            status, body = service.render_error(error, request_id)
            return Response(status, headers, body)
        except Exception as exc:
            status, body = service.render_error(_internal(exc), request_id)
            return Response(status, headers, body)
        self.stats.calls[action] += 1
        return Response(200, headers, body)


def operation_names() -> list[str]:
    """What ``--api-rate`` may name, without building a whole API."""
    session = _models()
    iam = Iam(ACCOUNT_ID).handlers()
    sts = Sts(ACCOUNT_ID).handlers()
    return [*session.get_service_model("iot").operation_names, *iam, *sts]


def _scope(request: Request) -> tuple[str | None, str]:
    """The signing scope's region and service; unsigned (no region), a form
    with Action=... is IAM's (STS's for GetCallerIdentity), anything else IoT's."""
    match = _SCOPE.search(request.headers.get("authorization", ""))
    if match:
        return match[1], match[2]
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None, "sts" if b"Action=GetCallerIdentity" in request.body else "iam"
    return None, "iot"


def _internal(exc: Exception) -> ApiError:
    # A bug of the emulator's, not the client's: say so where the operator looks.
    traceback.print_exception(exc, file=sys.stderr)
    return ApiError("InternalFailureException", f"the emulator failed: {exc}", 500)
