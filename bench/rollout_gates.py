"""Rollout gates on synthetic waves: how often "same model again" fails, how often a slower
or erroring model is caught, per wave size.

Run: .venv/bin/python bench/rollout_gates.py [--seeds 5000] [--sizes 1,3,6,20]

Each device gets its own lognormal latency (median 2-20 ms, log-uniform; sigma 0.15-0.45)
and a request count per window (log-uniform: 100-2000 for "same model", 200-2000 for the
detection columns); the baseline window and the new one are drawn independently from it,
the new one scaled by the slowdown. A window's histogram is a multinomial draw over the
64+1 buckets with the lognormal's bucket probabilities: the same distribution as
recording that many latencies one by one, and fast enough for thousands of seeds.
Errors are binomial at 0.2 % unless the column says otherwise. Default gates (tolerance
0.3, alpha 0.01, error threshold 1 %, Wilson 95 %), bake min_requests 100.

Budgets: false FAIL <= 1 % per wave size; 1.5x slower caught >= 95 %; 2 % errors caught
whenever the wave has >= 2000 requests.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from edgefleet.controller.rollout._gates import (
    Decision,
    DeviceEvidence,
    error_gate,
    evaluate_gates,
    latency_gate,
    overall,
)
from edgefleet.controller.rollout._plan import Bake, Gates
from edgefleet.shared import BUCKET_BOUNDS_MS

LOG_BOUNDS = np.log(np.array(BUCKET_BOUNDS_MS))
ERF = np.vectorize(math.erf)
BASE_ERROR_RATE = 0.002
MIN_REQUESTS = Bake().min_requests
GATES = Gates()


def window(rng: np.random.Generator, n: int, log_median: float, sigma: float) -> tuple[int, ...]:
    """Bucket counts of n lognormal latencies."""
    cdf = 0.5 * (1 + ERF((LOG_BOUNDS - log_median) / (sigma * math.sqrt(2))))
    probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    return tuple(int(c) for c in rng.multinomial(n, np.clip(probs, 0, None)))


def wave(
    rng: np.random.Generator,
    size: int,
    *,
    slowdown: float = 1.0,
    error_rate: float = BASE_ERROR_RATE,
    min_n: int = 100,
    max_n: int = 2000,
) -> list[DeviceEvidence]:
    devices = []
    for i in range(size):
        log_median = rng.uniform(math.log(2), math.log(20))
        sigma = rng.uniform(0.15, 0.45)
        n_base, n_new = (
            int(math.exp(rng.uniform(math.log(min_n), math.log(max_n)))) for _ in range(2)
        )
        devices.append(
            DeviceEvidence(
                device=f"d{i}",
                profile="p",
                outcome="committed",
                new_counts=window(rng, n_new, log_median + math.log(slowdown), sigma),
                new_requests=n_new,
                new_errors=int(rng.binomial(n_new, error_rate)),
                baseline_counts=window(rng, n_base, log_median, sigma),
            )
        )
    return devices


def rate(seeds: int, size: int, scenario: str, value: float) -> float:
    """The share of seeds where the scenario's gate (all gates for 'same') FAILs."""
    fails = 0
    for seed in range(seeds):
        rng = np.random.default_rng([seed, size, int(value * 1000)])
        if scenario == "same":
            evidence = wave(rng, size)
            results = evaluate_gates(evidence, GATES, counted=size, min_requests=MIN_REQUESTS)
            fails += overall(results) == Decision.FAIL
        elif scenario == "slower":
            evidence = wave(rng, size, slowdown=value, min_n=200)
            result = latency_gate(evidence, GATES, min_requests=MIN_REQUESTS)
            fails += result.decision == Decision.FAIL
        else:
            evidence = wave(rng, size, error_rate=value, min_n=200)
            fails += error_gate(evidence, GATES).decision == Decision.FAIL
    return fails / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5000)
    parser.add_argument("--sizes", default="1,3,6,20", help="wave sizes, comma-separated")
    args = parser.parse_args()
    columns = [
        ("same", "same", 1.0),
        ("1.2x", "slower", 1.2),
        ("1.5x", "slower", 1.5),
        ("2x", "slower", 2.0),
        ("1% err", "errors", 0.01),
        ("2% err", "errors", 0.02),
        ("5% err", "errors", 0.05),
    ]
    print(f"FAIL rate over {args.seeds} seeds per cell (same model: false FAIL, else caught)")
    print(f"{'devices':<9}" + "".join(f"{name:>9}" for name, _, _ in columns))
    for size in (int(s) for s in args.sizes.split(",")):
        cells = [rate(args.seeds, size, scenario, value) for _, scenario, value in columns]
        print(f"{size:<9}" + "".join(f"{c:>9.2%}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
