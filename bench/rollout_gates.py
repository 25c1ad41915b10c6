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

Columns: "same" is the share of same-model waves that all gates FAIL (false aborts);
"wait" the share left INCONCLUSIVE (almost all the error gate: at 0.2 % errors its 95 %
upper bound needs some 400-600 requests to get under 1 %); "10looks" FAILs at any of 10
evaluations while both windows grow, as the engine evaluates a baking wave repeatedly;
"1.2x" to "2x" the latency gate's FAILs on a slower model (1.2x is inside the tolerance:
there a FAIL is a false one too); "1% err" to "5% err" the error gate's FAILs (1 % sits
on the threshold). A one-device wave has 200-2000 requests, fewer than the ~2000 that
2 % errors need to be told from 1 %.

Budgets: false FAIL <= 1 % per wave size; 1.5x slower caught >= 95 %; 2 % errors caught
once the wave has >= 2000 requests.
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
    intervals: int = 6,
    looks: int = 1,
) -> list[list[DeviceEvidence]]:
    """The wave's evidence at each of ``looks`` evaluations. With one look each window is
    ``intervals`` telemetry intervals; with more, each look adds one interval per side."""
    total = intervals if looks == 1 else looks
    timeline: list[list[DeviceEvidence]] = [[] for _ in range(looks)]
    for i in range(size):
        log_median = rng.uniform(math.log(2), math.log(20))
        sigma = rng.uniform(0.15, 0.45)
        n_base, n_new = (
            int(math.exp(rng.uniform(math.log(min_n), math.log(max_n)))) for _ in range(2)
        )
        new: list[tuple[int, ...]] = []
        base: list[tuple[int, ...]] = []
        requests = errors = 0
        for k in range(total):
            step_new = n_new * (k + 1) // total - n_new * k // total
            step_base = n_base * (k + 1) // total - n_base * k // total
            new.append(window(rng, step_new, log_median + math.log(slowdown), sigma))
            base.append(window(rng, step_base, log_median, sigma))
            requests += step_new
            errors += int(rng.binomial(step_new, error_rate))
            look = k if looks > 1 else (0 if k == total - 1 else -1)
            if look < 0:
                continue
            timeline[look].append(
                DeviceEvidence(
                    device=f"d{i}",
                    profile="p",
                    outcome="committed",
                    new_intervals=tuple(new),
                    new_requests=requests,
                    new_errors=errors,
                    baseline_intervals=tuple(base),
                )
            )
    return timeline


def rates(seeds: int, size: int, scenario: str, value: float, intervals: int) -> tuple[float, ...]:
    """The shares of seeds that FAIL, that end INCONCLUSIVE and that PASS: all gates for
    'same' (at ``value`` looks, FAIL at any), the latency gate for 'slower', the error gate
    for 'errors'."""
    fails = waits = passes = 0
    for seed in range(seeds):
        rng = np.random.default_rng([seed, size, int(value * 1000)])
        if scenario == "same":
            decisions = [
                overall(evaluate_gates(look, GATES, counted=size, min_requests=MIN_REQUESTS))
                for look in wave(rng, size, intervals=intervals, looks=int(value))
            ]
        elif scenario == "slower":
            (evidence,) = wave(rng, size, slowdown=value, min_n=200, intervals=intervals)
            decisions = [latency_gate(evidence, GATES, min_requests=MIN_REQUESTS).decision]
        else:
            (evidence,) = wave(rng, size, error_rate=value, min_n=200, intervals=intervals)
            decisions = [error_gate(evidence, GATES).decision]
        fails += Decision.FAIL in decisions
        waits += decisions[-1] == Decision.INCONCLUSIVE
        passes += decisions[-1] == Decision.PASS
    return fails / seeds, waits / seeds, passes / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5000)
    parser.add_argument("--sizes", default="1,3,6,20", help="wave sizes, comma-separated")
    parser.add_argument(
        "--intervals", type=int, default=6, help="telemetry intervals per window (one look)"
    )
    args = parser.parse_args()
    columns = [  # (heading, scenario, value, which rate: 0 FAIL, 1 INCONCLUSIVE, 2 PASS)
        ("same", "same", 1, 0),
        ("wait", "same", 1, 1),
        ("10looks", "same", 10, 0),
        ("1.2x", "slower", 1.2, 0),
        ("1.5x", "slower", 1.5, 0),
        ("1.5x ok", "slower", 1.5, 2),
        ("2x", "slower", 2.0, 0),
        ("1% err", "errors", 0.01, 0),
        ("2% err", "errors", 0.02, 0),
        ("5% err", "errors", 0.05, 0),
    ]
    print(
        f"over {args.seeds} seeds per cell: 'same' FAILs (false), 'wait' the same waves left"
        " INCONCLUSIVE, '10looks' FAILs at any of 10 evaluations as the windows grow;"
        " the other columns are FAILs (caught), but '1.5x ok' the 1.5x slower waves PASSed;"
        f" {args.intervals} telemetry intervals per window"
    )
    print(f"{'devices':<9}" + "".join(f"{name:>9}" for name, *_ in columns))
    for size in (int(s) for s in args.sizes.split(",")):
        cache: dict[tuple[str, float], tuple[float, ...]] = {}
        cells = []
        for _, scenario, value, which in columns:
            if (scenario, value) not in cache:
                cache[scenario, value] = rates(args.seeds, size, scenario, value, args.intervals)
            cells.append(cache[scenario, value][which])
        print(f"{size:<9}" + "".join(f"{c:>9.2%}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
