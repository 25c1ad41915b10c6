"""Housekeeping: `model remove` (refused while anything needs the version, then its rows,
history and files go and the registry stays consistent), `artifacts gc`, and telemetry
retention (raw rows become exact hourly rows, old rows go, a second run changes nothing)."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, insert, select

from edgefleet.controller import Home, load_settings, open_home
from edgefleet.controller.fleet import TelemetryRetention, add_device, prune_telemetry
from edgefleet.controller.registry import (
    ArtifactGrant,
    Deployment,
    DeploymentState,
    Device,
    DeviceCreate,
    Telemetry,
)
from edgefleet.controller.rollout import advance_rollouts
from edgefleet.harness import write_digits_model
from edgefleet.shared import N_BUCKETS, LatencyHistogram

from .conftest import Cli, files_under, sqlite_snapshot

# -- model remove ------------------------------------------------------------------


@pytest.fixture
def catalogue(cli: Cli, initialised: Path, model_file: Path, model_file_v2: Path) -> Path:
    v3 = write_digits_model(initialised.parent / "digits-v3.onnx", seed=2)
    for version, path in (("1.0.0", model_file), ("2.0.0", model_file_v2), ("3.0.0", v3)):
        cli.ok("model", "add", str(path), "--name", "digits", "--version", version)
    cli.ok("device", "add", "pi-1", "--profile", "rpi4")
    cli.ok("device", "add", "pi-2", "--profile", "rpi4")
    return initialised


@pytest.fixture
def opened(catalogue: Path) -> Iterator[Home]:
    home = open_home(load_settings(catalogue))
    yield home
    home.close()


def _deploy_and_commit(cli: Cli, home: Home, ref: str, *devices: str) -> str:
    """`deploy`, then what ingest records when each device says it serves the new model;
    then the daemon's tick, which completes the deploy's rollout."""
    args = [a for d in devices for a in ("-d", d)]
    dep_id = str(json.loads(cli.ok("deploy", ref, *args, "--json").stdout)[0]["deployment_id"])
    now = datetime.now(UTC)
    with home.session(write=True) as session:
        for device in session.exec(select(Device).where(col(Device.name).in_(devices))).all():
            row = session.exec(
                select(Deployment).where(
                    Deployment.device_id == device.id, Deployment.deployment_id == dep_id
                )
            ).one()
            row.state, row.committed_at = DeploymentState.COMMITTED.value, now
            device.previous_deployment_id = device.serving_deployment_id
            device.serving_deployment_id = dep_id
            device.serving_model = f"{ref}/fp32"
            session.add_all([row, device])
    advance_rollouts(home)
    return dep_id


def _consistent(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        dangling = conn.execute(
            "SELECT count(*) FROM deployment WHERE rollout_id IS NOT NULL "
            "AND rollout_id NOT IN (SELECT id FROM rollout)"
        ).fetchone()[0]
        assert dangling == 0


def _versions(cli: Cli) -> list[str]:
    return [v["version"] for v in json.loads(cli.ok("model", "list", "--json").stdout)]


def test_remove_is_refused_while_a_deployment_needs_it(
    cli: Cli, catalogue: Path, opened: Home
) -> None:
    cli.ok("deploy", "digits:1.0.0", "-d", "pi-1")  # pending: the daemon has not sent it
    before = sqlite_snapshot(catalogue / "registry.db")
    result = cli("model", "remove", "digits:1.0.0", "--yes")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot remove digits:1.0.0: unfinished deployment")
    assert "(pi-1)" in result.stderr and "still active" in result.stderr
    assert sqlite_snapshot(catalogue / "registry.db") == before


def test_remove_is_refused_while_served_or_a_rollback_target_then_allowed(
    cli: Cli, catalogue: Path, opened: Home, model_file: Path
) -> None:
    db = catalogue / "registry.db"
    first = _deploy_and_commit(cli, opened, "digits:1.0.0", "pi-1", "pi-2")
    cli.ok("device", "add", "pi-3", "--profile", "rpi4")
    events_before = sqlite_snapshot(db)["event"]

    before = sqlite_snapshot(db)
    served = cli("model", "remove", "digits:1.0.0", "--yes")
    assert served.exit_code == 1
    assert "cannot remove digits:1.0.0: pi-1, pi-2 serve(s) it" in served.stderr
    assert sqlite_snapshot(db) == before

    _deploy_and_commit(cli, opened, "digits:2.0.0", "pi-1", "pi-2")
    back = cli("model", "remove", "digits:1.0.0", "--yes")
    assert back.exit_code == 1
    assert "it is the model pi-1, pi-2 would roll back to" in back.stderr

    _deploy_and_commit(cli, opened, "digits:3.0.0", "pi-1", "pi-2")
    removed = json.loads(cli.ok("model", "remove", "digits:1.0.0", "--yes", "--json").stdout)
    assert removed["ref"] == "digits:1.0.0" and removed["variants"] == ["fp32"]
    assert removed["rollouts"] == [first] and removed["deployment_rows"] == 2
    assert removed["model_removed"] is False
    assert removed["bytes_freed"] == model_file.stat().st_size
    assert _versions(cli) == ["2.0.0", "3.0.0"]
    _consistent(db)
    after = sqlite_snapshot(db)
    assert all(first not in repr(r) for r in after["deployment"] + after["rollout"])
    assert after["event"] == events_before  # events name deployments by string: kept
    stored = [p for p in files_under(catalogue / "artifacts") if p.startswith("sha256/")]
    assert len(stored) == 2 and removed["artifacts"][0] not in repr(stored)
    cli.ok("status")
    cli.ok("rollout", "list")
    # nothing left to refer to it: deploying it again is an unknown model
    assert cli("deploy", "digits:1.0.0", "-d", "pi-3").exit_code == 2


def test_removing_the_last_version_removes_the_model(cli: Cli, catalogue: Path) -> None:
    for version in ("1.0.0", "2.0.0"):
        cli.ok("model", "remove", f"digits:{version}", "--yes")
    out = cli.ok("model", "remove", "digits:3.0.0", "--yes").stdout
    assert "it was the model's last version" in out
    assert sqlite_snapshot(catalogue / "registry.db")["model"] == []
    assert [p for p in files_under(catalogue / "artifacts") if p.startswith("sha256/")] == []
    assert cli("model", "remove", "digits:3.0.0", "--yes").exit_code == 2  # unknown now


def test_remove_asks_first(cli: Cli, catalogue: Path) -> None:
    before = sqlite_snapshot(catalogue / "registry.db")
    result = cli("model", "remove", "digits:1.0.0", input="n\n")
    assert result.exit_code == 1
    assert sqlite_snapshot(catalogue / "registry.db") == before


# -- artifacts gc ----------------------------------------------------------------


def _aged(path: Path, seconds: float = 7200) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_gc_frees_what_nothing_references_and_keeps_the_rest(
    cli: Cli, catalogue: Path, opened: Home
) -> None:
    store = opened.store
    orphan = store.put_bytes(b"a file no row names")
    _aged(store.path_of(orphan.sha256))
    young = store.put_bytes(b"just stored; its row is about to be committed")
    granted = store.put_bytes(b"a benchmark candidate a device may still read")
    _aged(store.path_of(granted.sha256))
    rowed = store.put_bytes(b"an artifact row no variant uses")
    _aged(store.path_of(rowed.sha256))
    upload = store.root / "tmp" / "incoming-interrupted"
    upload.write_bytes(b"half a file")
    _aged(upload)
    with opened.session(write=True) as session:
        device = session.exec(select(Device).where(Device.name == "pi-1")).one()
        session.execute(
            insert(ArtifactGrant).values(
                device_id=device.id,
                artifact_sha256=granted.sha256,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
                created_at=datetime.now(UTC),
            )
        )
        session.execute(
            sa.text(
                "INSERT INTO artifact (sha256, size, path, format, created_at) "
                "VALUES (:sha, :size, :path, 'onnx', :now)"
            ),
            {"sha": rowed.sha256, "size": rowed.size, "path": rowed.path, "now": datetime.now(UTC)},
        )
    db = catalogue / "registry.db"
    files_before, rows_before = files_under(store.root), sqlite_snapshot(db)

    dry = json.loads(cli.ok("artifacts", "gc", "--dry-run", "--json").stdout)
    doomed = {orphan.path, rowed.path, "tmp/incoming-interrupted"}
    assert {f["path"] for f in dry["files"]} == doomed
    assert dry["artifact_rows"] == [rowed.sha256]
    assert dry["bytes_freed"] == orphan.size + rowed.size + len(b"half a file")
    assert files_under(store.root) == files_before and sqlite_snapshot(db) == rows_before

    done = json.loads(cli.ok("artifacts", "gc", "--json").stdout)
    assert {f["path"] for f in done["files"]} == doomed
    assert sorted(files_under(store.root)) == sorted(set(files_before) - doomed)
    assert young.path in files_under(store.root) and granted.path in files_under(store.root)
    assert [r[0] for r in sqlite_snapshot(db)["artifact"]].count(rowed.sha256) == 0
    _consistent(db)
    for version in ("1.0.0", "2.0.0", "3.0.0"):  # every variant's file is still there
        for variant in json.loads(cli.ok("model", "show", f"digits:{version}", "--json").stdout)[
            "variants"
        ]:
            store.verify(variant["sha256"])
    again = json.loads(cli.ok("artifacts", "gc", "--json").stdout)
    assert again["files"] == [] and again["artifact_rows"] == []


# -- telemetry retention -----------------------------------------------------------

NOW = datetime(2025, 3, 20, 12, 30, tzinfo=UTC)
RAW_BEFORE = datetime(2025, 3, 13, 12, 0, tzinfo=UTC)  # 7 days back, to the hour


def _histogram(rng: random.Random) -> list[int]:
    counts = [0] * N_BUCKETS
    for _ in range(rng.randint(0, 40)):
        counts[rng.randint(20, 40)] += 1
    return counts


def _raw_rows(device_id: int, rng: random.Random) -> list[dict[str, Any]]:
    """Four hours of 10 s intervals around the 7-day line: a model on dep-a for two hours,
    dep-b from the second hour on (two models served at once), and system-only rows."""
    rows = []
    start = RAW_BEFORE - timedelta(hours=3)
    for i in range(1, 4 * 360):
        at = start + timedelta(seconds=10 * i)
        system = {
            "cpu_percent": rng.uniform(0, 100),
            "memory_used_bytes": rng.randint(10**8, 2 * 10**8),
            "temperature_c": rng.uniform(40, 60),
            "disk_free_bytes": rng.randint(10**9, 2 * 10**9),
        }
        models = []
        if at < start + timedelta(hours=2):
            models.append(("dep-a", "digits:1.0.0/fp32"))
        if at >= start + timedelta(hours=1):
            models.append(("dep-b", "digits:2.0.0/fp32"))
        if i % 6 == 0:
            models.append((None, None))
        for deployment, model in models:
            counts = _histogram(rng) if model else None
            requests = sum(counts) if counts else 0
            rows.append(
                {
                    "device_id": device_id,
                    "at": at,
                    "interval_s": 10.0,
                    "model": model,
                    "deployment_id": deployment,
                    "requests": requests,
                    "errors": rng.randint(0, min(requests, 2)),
                    "latency_counts": counts,
                    "p95_ms": LatencyHistogram(counts).percentile(95) if counts else None,
                    **system,
                }
            )
    return rows


def _table(home: Home) -> list[dict[str, Any]]:
    with home.session() as session:
        rows = session.exec(select(Telemetry).order_by(col(Telemetry.id))).all()
        return [r.model_dump() for r in rows]


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@pytest.fixture
def telemetry(home: Home) -> list[dict[str, Any]]:
    rng = random.Random(7)
    devices = [
        add_device(home, DeviceCreate(name=f"pi-{n}", profile="rpi4")).device for n in (1, 2)
    ]
    with home.session() as session:
        ids = session.exec(select(Device.id).order_by(col(Device.id))).all()
    assert len(ids) == len(devices)
    rows = [r for device_id in ids for r in _raw_rows(device_id, rng)]
    expired = {**rows[0], "at": NOW - timedelta(days=91), "deployment_id": "dep-old"}
    with home.session(write=True) as session:
        session.execute(insert(Telemetry), [*rows, expired])
    return rows


def test_retention_merges_old_raw_rows_into_exact_hourly_rows(
    home: Home, telemetry: list[dict[str, Any]]
) -> None:
    before = _table(home)
    report = prune_telemetry(home, now=NOW)
    assert report.complete and report.expired_rows == 1
    assert report.raw_before == RAW_BEFORE
    after = _table(home)

    expected: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in telemetry:
        if r["at"] < RAW_BEFORE:
            hour = r["at"].replace(minute=0, second=0, microsecond=0)
            expected[(r["device_id"], r["deployment_id"], r["model"], hour)].append(r)
    hourly = {
        (r["device_id"], r["deployment_id"], r["model"], _utc(r["at"]) - timedelta(hours=1)): r
        for r in after
        if r["interval_s"] == 3600.0
    }
    assert set(hourly) == set(expected)  # one row per device, deployment, model and hour
    assert report.hourly_rows == len(expected)
    assert report.merged_rows == sum(len(v) for v in expected.values())
    for key, members in expected.items():
        row = hourly[key]
        assert row["requests"] == sum(m["requests"] for m in members)
        assert row["errors"] == sum(m["errors"] for m in members)
        if key[2] is None:
            assert row["latency_counts"] is None and row["p95_ms"] is None
            continue
        merged = [sum(c) for c in zip(*(m["latency_counts"] for m in members), strict=True)]
        assert row["latency_counts"] == merged
        assert row["p95_ms"] == pytest.approx(LatencyHistogram(merged).percentile(95))
        assert row["p50_ms"] == pytest.approx(LatencyHistogram(merged).percentile(50))
        cpu = sum(m["cpu_percent"] for m in members) / len(members)
        assert row["cpu_percent"] == pytest.approx(cpu)
    # no raw row older than the line is left; the newer ones are untouched
    assert [r for r in after if r["interval_s"] < 3600 and _utc(r["at"]) < RAW_BEFORE] == []
    newer = [r for r in before if _utc(r["at"]) >= RAW_BEFORE]
    assert [r for r in after if r["interval_s"] < 3600] == newer
    # hourly rows re-use ids: readers following the table by rising id never see them again
    assert {r["id"] for r in after} <= {r["id"] for r in before}

    again = prune_telemetry(home, now=NOW)
    assert (again.merged_rows, again.hourly_rows, again.expired_rows) == (0, 0, 0)
    assert _table(home) == after


def test_raw_rows_arriving_late_top_up_their_hour(
    home: Home, telemetry: list[dict[str, Any]]
) -> None:
    prune_telemetry(home, now=NOW)
    key = telemetry[0]
    hour_end = key["at"].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)

    def the_hour() -> Telemetry:
        with home.session() as session:
            return session.exec(
                select(Telemetry).where(
                    Telemetry.device_id == key["device_id"],
                    Telemetry.deployment_id == key["deployment_id"],
                    col(Telemetry.interval_s) == 3600.0,
                    Telemetry.at == hour_end,
                )
            ).one()

    first = the_hour()
    late = {**key, "at": key["at"] + timedelta(seconds=1), "requests": 5, "errors": 1}
    late["latency_counts"] = [5] + [0] * (N_BUCKETS - 1)
    with home.session(write=True) as session:
        session.execute(insert(Telemetry), [late])
    report = prune_telemetry(home, now=NOW)
    assert (report.merged_rows, report.hourly_rows) == (1, 1)
    topped = the_hour()
    assert topped.id == first.id
    assert (topped.requests, topped.errors) == (first.requests + 5, first.errors + 1)
    assert topped.latency_counts == [
        a + b for a, b in zip(first.latency_counts or [], late["latency_counts"], strict=True)
    ]


def test_retention_settings(home: Home, telemetry: list[dict[str, Any]]) -> None:
    home.settings = replace(home.settings, telemetry_raw_days=0, telemetry_keep_days=0)
    before = _table(home)
    report = prune_telemetry(home, now=NOW)
    assert (report.raw_before, report.keep_after) == (None, None)
    assert _table(home) == before  # both steps off
    home.settings = replace(home.settings, telemetry_raw_days=0, telemetry_keep_days=7)
    prune_telemetry(home, now=NOW)
    assert all(_utc(r["at"]) >= NOW - timedelta(days=7) for r in _table(home))


def test_the_daemon_job_runs_hourly_and_carries_on_a_backlog(
    home: Home, telemetry: list[dict[str, Any]]
) -> None:
    clock = [0.0]
    job = TelemetryRetention(
        home, every_s=3600, budget_s=0.0, clock=lambda: clock[0], utcnow=lambda: NOW
    )
    raw = len([r for r in telemetry if r["at"] < RAW_BEFORE])
    calls = 0
    while any(r["interval_s"] < 3600 and _utc(r["at"]) < RAW_BEFORE for r in _table(home)):
        job()  # a budget of 0: one device-window per call, and the next call carries on
        calls += 1
        assert calls < 50
    assert calls > 1 and raw > 0
    job()  # finds nothing left: the next run is an hour away
    snapshot = _table(home)
    with home.session(write=True) as session:
        session.execute(insert(Telemetry), [{**telemetry[0], "at": telemetry[0]["at"]}])
    job()
    assert len(_table(home)) == len(snapshot) + 1  # not due yet
    clock[0] += 3600
    job()
    assert len(_table(home)) == len(snapshot)  # merged into its hour


def test_settings_refuse_keeping_less_than_the_raw_days(home_dir: Path) -> None:
    from edgefleet.shared.errors import ConfigError

    home_dir.mkdir(parents=True, exist_ok=True)
    (home_dir / "config.toml").write_text("telemetry_raw_days = 10\ntelemetry_keep_days = 5\n")
    with pytest.raises(ConfigError, match="telemetry_keep_days"):
        load_settings(home_dir)
