"""The gates that judge a rollout wave from its devices' evidence: install health, latency
against each device's own previous model, absolute latency and error rate. Pure functions;
each result carries its figure beside its threshold. No data never passes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.shared import N_BUCKETS, LatencyHistogram, merge_counts

from ._plan import GATE_NAMES, Gates


class Decision(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class DeviceOutcome(StrEnum):
    """Where a wave device stands, as the engine reports it in ``DeviceEvidence.outcome``."""

    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    LOST = "lost"  # silent past the in-progress timeout after its command
    FALLBACK = "fallback"  # reports serving another model than the one it should
    INSTALLING = "installing"


OUTCOMES: tuple[str, ...] = tuple(DeviceOutcome)
FAILED_LIKE = (
    DeviceOutcome.FAILED,
    DeviceOutcome.ROLLED_BACK,
    DeviceOutcome.LOST,
    DeviceOutcome.FALLBACK,
)

# From this many judged devices on, the latency gate compares devices with a sign test
# (robust to one noisy device); below, it pools their requests in a binomial test. The sign
# test is also used only once it can reach alpha at all: 6 of 6 gives p = 1/64 = 0.016, so
# with the default alpha 0.01 it takes over from 7 devices.
SIGN_TEST_MIN_DEVICES = 6
# A p95 read from fewer requests is the maximum: no gate reads latency from fewer.
MIN_P95_REQUESTS = 20
# The share of requests above a p95, by definition: the binomial test's null share.
P95_SHARE = 0.05


@dataclass(frozen=True)
class DeviceEvidence:
    device: str
    profile: str
    outcome: str  # one of OUTCOMES
    new_counts: tuple[int, ...] | None = None  # histogram on the new version since its commit
    new_requests: int = 0
    new_errors: int = 0
    baseline_counts: tuple[int, ...] | None = None  # previous model, equal window; None: none
    limit_ms: float | None = None  # absolute p95 limit for this device (resolved by the engine)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        for counts in (self.new_counts, self.baseline_counts):
            if counts is not None and len(counts) != N_BUCKETS:
                raise ValueError(f"a histogram has {N_BUCKETS} buckets, got {len(counts)}")


@dataclass(frozen=True)
class GateResult:
    gate: str  # one of GATE_NAMES
    decision: Decision
    statistic: float | None
    threshold: float | None
    inputs: dict[str, float | int | str | None]  # JSON-able: counts, devices, p-values
    detail: str  # one sentence with the figure beside its threshold


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the exact sum of the pmf, each term from lgamma.

    The smaller side is summed (the lower tail when k is below the mean), stopping once
    the terms past the mode no longer change the sum."""
    if k <= 0 or p >= 1:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def pmf(i: int) -> float:
        return math.exp(
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * log_p + (n - i) * log_q
        )  # fmt: skip

    upper = k > n * p
    total = 0.0
    for i in range(k, n + 1) if upper else range(k - 1, -1, -1):
        term = pmf(i)
        total += term
        if term <= total * 1e-17:
            break  # the terms only shrink from here: the sums start on the far side of the mode
    return min(1.0, total) if upper else max(0.0, 1.0 - total)


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The two-sided Wilson score interval for k successes in n trials:
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), p = k/n. (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    scale = 1 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, center - half), min(1.0, center + half)


def install_gate(evidence: Sequence[DeviceEvidence], gates: Gates, *, counted: int) -> GateResult:
    """FAIL once ``min_finished`` devices finished and the quorum can no longer be reached;
    PASS when all ``counted`` devices finished and enough committed; else INCONCLUSIVE.
    Devices of the wave with no evidence yet count as installing."""
    tally = {o: sum(e.outcome == o for e in evidence) for o in DeviceOutcome}
    failed = sum(tally[o] for o in FAILED_LIKE)
    finished = failed + tally[DeviceOutcome.COMMITTED]
    counted = max(counted, finished)
    needed = math.ceil(round(gates.quorum * counted, 9))  # 0.07 * 100 is 7.000000000000001
    allowed = counted - needed
    inputs: dict[str, float | int | str | None] = {
        "counted": counted,
        "finished": finished,
        "committed": tally[DeviceOutcome.COMMITTED],
        "failed_like": failed,
        "allowed_failures": allowed,
        **{o.value: tally[o] for o in FAILED_LIKE},
    }
    breakdown = ", ".join(f"{tally[o]} {o.value}" for o in FAILED_LIKE if tally[o])
    figure = f"{failed} of {_n(counted, 'device')} failed" + (
        f" ({breakdown})" if breakdown else ""
    )
    against = f"{allowed} allowed by quorum {gates.quorum:.2f}"
    if counted == 0:
        return GateResult("install", Decision.INCONCLUSIVE, None, None, inputs, "no device counted")
    if failed > allowed and finished >= gates.min_finished:
        decision, detail = Decision.FAIL, f"{figure} > {against}"
    elif finished == counted:
        decision, detail = (
            Decision.PASS,
            f"{figure} <= {against} ({tally[DeviceOutcome.COMMITTED]} committed)",
        )
    else:
        detail = f"{finished} of {_n(counted, 'device')} finished; {figure}, {against}"
        decision = Decision.INCONCLUSIVE
    return GateResult("install", decision, float(failed), float(allowed), inputs, detail)


def latency_gate(
    evidence: Sequence[DeviceEvidence], gates: Gates, *, min_requests: int
) -> GateResult:
    """Each committed device's p95 on the new version against its own p95 on its previous
    model. FAIL needs both: the median of the devices' p95 ratios above 1 + tolerance (the
    size of the slowdown) and a test saying the slowdown is not noise, at ``latency_alpha``.
    A median above 1 + tolerance that the test cannot yet tell from noise is INCONCLUSIVE
    (bake on, then pause): passing it would let a large slowdown through on thin evidence.

    - sign test, from ``SIGN_TEST_MIN_DEVICES``: how many devices got slower at all (ratio
      above 1) against a fair coin. Above 1 rather than above 1 + tolerance because under
      "same model again" the two windows are exchangeable, so P(ratio > 1) = 1/2 exactly
      whatever the 1.25x buckets do to each p95 (both sides are bucketed alike), while
      P(ratio > 1 + tolerance) depends on the noise and the buckets and is not known;
    - pooled binomial, for smaller waves: the share of new requests above the upper bound
      of the bucket holding each device's baseline p95, against 5 %. That bound is at or
      above the baseline p95 (at most one bucket, 1.25x, above it), so with no change at
      most 5 % of requests land above it. The baseline's own share above the bound is no
      better null: the bound was picked from the same sample, so that share is always
      <= 5 % and biased low; flooring it at 5 % leaves 5 %.

    Devices with fewer than ``min_requests`` (at least MIN_P95_REQUESTS) requests on either
    side are not judged yet. If no committed device had a previous model, the gate does not
    apply and PASSes: the absolute gate judges such devices alone."""
    committed = [e for e in evidence if e.outcome == DeviceOutcome.COMMITTED]
    with_baseline = [e for e in committed if e.baseline_counts is not None]
    need = max(min_requests, MIN_P95_REQUESTS)
    judged = [
        e
        for e in with_baseline
        if _total(e.new_counts) >= need and _total(e.baseline_counts) >= need
    ]
    limit = 1 + gates.latency_tolerance
    inputs: dict[str, float | int | str | None] = {
        "committed": len(committed),
        "with_baseline": len(with_baseline),
        "judged": len(judged),
        "min_requests": need,
        "alpha": gates.latency_alpha,
    }
    if not committed:
        return GateResult(
            "latency", Decision.INCONCLUSIVE, None, limit, inputs, "no device committed"
        )
    if not with_baseline:
        detail = "no committed device had a previous model: the absolute gate judges alone"
        return GateResult("latency", Decision.PASS, None, limit, inputs, detail)
    if not judged:
        detail = (
            f"none of {_n(len(with_baseline), 'device')} has {need} requests on both models yet"
        )
        return GateResult("latency", Decision.INCONCLUSIVE, None, limit, inputs, detail)
    ratios = [_p95(e.new_counts) / _p95(e.baseline_counts) for e in judged]
    median = statistics.median(ratios)
    inputs["median_ratio"] = median
    n = len(judged)
    if n >= SIGN_TEST_MIN_DEVICES and 0.5**n <= gates.latency_alpha:
        slower, faster = sum(r > 1 for r in ratios), sum(r < 1 for r in ratios)
        p = binomial_upper_tail(slower, slower + faster, 0.5)
        inputs.update(test="sign", slower=slower, faster=faster, p_value=p)
        test = f"{slower} of {slower + faster} devices slower, sign test {_fmt_p(p)}"
    else:
        k = sum(_above_baseline_p95(e) for e in judged)
        total = sum(_total(e.new_counts) for e in judged)
        p = binomial_upper_tail(k, total, P95_SHARE)
        inputs.update(test="binomial", above=k, requests=total, p_value=p)
        test = (
            f"{k} of {total} new requests ({k / total:.1%}) above the baseline p95 buckets"
            f" against {P95_SHARE:.0%}, binomial {_fmt_p(p)}"
        )
    slow, significant = median > limit, p < gates.latency_alpha
    if not slow:
        decision = Decision.PASS
    else:
        decision = Decision.FAIL if significant else Decision.INCONCLUSIVE
    detail = (
        f"median p95 ratio {median:.2f} {'>' if slow else '<='} {limit:.2f}"
        f" across {_n(n, 'device')}; {test} {'<' if significant else '>='} {gates.latency_alpha:g}"
    )
    return GateResult("latency", decision, median, limit, inputs, detail)


def absolute_gate(
    evidence: Sequence[DeviceEvidence], gates: Gates, *, min_requests: int
) -> GateResult:
    """The wave's p95 on the new version against the latency limit, merged per limit
    (``latency_limit_ms`` for all, else each device's own). FAIL if any group with at least
    ``min_requests`` requests is over; INCONCLUSIVE while a group has fewer; PASS when every
    group is within, or when no device has a limit."""
    committed = [e for e in evidence if e.outcome == DeviceOutcome.COMMITTED]
    groups: dict[float, list[DeviceEvidence]] = {}
    for e in committed:
        limit = gates.latency_limit_ms if gates.latency_limit_ms is not None else e.limit_ms
        if limit is not None:
            groups.setdefault(limit, []).append(e)
    need = max(min_requests, MIN_P95_REQUESTS)
    inputs: dict[str, float | int | str | None] = {
        "committed": len(committed),
        "groups": len(groups),
        "min_requests": need,
    }
    if not committed:
        return GateResult(
            "absolute", Decision.INCONCLUSIVE, None, None, inputs, "no device committed"
        )
    if not groups:
        return GateResult("absolute", Decision.PASS, None, None, inputs, "no limit set")
    rows = []  # (p95 / limit, p95, limit, requests, devices)
    for limit, members in sorted(groups.items()):
        merged = merge_counts(e.new_counts or (0,) * N_BUCKETS for e in members)
        p95 = merged.percentile(95)
        rows.append((-1.0 if p95 is None else p95 / limit, p95, limit, merged.total, len(members)))
        inputs[f"p95_ms@{limit:g}"] = p95
        inputs[f"requests@{limit:g}"] = merged.total
    over = [r for r in rows if r[3] >= need and r[0] > 1]
    short = [r for r in rows if r[3] < need]
    worst = max(over or short or rows, key=lambda r: r[0])
    _, p95, limit, requests, devices = worst
    figure = "no request" if p95 is None else f"p95 {p95:.2f} ms"
    sign = ">" if over else "<="
    detail = (
        f"{figure} {sign} {limit:g} ms limit over {requests} requests on {_n(devices, 'device')}"
    )
    if over:
        decision = Decision.FAIL
    elif short:
        decision = Decision.INCONCLUSIVE
        detail = f"{figure} against the {limit:g} ms limit from only {requests} of {need} requests"
    else:
        decision = Decision.PASS
    return GateResult("absolute", decision, p95, limit, inputs, detail)


def error_gate(evidence: Sequence[DeviceEvidence], gates: Gates) -> GateResult:
    """The committed devices' pooled error rate: PASS when the Wilson interval's upper bound
    is at or below the threshold, FAIL when its lower bound is above, else INCONCLUSIVE;
    INCONCLUSIVE below ``error_min_requests`` requests."""
    committed = [e for e in evidence if e.outcome == DeviceOutcome.COMMITTED]
    n = sum(e.new_requests for e in committed)
    k = sum(e.new_errors for e in committed)
    low, high = wilson_interval(k, n, gates.confidence)
    inputs: dict[str, float | int | str | None] = {
        "requests": n,
        "errors": k,
        "lower": low,
        "upper": high,
        "confidence": gates.confidence,
        "min_requests": gates.error_min_requests,
    }
    threshold = gates.error_threshold
    rate = k / n if n else None
    figure = f"{k} errors in {n} requests"
    bound = f"{gates.confidence:.0%} interval {low:.2%}-{high:.2%}"
    if n < gates.error_min_requests:
        decision = Decision.INCONCLUSIVE
        detail = f"{figure}: {gates.error_min_requests} requests needed before judging"
    elif high <= threshold:
        decision, detail = Decision.PASS, f"{figure}, {bound} <= {threshold:.2%}"
    elif low > threshold:
        decision, detail = Decision.FAIL, f"{figure}, {bound} > {threshold:.2%}"
    else:
        decision, detail = Decision.INCONCLUSIVE, f"{figure}, {bound} straddles {threshold:.2%}"
    return GateResult("errors", decision, rate, threshold, inputs, detail)


def evaluate_gates(
    evidence: Sequence[DeviceEvidence], gates: Gates, *, counted: int, min_requests: int
) -> list[GateResult]:
    """The enabled gates' results, in GATE_NAMES order."""
    run = {
        "install": lambda: install_gate(evidence, gates, counted=counted),
        "latency": lambda: latency_gate(evidence, gates, min_requests=min_requests),
        "absolute": lambda: absolute_gate(evidence, gates, min_requests=min_requests),
        "errors": lambda: error_gate(evidence, gates),
    }
    return [run[name]() for name in GATE_NAMES if name in gates.enabled]


def overall(results: Sequence[GateResult]) -> Decision:
    """Any FAIL fails; else any INCONCLUSIVE waits; else PASS (also when no gate ran)."""
    decisions = {r.decision for r in results}
    for decision in (Decision.FAIL, Decision.INCONCLUSIVE):
        if decision in decisions:
            return decision
    return Decision.PASS


def _total(counts: Sequence[int] | None) -> int:
    return sum(counts) if counts is not None else 0


def _p95(counts: Sequence[int] | None) -> float:
    value = LatencyHistogram(counts).percentile(95) if counts is not None else None
    assert value is not None, "only histograms with requests are read"
    return value


def _above_baseline_p95(e: DeviceEvidence) -> int:
    """New requests above the upper bound of the bucket holding the baseline's p95."""
    assert e.new_counts is not None and e.baseline_counts is not None
    rank, seen = math.ceil(0.95 * sum(e.baseline_counts)), 0
    for index, count in enumerate(e.baseline_counts):
        seen += count
        if seen >= rank:
            return sum(e.new_counts[index + 1 :])
    return 0  # pragma: no cover - the loop always reaches the rank


def _fmt_p(p: float) -> str:
    return f"p={p:.2g}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
