"""What the registry knows about each device of a wave, as the gates take it.

For a device that committed: the requests and errors its telemetry reported for the new
deployment since the swap, the latency histogram of each interval from the bake's settle
after the swap on, and its previous model's intervals, as many, that ended before the
device started on the deployment (the device's own baseline). Both sides are the device's
own clock (the swap is the ``committed`` event's time, the start its first event's,
telemetry is stamped when sent), so clock skew between device and controller does not
matter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared import N_BUCKETS

from ..registry import (
    Deployment,
    DeploymentKind,
    DeploymentState,
    Device,
    Event,
    Rollout,
    RolloutWave,
    Telemetry,
    as_utc,
)
from ._gates import DeviceEvidence

# A baseline window longer than this is cut (a bake of days would read days of telemetry).
MAX_BASELINE = timedelta(hours=24)

_FAILED_LIKE = {
    DeploymentState.FAILED.value: "failed",
    DeploymentState.ROLLED_BACK.value: "rolled_back",
}


class _Window:
    """One device's telemetry on one side: the latency histogram of each interval in time
    order, and the requests and errors they hold."""

    __slots__ = ("errors", "first", "intervals", "last", "requests")

    def __init__(self) -> None:
        self.intervals: list[tuple[int, ...]] = []
        self.requests = 0
        self.errors = 0
        self.first: datetime | None = None  # when the first interval began
        self.last: datetime | None = None  # when the last one ended

    def add(
        self, counts: list[int] | None, requests: int, errors: int, at: datetime, length_s: float
    ) -> None:
        valid = counts is not None and len(counts) == N_BUCKETS
        self.intervals.append(tuple(counts) if valid else (0,) * N_BUCKETS)  # type: ignore[arg-type]
        self.requests += requests
        self.errors += errors
        began = at - timedelta(seconds=length_s)
        self.first = began if self.first is None else min(self.first, began)
        self.last = at if self.last is None else max(self.last, at)

    @property
    def span(self) -> timedelta:
        if self.first is None or self.last is None:
            return timedelta(0)
        return self.last - self.first


def wave_evidence(
    session: Session,
    rollout: Rollout,
    wave: RolloutWave,
    limit_of: Callable[[str], float | None],
    *,
    settle_s: float = 0.0,
    with_telemetry: bool = True,
) -> list[DeviceEvidence]:
    """One ``DeviceEvidence`` per counted device of ``wave``; ``limit_of(profile)`` gives a
    profile's latency limit; latency is read from ``settle_s`` after each swap on. Without
    telemetry only the outcomes are read (install gate)."""
    counted = list(wave.devices or [])
    if not counted:
        return []
    rows = session.exec(
        select(Deployment, Device)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .where(
            Deployment.rollout_id == rollout.id,
            Deployment.kind == DeploymentKind.DEPLOY.value,
            col(Deployment.device_id).in_(counted),
        )
    ).all()
    new: dict[int, _Window] = defaultdict(_Window)
    latency: dict[int, _Window] = defaultdict(_Window)
    base: dict[int, _Window] = defaultdict(_Window)
    previous: dict[int, str] = {}
    if with_telemetry:
        swaps = {
            row.device_id: as_utc(row.committed_at)
            for row, _ in rows
            if row.state == DeploymentState.COMMITTED and row.committed_at is not None
        }
        previous = {
            device.id: prev  # type: ignore[misc]
            for _, device in rows
            if (prev := _previous(device, rollout.rollout_id)) is not None
        }
        starts = _first_events(session, rollout.rollout_id, list(swaps))
        sides = _Sides(new, latency, base)
        _read_new(session, rollout.rollout_id, swaps, settle_s, sides)
        _read_baseline(session, swaps, starts, previous, sides)
    out = []
    for row, device in rows:
        since = new.get(row.device_id)
        committed = row.state == DeploymentState.COMMITTED
        has_base = committed and row.device_id in previous
        out.append(
            DeviceEvidence(
                device=device.name,
                profile=device.profile,
                outcome=_outcome(row, device),
                new_intervals=tuple(latency[row.device_id].intervals),
                new_requests=since.requests if since else 0,
                new_errors=since.errors if since else 0,
                baseline_intervals=tuple(base[row.device_id].intervals) if has_base else None,
                limit_ms=limit_of(device.profile),
            )
        )
    return sorted(out, key=lambda e: e.device)


def _outcome(row: Deployment, device: Device) -> str:
    if row.state == DeploymentState.COMMITTED:
        # a status sent after the commit that names another model: the device fell back
        committed_at, status_at = as_utc(row.committed_at), as_utc(device.status_at)
        if (
            committed_at is not None
            and status_at is not None
            and status_at > committed_at
            and device.serving_deployment_id != row.deployment_id
        ):
            return "fallback"
        return "committed"
    if row.state == DeploymentState.FAILED and row.error_code == "device_lost":
        return "lost"
    return _FAILED_LIKE.get(row.state, "installing" if row.state not in _DONE else "failed")


_DONE = {
    DeploymentState.SUPERSEDED.value,
    DeploymentState.CANCELLED.value,
}


def _previous(device: Device, deployment_id: str) -> str | None:
    """The deployment the device served before ``deployment_id``, from its status."""
    if device.serving_deployment_id == deployment_id:
        return device.previous_deployment_id
    return device.serving_deployment_id  # its status still predates the swap


@dataclass
class _Sides:
    new: dict[int, _Window]  # since the swap: requests and errors
    latency: dict[int, _Window]  # since the swap plus the settle: latency
    base: dict[int, _Window]  # the previous model before the device started the deployment


def _first_events(session: Session, deployment_id: str, devices: list[int]) -> dict[int, datetime]:
    """When each device started on the deployment (its first event, on its own clock)."""
    if not devices:
        return {}
    found = session.execute(
        sa.select(Event.device_id, sa.func.min(Event.at))  # type: ignore[call-overload]
        .where(Event.deployment_id == deployment_id, col(Event.device_id).in_(devices))
        .group_by(Event.device_id)
    ).all()
    return {device_id: when for device_id, at in found if (when := as_utc(at)) is not None}


def _read_new(
    session: Session,
    deployment_id: str,
    swaps: dict[int, datetime | None],
    settle_s: float,
    sides: _Sides,
) -> None:
    """Each device's intervals on the new deployment after its swap; latency only from the
    intervals that began ``settle_s`` after it (an interval is stamped at its end)."""
    devices = [d for d, at in swaps.items() if at is not None]
    if not devices:
        return
    settle = timedelta(seconds=settle_s)
    for device_id, at, interval_s, counts, requests, errors in session.execute(
        sa.select(  # type: ignore[call-overload]
            Telemetry.device_id,
            Telemetry.at,
            Telemetry.interval_s,
            Telemetry.latency_counts,
            Telemetry.requests,
            Telemetry.errors,
        )
        .where(col(Telemetry.device_id).in_(devices), Telemetry.deployment_id == deployment_id)
        .order_by(col(Telemetry.at))
    ).all():
        at, swap = as_utc(at), swaps[device_id]
        if at is None or swap is None or at <= swap:
            continue
        length = interval_s or 0.0
        sides.new[device_id].add(counts, requests, errors, at, length)
        if at - timedelta(seconds=length) >= swap + settle:
            sides.latency[device_id].add(counts, requests, errors, at, length)


def _read_baseline(
    session: Session,
    swaps: dict[int, datetime | None],
    starts: dict[int, datetime],
    previous: dict[int, str],
    sides: _Sides,
) -> None:
    """Each device's previous deployment over as long as its new side, and at most as many
    intervals: the last that ended before the device started on the new deployment (its
    first event; the swap when no event arrived), as downloading and verifying run beside
    the old model and would slow its last seconds. Telemetry from before that span (a device
    that served nobody for a while) is no baseline."""
    ends = {
        d: min(starts.get(d, swap), swap)
        for d, swap in swaps.items()
        if swap is not None and d in previous and sides.latency[d].intervals
    }
    if not ends:
        return
    earliest = min(ends.values()) - MAX_BASELINE
    found: dict[int, list[tuple[datetime, float, list[int] | None, int, int]]] = defaultdict(list)
    for device_id, deployment, at, length, counts, requests, errors in session.execute(
        sa.select(  # type: ignore[call-overload]
            Telemetry.device_id,
            Telemetry.deployment_id,
            Telemetry.at,
            Telemetry.interval_s,
            Telemetry.latency_counts,
            Telemetry.requests,
            Telemetry.errors,
        ).where(
            col(Telemetry.device_id).in_(list(ends)),
            col(Telemetry.deployment_id).in_({previous[d] for d in ends}),
            col(Telemetry.at) >= earliest,
        )
    ).all():
        at, end = as_utc(at), ends[device_id]
        if at is None or deployment != previous[device_id] or at > end:
            continue
        span = min(sides.latency[device_id].span, MAX_BASELINE)
        if at - timedelta(seconds=length or 0.0) >= end - span - _SLACK:
            found[device_id].append((at, length or 0.0, counts, requests, errors))
    for device_id, rows in found.items():
        wanted = len(sides.latency[device_id].intervals)
        for at, length, counts, requests, errors in sorted(rows, key=lambda r: r[0])[-wanted:]:
            sides.base[device_id].add(counts, requests, errors, at, length)


# Telemetry is sent on the device's own timer: an interval that began this much before the
# baseline's span still counts as inside it.
_SLACK = timedelta(seconds=1)
