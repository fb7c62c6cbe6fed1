"""An HDR-style latency histogram: log-bucketed nanosecond counts with bounded relative error.

Values below ``2**SUB_BITS`` ns are counted exactly; above that, each power of two is split into
``2**(SUB_BITS-1)`` linear sub-buckets, so any recorded value is reported within
``2**-(SUB_BITS-1)`` (< 1 % for the default 8 bits) of its true value — the same trade as
HdrHistogram with ~2 significant digits, in a plain dict so histograms pickle, merge and
travel as JSON between processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SUB_BITS = 8
_HALF = 1 << (SUB_BITS - 1)


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer value (monotonic in ``value``)."""
    if value < (1 << SUB_BITS):
        return value
    shift = value.bit_length() - SUB_BITS
    return shift * _HALF + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value that fall into bucket ``index``."""
    if index < (1 << SUB_BITS):
        return index, index
    shift = index // _HALF - 1
    low = (index - shift * _HALF) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of latencies in nanoseconds; percentiles come back as bucket midpoints (clamped)."""

    __slots__ = ("counts", "count", "min", "max", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.min: int | None = None
        self.max: int | None = None
        self.total = 0

    def record(self, value_ns: int, times: int = 1) -> None:
        """Count ``value_ns`` (negative values, from clock skew, count as 0)."""
        value = int(value_ns) if value_ns > 0 else 0
        index = bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + times
        self.count += times
        self.total += value * times
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def record_all(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s counts into this histogram; returns self."""
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        for bound in (other.min, other.max):
            if bound is None:
                continue
            if self.min is None or bound < self.min:
                self.min = bound
            if self.max is None or bound > self.max:
                self.max = bound
        return self

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0–100): the smallest value with at least p % at or below it.

        Raises:
            ValueError: the histogram is empty or ``p`` is out of range.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within 0..100, got {p}")
        if self.count == 0:
            raise ValueError("empty histogram")
        rank = max(1, -(-self.count * p // 100))  # ceil, at least the first value
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                mid = (low + high) // 2
                return max(self.min or 0, min(mid, self.max or 0))
        return self.max or 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self) -> dict[str, float]:
        """p50/p99/p99.9/max/mean in microseconds (what the report shows)."""
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "p50_us": self.percentile(50) / 1000,
            "p99_us": self.percentile(99) / 1000,
            "p99_9_us": self.percentile(99.9) / 1000,
            "max_us": (self.max or 0) / 1000,
            "mean_us": self.mean / 1000,
        }

    def distribution(self, points: int = 60) -> list[tuple[float, float]]:
        """``(percentile, value_us)`` pairs from p0 to p99.99+, spaced for a log-tail chart."""
        if self.count == 0:
            return []
        out = []
        for i in range(points + 1):
            # 1 - 10**(-4 i / points): dense near the tail, like HdrHistogram's percentile plot.
            p = 100.0 * (1 - 10 ** (-4.0 * i / points))
            out.append((p, self.percentile(min(p, 100.0)) / 1000))
        out.append((100.0, (self.max or 0) / 1000))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub_bits": SUB_BITS,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "total": self.total,
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild a histogram written by :meth:`to_dict`.

        Raises:
            ValueError: it was written with a different bucket layout.
        """
        if data.get("sub_bits") != SUB_BITS:
            raise ValueError(f"histogram layout {data.get('sub_bits')} != {SUB_BITS}")
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.count = int(data["count"])
        h.min, h.max, h.total = data["min"], data["max"], int(data["total"])
        return h
