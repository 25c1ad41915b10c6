"""Fixed-bucket latency histograms.

Fleet percentiles cannot be computed from per-device percentiles, but fixed
buckets add up: every device counts into the same bounds and the controller
merges counts before it reads a percentile.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

# Upper bounds in milliseconds, geometric with ratio 1.25 from 0.05 ms to about
# 65 s; the last bucket (index len(BUCKET_BOUNDS_MS)) holds everything above.
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 1.25**i, 6) for i in range(64))
N_BUCKETS = len(BUCKET_BOUNDS_MS) + 1


class LatencyHistogram:
    """Counts of latencies per fixed bucket. Not thread-safe: callers hold a lock."""

    __slots__ = ("counts", "max_ms", "sum_ms")

    def __init__(self, counts: Sequence[int] | None = None) -> None:
        if counts is None:
            self.counts = [0] * N_BUCKETS
        else:
            if len(counts) != N_BUCKETS:
                raise ValueError(f"a histogram has {N_BUCKETS} buckets, got {len(counts)}")
            self.counts = [int(c) for c in counts]
        self.sum_ms = 0.0
        self.max_ms = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def record(self, latency_ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKET_BOUNDS_MS, latency_ms)] += 1
        self.sum_ms += latency_ms
        self.max_ms = max(self.max_ms, latency_ms)

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100), interpolated inside its bucket; None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = max(1.0, math.ceil(q / 100.0 * total))
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = BUCKET_BOUNDS_MS[i - 1] if i > 0 else 0.0
                hi = BUCKET_BOUNDS_MS[i] if i < len(BUCKET_BOUNDS_MS) else lo * 1.25
                return lo + (hi - lo) * (rank - seen) / c
            seen += c
        return BUCKET_BOUNDS_MS[-1]  # pragma: no cover - loop always returns


def merge_counts(histograms: Iterable[Sequence[int]]) -> LatencyHistogram:
    merged = LatencyHistogram()
    for counts in histograms:
        merged.merge(LatencyHistogram(counts))
    return merged
