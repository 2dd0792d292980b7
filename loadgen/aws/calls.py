"""Control-plane calls made within their API's rate, and their pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadgen.aws.account import error_code
from loadgen.aws.ratelimit import RateLimits
from loadgen.errors import UserError


class Api:
    """A boto3 client called by AWS's operation names (``ListCertificatesByCA``),
    each call waiting for its API's token first."""

    def __init__(self, client: Any, limits: RateLimits, *, probe: Any = None) -> None:
        self.client = client
        self.limits = limits
        # For second opinions worth less than a wait on retries (a client of few
        # attempts): moto answers ListCACertificates with a 500, retried for 30 s.
        self.probe = probe if probe is not None else client

    def call(self, api: str, *, via: Any = None, **kwargs: Any) -> dict[str, Any]:
        self.limits.acquire(api)
        method = getattr(via if via is not None else self.client, snake(api))
        result: dict[str, Any] = method(**kwargs)
        return result

    def pages(
        self, api: str, items: str, token_in: str, token_out: str, *, via: Any = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Every item of every page (the token's names differ by API: ``marker`` in,
        ``nextMarker`` out for some; ``nextToken`` both ways for others)."""
        token: str | None = None
        while True:
            page = self.call(api, via=via, **kwargs, **({token_in: token} if token else {}))
            yield from page.get(items, [])
            token = page.get(token_out)
            if not token:
                return


def is_registered(api: Api, ca_id: str, *, listing: bool = True) -> bool:
    """Whether the account has the CA of id ``ca_id`` (the hex SHA-256 of its DER,
    as AWS computes certificate ids), with ``listing`` falling back to listing its
    CAs."""
    try:
        api.call("DescribeCACertificate", certificateId=ca_id)
        return True
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    if not listing:
        return False
    try:
        listed = {
            str(ca["certificateId"])
            for ca in api.pages(
                "ListCACertificates", "certificates", "marker", "nextMarker", via=api.probe
            )
        }
    except Exception as exc:
        if error_code(exc) is None:
            raise  # not the account's answer: the network, say
        # The account answered, and not with a list (moto has none): the describe
        # by id has already said what can be said.
        return False
    return ca_id in listed


def not_registered(ca_dir: Path, ca_id: str) -> UserError:
    return UserError(
        f"{ca_dir}: its CA (id {ca_id[:16]}…) is not registered in this account and region"
    )


def snake(api: str) -> str:
    """``ListCertificatesByCA`` -> ``list_certificates_by_ca``, as boto3 names it."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", api).lower()
