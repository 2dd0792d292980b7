"""HDR histograms as Prometheus sees them: buckets and sums computed from the
counts array agree with walking every recorded value."""

from __future__ import annotations

import gc
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.metrics.histogram import LatencyHistogram
from loadgen.metrics.prometheus import BUCKETS

latencies = st.lists(
    st.one_of(st.floats(min_value=0.0, max_value=120.0), st.sampled_from(BUCKETS)), max_size=400
)


def _filled(values: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for v in values:
        histogram.record(v)
    return histogram


@settings(deadline=None, max_examples=40)  # the oracle walks every value: slow
@given(latencies)
def test_a_bucket_counts_the_values_whose_whole_range_is_within_its_bound(values):
    histogram = _filled(values)
    recorded = [
        (item.value_iterated_to, item.count_at_value_iterated_to)
        for item in histogram._h.get_recorded_iterator()
    ]
    expected = [
        sum(n for value, n in recorded if value <= int(bound * 1_000_000)) for bound in BUCKETS
    ]
    assert histogram.cumulative(BUCKETS) == expected


@settings(deadline=None, max_examples=40)
@given(latencies)
def test_the_sum_is_the_mean_times_the_count(values):
    histogram = _filled(values)
    expected = histogram._h.get_mean_value() * histogram.count / 1_000_000
    assert abs(histogram.sum_seconds - expected) <= 1e-9 * max(1.0, expected)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(min_value=-1.0, max_value=5000.0), max_size=300))
def test_recording_is_what_hdrh_records(values):
    """The counts index computed inline is hdrh's own: the same counts, the same
    total, min and max as ``record_value`` gives the same values, clamped to the
    histogram's range (below 1 µs, above an hour)."""
    ours, reference = LatencyHistogram(), LatencyHistogram()
    for v in [*values, 0.0, 1e-6, 3600.0, 1e9]:
        ours.record(v)
        reference._h.record_value(min(max(int(v * 1_000_000), 1), 3_600_000_000))
    assert list(ours._h.counts) == list(reference._h.counts)
    assert (ours._h.total_count, ours._h.min_value, ours._h.max_value) == (
        reference._h.total_count,
        reference._h.min_value,
        reference._h.max_value,
    )
    assert ours.encode() == reference.encode()


def test_a_histogram_nothing_refers_to_is_freed_at_once_not_by_the_cyclic_collector():
    # Its counts are about 380 KiB: the coordinator decodes a dozen a report.
    recorded = LatencyHistogram()
    recorded.record(0.004)
    gc.disable()
    try:
        made, decoded = LatencyHistogram(), LatencyHistogram.decode(recorded.encode())
        inner = [weakref.ref(made._h), weakref.ref(decoded._h)]
        assert decoded.count == 1
        del made, decoded
        assert [ref() for ref in inner] == [None, None]
    finally:
        gc.enable()
