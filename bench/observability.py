"""What watching a large fleet costs: `/metrics`, `/api/v1/status` and the fleet page at
1,000 devices (simulated registry rows: devices across the three profiles, a deployment to
all of them, most committed, and ten telemetry intervals each with latency histograms and
host stats, written by the real ingest).

The daemon's HTTP server, metrics and fleet page run in-process on the registry (SQLite);
each endpoint is fetched RUNS times and the median and worst response time and the body
size are printed. The page's load time is Chromium's (headless, the system browser), from
navigation until all 1,000 device rows are drawn, the median of a few loads.

Run: .venv/bin/python bench/observability.py [--devices 1000] [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import col, select, update

from edgefleet.controller import Home, deploy, init_home, load_settings, open_home
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import (
    ArtifactServer,
    FleetWeb,
    Inbound,
    Metrics,
    ingest_many,
    registry_token_check,
)
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import Deployment, Device, DeviceCreate
from edgefleet.harness import write_digits_model
from edgefleet.shared import (
    N_BUCKETS,
    ModelRef,
    ModelStats,
    StatusMessage,
    SystemStats,
    TelemetryMessage,
)

PROFILES = ("rpi4", "rpi5", "x86-edge")
INTERVALS = 10
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip


def build_fleet(folder: Path, devices: int) -> Home:
    settings = load_settings(folder / "home", env={})
    init_home(settings)
    home = open_home(load_settings(folder / "home", env={}))
    for profile in PROFILES:  # enrol one per profile the real way: profile rows exist
        add_device(home, DeviceCreate(name=f"{profile}-0000", profile=profile))
    with home.session(write=True) as s:
        template = s.exec(select(Device)).first()
        assert template is not None
        for i in range(1, devices - len(PROFILES) + 1):
            s.add(
                Device(
                    name=f"{PROFILES[i % 3]}-{i:04d}",
                    profile=PROFILES[i % 3],
                    labels={"site": f"site-{i % 20}"},
                    token_sha256=f"{i:064x}",
                    mqtt_password_hash=template.mqtt_password_hash,
                )
            )
    add_model(home, write_digits_model(folder / "digits.onnx", seed=0), name="digits",
              version="1.0.0")  # fmt: skip
    for profile in PROFILES:
        deploy(home, "digits:1.0.0", profile=profile)
    with home.session(write=True) as s:
        s.exec(update(Deployment).where(col(Deployment.id) % 10 != 0).values(state="committed"))
    names = list(_rows(home, select(Device.name)))
    now = datetime.now(UTC)
    counts = [0] * N_BUCKETS
    counts[18:24] = [5, 20, 40, 20, 10, 5]
    batch: list[tuple[str, Inbound]] = []
    for n, name in enumerate(names):
        batch.append((name, StatusMessage(device_id=name, online=n % 17 != 0)))
        for k in range(INTERVALS):
            stats = ModelStats(
                model=ModelRef(name="digits", version="1.0.0"), deployment_id="dep-bench",
                requests=100, errors=n % 3 == 0, latency_counts=counts, p50_ms=1.9, p95_ms=3.1,
            )  # fmt: skip
            batch.append(
                (
                    name,
                    TelemetryMessage(
                        device_id=name, interval_s=10.0,
                        sent_at=now - timedelta(seconds=10 * (INTERVALS - k)), models=[stats],
                        system=SystemStats(cpu_percent=30.0, memory_used_bytes=400 << 20,
                                           temperature_c=55.0, disk_free_bytes=3 << 30),
                    ),
                )
            )  # fmt: skip
    for start in range(0, len(batch), 2000):
        with home.session(write=True) as s:
            ingest_many(s, batch[start : start + 2000])
    return home


def _rows(home: Home, query: Any) -> list[Any]:
    with home.session() as s:
        return list(s.exec(query).all())


def timed(client: httpx.Client, url: str, runs: int, **kw: object) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        answer = client.get(url, **kw)  # type: ignore[arg-type]
        answer.raise_for_status()
        times.append(time.perf_counter() - start)
        size = len(answer.content)
    return statistics.median(times) * 1000, max(times) * 1000, size


def page_load(base: str, token: str, devices: int, runs: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium is not installed: no page figure (make setup installs it)")
        return []
    loads = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{base}/")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_selector("#devices")
        for _ in range(runs):
            start = time.perf_counter()
            page.goto(f"{base}/")
            page.wait_for_function(
                f"() => document.querySelectorAll('#devices tbody tr').length === {devices}",
                timeout=60_000,
            )
            loads.append(time.perf_counter() - start)
        browser.close()
    return loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--page-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-obs-") as tmp:
        started = time.perf_counter()
        home = build_fleet(Path(tmp), args.devices)
        print(f"fleet of {args.devices} devices, {args.devices * INTERVALS} telemetry rows "
              f"built in {time.perf_counter() - started:.1f} s")  # fmt: skip
        metrics = Metrics()
        server = ArtifactServer(
            home.store, registry_token_check(home.engine), metrics=metrics,
            metrics_text=lambda: metrics.render(home.engine), web=FleetWeb(home),
        ).start()  # fmt: skip
        base = f"http://127.0.0.1:{server.port}"
        auth = {"Authorization": f"Bearer {home.settings.operator_token}"}
        try:
            with httpx.Client(timeout=60) as client:
                client.get(f"{base}/metrics")  # the first scrape seeds the host stats
                rows = [
                    ("/metrics", *timed(client, f"{base}/metrics", args.runs)),
                    ("/api/v1/status", *timed(client, f"{base}/api/v1/status", args.runs,
                                              headers=auth)),
                    ("/api/v1/deployments", *timed(client, f"{base}/api/v1/deployments",
                                                   args.runs, headers=auth)),
                    ("/api/v1/latency", *timed(client, f"{base}/api/v1/latency", args.runs,
                                               headers=auth)),
                ]  # fmt: skip
                series = sum(
                    1 for line in client.get(f"{base}/metrics").text.splitlines()
                    if line and not line.startswith("#")
                )  # fmt: skip
            print(f"\n{'endpoint':<22}{'median ms':>11}{'worst ms':>10}{'bytes':>11}")
            for path, median, worst, size in rows:
                print(f"{path:<22}{median:>11.1f}{worst:>10.1f}{size:>11,}")
            print(f"/metrics series: {series:,}")
            loads = page_load(base, home.settings.operator_token, args.devices, args.page_runs)
            if loads:
                print(f"\nfleet page in Chromium, navigation to {args.devices} rows drawn: "
                      f"median {statistics.median(loads) * 1000:.0f} ms, "
                      f"worst {max(loads) * 1000:.0f} ms ({len(loads)} loads)")  # fmt: skip
        finally:
            server.stop()
            home.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
