"""Calls per second per API, kept under the account's control-plane quotas so
that a teardown of 20,000 certificates is slowed by us, not refused by AWS."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

# AWS's published defaults (per account, adjustable) for the calls `loadgen aws`
# makes, which the emulator's control plane also enforces; any other call gets
# DEFAULT_RATE.
AWS_RATES: dict[str, float] = {
    "GetRegistrationCode": 10,
    "RegisterCACertificate": 10,
    "DescribeCACertificate": 10,
    "UpdateCACertificate": 10,
    "DeleteCACertificate": 10,
    "ListCACertificates": 10,
    "ListCertificates": 10,
    "ListCertificatesByCA": 10,
    "DescribeCertificate": 10,
    "UpdateCertificate": 10,
    "DeleteCertificate": 10,
    "ListAttachedPolicies": 10,
    "AttachPolicy": 15,
    "DetachPolicy": 15,
    "ListThings": 10,
    "DescribeThing": 350,
    "DeleteThing": 15,
    "CreateThing": 100,
    "ListPrincipalThings": 10,
    "AttachThingPrincipal": 15,
    "DetachThingPrincipal": 15,
    "ListThingPrincipals": 10,
    "ListTargetsForPolicy": 10,
    "ListPolicies": 10,
    "GetPolicy": 15,
    "ListPolicyVersions": 10,
    "DeletePolicyVersion": 10,
    "DeletePolicy": 10,
    "CreateThingType": 15,
    "CreateThingGroup": 25,
    "ListThingGroups": 10,
    "DescribeEndpoint": 10,
}
DEFAULT_RATE = 10.0
# The client keeps this fraction of a quota: calls spaced exactly at the quota
# reach the account with jitter and some are throttled, and one throttle makes
# botocore's adaptive mode slow the whole client down (measured against the
# emulator's buckets: 81% of the quota's throughput at 1.0, 99% at 0.95 with no
# throttle; docs/benchmarks.md).
HEADROOM = 0.95


class Cancelled(BaseException):
    """The calls were cancelled (the command is being interrupted). Not an
    ``Exception``: the handlers that turn a failed call into an outcome must let
    it through, so that a cut-short step is not counted as refused."""


class RateLimits:
    """A token bucket per API (burst of one second's worth, and at least one
    call: a bucket below one token would never fill to a call), shared by
    threads. ``cap`` (calls per second) lowers every API's rate to at most it."""

    def __init__(
        self,
        cap: float | None = None,
        rates: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._rates = dict(AWS_RATES if rates is None else rates)
        self._cap = cap
        self._clock = clock
        self._cancelled = threading.Event()
        self._sleep = sleep if sleep is not None else self._cancelled.wait
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # api -> (tokens, at)

    def cancel(self) -> None:
        """Every call waiting for its token, and every later one, raises
        `Cancelled`: threads that wait their turn stop at once."""
        self._cancelled.set()

    def wait(self, seconds: float) -> None:
        """A pause between tries that a `cancel` cuts short (`Cancelled`)."""
        if self._cancelled.wait(seconds):
            raise Cancelled

    def rate(self, api: str) -> float:
        rate = self._rates.get(api, DEFAULT_RATE) * HEADROOM
        return min(rate, self._cap) if self._cap is not None else rate

    def acquire(self, api: str) -> None:
        """Wait for a token of ``api``'s bucket."""
        rate = self.rate(api)
        burst = max(1.0, rate)
        while True:
            if self._cancelled.is_set():
                raise Cancelled
            with self._lock:
                now = self._clock()
                tokens, at = self._buckets.get(api, (burst, now))
                tokens = min(burst, tokens + (now - at) * rate)
                # (A hair under one is one: float sums of waits may fall short.)
                if tokens >= 1 - 1e-9:
                    self._buckets[api] = (max(0.0, tokens - 1), now)
                    return
                self._buckets[api] = (tokens, now)
                wait = (1 - tokens) / rate
            self._sleep(wait)


@contextlib.contextmanager
def cancelling_pool(limits: RateLimits, threads: int) -> Iterator[ThreadPoolExecutor]:
    """Threads for many calls at once. Interrupted (Ctrl-C in the thread that
    waits on them), the calls that wait their turn are cancelled and those not
    started are dropped: the command stops within one call's time instead of
    finishing every queue."""
    pool = ThreadPoolExecutor(threads)
    try:
        yield pool
    except BaseException:
        limits.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
