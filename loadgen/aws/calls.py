"""Control-plane calls made within their API's rate, and their pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from loadgen.aws.ratelimit import RateLimits


class Api:
    """A boto3 client called by AWS's operation names (``ListCertificatesByCA``),
    each call waiting for its API's token first."""

    def __init__(self, client: Any, limits: RateLimits) -> None:
        self.client = client
        self.limits = limits

    def call(self, api: str, **kwargs: Any) -> dict[str, Any]:
        self.limits.acquire(api)
        method = getattr(self.client, snake(api))
        result: dict[str, Any] = method(**kwargs)
        return result

    def pages(
        self, api: str, items: str, token_in: str, token_out: str, **kwargs: Any
    ) -> Iterator[Any]:
        """Every item of every page (the token's names differ by API: ``marker`` in,
        ``nextMarker`` out for some; ``nextToken`` both ways for others)."""
        token: str | None = None
        while True:
            page = self.call(api, **kwargs, **({token_in: token} if token else {}))
            yield from page.get(items, [])
            token = page.get(token_out)
            if not token:
                return


def snake(api: str) -> str:
    """``ListCertificatesByCA`` -> ``list_certificates_by_ca``, as boto3 names it."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", api).lower()
