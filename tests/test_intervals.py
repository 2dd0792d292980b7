"""Latency per second: sparse log buckets that merge exactly and place any
percentile within half a bucket (0.5%)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from loadgen.metrics.intervals import LogBuckets


@given(st.lists(st.floats(min_value=1e-5, max_value=100.0), min_size=1, max_size=300))
def test_a_percentile_is_within_half_a_percent_of_the_exact_value(values):
    buckets = LogBuckets()
    for v in values:
        buckets.record(v)
    ordered = sorted(values)
    for p in (50.0, 90.0, 99.0):
        exact_ms = ordered[max(0, -(-len(ordered) * int(p) // 100) - 1)] * 1000
        assert abs(buckets.percentile_ms(p) - exact_ms) <= exact_ms * 0.0051


def test_merging_buckets_equals_recording_everything_in_one():
    rng = random.Random(3)
    values = [rng.expovariate(10) for _ in range(1000)]
    whole, left, right = LogBuckets(), LogBuckets(), LogBuckets()
    for i, v in enumerate(values):
        whole.record(v)
        (left if i % 2 else right).record(v)
    left.merge(LogBuckets.from_wire(right.to_wire()))
    assert left.to_wire() == whole.to_wire()
    assert left.summary_ms() == whole.summary_ms()


def test_an_empty_interval_summarises_as_nothing_measured():
    assert LogBuckets().summary_ms() == {
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }
