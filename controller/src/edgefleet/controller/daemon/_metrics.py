"""The daemon's Prometheus ``/metrics``, on ``prometheus_client``: its own counters, and the
fleet read from the registry at scrape time (devices, deployments, the latency, requests,
errors and host stats devices report).

Cardinality is bounded by the registry, never by what a device sends: a label is a
profile, a deployment state, a model name and version, or a device name only when the
registry holds it. Per-device families have one series per enrolled device and no other
label (and none at all past ``max_device_series`` devices); latency is a histogram per
model version and profile only, built by merging the devices' fixed buckets, never one per
device. A model string a device reports that names no registered version is counted under
``edgefleet_telemetry_unknown_model_total`` instead of becoming a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import case, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from edgefleet.shared import BUCKET_BOUNDS_MS

from ..registry import (
    Deployment,
    DeploymentState,
    Device,
    Model,
    ModelVersion,
    Rollout,
    RolloutState,
    Telemetry,
    as_utc,
)
from ._counters import COUNTERS

# every dead-letter reason (``DeadLetter`` in _inbox) shows from the start, at 0
_DEAD_LETTER_REASONS = ("invalid", "rate_limited", "unstorable")
_FINISHED = tuple(
    s.value
    for s in (DeploymentState.COMMITTED, DeploymentState.SUPERSEDED, DeploymentState.CANCELLED)
)
_BAD = (DeploymentState.FAILED.value, DeploymentState.ROLLED_BACK.value)
_LE = [f"{bound / 1000:.6g}" for bound in BUCKET_BOUNDS_MS] + ["+Inf"]

disable_created_metrics()  # no `_created` series: nobody graphs when a counter was made


def _version() -> str:
    try:
        return version("edgefleet-controller")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


class Metrics:
    """The daemon's counters (thread-safe) and, once ``render`` is given the registry's
    engine, the fleet's families collected at every scrape."""

    def __init__(
        self,
        *,
        broker_connected: Callable[[], bool] | None = None,
        max_device_series: int = 10_000,
        stale_after_s: float = 3600.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.broker_connected = broker_connected
        self.max_device_series = max_device_series
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._fleet: _FleetCollector | None = None
        self._counters = {
            name: Counter(name.removesuffix("_total"), text, labels, registry=self.registry)
            for name, (text, labels) in COUNTERS.items()
        }
        for reason in _DEAD_LETTER_REASONS:
            self._counters["edgefleet_messages_dead_lettered_total"].labels(reason=reason)
        Info("edgefleet_build", "The controller's version.", registry=self.registry).info(
            {"version": _version()}
        )
        Gauge(
            "edgefleet_broker_connected",
            "1 while the daemon's MQTT session with the broker is up.",
            registry=self.registry,
        ).set_function(lambda: float(bool(self.broker_connected and self.broker_connected())))

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def value(self, name: str, **labels: str) -> int:
        sample = name if name.endswith("_total") else name + "_total"
        found = self.registry.get_sample_value(sample, labels or None)
        return int(found or 0)

    def render(self, engine: Engine | None = None) -> str:
        """The exposition text; with ``engine``, the fleet's families too (collected from
        then on: the telemetry counters count from the first scrape)."""
        if engine is not None:
            with self._lock:
                if self._fleet is None:
                    self._fleet = _FleetCollector(
                        engine, self.max_device_series, self.stale_after_s
                    )
                    self.registry.register(self._fleet)
        return generate_latest(self.registry).decode()


@dataclass
class _Serving:
    """Cumulative telemetry of one model version on one profile, since the first scrape."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(_LE))
    requests: int = 0
    errors: int = 0
    seen_at: float = 0.0


@dataclass
class _Host:
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    temperature_c: float | None = None
    disk_free_bytes: int | None = None


# Host stats are seeded at the first scrape from this many newest telemetry rows, so the
# gauges have values before every device has reported again.
_SEED_ROWS = 20_000
_MAX_SERVING_KEYS = 1000  # model version x profile; far above a real catalogue's


class _FleetCollector(Collector):
    """The registry's view, read at every scrape. Telemetry is read incrementally (rows with
    an id above the last one read), so a scrape costs the rows since the previous one, not
    the table; the counters start at the first scrape, like any restarted exporter's."""

    def __init__(self, engine: Engine, max_device_series: int, stale_after_s: float) -> None:
        self.engine = engine
        self.max_device_series = max_device_series
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._last_id: int | None = None
        self._serving: dict[tuple[str, str, str], _Serving] = {}
        self._hosts: dict[int, _Host] = {}
        self._unknown_models = 0

    def describe(self) -> list[Metric]:
        return []  # families are discovered at scrape time

    def collect(self) -> Iterator[Metric]:
        with self._lock, Session(self.engine) as session:
            devices = session.exec(select(Device)).all()
            profiles = {d.id: d.profile for d in devices}
            self._read_telemetry(session, profiles)
            yield from self._device_families(devices)
            yield from self._deployment_families(session)
            yield from self._serving_families()

    # -- telemetry, incrementally --------------------------------------------------------

    def _read_telemetry(self, session: Session, profiles: dict[int | None, str]) -> None:
        versions = {
            f"{name}:{version}"
            for name, version in session.exec(
                select(Model.name, ModelVersion.version).join(
                    ModelVersion,
                    col(ModelVersion.model_id) == col(Model.id),
                )
            ).all()
        }
        query = select(Telemetry).order_by(col(Telemetry.id))
        first = self._last_id is None
        if first:
            top = session.exec(select(func.max(Telemetry.id))).one() or 0
            query = query.where(col(Telemetry.id) > top - _SEED_ROWS)
            self._last_id = top
        else:
            query = query.where(col(Telemetry.id) > self._last_id)
        now = time.monotonic()
        for row in session.exec(query).all():
            if row.cpu_percent is not None or row.memory_used_bytes is not None:
                self._hosts[row.device_id] = _Host(
                    row.cpu_percent, row.memory_used_bytes, row.temperature_c, row.disk_free_bytes
                )
            if first:
                continue  # seeding: gauges only; counters start now
            self._last_id = max(self._last_id or 0, row.id or 0)
            if row.model:
                self._count(row, versions, profiles, now)
        stale = [k for k, s in self._serving.items() if now - s.seen_at > self.stale_after_s]
        for key in stale:
            del self._serving[key]

    def _count(
        self, row: Telemetry, versions: set[str], profiles: dict[int | None, str], now: float
    ) -> None:
        model = (row.model or "").split("/", 1)[0]  # name:version/variant
        profile = profiles.get(row.device_id)
        if model not in versions or profile is None:
            self._unknown_models += 1
            return
        name, _, version = model.partition(":")
        key = (name, version, profile)
        serving = self._serving.get(key)
        if serving is None:
            if len(self._serving) >= _MAX_SERVING_KEYS:
                self._unknown_models += 1
                return
            serving = self._serving[key] = _Serving()
        counts = row.latency_counts or []
        if len(counts) == len(_LE):
            for i, n in enumerate(counts):
                serving.buckets[i] += n
        serving.requests += row.requests
        serving.errors += row.errors
        serving.seen_at = now

    # -- families --------------------------------------------------------------------------

    def _device_families(self, devices: Sequence[Device]) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "edgefleet_devices", "Enrolled devices, by whether they are online.", labels=["online"]
        )
        by_profile = GaugeMetricFamily(
            "edgefleet_profile_devices",
            "Enrolled devices by profile and whether they are online.",
            labels=["profile", "online"],
        )
        counts: dict[tuple[str, bool], int] = {}
        for d in devices:
            counts[(d.profile, d.online)] = counts.get((d.profile, d.online), 0) + 1
        for flag in (True, False):
            n = sum(v for (_, o), v in counts.items() if o is flag)
            total.add_metric([str(flag).lower()], n)
        for (profile, flag), n in sorted(counts.items()):
            by_profile.add_metric([profile, str(flag).lower()], n)
        yield total
        yield by_profile
        if len(devices) > self.max_device_series:
            return  # the per-profile families above still describe the fleet
        up = GaugeMetricFamily(
            "edgefleet_device_up", "1 while the device says it is online.", labels=["device"]
        )
        seen = GaugeMetricFamily(
            "edgefleet_device_last_seen_timestamp_seconds",
            "When the controller last heard from the device (Unix time).",
            labels=["device"],
        )
        host = {
            "cpu_percent": GaugeMetricFamily(
                "edgefleet_device_cpu_percent", "Device CPU use, percent.", labels=["device"]
            ),
            "memory_used_bytes": GaugeMetricFamily(
                "edgefleet_device_memory_used_bytes", "Device memory in use.", labels=["device"]
            ),
            "temperature_c": GaugeMetricFamily(
                "edgefleet_device_temperature_celsius", "Device SoC temperature.", labels=["device"]
            ),
            "disk_free_bytes": GaugeMetricFamily(
                "edgefleet_device_disk_free_bytes", "Free space on the device's state disk.",
                labels=["device"],
            ),
        }  # fmt: skip
        for d in devices:
            up.add_metric([d.name], 1.0 if d.online else 0.0)
            when = as_utc(d.last_seen)
            if when is not None:
                seen.add_metric([d.name], when.timestamp())
            stats = self._hosts.get(d.id or 0)
            for attr, family in host.items():
                value = getattr(stats, attr, None) if stats else None
                if value is not None:
                    family.add_metric([d.name], float(value))
        yield up
        yield seen
        yield from host.values()

    def _deployment_families(self, session: Session) -> Iterator[Metric]:
        latest = select(func.max(Deployment.id)).group_by(col(Deployment.device_id))
        per_device = session.exec(
            select(Deployment.state, func.count())
            .where(col(Deployment.id).in_(latest.scalar_subquery()))
            .group_by(col(Deployment.state))
        ).all()
        family = GaugeMetricFamily(
            "edgefleet_device_deployments",
            "Devices by the state of their latest deployment row (the current state).",
            labels=["state"],
        )
        found = dict(per_device)
        for state in DeploymentState:
            family.add_metric([state.value], found.get(state.value, 0))
        yield family
        unfinished = func.sum(case((col(Deployment.state).in_([*_FINISHED, *_BAD]), 0), else_=1))
        bad = func.sum(case((col(Deployment.state).in_(_BAD), 1), else_=0))
        rows = session.exec(select(unfinished, bad).group_by(col(Deployment.deployment_id))).all()
        overall = {"active": 0, "failed": 0, "completed": 0}
        for open_rows, bad_rows in rows:
            overall["active" if open_rows else "failed" if bad_rows else "completed"] += 1
        deployments = GaugeMetricFamily(
            "edgefleet_deployments",
            "Deployments by overall state: active (a device not finished), failed (a device "
            "failed or rolled back), completed. A deployment is a one-wave rollout.",
            labels=["state"],
        )
        for label, n in overall.items():
            deployments.add_metric([label], n)
        yield deployments
        by_state = dict(
            session.exec(select(Rollout.state, func.count()).group_by(col(Rollout.state))).all()
        )
        rollouts = GaugeMetricFamily(
            "edgefleet_rollouts",
            "Rollouts by state (a plain deploy is a one-wave rollout without gates).",
            labels=["state"],
        )
        for rollout_state in RolloutState:
            rollouts.add_metric([rollout_state.value], by_state.get(rollout_state.value, 0))
        yield rollouts

    def _serving_families(self) -> Iterator[Metric]:
        labels = ["model", "version", "profile"]
        latency = HistogramMetricFamily(
            "edgefleet_inference_latency_seconds",
            "Inference latency on devices, merged from their fixed-bucket histograms, by "
            "model version and profile.",
            labels=labels,
        )
        requests = CounterMetricFamily(
            "edgefleet_inference_requests", "Inference requests devices served.", labels=labels
        )
        errors = CounterMetricFamily(
            "edgefleet_inference_errors", "Inference requests that failed.", labels=labels
        )
        for key, s in sorted(self._serving.items()):
            running, cumulative = 0, []
            for le, n in zip(_LE, s.buckets, strict=True):
                running += n
                cumulative.append((le, float(running)))
            latency.add_metric(list(key), cumulative, sum_value=None)
            # no _sum (buckets carry no exact sum), but _count, which rate() panels use
            latency.samples.append(
                Sample(latency.name + "_count", dict(zip(labels, key, strict=True)), running)
            )
            requests.add_metric(list(key), s.requests)
            errors.add_metric(list(key), s.errors)
        yield latency
        yield requests
        yield errors
        yield CounterMetricFamily(
            "edgefleet_telemetry_unknown_model",
            "Telemetry intervals naming no registered model version (not made labels).",
            value=self._unknown_models,
        )
