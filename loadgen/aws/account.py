"""Reaching an account's AWS IoT control plane: boto3's standard credential
chain, ``--profile``, ``--region`` and ``--endpoint-url`` as the aws CLI has
them, and botocore's adaptive retries, so throttling slows calls down."""

from __future__ import annotations

import functools
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from loadgen.errors import UserError

# Adaptive mode rate-limits the client itself once the service throttles it;
# attempts past the first are retries of throttled or transient failures.
_RETRY = {"mode": "adaptive", "max_attempts": 10}


@dataclass(frozen=True)
class Account:
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # the emulator's or moto's API, for instance

    def iot(self) -> Any:
        """A boto3 ``iot`` client, or a one-line ``UserError`` when the account
        cannot be reached as given (no credentials, no region, unknown profile)."""
        return self.client("iot")

    def iam(self) -> Any:
        return self.client("iam")

    def sts(self) -> Any:
        return self.client("sts")

    def client(self, service: str, *, attempts: int | None = None) -> Any:
        """A boto3 client of ``service`` (one session for all of them); ``attempts``
        fewer than the default for calls that are worth less than a wait."""
        import botocore.config

        # total_max_attempts counts the first attempt too (max_attempts does not);
        # standard mode: adaptive's client-side rate limiting is for throttles,
        # which a call worth less than a wait should not sit out.
        retries = (
            _RETRY if attempts is None else {"mode": "standard", "total_max_attempts": attempts}
        )
        check_endpoint(service, self.endpoint_url, "--endpoint-url")
        return self._session.client(
            service, endpoint_url=self.endpoint_url, config=botocore.config.Config(retries=retries)
        )

    @property
    def recorded_endpoint_url(self) -> str | None:
        """The control plane to record for later runs: ``--endpoint-url``, else
        AWS_ENDPOINT_URL (every service's), so that a status or teardown
        without them does not turn to AWS's own. (A service's own variable,
        AWS_ENDPOINT_URL_IOT say, is not every client's: not recorded.)"""
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    @property
    def region_name(self) -> str:
        region = self._session.region_name
        assert isinstance(region, str)  # _session refuses a session without one
        return region

    @functools.cached_property
    def _session(self) -> Any:
        """One boto3 session for every client (cached on the instance: a frozen
        dataclass's __dict__ still takes it)."""
        session = open_session(self.profile, self.region)
        if session.get_credentials() is None:
            raise UserError(
                "no AWS credentials found (environment, --profile, ~/.aws, or an instance role)"
            )
        if session.region_name is None:
            raise UserError("no AWS region: give --region or set AWS_REGION")
        if self.endpoint_url is None:
            _check_region(session, session.region_name)
        return session


def open_session(profile: str | None = None, region: str | None = None, where: str = "") -> Any:
    """A boto3 session, its credentials looked for; a profile that does not exist
    or a config file botocore cannot parse is a one-line ``UserError`` (``where``
    before it), not botocore's traceback."""
    import boto3
    import botocore.exceptions as errors

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        session.get_credentials()  # reads the config and credentials files (and caches)
    except errors.ProfileNotFound as exc:
        named = "--profile" if profile is not None else "AWS_PROFILE"
        raise UserError(f"{where}{named}: {exc}") from None
    except errors.ConfigParseError as exc:
        raise UserError(f"{where}{exc}") from None
    return session


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` is no endpoint botocore can call; None when it is one. botocore
    takes a port past 65535 and fails at the first call, and raises a bare
    ValueError for an unclosed IPv6 bracket: both are asked of urlsplit here."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host, e.g. http://127.0.0.1:8443"
    return None


def check_endpoint(service: str, given: str | None, option: str, where: str = "") -> None:
    """The endpoint botocore will call for ``service`` (``given``, else
    AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL), refused in one line naming
    the option or variable it came from."""
    variables = (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL")
    sources = [(option, given), *((name, os.environ.get(name)) for name in variables)]
    for source, url in sources:
        if url:
            problem = endpoint_problem(url)
            if problem is not None:
                raise UserError(f"{where}{source} {url}: {problem}")
            return


def _check_region(session: Any, region: str) -> None:
    """A region AWS IoT is not in would fail later as a network error naming a
    host: refuse it first (another endpoint, given by --endpoint-url, may have any)."""
    known = {
        r
        for partition in session.get_available_partitions()
        for r in session.get_available_regions("iot", partition_name=partition)
    }
    if known and region not in known:
        raise UserError(f"--region {region}: AWS IoT is not in such a region")


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a failed call (``ResourceNotFoundException``, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
