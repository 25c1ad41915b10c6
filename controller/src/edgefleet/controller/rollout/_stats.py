"""The statistics the gates use, in a few documented lines of stdlib math (scipy is not a
controller dependency): the Wilson interval for an error rate and a stratified rank test
for "the new version's intervals are slower than the same device's baseline intervals"."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


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


@dataclass(frozen=True)
class RankTest:
    """A one-sided stratified Mann-Whitney test: in how many (new, baseline) pairs of the
    same stratum the new value is larger (ties count half), against half of the pairs."""

    u: float  # pairs where new > baseline, plus half the ties, summed over the strata
    pairs: int
    z: float
    p_value: float

    @property
    def share(self) -> float:
        """The share of pairs where the new value is the larger: 0.5 under no change."""
        return self.u / self.pairs if self.pairs else 0.5


def stratified_rank_test(strata: Sequence[tuple[Sequence[float], Sequence[float]]]) -> RankTest:
    """Whether the first sample of each stratum tends to exceed its second.

    Within a stratum of n new and m baseline values, U counts the pairs with new > baseline
    (ties half). With no change the values are exchangeable, so U has mean n·m/2 and variance
    n·m/12·((N+1) - Σ(t³-t)/(N(N-1))), N = n+m, t the sizes of groups of tied values (the
    usual tie correction: bucketed values tie often). Strata are independent, so their U,
    means and variances add (van Elteren's test with equal weights); the sum is judged by
    the normal approximation with a continuity correction of 1/2. A stratum needs a value
    on both sides to count. No pairs, or no variance (every value tied): p = 1."""
    u_sum = mean = variance = 0.0
    pairs = 0
    for new, base in strata:
        n, m = len(new), len(base)
        if n == 0 or m == 0:
            continue
        u_sum += sum((x > y) + 0.5 * (x == y) for x in new for y in base)
        pairs += n * m
        mean += n * m / 2
        total = n + m
        ties = sum(t**3 - t for t in Counter([*new, *base]).values())
        correction = ties / (total * (total - 1)) if total > 1 else 0.0
        variance += n * m / 12 * ((total + 1) - correction)
    if pairs == 0 or variance <= 0:
        return RankTest(u_sum, pairs, 0.0, 1.0)
    z = (u_sum - mean - 0.5) / math.sqrt(variance)
    return RankTest(u_sum, pairs, z, 1 - statistics.NormalDist().cdf(z))
