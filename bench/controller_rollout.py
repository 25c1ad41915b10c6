"""The controller under load, with the real `edgefleet serve`, Mosquitto and agent processes.

1. Rollout: the seconds from `edgefleet deploy` (no --wait) until every agent's retained
   status says it serves the new version, for 1, 10 and 50 agents (one subprocess each,
   started and online before the clock starts); the median of a few runs.
2. Telemetry ingest: N TelemetryMessage payloads published by one paho client (QoS 1) as
   fast as the daemon keeps up (at most BACKLOG messages ahead of the registry, since
   Mosquitto drops what exceeds its queue), for registered devices while `serve` runs,
   timed until the registry's telemetry table (SQLite) holds all N; the median of runs.

Budgets: 50 agents serving <= 15 s after deploy; ingest >= 2,000 messages/s.
Run: .venv/bin/python bench/controller_rollout.py [--sizes 1,10,50] [--runs 3] [--messages N]
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import shared
from edgefleet.harness import ControllerFleet, Observer, wait_until, write_digits_model
from edgefleet.shared import ModelRef
from edgefleet.shared._histogram import N_BUCKETS
from edgefleet.shared._messages import ModelStats, SystemStats, TelemetryMessage

ROLLOUT_BUDGET_S = 15.0
INGEST_BUDGET = 2000.0
WINDOW = 500  # messages published between backlog checks
BACKLOG = 4000  # published but not yet in the registry; the bench broker queues 10,000


def serving(observer: Observer, devices: list[str], version: str) -> bool:
    for d in devices:
        s = observer.status(d)
        if s is None or not s.online or s.active is None or s.active.model.version != version:
            return False
    return True


def rollout(size: int, runs: int) -> list[float]:
    fleet = ControllerFleet()
    observer = None
    try:
        fleet.init()
        for v in range(1, runs + 1):
            path = write_digits_model(fleet.tmp / f"digits-{v}.onnx", seed=v)
            fleet.ok("model", "add", str(path), "--name", "digits", "--version", f"{v}.0.0")
        devices = [f"dev-{i:03d}" for i in range(size)]
        for d in devices:
            fleet.add_device(d, "rpi4", "bench=rollout")
        fleet.start_daemon()
        observer = Observer(fleet.broker.url)
        for d in devices:
            fleet.start_agent(d, telemetry_interval_s=5.0, wait=False)
        wait_until(
            lambda: all((s := observer.status(d)) is not None and s.online for d in devices),
            120,
            f"{size} agents not online",
        )
        times = []
        for v in range(1, runs + 1):
            version = f"{v}.0.0"
            t0 = time.monotonic()
            fleet.ok("deploy", f"digits:{version}", "--label", "bench=rollout")
            wait_until(
                lambda version=version: serving(observer, devices, version),
                120,
                f"{size} agents not serving {version}",
                every=0.02,
            )
            times.append(time.monotonic() - t0)
        return times
    except BaseException:
        print(fleet.logs(800)[-6000:], file=sys.stderr)
        raise
    finally:
        if observer:
            observer.client.disconnect()
            observer.client.loop_stop()
        fleet.close()


def ingest(messages: int, n_devices: int = 20) -> tuple[float, float, float]:
    """Returns (publish seconds, seconds until all rows are in the registry, messages/s)."""
    fleet = ControllerFleet()
    try:
        fleet.init()
        # each device here sends a thousand messages as fast as it can: far past the share
        # a real device gets (its burst and rate), which would cut this to a trickle
        config = fleet.home / "config.toml"
        config.write_text(
            re.sub(
                r"(?m)^ingest_burst_per_device = .*$",
                "ingest_burst_per_device = 1000000",
                config.read_text(),
            )
        )
        devices = [f"tel-{i:03d}" for i in range(n_devices)]
        for d in devices:
            fleet.add_device(d, "rpi4")
        fleet.start_daemon()
        db = sqlite3.connect(fleet.home / "registry.db", timeout=30)

        def count() -> int:
            return int(db.execute("SELECT count(*) FROM telemetry").fetchone()[0])

        stats = ModelStats(
            model=ModelRef(name="digits", version="1.0.0"),
            deployment_id="dep-bench",
            requests=100,
            latency_counts=[1] * N_BUCKETS,
            p50_ms=0.2,
            p95_ms=0.4,
            p99_ms=0.6,
        )

        def telemetry(device: str, sent_at: datetime) -> tuple[str, bytes]:
            message = TelemetryMessage(
                device_id=device,
                sent_at=sent_at,
                interval_s=10.0,
                models=[stats],
                system=SystemStats(cpu_percent=12.5, memory_used_bytes=1 << 28),
            )
            return shared.telemetry_topic(device), shared.encode(message)

        # every message a new interval (its own sent_at): redeliveries are stored only once;
        # the intervals go back in time, since the controller refuses times ahead of its clock
        start = datetime.now(UTC)
        payloads = [
            telemetry(devices[i % n_devices], start - timedelta(seconds=10 * (i // n_devices)))
            for i in range(messages)
        ]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", fleet.broker.port)
        client.loop_start()

        # the daemon has subscribed once a probe is stored; the probe is one interval, so
        # sending it again until then adds one row at most
        probe = telemetry(devices[0], start - timedelta(days=1))

        def probe_stored() -> bool:
            client.publish(*probe, qos=1)
            return count() > 0

        wait_until(probe_stored, 30, "the daemon stores no telemetry")
        base = count()
        t0 = time.monotonic()
        infos = []
        for start in range(0, messages, WINDOW):
            # keep the backlog under the broker's queue limit (a fleet sends at a steady
            # rate; a burst beyond max_queued_messages is dropped by Mosquitto, not queued)
            wait_until(
                lambda start=start: start - (count() - base) <= BACKLOG, 120, "stalled", 0.01
            )
            for i in range(start, min(start + WINDOW, messages)):
                infos.append(client.publish(*payloads[i], qos=1))
        for info in infos:
            info.wait_for_publish(timeout=60)
        published = time.monotonic() - t0
        wait_until(lambda: count() - base >= messages, 120, "telemetry rows missing", 0.01)
        stored = time.monotonic() - t0
        client.loop_stop()
        client.disconnect()
        db.close()
        return published, stored, messages / stored
    except BaseException:
        print(fleet.logs(800)[-6000:], file=sys.stderr)
        raise
    finally:
        fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()

    print("rollout: `edgefleet deploy` to every agent serving the new version")
    print(f"{'agents':>6}  {'runs':>4}  {'median s':>8}  {'min s':>6}  {'max s':>6}  budget")
    ok = True
    for size in (int(s) for s in args.sizes.split(",")):
        times = rollout(size, args.runs)
        median = statistics.median(times)
        verdict = "-"
        if size == 50:
            verdict = "ok" if median <= ROLLOUT_BUDGET_S else f"OVER {ROLLOUT_BUDGET_S:.0f} s"
            ok = ok and median <= ROLLOUT_BUDGET_S
        print(
            f"{size:>6}  {len(times):>4}  {median:>8.2f}  {min(times):>6.2f}  {max(times):>6.2f}"
            f"  {verdict}",
            flush=True,
        )

    print("\ntelemetry ingest into the registry (SQLite, WAL), QoS 1 from one paho client")
    print(f"{'run':>3}  {'messages':>8}  {'published s':>11}  {'all stored s':>12}  {'msg/s':>7}")
    rates = []
    for run in range(1, args.runs + 1):
        published, stored, rate = ingest(args.messages)
        rates.append(rate)
        print(f"{run:>3}  {args.messages:>8}  {published:>11.2f}  {stored:>12.2f}  {rate:>7.0f}")
    median = statistics.median(rates)
    verdict = "ok" if median >= INGEST_BUDGET else f"UNDER {INGEST_BUDGET:.0f}/s"
    print(f"median {median:.0f} messages/s  budget {INGEST_BUDGET:.0f}/s: {verdict}")
    ok = ok and median >= INGEST_BUDGET
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
