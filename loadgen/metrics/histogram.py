"""HDR latency histograms: exact percentiles (3 significant digits) from 1 µs to
one hour, encoded compactly so workers, shards and machines can be merged."""

from __future__ import annotations

import weakref
from typing import Any

from hdrh.histogram import HdrHistogram

_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000
_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


def _layout() -> tuple[int, int, int, int]:
    """(sub-bucket mask, bucket shift, half-count magnitude, half count) of the
    histograms made here, as hdrh lays them out. A lowest value of 1 µs makes
    hdrh's unit magnitude 0, which the index computed in ``record`` assumes."""
    h = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)
    assert h.unit_magnitude == 0
    magnitude = h.sub_bucket_half_count_magnitude
    return h.sub_bucket_mask, magnitude + 1, magnitude, h.sub_bucket_half_count


_SUB_BUCKET_MASK, _BUCKET_SHIFT, _HALF_MAGNITUDE, _HALF_COUNT = _layout()


def _acyclic(histogram: HdrHistogram) -> HdrHistogram:
    """``histogram``, freed as soon as nothing refers to it. hdrh's histogram and
    its encoder (which holds the counts, about 380 KiB at this range and
    precision) refer to each other: only Python's cyclic collector freed them,
    which counts objects, not bytes. `loadgen run`'s coordinator decodes a dozen
    histograms at each progress report (two a second), and its heap rose by
    30 MiB between collections (docs/benchmarks.md). The encoder's way back to
    its histogram becomes a weak one; where hdrh is laid out otherwise, nothing
    changes."""
    encoder: Any = getattr(histogram, "encoder", None)
    if encoder is not None and getattr(encoder, "histogram", None) is histogram:
        encoder.histogram = weakref.proxy(histogram)
    return histogram


class LatencyHistogram:
    """Seconds in, milliseconds out; microsecond resolution inside."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = _acyclic(HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS))

    def record(self, seconds: float) -> None:
        """hdrh's ``record_value``, with its counts index computed inline from
        this histogram's fixed layout: its own way (five method calls and a
        leading-zero count through ``bin``) cost about 170 bytecodes a value,
        and devices record five each."""
        value = int(seconds * 1_000_000)
        if value < _LOWEST_US:
            value = _LOWEST_US
        elif value > _HIGHEST_US:
            value = _HIGHEST_US
        h = self._h
        bucket = (value | _SUB_BUCKET_MASK).bit_length() - _BUCKET_SHIFT
        h.counts[((bucket + 1) << _HALF_MAGNITUDE) + (value >> bucket) - _HALF_COUNT] += 1
        h.total_count += 1
        if value < h.min_value:
            h.min_value = value
        if value > h.max_value:
            h.max_value = value

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def merge(self, other: LatencyHistogram) -> None:
        self._h.add(other._h)

    def percentile_ms(self, percentile: float) -> float:
        return float(self._h.get_value_at_percentile(percentile)) / 1000.0

    def summary_ms(self) -> dict[str, Any]:
        """count, p50, p90, p99, p99_9 and max in milliseconds (None when empty)."""
        if not self.count:
            return {"count": 0, **dict.fromkeys(PERCENTILES), "max": None}
        out: dict[str, Any] = {"count": self.count}
        for name, p in PERCENTILES.items():
            out[name] = round(self.percentile_ms(p), 3)
        out["max"] = round(float(self._h.get_max_value()) / 1000.0, 3)
        return out

    def cumulative(self, bounds: tuple[float, ...]) -> list[int]:
        """How many values are at most each bound (seconds): Prometheus buckets,
        at the histogram's precision (3 significant digits): a value counts below
        a bound when its whole equivalence range does.

        Sums slices of the counts array (its index grows with the value): walking
        the recorded values in Python took a scrape 0.4 s."""
        counts = list(self._h.counts)
        out, below, start = [], 0, 0
        for bound in bounds:
            limit = min(max(int(bound * 1_000_000), _LOWEST_US), _HIGHEST_US)
            end = self._h.get_counts_array_index(limit)
            if self._h.get_highest_equivalent_value(limit) <= limit:
                end += 1  # the bound closes its range: that range counts too
            if end > start:
                below += sum(counts[start:end])
                start = end
            out.append(below)
        return out

    @property
    def sum_seconds(self) -> float:
        """The total of the values (mean times count, at the histogram's precision)."""
        # As hdrh's mean does (each value at the middle of its range), but over
        # the non-zero counts only: its iterator made every scrape slow.
        h, total = self._h, 0
        for index, n in enumerate(h.counts):
            if n:
                total += n * h._hdr_median_equiv_value(h.get_value_from_index(index))
        return total / 1_000_000

    def encode(self) -> str:
        return self._h.encode().decode("ascii")  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, encoded: str) -> LatencyHistogram:
        """``encode``'s text back; a ``ValueError`` for text that is none of it."""
        histogram = cls()
        if encoded:
            try:
                decoded = HdrHistogram.decode(encoded.encode("ascii"))
            except Exception as exc:  # hdrh raises a type of its own for each way to fail
                why = str(exc) or type(exc).__name__
                raise ValueError(f"not an HDR histogram ({why})") from None
            histogram._h.add(_acyclic(decoded))
        return histogram
