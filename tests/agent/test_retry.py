"""The download retry policy: full-jitter backoff under its cap, and when trying ends."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.agent._retry import DownloadRetry, GiveUp, full_jitter

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_full_jitter_stays_under_a_growing_capped_window():
    rng = random.Random(3)
    for attempt in range(12):
        ceiling = min(60.0, 2.0 * 2**attempt)
        delays = [full_jitter(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # full jitter: the whole window is used, the low end too
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9
    assert 0.0 <= full_jitter(10_000, 2.0, 60.0, rng) <= 60.0


def test_a_fleet_retrying_together_is_spread_out():
    fleet = [DownloadRetry(rng=random.Random(seed)).delay(6) for seed in range(500)]
    assert max(fleet) - min(fleet) > 50.0
    assert len({round(d, 3) for d in fleet}) > 400


def test_the_first_retry_waits_within_the_first_window():
    retry = DownloadRetry(first_s=0.5, max_s=10.0, rng=random.Random(1))
    assert all(0.0 <= retry.delay(1) <= 0.5 for _ in range(100))


EXPIRES = T0 + timedelta(hours=1)
STOP_CASES = [
    # name, policy, failures so far, when the next attempt would start, expected reason
    ("before expiry", DownloadRetry(), 50, T0 + timedelta(minutes=59), None),
    ("at expiry", DownloadRetry(), 3, EXPIRES, GiveUp.EXPIRED),
    (
        "deadline first",
        DownloadRetry(deadline_s=60),
        3,
        T0 + timedelta(seconds=61),
        GiveUp.DEADLINE,
    ),
    ("deadline after expiry", DownloadRetry(deadline_s=7200), 3, EXPIRES, GiveUp.EXPIRED),
    ("inside the deadline", DownloadRetry(deadline_s=60), 3, T0 + timedelta(seconds=59), None),
    ("attempt cap", DownloadRetry(max_attempts=5), 5, T0, GiveUp.ATTEMPTS),
    ("under the cap", DownloadRetry(max_attempts=5), 4, T0, None),
]


@pytest.mark.parametrize(
    ("name", "policy", "attempts", "at", "reason"), STOP_CASES, ids=[c[0] for c in STOP_CASES]
)
def test_when_trying_stops(name, policy, attempts, at, reason):
    got = policy.stop(attempts=attempts, at=at, accepted_at=T0, expires_at=EXPIRES)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got[0] is reason


def test_the_reason_names_its_moment():
    why, detail = DownloadRetry(deadline_s=60).stop(
        attempts=1, at=T0 + timedelta(minutes=5), accepted_at=T0, expires_at=EXPIRES
    ) or (None, "")
    assert why is GiveUp.DEADLINE
    assert "download_deadline_s" in detail and "2030-01-01T00:01:00" in detail
    why, detail = DownloadRetry().stop(
        attempts=1, at=EXPIRES, accepted_at=T0, expires_at=EXPIRES
    ) or (None, "")
    assert why is GiveUp.EXPIRED and "expires at 2030-01-01T01:00:00" in detail
