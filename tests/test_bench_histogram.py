"""The bench's latency histogram: bucket bounds, percentiles, merging, round trip through JSON."""

import json

import pytest

from bench.histogram import Histogram, bucket_bounds, bucket_of


def test_every_value_falls_inside_its_bucket_within_one_percent() -> None:
    values = list(range(0, 3000)) + [10**k + d for k in range(4, 13) for d in (-1, 0, 1, 12345)]
    for v in values:
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v <= high
        assert v < 256 or (high - low + 1) / v < 0.01


def test_buckets_are_monotonic() -> None:
    indices = [bucket_of(v) for v in range(0, 200_000, 7)]
    assert indices == sorted(indices)


def test_percentiles_of_exact_small_values() -> None:
    h = Histogram()
    h.record_all(range(1, 101))  # 1..100 ns: exact buckets
    assert (h.percentile(50), h.percentile(99), h.percentile(100), h.percentile(0)) == (50, 99, 100, 1)
    assert (h.count, h.min, h.max, h.mean) == (100, 1, 100, 50.5)


def test_percentile_of_large_values_is_within_bucket_precision() -> None:
    h = Histogram()
    for v in range(1, 10_001):
        h.record(v * 1000)  # 1 µs .. 10 ms
    for p, exact in ((50, 5_000_000), (99, 9_900_000), (99.9, 9_990_000)):
        assert abs(h.percentile(p) - exact) / exact < 0.01


def test_negative_values_count_as_zero() -> None:
    h = Histogram()
    h.record(-5)
    assert (h.count, h.min, h.percentile(50)) == (1, 0, 0)


def test_merge_equals_recording_everything_in_one() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in range(0, 50_000, 13):
        (a if v % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert (a.counts, a.count, a.min, a.max, a.total) == (both.counts, both.count, both.min, both.max, both.total)


def test_json_round_trip() -> None:
    h = Histogram()
    h.record_all([1, 500, 70_000, 3_000_000])
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert (back.counts, back.count, back.min, back.max, back.percentile(99)) == (
        h.counts, h.count, h.min, h.max, h.percentile(99))


def test_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        Histogram().percentile(50)
    h = Histogram()
    h.record(1)
    with pytest.raises(ValueError):
        h.percentile(101)
    assert Histogram().summary() == {"count": 0}
