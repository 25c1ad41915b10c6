"""How big the registry grows from telemetry, with and without retention.

1,000 devices reporting at the agent's default interval (10 s) make 8,640 rows per device
per day: 60 million a week. This bench writes what fits in a few minutes (one simulated
day by default) into a real SQLite registry, as ingest writes them (one row per device,
model and interval, with a 65-bucket histogram, in time order across the fleet, both
indexes maintained), measures the file, runs `prune_telemetry` as if the day were past the
`telemetry_raw_days` line, measures again, and extrapolates to a week and to 90 days from
the two measured figures (bytes per raw row, bytes per hourly row). The extrapolated rows
are marked as such.

SQLite never gives pages back on DELETE: after pruning, the file keeps its size and the
freed pages are reused by the next inserts, so in steady state the file stays at its high
water mark (raw days + hourly days). "live" below is the size without free pages (as
`VACUUM INTO` would write it).

Run: .venv/bin/python bench/registry_retention.py [--devices 1000] [--hours 24] [--interval 10]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.controller import init_home, load_settings, open_home
from edgefleet.controller.fleet import add_device, prune_telemetry
from edgefleet.controller.registry import DeviceCreate
from edgefleet.shared import N_BUCKETS, LatencyHistogram

START = datetime(2025, 3, 1, tzinfo=UTC)
CHUNK = 100_000
INSERT = (
    "INSERT INTO telemetry (device_id, at, interval_s, model, deployment_id, requests, errors,"
    " latency_counts, p50_ms, p95_ms, p99_ms, cpu_percent, memory_used_bytes, temperature_c,"
    " disk_free_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def histograms(rng: random.Random, n: int = 512) -> list[tuple[str, int, float, float, float]]:
    """A pool of intervals' latency histograms (a few busy buckets around 2-8 ms, as the
    digits model shows on a Pi) with their request count and percentiles."""
    pool = []
    for _ in range(n):
        counts = [0] * N_BUCKETS
        centre = rng.randint(26, 32)
        for _ in range(rng.randint(20, 300)):
            counts[min(N_BUCKETS - 1, max(0, int(rng.gauss(centre, 1.5))))] += 1
        h = LatencyHistogram(counts)
        p50, p95, p99 = (h.percentile(q) or 0.0 for q in (50, 95, 99))
        pool.append((json.dumps(counts), h.total, p50, p95, p99))
    return pool


def stamp(when: datetime) -> str:
    """SQLAlchemy's storage format for a DateTime on SQLite (UTC, no offset)."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def fill(db: Path, device_ids: list[int], hours: float, interval_s: float) -> int:
    rng = random.Random(1)
    pool = histograms(rng)
    offsets = {d: rng.uniform(0, interval_s) for d in device_ids}
    steps = int(hours * 3600 / interval_s)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    written, batch = 0, []
    started = time.monotonic()
    for step in range(steps):
        base = START + timedelta(seconds=step * interval_s)
        for d in device_ids:
            counts, requests, p50, p95, p99 = pool[rng.randrange(len(pool))]
            batch.append(
                (
                    d, stamp(base + timedelta(seconds=offsets[d])), interval_s,
                    "digits:1.0.0/fp32", "dep-20250301000000-a1b2c3", requests,
                    int(rng.random() < 0.01), counts, p50, p95, p99,
                    rng.uniform(5, 60), rng.randint(150, 200) * 2**20, rng.uniform(45, 70),
                    rng.randint(8, 9) * 2**30,
                )
            )  # fmt: skip
        if len(batch) >= CHUNK or step == steps - 1:
            conn.execute("BEGIN")
            conn.executemany(INSERT, batch)
            conn.execute("COMMIT")
            written += len(batch)
            batch = []
            done = (step + 1) / steps
            rate = written / (time.monotonic() - started)
            print(f"\r  {written:,} rows ({done:.0%}), {rate:,.0f} rows/s", end="", file=sys.stderr)
    print(file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return written


def measure(db: Path) -> tuple[int, int, int]:
    """(telemetry rows, file bytes, live bytes: pages in use)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return rows, db.stat().st_size, (pages - free) * page


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated, then extrapolated")
    parser.add_argument("--interval", type=float, default=10.0, help="the agent's default")
    parser.add_argument("--raw-days", type=int, default=7)
    parser.add_argument("--keep-days", type=int, default=90)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-retention-") as tmp:
        settings = load_settings(Path(tmp) / "home", env={})
        init_home(settings)
        home = open_home(load_settings(Path(tmp) / "home", env={}))
        db = Path(tmp) / "home" / "registry.db"
        try:
            t0 = time.monotonic()
            for i in range(args.devices):
                add_device(home, DeviceCreate(name=f"dev-{i:04d}", profile="rpi4"))
            with sqlite3.connect(db) as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM device ORDER BY id")]
            _, empty_bytes, _ = measure(db)
            print(
                f"{args.devices:,} devices enrolled in {time.monotonic() - t0:.0f} s",
                file=sys.stderr,
            )
            t0 = time.monotonic()
            written = fill(db, ids, args.hours, args.interval)
            fill_s = time.monotonic() - t0
            raw_rows, raw_file, raw_live = measure(db)
            assert raw_rows == written
            end = START + timedelta(hours=args.hours)
            now = end + timedelta(days=args.raw_days, hours=1)  # the whole span is past the line
            t0 = time.monotonic()
            report = prune_telemetry(home, now=now)
            prune_s = time.monotonic() - t0
            hourly_rows, pruned_file, pruned_live = measure(db)
        finally:
            home.close()

    per_raw = (raw_live - empty_bytes) / raw_rows
    per_hourly = max(pruned_live - empty_bytes, 0) / max(hourly_rows, 1)
    raw_per_day = args.devices * 86_400 / args.interval
    hourly_per_day = args.devices * 24
    keep_hourly_days = args.keep_days - args.raw_days

    def row(label: str, rows: float, nbytes: float, how: str) -> None:
        print(f"| {label} | {rows:,.0f} | {size(nbytes + empty_bytes)} | {how} |")

    print(
        f"\n{args.devices:,} devices, telemetry every {args.interval:g} s "
        f"({raw_per_day / args.devices:,.0f} rows per device per day); simulated "
        f"{args.hours:g} h: {raw_rows:,} rows written in {fill_s:.0f} s "
        f"({raw_rows / fill_s:,.0f} rows/s), {per_raw:.0f} bytes per raw row; "
        f"prune_telemetry folded them into {hourly_rows:,} hourly rows in {prune_s:.0f} s "
        f"({report.merged_rows / max(prune_s, 1e-9):,.0f} rows/s), "
        f"{per_hourly:.0f} bytes per hourly row\n"
    )
    print("| registry | telemetry rows | size | how |")
    print("| --- | ---: | ---: | --- |")
    row(f"{args.hours:g} h, raw", raw_rows, raw_live - empty_bytes, "measured (file "
        f"{size(raw_file)})")  # fmt: skip
    row(f"{args.hours:g} h, after retention", hourly_rows, pruned_live - empty_bytes,
        f"measured live pages (file stays {size(pruned_file)}: pages are reused)")  # fmt: skip
    week_raw = 7 * raw_per_day
    row("a week, no retention", week_raw, week_raw * per_raw, "extrapolated")
    row(
        f"a week, defaults (raw {args.raw_days} d)",
        min(7, args.raw_days) * raw_per_day + max(0, 7 - args.raw_days) * hourly_per_day,
        min(7, args.raw_days) * raw_per_day * per_raw
        + max(0, 7 - args.raw_days) * hourly_per_day * per_hourly,
        "extrapolated: nothing is old enough to merge yet"
        if args.raw_days >= 7
        else "extrapolated",
    )
    row(
        "a week, telemetry_raw_days = 1",
        raw_per_day + 6 * hourly_per_day,
        raw_per_day * per_raw + 6 * hourly_per_day * per_hourly,
        "extrapolated",
    )
    row(
        f"{args.keep_days} days, no retention",
        args.keep_days * raw_per_day,
        args.keep_days * raw_per_day * per_raw,
        "extrapolated; grows ~" + size(raw_per_day * per_raw) + " a day for ever",
    )
    row(
        f"{args.keep_days} days and after, defaults",
        args.raw_days * raw_per_day + keep_hourly_days * hourly_per_day,
        args.raw_days * raw_per_day * per_raw + keep_hourly_days * hourly_per_day * per_hourly,
        f"extrapolated steady state: {args.raw_days} d raw + {keep_hourly_days} d hourly",
    )


if __name__ == "__main__":
    main()
