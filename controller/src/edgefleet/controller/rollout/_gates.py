"""The gates that judge a rollout wave from its devices' evidence: install health, latency
against each device's own previous model, absolute latency and error rate. Pure functions;
each result carries its figure beside its threshold. No data never passes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from edgefleet.shared import N_BUCKETS, LatencyHistogram, merge_counts

from ._plan import GATE_NAMES, Gates
from ._stats import stratified_rank_test, wilson_interval


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

# A p95 read from fewer requests is the maximum: no gate reads latency from fewer.
MIN_P95_REQUESTS = 20
# The latency gate's unit of evidence is a block of consecutive telemetry intervals holding
# at least this many requests (one interval when traffic allows): requests within an
# interval share its bursts and stalls, so they are not independent samples.
MIN_BLOCK_REQUESTS = 20

Counts = tuple[int, ...]


@dataclass(frozen=True)
class DeviceEvidence:
    device: str
    profile: str
    outcome: str  # one of OUTCOMES
    # latency histograms on the new version, one per telemetry interval, after the settle
    new_intervals: tuple[Counts, ...] = ()
    new_requests: int = 0  # requests and errors on the new version since the swap
    new_errors: int = 0
    # the previous model's intervals over as long just before the device started the
    # deployment; None: it had no previous model
    baseline_intervals: tuple[Counts, ...] | None = None
    limit_ms: float | None = None  # absolute p95 limit for this device (resolved by the engine)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        for counts in (*self.new_intervals, *(self.baseline_intervals or ())):
            if len(counts) != N_BUCKETS:
                raise ValueError(f"a histogram has {N_BUCKETS} buckets, got {len(counts)}")

    @cached_property
    def new_counts(self) -> Counts | None:
        """The new version's histogram over the whole window; None before any interval."""
        return _merged(self.new_intervals)

    @cached_property
    def baseline_counts(self) -> Counts | None:
        return None if self.baseline_intervals is None else _merged(self.baseline_intervals)


@dataclass(frozen=True)
class GateResult:
    gate: str  # one of GATE_NAMES
    decision: Decision
    statistic: float | None
    threshold: float | None
    inputs: dict[str, float | int | str | None]  # JSON-able: counts, devices, p-values
    detail: str  # one sentence with the figure beside its threshold


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
    size of the slowdown) and a rank test saying the slowdown is not noise, at
    ``latency_alpha``. A median above 1 + tolerance that the test cannot yet tell from noise
    is INCONCLUSIVE (bake on, then pause): passing it would let a large slowdown through on
    thin evidence.

    The test's unit is a block of telemetry intervals (``MIN_BLOCK_REQUESTS``), not a
    request: requests of one interval share its stalls (a burst of other work on the host,
    a GC pause), so counting them one by one makes any stall look significant. Each block
    gives the bucket of its p95; within a device, new blocks are ranked against baseline
    blocks (with no change they are exchangeable, whatever the 1.25x buckets do, as both
    sides are bucketed alike), and devices are combined as strata of one rank test
    (``stratified_rank_test``). One device with five blocks on each side that are all
    slower reaches p = 0.006; a wave of many devices needs a consistent shift, which the
    median ratio then sizes.

    Devices with fewer than ``min_requests`` (at least MIN_P95_REQUESTS) requests on either
    side are not judged yet. If no committed device had a previous model, the gate does not
    apply and PASSes: the absolute gate judges such devices alone."""
    committed = [e for e in evidence if e.outcome == DeviceOutcome.COMMITTED]
    with_baseline = [e for e in committed if e.baseline_intervals is not None]
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
    strata = [
        (
            [_p95_bucket(b) for b in blocks(e.new_intervals)],
            [_p95_bucket(b) for b in blocks(e.baseline_intervals or ())],
        )
        for e in judged
    ]
    test = stratified_rank_test(strata)
    inputs.update(
        median_ratio=median,
        test="rank",
        new_blocks=sum(len(new) for new, _ in strata),
        baseline_blocks=sum(len(base) for _, base in strata),
        pairs=test.pairs,
        slower_share=test.share,
        z=test.z,
        p_value=test.p_value,
    )
    slow, significant = median > limit, test.p_value < gates.latency_alpha
    if not slow:
        decision = Decision.PASS
    else:
        decision = Decision.FAIL if significant else Decision.INCONCLUSIVE
    detail = (
        f"median p95 ratio {median:.2f} {'>' if slow else '<='} {limit:.2f}"
        f" across {_n(len(judged), 'device')}; new intervals slower in {test.share:.0%}"
        f" of {_n(test.pairs, 'pair')} with the baseline's, rank test {_fmt_p(test.p_value)}"
        f" {'<' if significant else '>='} {gates.latency_alpha:g}"
    )
    return GateResult("latency", decision, median, limit, inputs, detail)


def blocks(intervals: Sequence[Counts]) -> list[Counts]:
    """Consecutive intervals merged until each block holds ``MIN_BLOCK_REQUESTS`` requests;
    a short remainder joins the last block (or stands alone if it is the only one)."""
    out: list[list[int]] = []
    current = [0] * N_BUCKETS
    for counts in intervals:
        current = [a + b for a, b in zip(current, counts, strict=True)]
        if sum(current) >= MIN_BLOCK_REQUESTS:
            out.append(current)
            current = [0] * N_BUCKETS
    if sum(current):
        if out:
            out[-1] = [a + b for a, b in zip(out[-1], current, strict=True)]
        else:
            out.append(current)
    return [tuple(b) for b in out]


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


def _p95_bucket(counts: Counts) -> int:
    """The index of the bucket holding the p95 rank (a block always has requests)."""
    rank, seen = math.ceil(0.95 * sum(counts)), 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return index
    return len(counts) - 1  # pragma: no cover - the loop always reaches the rank


def _merged(intervals: Sequence[Counts]) -> Counts | None:
    if not intervals:
        return None
    return tuple(sum(column) for column in zip(*intervals, strict=True))


def _fmt_p(p: float) -> str:
    return f"p={p:.2g}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
