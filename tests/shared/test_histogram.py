"""Fixed-bucket latency histograms: bounds, percentiles, merging."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest

from edgefleet.shared import BUCKET_BOUNDS_MS, N_BUCKETS, LatencyHistogram, merge_counts


@pytest.fixture(scope="module")
def latencies() -> np.ndarray:
    # Latencies look lognormal: median ~ e^1.5 = 4.5 ms with a long tail.
    return np.random.default_rng(1234).lognormal(mean=1.5, sigma=0.8, size=10_000)


def _histogram(values: np.ndarray) -> LatencyHistogram:
    hist = LatencyHistogram()
    for v in values:
        hist.record(float(v))
    return hist


def _bucket_width(value: float) -> float:
    i = bisect.bisect_left(BUCKET_BOUNDS_MS, value)
    lo = BUCKET_BOUNDS_MS[i - 1] if i > 0 else 0.0
    hi = BUCKET_BOUNDS_MS[i] if i < len(BUCKET_BOUNDS_MS) else lo * 1.25
    return hi - lo


def test_bounds_strictly_increasing() -> None:
    assert all(a < b for a, b in itertools.pairwise(BUCKET_BOUNDS_MS))
    assert BUCKET_BOUNDS_MS[0] > 0
    assert len(BUCKET_BOUNDS_MS) + 1 == N_BUCKETS


def test_bounds_cover_a_minute() -> None:
    assert BUCKET_BOUNDS_MS[0] <= 0.05
    assert BUCKET_BOUNDS_MS[-1] >= 60_000


def test_empty() -> None:
    hist = LatencyHistogram()
    assert hist.counts == [0] * N_BUCKETS
    assert hist.total == 0
    for q in (0, 50, 99, 100):
        assert hist.percentile(q) is None


def test_record_puts_bounds_in_their_own_bucket() -> None:
    hist = LatencyHistogram()
    hist.record(BUCKET_BOUNDS_MS[3])  # an upper bound is inclusive
    hist.record(BUCKET_BOUNDS_MS[3] + 1e-9)
    hist.record(0.0)
    hist.record(10**9)  # beyond the last bound
    assert hist.counts[3] == 1
    assert hist.counts[4] == 1
    assert hist.counts[0] == 1
    assert hist.counts[-1] == 1
    assert hist.total == 4
    assert hist.max_ms == 10**9


@pytest.mark.parametrize("q", [1, 10, 25, 50, 75, 90, 95, 99, 99.9])
def test_percentile_close_to_numpy(latencies: np.ndarray, q: float) -> None:
    hist = _histogram(latencies)
    expected = float(np.percentile(latencies, q))
    got = hist.percentile(q)
    assert got is not None
    assert abs(got - expected) <= _bucket_width(expected), (q, got, expected)


def test_percentiles_are_monotonic(latencies: np.ndarray) -> None:
    hist = _histogram(latencies)
    values = [hist.percentile(q) for q in range(0, 101, 5)]
    assert values == sorted(values)  # type: ignore[type-var]


def test_percentile_of_one_value() -> None:
    hist = LatencyHistogram()
    hist.record(5.0)
    for q in (0, 50, 100):
        p = hist.percentile(q)
        assert p is not None
        assert abs(p - 5.0) <= _bucket_width(5.0)


def test_percentile_in_the_overflow_bucket() -> None:
    hist = LatencyHistogram()
    hist.record(10**6)
    p = hist.percentile(50)
    assert p is not None
    assert p >= BUCKET_BOUNDS_MS[-1]


def test_sum_and_max(latencies: np.ndarray) -> None:
    hist = _histogram(latencies)
    assert hist.total == len(latencies)
    assert hist.sum_ms == pytest.approx(float(latencies.sum()))
    assert hist.max_ms == pytest.approx(float(latencies.max()))


def test_merge_equals_histogram_of_concatenation(latencies: np.ndarray) -> None:
    a, b = latencies[:3_000], latencies[3_000:] * 3  # two devices, one slower
    merged = _histogram(a)
    merged.merge(_histogram(b))
    whole = _histogram(np.concatenate([a, b]))
    assert merged.counts == whole.counts
    assert merged.total == 10_000
    assert merged.sum_ms == pytest.approx(whole.sum_ms)
    assert merged.max_ms == whole.max_ms
    assert merged.percentile(99) == whole.percentile(99)


def test_merge_does_not_change_the_other() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    b.record(1.0)
    a.merge(b)
    a.merge(b)
    assert b.total == 1
    assert a.total == 2


def test_merge_counts(latencies: np.ndarray) -> None:
    parts = np.array_split(latencies, 4)
    merged = merge_counts(_histogram(p).counts for p in parts)
    assert isinstance(merged, LatencyHistogram)
    assert merged.counts == _histogram(latencies).counts


def test_merge_counts_of_nothing() -> None:
    merged = merge_counts([])
    assert merged.total == 0
    assert merged.percentile(50) is None


def test_counts_constructor_copies() -> None:
    counts = [0] * N_BUCKETS
    counts[5] = 3
    hist = LatencyHistogram(counts)
    hist.record(BUCKET_BOUNDS_MS[5])
    assert counts[5] == 3
    assert hist.counts[5] == 4


@pytest.mark.parametrize("n", [0, 1, N_BUCKETS - 1, N_BUCKETS + 1])
def test_wrong_length(n: int) -> None:
    with pytest.raises(ValueError, match=str(N_BUCKETS)):
        LatencyHistogram([0] * n)
    with pytest.raises(ValueError):
        merge_counts([[0] * N_BUCKETS, [0] * n])
