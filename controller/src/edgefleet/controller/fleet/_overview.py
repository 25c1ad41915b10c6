"""The fleet as the web page and the HTTP API show it: every device with its desired and
serving model, p95 and host stats; deployments with each device's progress; p95 over time
per model version. Each is a handful of queries, whatever the fleet's size.

Deployments (rollouts) are in ``_deployment_views``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from edgefleet.shared import LatencyHistogram

from ..home import Home
from ..registry import (
    Deployment,
    DeploymentState,
    Device,
    Telemetry,
    as_utc,
    utcnow,
)
from ._deployment_views import variant_models

# The newest telemetry rows read for each device's latest p95 and host stats: an id range on
# the primary key, so the cost does not grow with the table (at 10,000 devices reporting
# every 10 s this is the last ~50 s; a device silent for longer shows no p95).
RECENT_TELEMETRY_ROWS = 50_000
# The most telemetry rows one latency chart reads.
CHART_ROWS = 200_000


class DeviceRow(BaseModel):
    device: str
    online: bool
    profile: str
    labels: dict[str, str]
    desired: str | None  # name:version of the device's latest deployment
    serving: str | None  # name:version of its latest committed deployment
    state: str | None  # of its latest deployment
    last_seen: datetime | None
    agent_version: str
    p95_ms: float | None = None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    temperature_c: float | None = None
    disk_free_bytes: int | None = None


class FleetSummary(BaseModel):
    devices: int
    online: int
    profiles: dict[str, int]
    states: dict[str, int]  # devices by their latest deployment's state


class FleetOverview(BaseModel):
    generated_at: datetime
    summary: FleetSummary
    devices: list[DeviceRow]


class LatencySeries(BaseModel):
    model: str  # name:version
    points: list[tuple[datetime, float | None]]  # bucket start, p95 ms of merged histograms


class LatencyChart(BaseModel):
    since: datetime
    step_s: int
    series: list[LatencySeries]


def fleet_overview(
    home: Home,
    *,
    online: bool | None = None,
    profile: str | None = None,
    search: str | None = None,
) -> FleetOverview:
    """Every device (or those matching the filters) and a summary of the whole fleet."""
    with home.session() as session:
        devices = session.exec(select(Device).order_by(col(Device.name))).all()
        models = variant_models(session)
        latest_ids = select(func.max(Deployment.id)).group_by(col(Deployment.device_id))
        latest = {
            d.device_id: d
            for d in session.exec(
                select(Deployment).where(col(Deployment.id).in_(latest_ids.scalar_subquery()))
            ).all()
        }
        committed_ids = (
            select(func.max(Deployment.id))
            .where(Deployment.state == DeploymentState.COMMITTED.value)
            .group_by(col(Deployment.device_id))
        )
        committed = {
            device_id: variant_id
            for device_id, variant_id in session.exec(
                select(Deployment.device_id, Deployment.variant_id).where(
                    col(Deployment.id).in_(committed_ids.scalar_subquery())
                )
            ).all()
        }
        recent = _recent_telemetry(session)
    rows = []
    for d in devices:
        last = latest.get(d.id or 0)
        stats = recent.get(d.id or 0, {})
        rows.append(
            DeviceRow(
                device=d.name,
                online=d.online,
                profile=d.profile,
                labels=dict(d.labels or {}),
                desired=models.get(last.variant_id) if last else None,
                serving=models.get(committed[d.id]) if d.id in committed else None,
                state=last.state if last else None,
                last_seen=as_utc(d.last_seen),
                agent_version=d.agent_version,
                **stats,
            )
        )
    summary = FleetSummary(
        devices=len(rows),
        online=sum(r.online for r in rows),
        profiles=_count(r.profile for r in rows),
        states=_count(r.state for r in rows if r.state),
    )
    wanted = [
        r
        for r in rows
        if (online is None or r.online is online)
        and (profile is None or r.profile == profile)
        and (not search or search.lower() in f"{r.device} {r.serving or ''}".lower())
    ]
    return FleetOverview(generated_at=utcnow(), summary=summary, devices=wanted)


def _recent_telemetry(session: Session) -> dict[int, dict[str, Any]]:
    """device id -> its newest p95 and host stats among the newest telemetry rows."""
    top = session.exec(select(func.max(Telemetry.id))).one() or 0
    t = Telemetry.__table__.c  # type: ignore[attr-defined]
    rows = session.execute(
        sa.select(
            t.device_id, t.p95_ms, t.cpu_percent, t.memory_used_bytes, t.temperature_c,
            t.disk_free_bytes,
        )
        .where(t.id > top - RECENT_TELEMETRY_ROWS)
        .order_by(t.id)
    ).all()  # fmt: skip
    out: dict[int, dict[str, Any]] = {}
    for device_id, p95, cpu, memory, temperature, disk in rows:  # oldest first: newest wins
        stats = out.setdefault(device_id, {"p95_ms": None})
        if p95 is not None:
            stats["p95_ms"] = p95
        if cpu is not None or memory is not None:
            stats.update(
                cpu_percent=cpu,
                memory_used_bytes=memory,
                temperature_c=temperature,
                disk_free_bytes=disk,
            )
    return out


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(sorted(out.items()))


class LatencyHistory:
    """p95 per model version (name:version, all profiles) in ``step_s`` slots over the last
    ``keep_minutes``, from the devices' histograms merged per slot. Merged incrementally:
    each chart reads only the telemetry rows stored since the previous one (the first reads
    at most CHART_ROWS), so a page refreshing every few seconds costs a few rows each time."""

    def __init__(self, home: Home, *, step_s: int = 30, keep_minutes: int = 60) -> None:
        self.home = home
        self.step_s = step_s
        self.keep_minutes = keep_minutes
        self._lock = threading.Lock()
        self._last_id: int | None = None
        self._slots: dict[tuple[str, int], list[int]] = {}  # (model, slot start) -> counts

    def chart(self, minutes: int = 30) -> LatencyChart:
        minutes = min(minutes, self.keep_minutes)
        now = utcnow()
        with self._lock:
            self._read(now)
            since = int((now - timedelta(minutes=minutes)).timestamp())
            since -= since % self.step_s
            merged: dict[str, list[tuple[datetime, float | None]]] = defaultdict(list)
            for (model, slot), counts in sorted(self._slots.items()):
                if slot >= since:
                    when = datetime.fromtimestamp(slot, UTC)
                    merged[model].append((when, LatencyHistogram(counts).percentile(95)))
        return LatencyChart(
            since=datetime.fromtimestamp(since, UTC),
            step_s=self.step_s,
            series=[LatencySeries(model=m, points=p) for m, p in sorted(merged.items())],
        )

    def _read(self, now: datetime) -> None:
        oldest = now - timedelta(minutes=self.keep_minutes)
        with self.home.session() as session:
            query = select(Telemetry.id, Telemetry.at, Telemetry.model, Telemetry.latency_counts)
            if self._last_id is None:
                top = session.exec(select(func.max(Telemetry.id))).one() or 0
                query = query.where(col(Telemetry.id) > top - CHART_ROWS)
            else:
                query = query.where(col(Telemetry.id) > self._last_id)
            rows = session.exec(query.where(col(Telemetry.model).is_not(None))).all()
        self._last_id = max([self._last_id or 0, *(r[0] or 0 for r in rows)])
        for _, at, model, counts in rows:
            when = as_utc(at)
            if not model or not counts or when is None or when < oldest:
                continue
            stamp = int(when.timestamp())
            key = (model.split("/", 1)[0], stamp - stamp % self.step_s)
            slot = self._slots.get(key)
            if slot is None:
                self._slots[key] = list(counts)
            elif len(slot) == len(counts):
                self._slots[key] = [a + b for a, b in zip(slot, counts, strict=True)]
        cutoff = int(oldest.timestamp())
        for key in [k for k in self._slots if k[1] < cutoff - self.step_s]:
            del self._slots[key]


def latency_chart(home: Home, *, minutes: int = 30, step_s: int = 60) -> LatencyChart:
    """The chart read once, from scratch (``LatencyHistory`` keeps it up to date)."""
    return LatencyHistory(home, step_s=step_s, keep_minutes=minutes).chart(minutes)
