"""Request counters and histograms per deployment, and machine readings from /proc and /sys."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.agent._runtime import LoadedModel, load_model
from edgefleet.agent._telemetry import (
    CpuSampler,
    RequestStats,
    _memory,
    _rss,
    _temperature,
    system_stats,
)
from edgefleet.harness import write_digits_model
from edgefleet.shared import N_BUCKETS, ModelRef, RuntimeSettings


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, LoadedModel]:
    root = tmp_path_factory.mktemp("models")
    path = write_digits_model(root / "m.onnx", seed=0)
    return tuple(  # type: ignore[return-value]
        load_model(
            path,
            ref=ModelRef(name="digits", version=version),
            deployment_id=deployment_id,
            sha256="0" * 64,
            runtime=RuntimeSettings(intra_op_threads=1),
        )
        for deployment_id, version in (("d1", "1"), ("d2", "2"))
    )


def test_drain_reports_requests_errors_and_histogram(models: tuple[LoadedModel, ...]) -> None:
    stats = RequestStats()
    for i in range(20):
        stats.record(models[0], latency_ms=1.0 + i, ok=i % 5 != 0)
    stats.record(models[1], latency_ms=0.5, ok=True)
    drained = {s.deployment_id: s for s in stats.drain()}
    first, second = drained["d1"], drained["d2"]
    assert str(first.model) == "digits:1/fp32" and str(second.model) == "digits:2/fp32"
    assert (first.requests, first.errors) == (20, 4)
    assert len(first.latency_counts) == N_BUCKETS and sum(first.latency_counts) == 20
    assert first.p50_ms is not None and first.p95_ms is not None and first.p99_ms is not None
    assert 0 < first.p50_ms <= first.p95_ms <= first.p99_ms
    assert 5 < first.p50_ms < 16  # median of 1..20 ms, within bucket interpolation
    assert (second.requests, second.errors, sum(second.latency_counts)) == (1, 0, 1)
    assert stats.drain() == []


def test_record_is_thread_safe(models: tuple[LoadedModel, ...]) -> None:
    stats = RequestStats()

    def hammer() -> None:
        for i in range(2000):
            stats.record(models[i % 2], latency_ms=0.1, ok=i % 3 != 0)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drained = stats.drain()
    assert sum(s.requests for s in drained) == 8000
    assert sum(sum(s.latency_counts) for s in drained) == 8000
    assert sum(s.errors for s in drained) == 4 * 667


def test_system_stats_reads_this_machine(tmp_path: Path) -> None:
    cpu = CpuSampler()
    first = system_stats(tmp_path, cpu)
    assert first.cpu_percent is None  # no previous sample yet
    assert first.rss_bytes is not None and first.rss_bytes > 0
    assert first.disk_total_bytes is not None and first.disk_free_bytes is not None
    assert 0 < first.disk_free_bytes <= first.disk_total_bytes
    assert first.memory_total_bytes is not None and first.memory_used_bytes is not None
    assert 0 < first.memory_used_bytes <= first.memory_total_bytes
    sum(i * i for i in range(200_000))  # some CPU time between the samples
    second = system_stats(tmp_path, cpu)
    assert second.cpu_percent is None or 0.0 <= second.cpu_percent <= 100.0


def test_cpu_percent_from_stat_deltas(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    cpu = CpuSampler(stat)
    assert cpu.percent() is None
    # 300 more busy jiffies (user+system) and 100 more idle+iowait: 75 % busy.
    stat.write_text("cpu  300 0 200 750 150 0 0 0 0 0\n")
    assert cpu.percent() == 75.0
    assert cpu.percent() is None  # no time has passed
    stat.unlink()
    assert cpu.percent() is None


def test_unreadable_sources_give_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert _memory(missing) == (None, None)
    assert _rss(missing) is None
    assert _temperature(missing) is None
    assert CpuSampler(missing).percent() is None
    stats = system_stats(missing)
    assert stats.disk_free_bytes is None and stats.disk_total_bytes is None
    garbage = tmp_path / "garbage"
    garbage.write_text("MemTotal: lots kB\nVmRSS:\n")
    assert _memory(garbage) == (None, None)
    assert _rss(garbage) is None


def test_meminfo_and_status_parsing(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000 kB\nMemFree:  100 kB\nMemAvailable:  400 kB\n")
    assert _memory(meminfo) == (600 * 1024, 1000 * 1024)
    meminfo.write_text("MemTotal:  1000 kB\n")  # kernels before 3.14 lack MemAvailable
    assert _memory(meminfo) == (None, 1000 * 1024)
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t   2048 kB\nThreads:\t3\n")
    assert _rss(status) == 2048 * 1024


def test_temperature_is_the_hottest_readable_zone(tmp_path: Path) -> None:
    for zone, text in (("0", "45000\n"), ("1", "52500\n"), ("2", "not a number"), ("3", "-273150")):
        (tmp_path / f"thermal_zone{zone}").mkdir()
        (tmp_path / f"thermal_zone{zone}" / "temp").write_text(text)
    (tmp_path / "thermal_zone4").mkdir()  # no temp file at all
    assert _temperature(tmp_path) == 52.5
    assert _temperature(tmp_path / "empty") is None
