"""The control plane's throttling: a token bucket per operation at AWS's default
rate (``loadgen.aws.ratelimit.AWS_RATES``, the table `loadgen aws` paces itself
by), each adjustable with ``--api-rate NAME=RATE``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from loadgen.aws.ratelimit import AWS_RATES, DEFAULT_RATE
from loadgen.emulator.quota import TokenBucket
from loadgen.errors import UserError
from loadgen.scenario.units import parse_rate

ALL = "all"


def parse_api_rates(items: Iterable[str], operations: Iterable[str]) -> dict[str, float | None]:
    """``NAME=RATE`` strings (``DeleteCertificate=5/s``, ``all=off``) as rates
    per second by operation name (``all`` for every one; None: not throttled).
    An operation's own rate wins over ``all``, in whatever order they come."""
    known = set(operations)
    rates: dict[str, float | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(
                f"--api-rate {item!r}: NAME=RATE, e.g. DeleteCertificate=10/s or all=off"
            )
        if name != ALL and name not in known:
            raise UserError(
                f"--api-rate {item!r}: {name} is not an operation of the emulated control "
                "plane (names as botocore has them, e.g. DeleteCertificate), nor all"
            )
        if value == "off":
            rates[name] = None
            continue
        try:
            number: float | None = float(value)  # a plain number: calls per second
        except ValueError:
            number = None
        try:
            rates[name] = parse_rate(value if number is None else number)
        except ValueError as exc:
            raise UserError(f"--api-rate {item!r}: {exc}, or off") from None
    return rates


class ApiThrottle:
    """Whether a call may go on now; a bucket holds one second's worth of its
    operation's calls, as the client's own limiter does."""

    def __init__(
        self,
        rates: dict[str, float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rates = dict(rates or {})
        self._clock = clock
        self._buckets: dict[str, TokenBucket | None] = {}

    def rate(self, operation: str) -> float | None:
        if operation in self._rates:
            return self._rates[operation]
        if ALL in self._rates:
            return self._rates[ALL]
        return AWS_RATES.get(operation, DEFAULT_RATE)

    def allow(self, operation: str) -> bool:
        if operation not in self._buckets:
            rate = self.rate(operation)
            self._buckets[operation] = (
                None if rate is None else TokenBucket(rate, clock=self._clock)
            )
        bucket = self._buckets[operation]
        return bucket is None or bucket.take()
