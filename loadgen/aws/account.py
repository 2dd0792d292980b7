"""Reaching an account's AWS IoT control plane: boto3's standard credential
chain, ``--profile``, ``--region`` and ``--endpoint-url`` as the aws CLI has
them, and botocore's adaptive retries, so throttling slows calls down."""

from __future__ import annotations

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
        import boto3
        import botocore.config
        import botocore.exceptions

        try:
            session = boto3.Session(profile_name=self.profile, region_name=self.region)
            if session.get_credentials() is None:
                raise UserError(
                    "no AWS credentials found (environment, --profile, ~/.aws, or an instance role)"
                )
            return session.client(
                "iot",
                endpoint_url=self.endpoint_url,
                config=botocore.config.Config(retries=_RETRY),
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise UserError(f"--profile: {exc}") from None
        except botocore.exceptions.NoRegionError:
            raise UserError("no AWS region: give --region or set AWS_REGION") from None


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a failed call (``ResourceNotFoundException``, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
