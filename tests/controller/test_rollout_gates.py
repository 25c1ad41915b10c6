"""Rollout gates as tables of evidence and decisions, and their statistics on synthetic
waves over fixed seeds: "same model again" passes, a slower or erroring model fails, too
little data waits. (bench/rollout_gates.py measures the same rates over more seeds.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefleet.controller.rollout._gates import (
    MIN_BLOCK_REQUESTS,
    MIN_P95_REQUESTS,
    OUTCOMES,
    Decision,
    DeviceEvidence,
    GateResult,
    absolute_gate,
    blocks,
    error_gate,
    evaluate_gates,
    install_gate,
    latency_gate,
    overall,
)
from edgefleet.controller.rollout._plan import Bake, Gates
from edgefleet.controller.rollout._stats import stratified_rank_test, wilson_interval
from edgefleet.shared import BUCKET_BOUNDS_MS, N_BUCKETS, LatencyHistogram

GATES = Gates()
MIN_REQUESTS = Bake().min_requests
PASS, FAIL, WAIT = Decision.PASS, Decision.FAIL, Decision.INCONCLUSIVE


def spread(first: int, per_bucket: list[int]) -> tuple[int, ...]:
    """A histogram with per_bucket[i] requests in bucket first + i."""
    counts = [0] * N_BUCKETS
    for i, c in enumerate(per_bucket):
        counts[first + i] = c
    return tuple(counts)


BASE = spread(15, [50] * 10)  # 500 requests, 1.1-10.6 ms; p95 9.53 ms, mid-bucket 24
SAME = BASE
SLOWER = spread(17, [50] * 10)  # two buckets up: 1.25**2 = 1.56x
SLIGHTLY = spread(16, [50] * 10)  # one bucket up: 1.25x, inside the 1.3 tolerance
FASTER = spread(14, [50] * 10)  # one bucket down
# 100 requests; 6 of them past the baseline's p95 bucket, far enough to make p95 3.5x: a
# big ratio on evidence a fair 5 % tail produces 38 % of the time.
BASE_100 = spread(15, [10] * 10)
TAIL_6 = tuple(c + 6 * (i == 30) for i, c in enumerate(spread(15, [10] * 9 + [4])))


def split(counts: tuple[int, ...], k: int) -> tuple[tuple[int, ...], ...]:
    """``counts`` as k intervals of (nearly) the same histogram, summing to it."""
    return tuple(
        tuple(c // k + (i < c % k) for c in counts) for i in range(k)
    )  # fmt: skip


def committed(
    new: tuple[int, ...] | None = SAME,
    base: tuple[int, ...] | None = BASE,
    *,
    requests: int | None = None,
    errors: int = 0,
    limit: float | None = None,
    name: str = "d",
    intervals: int = 6,
) -> DeviceEvidence:
    """A committed device whose windows each hold ``intervals`` telemetry intervals."""
    n = sum(new) if new is not None else 0
    return DeviceEvidence(
        device=name,
        profile="pi",
        outcome="committed",
        new_intervals=split(new, intervals) if new is not None else (),
        new_requests=n if requests is None else requests,
        new_errors=errors,
        baseline_intervals=split(base, intervals) if base is not None else None,
        limit_ms=limit,
    )


def outcome(name: str, state: str) -> DeviceEvidence:
    return DeviceEvidence(device=name, profile="pi", outcome=state)


def test_rank_test_against_the_exact_distribution() -> None:
    # 5 new values all above 5 baseline ones: exact p = 1/C(10,5) = 0.004; normal 0.0055
    five = stratified_rank_test([([2, 3, 4, 5, 6], [0, 0, 1, 1, 1])])
    assert (five.u, five.pairs, five.share) == (25, 25, 1.0)
    assert five.p_value == pytest.approx(0.0055, abs=1e-4)  # ties shrink the variance
    # strata add: two such devices are stronger evidence than one
    two = stratified_rank_test([([2, 3, 4, 5, 6], [0, 0, 1, 1, 1])] * 2)
    assert two.p_value < five.p_value / 5
    # all tied, empty sides, no strata: no evidence of anything
    assert stratified_rank_test([([3, 3], [3, 3, 3])]).p_value == 1.0
    assert stratified_rank_test([([], [1, 2])]).pairs == 0
    assert stratified_rank_test([]).p_value == 1.0
    # faster is not slower: the test is one-sided
    assert stratified_rank_test([([0, 0, 1], [5, 6, 7])]).p_value > 0.9


def test_rank_test_is_calibrated_on_exchangeable_blocks() -> None:
    rng = np.random.default_rng(7)
    trials, alpha = 4000, 0.05
    rejected = 0
    for _ in range(trials):
        strata = [
            (list(rng.integers(20, 26, size=6)), list(rng.integers(20, 26, size=6)))
            for _ in range(int(rng.integers(1, 5)))
        ]
        rejected += stratified_rank_test(strata).p_value < alpha
    assert rejected / trials <= alpha * 1.2  # conservative with ties, never much above


def test_blocks_gather_intervals_until_they_hold_enough_requests() -> None:
    one = spread(20, [1])
    assert blocks([]) == []
    assert blocks([one] * 3) == [spread(20, [3])]  # too few for a block: one block anyway
    assert blocks([one] * (MIN_BLOCK_REQUESTS * 2 + 5)) == [
        spread(20, [MIN_BLOCK_REQUESTS]),
        spread(20, [MIN_BLOCK_REQUESTS + 5]),  # the short remainder joins the last block
    ]
    assert blocks([spread(20, [50]), spread(21, [50])]) == [spread(20, [50]), spread(21, [50])]


@pytest.mark.parametrize(
    ("k", "n", "confidence", "low", "high"),
    [
        (10, 100, 0.95, 0.0552, 0.1744),  # the textbook example
        (0, 400, 0.95, 0.0, 0.0095),
        (40, 2000, 0.95, 0.0147, 0.0271),
        (5, 5, 0.95, 0.5655, 1.0),
        (0, 0, 0.95, 0.0, 1.0),
        (1, 10, 0.90, 0.0226, 0.3477),
    ],
)
def test_wilson_interval(k: int, n: int, confidence: float, low: float, high: float) -> None:
    assert wilson_interval(k, n, confidence) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    ("states", "counted", "gates", "decision"),
    [
        ([], 0, GATES, WAIT),  # nobody counted: no data never passes
        ([], 5, GATES, WAIT),
        (["committed"] * 5, 5, GATES, PASS),
        (["committed"] * 4 + ["failed"], 5, GATES, PASS),  # 4 of 5 = 0.8
        (["committed"] * 3 + ["failed", "lost"], 5, GATES, FAIL),
        (["failed", "rolled_back"], 5, GATES, FAIL),  # 3 can no longer make 4 of 5
        (["failed"], 5, GATES, WAIT),  # 4 left could still commit
        (["committed"] * 4 + ["installing"], 5, GATES, WAIT),
        (["committed"] * 4, 5, GATES, WAIT),  # the fifth has not reported
        (["fallback"], 1, GATES, FAIL),  # serving the wrong model is failing
        (["lost"], 1, GATES, FAIL),
        (["rolled_back"], 1, GATES, FAIL),
        (["committed"], 1, GATES, PASS),
        (["failed", "failed"], 10, Gates(min_finished=3), WAIT),  # 2 allowed: not over yet
        (["failed"] * 3, 10, Gates(min_finished=3), FAIL),
        (["failed"] * 3, 10, Gates(min_finished=4), WAIT),  # over, but too few finished
        (["committed"] * 9 + ["failed"], 10, Gates(quorum=1.0), FAIL),
        (["committed"] * 93 + ["failed"] * 7, 100, Gates(quorum=0.93), PASS),  # exactly 93
        (["committed"] * 7 + ["failed"] * 93, 100, Gates(quorum=0.07), PASS),  # no float drift
        (["committed"] * 3, 2, GATES, PASS),  # more evidence than counted: counted grows
    ],
)
def test_install_gate(states: list[str], counted: int, gates: Gates, decision: Decision) -> None:
    evidence = [outcome(f"d{i}", s) for i, s in enumerate(states)]
    result = install_gate(evidence, gates, counted=counted)
    assert result.decision == decision, result.detail
    assert result.gate == "install"


def test_install_gate_says_who_failed_beside_what_is_allowed() -> None:
    states = ["committed"] * 6 + ["failed", "lost", "fallback"]
    result = install_gate([outcome(f"d{i}", s) for i, s in enumerate(states)], GATES, counted=10)
    assert result.decision == FAIL
    assert (result.statistic, result.threshold) == (3, 2)
    assert result.detail == (
        "3 of 10 devices failed (1 failed, 1 lost, 1 fallback) > 2 allowed by quorum 0.80"
    )
    assert result.inputs["lost"] == 1 and result.inputs["committed"] == 6


@pytest.mark.parametrize(
    ("evidence", "gates", "decision"),
    [
        ([], GATES, WAIT),
        ([outcome("d", "installing")], GATES, WAIT),
        ([committed(SAME)], GATES, PASS),
        ([committed(SLOWER)], GATES, FAIL),
        ([committed(SLIGHTLY)], GATES, PASS),  # significant, but within tolerance
        ([committed(SLIGHTLY)], Gates(latency_tolerance=0.2), FAIL),
        ([committed(SLOWER, name=f"d{i}") for i in range(3)], GATES, FAIL),
        ([committed(SLOWER, name=f"d{i}") for i in range(20)], GATES, FAIL),
        ([committed(SAME, name=f"d{i}") for i in range(7)], GATES, PASS),
        ([committed(FASTER, name=f"d{i}") for i in range(7)], GATES, PASS),
        # one device three times slower among 20 that are not: the median is not moved
        (
            [committed(spread(20, [50] * 10), name="odd")]
            + [committed(SAME, name=f"d{i}") for i in range(19)],
            GATES,
            PASS,
        ),
        ([committed(TAIL_6, BASE_100)], GATES, WAIT),  # large, not significant
        # three intervals a side, all slower, are not yet enough (p = 0.023); five are
        ([committed(SLOWER, intervals=3)], GATES, WAIT),
        ([committed(SLOWER, intervals=5)], GATES, FAIL),
        # a whole window in one interval: slower, but one stall would look the same
        ([committed(SLOWER, intervals=1)], GATES, WAIT),
        # ... which it takes eight devices to outweigh (7: p = 0.012, 8: p = 0.0067)
        ([committed(SLOWER, intervals=1, name=f"d{i}") for i in range(7)], GATES, WAIT),
        ([committed(SLOWER, intervals=1, name=f"d{i}") for i in range(8)], GATES, FAIL),
        # a slower device judged, one without enough baseline requests left out
        (
            [committed(SLOWER), committed(SLOWER, spread(15, [9] * 10), name="e")],
            GATES,
            FAIL,
        ),
    ],
)
def test_latency_gate(evidence: list[DeviceEvidence], gates: Gates, decision: Decision) -> None:
    result = latency_gate(evidence, gates, min_requests=MIN_REQUESTS)
    assert result.decision == decision, result.detail
    assert result.inputs.get("test") == ("rank" if "median" in result.detail else None)


@pytest.mark.parametrize(
    ("evidence", "decision", "says"),
    [
        ([committed(SAME, None)], PASS, "the absolute gate judges alone"),
        ([committed(SLOWER, None), committed(SLOWER, None, name="e")], PASS, "no committed device"),
        ([committed(SAME, spread(15, [0] * 10))], WAIT, "none of 1 device has"),  # no traffic
        ([committed(spread(15, [9] * 10))], WAIT, "100 requests on both"),
        ([committed(None)], WAIT, "100 requests on both"),  # no telemetry yet
    ],
)
def test_latency_gate_without_a_usable_baseline(
    evidence: list[DeviceEvidence], decision: Decision, says: str
) -> None:
    result = latency_gate(evidence, GATES, min_requests=MIN_REQUESTS)
    assert result.decision == decision
    assert says in result.detail


def test_latency_gate_never_reads_a_p95_from_a_handful_of_requests() -> None:
    few = spread(15, [1] * 10)
    result = latency_gate([committed(few, few)], GATES, min_requests=0)
    assert result.decision == WAIT
    assert result.inputs["min_requests"] == MIN_P95_REQUESTS


def test_latency_gate_shows_its_figures_beside_the_thresholds() -> None:
    result = latency_gate([committed(SLOWER)], GATES, min_requests=MIN_REQUESTS)
    assert result.statistic == pytest.approx(1.5625)
    assert result.threshold == pytest.approx(1.3)
    assert result.detail == (
        "median p95 ratio 1.56 > 1.30 across 1 device; new intervals slower in 100% of 36"
        " pairs with the baseline's, rank test p=0.00063 < 0.01"
    )
    assert result.inputs["new_blocks"] == result.inputs["baseline_blocks"] == 6
    # every block of a side is alike here (one histogram split evenly): ties within a side
    # shrink the variance, so the p-value is smaller than 6 real intervals would give
    assert result.inputs["p_value"] == pytest.approx(0.00063, abs=1e-5)


@pytest.mark.parametrize(
    ("evidence", "gates", "decision", "says"),
    [
        ([], GATES, WAIT, "no device committed"),
        ([committed(SAME)], GATES, PASS, "no limit set"),
        ([committed(SAME, limit=20)], GATES, PASS, "<= 20 ms limit over 500 requests"),
        ([committed(SAME, limit=9)], GATES, FAIL, "p95 9.53 ms > 9 ms limit"),
        ([committed(SAME, limit=20)], Gates(latency_limit_ms=9), FAIL, "> 9 ms limit"),
        ([committed(SAME)], Gates(latency_limit_ms=9), FAIL, "> 9 ms limit"),
        ([committed(spread(15, [5] * 10), limit=20)], GATES, WAIT, "50 of 100 requests"),
        ([committed(None, limit=20)], GATES, WAIT, "no request"),
        # merged per limit: the 10 ms group is over, the 20 ms one within
        (
            [committed(SAME, limit=20, name="a"), committed(SAME, limit=9, name="b")],
            GATES,
            FAIL,
            "> 9 ms limit over 500 requests on 1 device",
        ),
        # a group over its limit fails even while another still waits for requests
        (
            [committed(SLOWER, limit=10, name="a"), committed(None, limit=20, name="b")],
            GATES,
            FAIL,
            "> 10 ms",
        ),
        # devices that are not committed do not count
        ([committed(SAME, limit=20), outcome("x", "failed")], GATES, PASS, "on 1 device"),
    ],
)
def test_absolute_gate(
    evidence: list[DeviceEvidence], gates: Gates, decision: Decision, says: str
) -> None:
    result = absolute_gate(evidence, gates, min_requests=MIN_REQUESTS)
    assert result.decision == decision, result.detail
    assert says in result.detail


@pytest.mark.parametrize(
    ("requests", "errors", "gates", "decision"),
    [
        (2000, 40, GATES, FAIL),  # 2 %
        (400, 0, GATES, PASS),
        (380, 0, GATES, WAIT),  # the upper bound is still just above 1 %
        (199, 0, GATES, WAIT),  # under error_min_requests
        (0, 0, GATES, WAIT),
        (1000, 12, GATES, WAIT),  # the interval straddles 1 %
        (100, 50, GATES, WAIT),
        (100, 50, Gates(error_min_requests=50), FAIL),
        (5000, 20, GATES, PASS),  # 0.4 %
        (5000, 20, Gates(error_threshold=0.002), FAIL),
    ],
)
def test_error_gate(requests: int, errors: int, gates: Gates, decision: Decision) -> None:
    result = error_gate([committed(requests=requests, errors=errors)], gates)
    assert result.decision == decision, result.detail


def test_error_gate_pools_committed_devices_only() -> None:
    evidence = [
        committed(requests=1000, errors=20, name="a"),
        committed(requests=1000, errors=20, name="b"),
        DeviceEvidence("c", "pi", "rolled_back", new_requests=1000, new_errors=1000),
    ]
    result = error_gate(evidence, GATES)
    assert (result.inputs["requests"], result.inputs["errors"]) == (2000, 40)
    assert result.decision == FAIL
    assert result.statistic == pytest.approx(0.02) and result.threshold == pytest.approx(0.01)
    assert result.detail == "40 errors in 2000 requests, 95% interval 1.47%-2.71% > 1.00%"


def test_evaluate_gates_runs_the_enabled_gates_in_order() -> None:
    evidence = [committed(SAME, limit=20, name=f"d{i}") for i in range(3)]
    results = evaluate_gates(evidence, GATES, counted=3, min_requests=MIN_REQUESTS)
    assert [r.gate for r in results] == ["install", "latency", "absolute", "errors"]
    assert [r.decision for r in results] == [PASS, PASS, PASS, PASS]
    only = evaluate_gates(
        evidence, Gates(enabled=("errors", "install")), counted=3, min_requests=MIN_REQUESTS
    )
    assert [r.gate for r in only] == ["install", "errors"]


def test_no_data_never_passes() -> None:
    silent = [committed(None, limit=20, name=f"d{i}") for i in range(3)]
    for evidence, counted in (([], 0), ([], 3), (silent, 3)):
        results = evaluate_gates(evidence, GATES, counted=counted, min_requests=MIN_REQUESTS)
        assert overall(results) == WAIT


def result(decision: Decision) -> GateResult:
    return GateResult("errors", decision, None, None, {}, "")


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ([], PASS),
        ([PASS, PASS], PASS),
        ([PASS, WAIT], WAIT),
        ([WAIT, FAIL, PASS], FAIL),
        ([FAIL], FAIL),
    ],
)
def test_overall(decisions: list[Decision], expected: Decision) -> None:
    assert overall([result(d) for d in decisions]) == expected


def test_device_evidence_refuses_unknown_outcomes_and_odd_histograms() -> None:
    assert "fallback" in OUTCOMES
    with pytest.raises(ValueError, match="outcome"):
        DeviceEvidence("d", "pi", "exploded")
    with pytest.raises(ValueError, match="65 buckets"):
        DeviceEvidence("d", "pi", "committed", new_intervals=((1, 2, 3),))


# Synthetic waves: each device has its own lognormal latency (median 2-20 ms, sigma
# 0.15-0.45); every window's latencies are drawn one by one and bucketed like the agent's.

BOUNDS = np.array(BUCKET_BOUNDS_MS)


def bucketed(latencies: np.ndarray) -> tuple[int, ...]:
    index = np.searchsorted(BOUNDS, latencies, side="left")  # = bisect_left, as record() does
    return tuple(int(c) for c in np.bincount(index, minlength=N_BUCKETS))


def synthetic_wave(
    seed: int,
    size: int,
    *,
    slowdown: float = 1.0,
    error_rate: float = 0.002,
    requests: tuple[int, int] = (100, 2000),
    intervals: int = 6,
) -> list[DeviceEvidence]:
    """Each window is ``intervals`` telemetry intervals of equal traffic."""
    rng = np.random.default_rng([seed, size, round(slowdown * 100), round(error_rate * 1e4)])
    wave = []
    for i in range(size):
        mu, sigma = rng.uniform(math.log(2), math.log(20)), rng.uniform(0.15, 0.45)
        n_base, n_new = (int(x) for x in np.exp(rng.uniform(*np.log(requests), size=2)))

        def window(
            n: int, scale: float, mu: float = mu, sigma: float = sigma
        ) -> tuple[tuple[int, ...], ...]:
            sizes = [n // intervals + (j < n % intervals) for j in range(intervals)]
            return tuple(bucketed(rng.lognormal(mu + math.log(scale), sigma, k)) for k in sizes)

        wave.append(
            DeviceEvidence(
                device=f"d{i}",
                profile="pi",
                outcome="committed",
                new_intervals=window(n_new, slowdown),
                new_requests=n_new,
                new_errors=int(rng.binomial(n_new, error_rate)),
                baseline_intervals=window(n_base, 1.0),
            )
        )
    return wave


def test_synthetic_histograms_bucket_like_the_agent() -> None:
    latencies = np.random.default_rng(0).lognormal(1.5, 1.0, 2000)
    recorded = LatencyHistogram()
    for x in latencies:
        recorded.record(float(x))
    assert bucketed(latencies) == tuple(recorded.counts)


@pytest.mark.parametrize("size", [1, 3, 6, 20])
def test_same_model_again_almost_never_fails(size: int) -> None:
    seeds = 500
    fails, latency_waits = [], []
    for seed in range(seeds):
        results = evaluate_gates(synthetic_wave(seed, size), GATES, counted=size, min_requests=100)
        if overall(results) == FAIL:
            fails.append(seed)
        if results[1].decision == WAIT:  # latency: slower than the tolerance, not significant
            latency_waits.append(seed)
    assert len(fails) <= seeds // 100, f"false FAIL on seeds {fails}"  # <= 1 %
    assert len(latency_waits) <= seeds // 100, f"latency left waiting on seeds {latency_waits}"


@pytest.mark.parametrize("size", [1, 3, 6, 20])
def test_one_and_a_half_times_slower_fails(size: int) -> None:
    seeds = 200
    caught = sum(
        latency_gate(
            synthetic_wave(seed, size, slowdown=1.5, requests=(200, 2000)),
            GATES,
            min_requests=MIN_REQUESTS,
        ).decision
        == FAIL
        for seed in range(seeds)
    )
    assert caught >= 0.95 * seeds


def test_two_percent_errors_fail_with_enough_requests() -> None:
    seeds = 100
    decisions = [
        error_gate(synthetic_wave(seed, 3, error_rate=0.02, requests=(1000, 2000)), GATES).decision
        for seed in range(seeds)
    ]
    assert decisions.count(FAIL) >= 0.95 * seeds
    for seed in range(10):  # under error_min_requests the gate waits instead
        wave = synthetic_wave(seed, 1, error_rate=0.02, requests=(100, 199))
        assert error_gate(wave, GATES).decision == WAIT


def test_no_errors_pass_with_enough_requests() -> None:
    for seed in range(20):
        wave = synthetic_wave(seed, 2, error_rate=0.0, requests=(200, 2000))
        if sum(e.new_requests for e in wave) >= 400:
            assert error_gate(wave, GATES).decision == PASS


@pytest.mark.parametrize("size", [1, 3, 20])
def test_too_few_requests_are_inconclusive_even_when_slower(size: int) -> None:
    for seed in range(20):
        wave = synthetic_wave(seed, size, slowdown=2.0, requests=(20, 99))
        assert latency_gate(wave, GATES, min_requests=MIN_REQUESTS).decision == WAIT
