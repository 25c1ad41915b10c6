"""Agent footprint: idle RSS and start-to-online time with a small model loaded.

Budgets (issue 2): idle RSS <= 80 MB, start to online <= 2 s.
Run: .venv/bin/python bench/agent_footprint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgefleet.harness import LocalFleet, rss_bytes, write_digits_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle time before reading RSS")
    args = parser.parse_args()

    fleet = LocalFleet()
    try:
        model = write_digits_model(fleet.workdir / "digits.onnx", seed=1)
        model_bytes = model.stat().st_size
        agent = fleet.agent("bench-1", telemetry_interval_s=10.0)
        fleet.start(agent)
        manifest = fleet.operator.deploy("bench-1", model)
        fleet.observer.wait_event(manifest.deployment_id, "committed", timeout=60)
        agent.stop()

        online_s, serving_s, rss = [], [], []
        for _ in range(args.runs):
            mark = fleet.observer.mark()
            t0 = time.monotonic()
            agent.start()
            fleet.observer.wait_for(
                lambda m: (
                    m.kind == "status"
                    and m.device_id == "bench-1"
                    and m.online
                    and m.active is not None
                ),
                timeout=30,
                since=mark,
            )
            online_s.append(time.monotonic() - t0)
            agent.wait_serving()
            serving_s.append(time.monotonic() - t0)
            time.sleep(args.idle_s)
            assert agent.proc is not None
            rss.append(rss_bytes(agent.proc.pid))
            agent.stop()
    finally:
        fleet.close()

    mb = [r / 1e6 for r in rss]
    print(f"agent footprint, {args.runs} runs, model: digits MLP ({model_bytes} bytes)")
    print(f"{'metric':<28}{'median':>10}{'min':>10}{'max':>10}{'budget':>10}")
    print(
        f"{'start -> online (s)':<28}{statistics.median(online_s):>10.3f}"
        f"{min(online_s):>10.3f}{max(online_s):>10.3f}{2.0:>10.1f}"
    )
    print(
        f"{'start -> serving HTTP (s)':<28}{statistics.median(serving_s):>10.3f}"
        f"{min(serving_s):>10.3f}{max(serving_s):>10.3f}{'':>10}"
    )
    print(
        f"{'idle RSS (MB)':<28}{statistics.median(mb):>10.1f}{min(mb):>10.1f}"
        f"{max(mb):>10.1f}{80.0:>10.1f}"
    )


if __name__ == "__main__":
    main()
