"""What the agent reports each telemetry interval: per-model request counts and
latency histograms, and the machine's CPU, memory, temperature and disk, read from /proc and /sys.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.shared import LatencyHistogram, ModelRef, ModelStats, SystemStats

from ._runtime import LoadedModel

# Readings come from files the kernel may lack or format differently; any of
# these means "unknown", which telemetry reports as None.
_READ_ERRORS = (OSError, ValueError, IndexError, KeyError)


@dataclass
class _Counts:
    ref: ModelRef
    requests: int = 0
    errors: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)


class RequestStats:
    """Request counters per deployment since the last :meth:`drain`; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}

    def record(self, model: LoadedModel, latency_ms: float, ok: bool) -> None:
        with self._lock:
            counts = self._counts.get(model.deployment_id)
            if counts is None:
                counts = self._counts[model.deployment_id] = _Counts(model.ref)
            counts.requests += 1
            if not ok:
                counts.errors += 1
            counts.histogram.record(latency_ms)

    def drain(self) -> list[ModelStats]:
        """One entry per deployment seen since the last drain; the counters start again."""
        with self._lock:
            drained, self._counts = self._counts, {}
        # Percentiles are computed outside the lock so request threads never wait on them.
        return [
            ModelStats(
                model=c.ref,
                deployment_id=deployment_id,
                requests=c.requests,
                errors=c.errors,
                latency_counts=list(c.histogram.counts),
                p50_ms=c.histogram.percentile(50),
                p95_ms=c.histogram.percentile(95),
                p99_ms=c.histogram.percentile(99),
            )
            for deployment_id, c in drained.items()
        ]


class CpuSampler:
    """Whole-machine CPU use between two calls, from the aggregate line of /proc/stat."""

    def __init__(self, stat_path: Path = Path("/proc/stat")) -> None:
        self._path = stat_path
        self._lock = threading.Lock()
        self._previous: tuple[int, int] | None = None  # (busy, total) jiffies

    def percent(self) -> float | None:
        """None on the first call, when /proc/stat is unreadable, or when no time has passed."""
        try:
            sample = _read_cpu_jiffies(self._path)
        except _READ_ERRORS:
            return None
        with self._lock:
            previous = self._previous
            if previous is None:
                self._previous = sample
                return None
            busy = sample[0] - previous[0]
            total = sample[1] - previous[1]
            if total <= 0:
                # Same clock tick (or a counter reset): keep the older baseline so
                # the next call measures a longer window.
                if total < 0:
                    self._previous = sample
                return None
            self._previous = sample
        return round(min(100.0, max(0.0, 100.0 * busy / total)), 2)


def _read_cpu_jiffies(path: Path) -> tuple[int, int]:
    with path.open() as f:
        first = f.readline().split()
    if not first or first[0] != "cpu":
        raise ValueError("no aggregate cpu line")
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    values = [int(v) for v in first[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return total - idle, total


_DEFAULT_CPU = CpuSampler()


def system_stats(disk_path: Path, cpu: CpuSampler | None = None) -> SystemStats:
    """Read the machine's state; anything unreadable is None, never an exception.

    ``cpu`` keeps the previous /proc/stat sample; the module's own sampler is used
    when none is given, so the first call of the process reports no CPU figure.
    """
    used, total = _memory(Path("/proc/meminfo"))
    free_disk, total_disk = _disk(disk_path)
    return SystemStats(
        cpu_percent=(cpu or _DEFAULT_CPU).percent(),
        memory_used_bytes=used,
        memory_total_bytes=total,
        rss_bytes=_rss(Path("/proc/self/status")),
        temperature_c=_temperature(Path("/sys/class/thermal")),
        disk_free_bytes=free_disk,
        disk_total_bytes=total_disk,
    )


def _kib_fields(path: Path, names: set[str]) -> dict[str, int]:
    """Values of ``Name:   1234 kB`` lines, in bytes."""
    found: dict[str, int] = {}
    with path.open() as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in names:
                parts = rest.split()
                found[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return found


def _memory(meminfo: Path) -> tuple[int | None, int | None]:
    try:
        fields = _kib_fields(meminfo, {"MemTotal", "MemAvailable"})
    except _READ_ERRORS:
        return None, None
    total = fields.get("MemTotal")
    available = fields.get("MemAvailable")
    used = total - available if total is not None and available is not None else None
    return used, total


def _rss(status: Path) -> int | None:
    try:
        return _kib_fields(status, {"VmRSS"}).get("VmRSS")
    except _READ_ERRORS:
        return None


def _temperature(thermal_root: Path) -> float | None:
    """Hottest thermal zone in °C; zones that cannot be read (some report EIO) are skipped."""
    readings = []
    try:
        zones = sorted(thermal_root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            millidegrees = int(zone.read_text().strip())
        except _READ_ERRORS:
            continue
        # Disabled sensors report absurd values such as -273000.
        if millidegrees > -273_000:
            readings.append(millidegrees / 1000.0)
    return max(readings) if readings else None


def _disk(path: Path) -> tuple[int | None, int | None]:
    try:
        usage = shutil.disk_usage(path)
    except _READ_ERRORS:
        return None, None
    return usage.free, usage.total
