"""Reconnect backoff grows, stays under its cap, and is spread out across a fleet."""

from __future__ import annotations

import random

from edgefleet.agent._mqtt import backoff_delay


def test_backoff_grows_to_the_cap_with_jitter():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # a fleet that lost the broker together does not come back together
    fleet = [backoff_delay(6, 0.5, 30.0, random.Random(seed)) for seed in range(500)]
    assert max(fleet) - min(fleet) > 10.0
    assert len({round(d, 3) for d in fleet}) > 400


def test_backoff_survives_huge_attempt_counts():
    assert 15.0 <= backoff_delay(10_000, 0.5, 30.0, random.Random(1)) <= 30.0
