"""Token buckets for the emulator's quotas: AWS IoT's defaults, each adjustable
with ``--quota NAME=RATE``."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from loadgen.errors import UserError
from loadgen.scenario.units import parse_rate

# CONNECT requests per second per account, and per client id, as AWS IoT Core's
# defaults. AWS publishes no single figure for JITP itself: it is bounded by the
# control-plane calls it makes (CreateThing, AttachPolicy, ...). 20/s here is an
# assumption; set your account's.
DEFAULTS = {"connect": 500.0, "connect-per-client": 1.0, "provision": 20.0}
# Client ids remembered for their 1/s quota; the oldest are forgotten beyond this.
_CLIENTS_KEPT = 200_000


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.tokens = self.burst
        self.clock = clock
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Quotas:
    """Rates per second; None turns a quota off."""

    connect: float | None = DEFAULTS["connect"]
    connect_per_client: float | None = DEFAULTS["connect-per-client"]
    provision: float | None = DEFAULTS["provision"]

    @classmethod
    def parse(cls, items: tuple[str, ...]) -> Quotas:
        """From ``NAME=RATE`` strings (``connect=500/s``, ``provision=off``)."""
        quotas = cls()
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or name not in DEFAULTS:
                raise UserError(
                    f"--quota {item!r}: NAME=RATE with NAME one of {', '.join(DEFAULTS)}"
                )
            if value == "off":
                rate = None
            else:
                try:
                    # A bare number is per second (the error then quotes what was given).
                    rate = parse_rate(_number(value) if "/" not in value else value)
                except ValueError as exc:
                    raise UserError(f"--quota {item!r}: {exc}") from None
            setattr(quotas, name.replace("-", "_"), rate)
        return quotas


def _number(value: str) -> float | str:
    """A plain decimal as its number; anything else (``fast``, ``inf``) as
    written, for the rate's own error to quote."""
    return float(value) if _DECIMAL.fullmatch(value.strip()) else value


_DECIMAL = re.compile(r"\d+(?:\.\d+)?")


class Limiter:
    def __init__(self, quotas: Quotas, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.quotas = quotas
        self.connect = TokenBucket(quotas.connect, clock=clock) if quotas.connect else None
        self.provision = TokenBucket(quotas.provision, clock=clock) if quotas.provision else None
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow_connect(self, client_id: str) -> str | None:
        """None when the CONNECT may proceed, else the quota it exceeds."""
        if self.connect is not None and not self.connect.take():
            return "connect"
        rate = self.quotas.connect_per_client
        if rate:
            bucket = self._clients.get(client_id)
            if bucket is None:
                bucket = self._clients[client_id] = TokenBucket(rate, burst=1.0, clock=self.clock)
                if len(self._clients) > _CLIENTS_KEPT:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(client_id)
            if not bucket.take():
                return "connect-per-client"
        return None

    def allow_provision(self) -> bool:
        return self.provision is None or self.provision.take()
