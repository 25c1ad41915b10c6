"""Hot-swap under load: requests, failures and latency before and during a model swap.

Budget (issue 2): 0 failed requests across a swap at >= 200 requests/s.
Run: .venv/bin/python bench/agent_swap.py [--swaps 5] [--clients 4] [--rate 300]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

from edgefleet.harness import LocalFleet, digits, write_digits_model


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=300.0, help="target requests/s, all clients")
    parser.add_argument("--window-s", type=float, default=2.0, help="steady window before a swap")
    args = parser.parse_args()

    fleet = LocalFleet()
    x, _ = digits()
    rows = [x[i : i + 1].tolist() for i in range(64)]
    log: list[tuple[float, float, bool]] = []  # (start time, latency ms, ok)
    lock = threading.Lock()
    stop = threading.Event()
    try:
        models = [write_digits_model(fleet.workdir / f"v{i}.onnx", seed=i) for i in (1, 2)]
        agent = fleet.agent("swap-1", telemetry_interval_s=5.0)
        fleet.start(agent)
        first = fleet.operator.deploy("swap-1", models[0], version="1")
        fleet.observer.wait_event(first.deployment_id, "committed", timeout=60)

        def client(n: int) -> None:
            interval = args.clients / args.rate
            next_at = time.monotonic()
            with httpx.Client(timeout=10) as http:
                for i in range(10_000_000):
                    if stop.is_set():
                        return
                    t0 = time.monotonic()
                    try:
                        r = http.post(
                            f"{agent.url}/v1/infer", json={"inputs": {"input": rows[(i + n) % 64]}}
                        )
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        log.append((t0, (time.monotonic() - t0) * 1000, ok))
                    next_at += interval
                    stop.wait(max(0.0, next_at - time.monotonic()))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        windows = []
        for s in range(args.swaps):
            time.sleep(args.window_s)
            before_from = time.monotonic() - args.window_s
            t_swap = time.monotonic()
            m = fleet.operator.deploy("swap-1", models[(s + 1) % 2], version=f"{s + 2}")
            fleet.observer.wait_event(m.deployment_id, "committed", timeout=60)
            t_done = time.monotonic()
            time.sleep(0.5)
            windows.append((before_from, t_swap, t_done + 0.5))
        stop.set()
        for t in threads:
            t.join()
    finally:
        fleet.close()

    print(
        f"hot-swap under load: {args.swaps} swaps, {args.clients} clients, "
        f"target {args.rate:.0f} req/s"
    )
    print(
        f"{'swap':<6}{'req before':>11}{'rate/s':>9}{'p99 before ms':>15}"
        f"{'req during':>12}{'rate/s':>9}{'p99 during ms':>15}{'failed':>8}"
    )
    total_failed = total_during = 0
    p99b, p99d = [], []
    for i, (b0, t_swap, t_end) in enumerate(windows, 1):
        before = [lat for t, lat, _ in log if b0 <= t < t_swap]
        during = [(lat, ok) for t, lat, ok in log if t_swap <= t < t_end]
        failed = sum(1 for t, _, ok in log if b0 <= t < t_end and not ok)
        total_failed += failed
        total_during += len(during)
        p99b.append(pct(before, 99))
        p99d.append(pct([lat for lat, _ in during], 99))
        print(
            f"{i:<6}{len(before):>11}{len(before) / (t_swap - b0):>9.0f}{p99b[-1]:>15.2f}"
            f"{len(during):>12}{len(during) / (t_end - t_swap):>9.0f}{p99d[-1]:>15.2f}"
            f"{failed:>8}"
        )
    all_failed = sum(1 for _, _, ok in log if not ok)
    ratio = statistics.median(p99d) / statistics.median(p99b)
    print(
        f"total requests {len(log)}, failed {all_failed} (in swap windows: {total_failed}); "
        f"median p99 before {statistics.median(p99b):.2f} ms, during "
        f"{statistics.median(p99d):.2f} ms (ratio {ratio:.2f})"
    )


if __name__ == "__main__":
    main()
