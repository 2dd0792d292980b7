"""Quotas: token buckets with AWS IoT's defaults."""

from __future__ import annotations

import pytest

from loadgen.emulator.quota import DEFAULTS, Limiter, Quotas, TokenBucket
from loadgen.errors import UserError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_rate_and_no_more():
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    assert sum(bucket.take() for _ in range(25)) == 10  # the burst
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(25)) == 5


def test_one_connect_per_second_per_client_id():
    clock = Clock()
    limiter = Limiter(Quotas(connect=None), clock=clock)
    assert limiter.allow_connect("bulb-1") is None
    assert limiter.allow_connect("bulb-1") == "connect-per-client"
    assert limiter.allow_connect("bulb-2") is None
    clock.now += 1.0
    assert limiter.allow_connect("bulb-1") is None


def test_the_account_connect_quota_applies_across_clients():
    limiter = Limiter(Quotas(connect=3, connect_per_client=None), clock=Clock())
    assert [limiter.allow_connect(f"c{i}") for i in range(4)] == [None, None, None, "connect"]


def test_defaults_are_aws_iot_cores():
    quotas = Quotas()
    assert (quotas.connect, quotas.connect_per_client) == (500, 1)
    assert quotas.provision == DEFAULTS["provision"]


def test_quotas_parse_from_the_command_line():
    quotas = Quotas.parse(("provision=5/s", "connect=off", "connect-per-client=2"))
    assert (quotas.provision, quotas.connect, quotas.connect_per_client) == (5, None, 2)


@pytest.mark.parametrize("item", ["bogus=1/s", "connect", "provision=fast"])
def test_a_bad_quota_is_a_user_error(item):
    with pytest.raises(UserError, match="--quota"):
        Quotas.parse((item,))
