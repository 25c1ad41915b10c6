"""What reading the fleet costs at 1,000 and 10,000 devices: `fleet_status()`, and the CLI's
`status`, `status --json`, `device list` and `events`, against registry rows this benchmark
writes (SQLite): devices across three profiles with labels, 30 rollouts over the past day
(each to half the fleet: most rows committed, some failed or rolled back, the newest still
on its way), four events per row, every device's retained status, and a day of telemetry.

A day of telemetry every 10 s is 8,640 rows a device: 8.6 million at 1,000 devices, 86
million at 10,000, more than this benchmark should write. So the newest --dense-hours are
every --interval-s and the rest of the day is thinned until the whole fits --max-rows;
the table printed says what was written. `status` reads only the last hour of telemetry (an
index range per device), so what is thinned is what it never reads.

Each command is timed in-process (the command alone, as `CliRunner` runs it) and as a
process (`python -m edgefleet.controller ...`, what an operator waits for, interpreter and
imports included); the median of --runs. "before" is what the issue measured.

Run: .venv/bin/python bench/status_scale.py [--devices 1000 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from edgefleet.controller import Home, init_home, load_settings, open_home
from edgefleet.controller.catalog import add_model
from edgefleet.controller.cli import app
from edgefleet.controller.fleet import add_device, fleet_status, record_heartbeat
from edgefleet.controller.registry import DaemonHeartbeat, DeviceCreate
from edgefleet.harness import write_digits_model
from edgefleet.shared import N_BUCKETS

PROFILES = ("rpi4", "rpi5", "x86-edge")
ROLLOUTS = 30
EVENTS = ("downloading", "verifying", "loading")  # then the row's own final state
BEFORE = {("status", 1000): "1.6-1.9 s"}  # the figure; nothing else was measured
COMMANDS = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "device list": ["device", "list"],
    "events": ["events"],
}


def ts(when: datetime) -> str:
    """A time as SQLAlchemy stores it in SQLite (UTC, no offset)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def build(folder: Path, devices: int, args: argparse.Namespace) -> tuple[Home, str]:
    """The registry, and a line saying what is in it."""
    settings = load_settings(folder / "home", env={})
    init_home(settings)
    home = open_home(load_settings(folder / "home", env={}))
    for profile in PROFILES:  # one enrolled the real way, so the profile rows exist
        add_device(home, DeviceCreate(name=f"{profile}-00000", profile=profile))
    add_model(home, write_digits_model(folder / "digits.onnx", seed=0), name="digits",
              version="1.0.0")  # fmt: skip
    now = datetime.now(UTC)
    rng = random.Random(7)
    db = sqlite3.connect(folder / "home" / "registry.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        _devices(db, devices)
        variants = _versions(db)
        ids = [row[0] for row in db.execute("SELECT id FROM device ORDER BY id")]
        rows, events = _history(db, ids, variants, now, rng)
        _statuses(db, ids, now, rng)
    telemetry, what = _telemetry(db, ids, now, args)
    db.close()
    summary = (
        f"{len(ids):,} devices, {ROLLOUTS} rollouts, {rows:,} deployment rows, "
        f"{events:,} events, {telemetry:,} telemetry rows ({what})"
    )
    return home, summary


def _devices(db: sqlite3.Connection, devices: int) -> None:
    template = db.execute("SELECT mqtt_password_hash, created_at FROM device").fetchone()
    db.executemany(
        "INSERT INTO device (name, profile, labels, token_sha256, mqtt_password_hash, "
        "created_at, last_sequence, online, agent_version) VALUES (?, ?, ?, ?, ?, ?, 0, 0, '')",
        (
            (f"{PROFILES[i % 3]}-{i:05d}", PROFILES[i % 3],
             json.dumps({"site": f"site-{i % 20}", "tier": "canary" if i % 10 == 0 else "main"}),
             f"{i:064x}", template[0], template[1])
            for i in range(1, devices - len(PROFILES) + 1)
        ),
    )  # fmt: skip


def _versions(db: sqlite3.Connection) -> list[int]:
    """A version per rollout, each with an fp32 variant on the one stored artifact."""
    model_id, io, smoke, created = db.execute(
        "SELECT model_id, io, smoke_test, created_at FROM model_version"
    ).fetchone()
    sha = db.execute("SELECT artifact_sha256 FROM variant").fetchone()[0]
    for k in range(1, ROLLOUTS):
        cur = db.execute(
            "INSERT INTO model_version (model_id, version, io, smoke_test, source_name, "
            "created_at) VALUES (?, ?, ?, ?, '', ?)",
            (model_id, f"1.{k}.0", io, smoke, created),
        )
        db.execute(
            "INSERT INTO variant (model_version_id, name, artifact_sha256, metrics, created_at) "
            "VALUES (?, 'fp32', ?, '{}', ?)",
            (cur.lastrowid, sha, created),
        )
    return [row[0] for row in db.execute("SELECT id FROM variant ORDER BY id")]


def _history(
    db: sqlite3.Connection, ids: list[int], variants: list[int], now: datetime, rng: random.Random
) -> tuple[int, int]:
    """30 rollouts over the past day, each to half the fleet; four events per row."""
    rows = events = 0
    for k in range(ROLLOUTS):
        at = now - timedelta(hours=24) + timedelta(minutes=47 * k)
        rollout_id = f"dep-{at:%Y%m%d%H%M%S}-{k:06x}"
        newest = k == ROLLOUTS - 1
        cur = db.execute(
            "INSERT INTO rollout (rollout_id, model_version_id, selector, plan, state, "
            "current_wave, revision, reason, started_by, note, created_at, updated_at) "
            "VALUES (?, ?, ?, '{}', ?, 0, 0, '', ?, ?, ?, ?)",
            (rollout_id, k + 1, json.dumps({"labels": {"tier": "main"}}),
             "running" if newest else "completed", rng.choice(["alice", "bob", "ci"]),
             f"weekly model refresh {k}", ts(at), ts(at)),
        )  # fmt: skip
        batch, happened = [], []
        for device_id in ids[k % 2 :: 2]:
            roll = rng.random()
            if newest:
                state = ("committed" if roll < 0.6 else "in_progress" if roll < 0.8
                         else "sent" if roll < 0.9 else "pending")  # fmt: skip
            else:
                state = "committed" if roll < 0.95 else "failed" if roll < 0.98 else "rolled_back"
            batch.append(
                (rollout_id, device_id, variants[k], state, ts(at), ts(at), cur.lastrowid, 0,
                 ts(at) if state != "pending" else None,
                 ts(at + timedelta(minutes=2)) if state == "committed" else None)
            )  # fmt: skip
            for n, step in enumerate([*EVENTS, state] if state != "pending" else []):
                happened.append(
                    (device_id, rollout_id, step, state != "failed" or step != "failed",
                     "E_SMOKE" if step == "failed" else None, ts(at + timedelta(seconds=20 * n)),
                     ts(at + timedelta(seconds=20 * n)))
                )  # fmt: skip
        db.executemany(
            "INSERT INTO deployment (deployment_id, device_id, variant_id, state, created_at, "
            "updated_at, rollout_id, wave, kind, sent_at, committed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'deploy', ?, ?)",
            batch,
        )
        db.executemany(
            "INSERT INTO event (device_id, deployment_id, state, ok, error_code, message, at, "
            "received_at) VALUES (?, ?, ?, ?, ?, '', ?, ?)",
            happened,
        )
        rows, events = rows + len(batch), events + len(happened)
    return rows, events


def _statuses(db: sqlite3.Connection, ids: list[int], now: datetime, rng: random.Random) -> None:
    """Each device's retained status: 95 % online and heard within 10 s, serving its newest
    committed model; the rest gone for hours (their last will)."""
    serving = dict(
        db.execute(
            "SELECT d.device_id, d.deployment_id FROM deployment d JOIN (SELECT device_id, "
            "max(id) AS id FROM deployment WHERE state = 'committed' GROUP BY device_id) c "
            "ON c.id = d.id"
        ).fetchall()
    )
    db.executemany(
        "UPDATE device SET online = ?, last_seen = ?, agent_version = '1.4.0', "
        "serving_deployment_id = ?, serving_model = ?, status_at = ? WHERE id = ?",
        (
            (online, ts(seen), serving.get(i), "digits:1.0.0/fp32" if i in serving else None,
             ts(seen), i)
            for i in ids
            for online in [rng.random() < 0.95]
            for seen in [now - timedelta(seconds=rng.uniform(0, 10) if online
                                         else rng.uniform(3600, 40000))]
        ),
    )  # fmt: skip


def _telemetry(
    db: sqlite3.Connection, ids: list[int], now: datetime, args: argparse.Namespace
) -> tuple[int, str]:
    """A day of telemetry, oldest first as it arrives, indexes rebuilt once at the end."""
    dense = int(args.dense_hours * 3600 / args.interval_s)
    sparse_wanted = int((24 - args.dense_hours) * 3600 / args.interval_s)
    room = max(args.max_rows // len(ids) - dense, 0)
    thin = max(1, -(-sparse_wanted // room)) if room else 0
    sparse = sparse_wanted // thin if thin else 0
    stamps = [now - timedelta(seconds=args.interval_s * (dense - n)) for n in range(dense)]
    older = [stamps[0] - timedelta(seconds=args.interval_s * thin * (n + 1)) for n in range(sparse)]
    counts = [0] * N_BUCKETS
    counts[18:24] = [5, 20, 40, 20, 10, 5]
    histogram = json.dumps(counts)
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'telemetry' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    written = 0
    for at in [*reversed(older), *stamps]:
        when = ts(at)
        db.executemany(
            "INSERT INTO telemetry (device_id, at, interval_s, model, deployment_id, requests, "
            "errors, latency_counts, p50_ms, p95_ms, p99_ms, cpu_percent, memory_used_bytes, "
            "temperature_c, disk_free_bytes) VALUES (?, ?, ?, 'digits:1.0.0/fp32', NULL, 100, "
            "0, ?, 1.9, ?, 4.2, 30.0, 419430400, 55.0, 3221225472)",
            ((i, when, args.interval_s, histogram, 3.0 + (i % 7) * 0.1) for i in ids),
        )
        written += len(ids)
        if written % 2_000_000 < len(ids):
            db.commit()
    for _, sql in indexes:
        db.execute(sql)
    db.commit()
    what = f"the last {args.dense_hours:g} h every {args.interval_s:g} s"
    if sparse:
        what += f", the {24 - args.dense_hours:g} h before every {args.interval_s * thin:g} s"
    return written, what


def daemon_alive(home: Home) -> None:
    """A daemon's heartbeat that keeps it alive for the whole benchmark (it beats hourly),
    so `status` counts fresh devices online."""
    at = datetime.now(UTC)
    record_heartbeat(home, DaemonHeartbeat(
        name="serve-bench", host="bench", pid=os.getpid(), version="0", every_s=3600,
        started_at=at, beat_at=at, broker_connected=True,
    ))  # fmt: skip


def median_s(run: Callable[[], object], runs: int) -> float:
    run()  # warm the page cache and the imports: the figure is the steady state
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(home_dir: Path, argv: list[str]) -> Callable[[], object]:
    runner = CliRunner()
    env = {"EDGEFLEET_HOME": str(home_dir), "COLUMNS": "80"}

    def run() -> object:
        result = runner.invoke(app, argv, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return run


def as_process(home_dir: Path, argv: list[str]) -> Callable[[], object]:
    env = {**os.environ, "EDGEFLEET_HOME": str(home_dir)}
    env.pop("COLUMNS", None)
    env.pop("EDGEFLEET_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "edgefleet.controller", *argv]
    return lambda: subprocess.run(cmd, env=env, check=True, capture_output=True)


def measure(devices: int, args: argparse.Namespace) -> Iterator[tuple[str, str, float, float]]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-status-") as tmp:
        started = time.perf_counter()
        home, summary = build(Path(tmp), devices, args)
        print(f"{summary}; built in {time.perf_counter() - started:.0f} s", flush=True)
        daemon_alive(home)
        shown = fleet_status(home)
        assert len(shown) == devices and sum(s.online for s in shown) > devices * 0.9
        home_dir = Path(tmp) / "home"
        yield "fleet_status()", "", median_s(lambda: fleet_status(home), args.runs), float("nan")
        startup = median_s(as_process(home_dir, ["--help"]), args.runs)
        yield "edgefleet --help", "", float("nan"), startup
        for name, argv in COMMANDS.items():
            yield (
                name,
                BEFORE.get((name, devices), "-"),
                median_s(in_process(home_dir, argv), args.runs),
                median_s(as_process(home_dir, argv), args.runs),
            )
        home.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--dense-hours", type=float, default=1.0)
    parser.add_argument("--max-rows", type=int, default=9_000_000)
    args = parser.parse_args()
    results = []
    for devices in args.devices:
        for row in measure(devices, args):
            results.append((devices, *row))
    print(f"\n{'devices':>8}  {'command':<17}{'before':>11}{'in-process':>12}{'process':>10}")
    for devices, name, before, inside, process in results:
        cells = [f"{v:.3f} s" if v == v else "-" for v in (inside, process)]  # nan: not timed
        print(f"{devices:>8,}  {name:<17}{before:>11}{cells[0]:>12}{cells[1]:>10}")
    print("\nbudget: status at 1,000 devices ≤ 0.5 s; medians of", args.runs, "runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
