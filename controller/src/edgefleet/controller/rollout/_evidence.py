"""What the registry knows about each device of a wave, as the gates take it.

For a device that committed: the latency histogram, requests and errors its telemetry
reported for the new deployment since the swap, and the same for its previous model over
a window of the same length just before the swap (the device's own baseline). Both sides
are the device's own clock (the swap is the ``committed`` event's time, telemetry is
stamped when sent), so clock skew between device and controller does not matter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared import N_BUCKETS

from ..registry import (
    Deployment,
    DeploymentKind,
    DeploymentState,
    Device,
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


class _Sums:
    __slots__ = ("counts", "errors", "requests")

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.requests = 0
        self.errors = 0

    def add(self, counts: list[int] | None, requests: int, errors: int) -> None:
        if counts and len(counts) == N_BUCKETS:
            self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.requests += requests
        self.errors += errors


def wave_evidence(
    session: Session,
    rollout: Rollout,
    wave: RolloutWave,
    limit_of: Callable[[str], float | None],
    *,
    with_telemetry: bool = True,
) -> list[DeviceEvidence]:
    """One ``DeviceEvidence`` per counted device of ``wave``; ``limit_of(profile)`` gives a
    profile's latency limit. Without telemetry only the outcomes are read (install gate)."""
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
    new: dict[int, _Sums] = defaultdict(_Sums)
    base: dict[int, _Sums] = defaultdict(_Sums)
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
        _read_telemetry(session, rollout.rollout_id, swaps, previous, new, base)
    out = []
    for row, device in rows:
        sums = new.get(row.device_id)
        committed = row.state == DeploymentState.COMMITTED
        has_base = committed and row.device_id in previous
        out.append(
            DeviceEvidence(
                device=device.name,
                profile=device.profile,
                outcome=_outcome(row, device),
                new_counts=tuple(sums.counts) if sums else None,
                new_requests=sums.requests if sums else 0,
                new_errors=sums.errors if sums else 0,
                baseline_counts=tuple(base[row.device_id].counts) if has_base else None,
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


def _read_telemetry(
    session: Session,
    deployment_id: str,
    swaps: dict[int, datetime | None],
    previous: dict[int, str],
    new: dict[int, _Sums],
    base: dict[int, _Sums],
) -> None:
    """Sum each device's telemetry on the new deployment since its swap, then its previous
    deployment's over a window as long as the new one, just before the swap."""
    devices = [d for d, at in swaps.items() if at is not None]
    if not devices:
        return
    last: dict[int, datetime] = {}
    for device_id, at, counts, requests, errors in session.execute(
        sa.select(  # type: ignore[call-overload]
            Telemetry.device_id,
            Telemetry.at,
            Telemetry.latency_counts,
            Telemetry.requests,
            Telemetry.errors,
        ).where(col(Telemetry.device_id).in_(devices), Telemetry.deployment_id == deployment_id)
    ).all():
        at, swap = as_utc(at), swaps[device_id]
        if at is None or swap is None or at <= swap:
            continue
        new[device_id].add(counts, requests, errors)
        last[device_id] = max(last.get(device_id, at), at)
    wanted = {d: previous[d] for d in devices if d in previous}
    if not wanted:
        return
    earliest = min(at for d in wanted if (at := swaps[d]) is not None) - MAX_BASELINE
    for device_id, deployment, at, counts, requests, errors in session.execute(
        sa.select(  # type: ignore[call-overload]
            Telemetry.device_id,
            Telemetry.deployment_id,
            Telemetry.at,
            Telemetry.latency_counts,
            Telemetry.requests,
            Telemetry.errors,
        ).where(
            col(Telemetry.device_id).in_(list(wanted)),
            col(Telemetry.deployment_id).in_(set(wanted.values())),
            col(Telemetry.at) >= earliest,
        )
    ).all():
        swap = swaps[device_id]
        if deployment != wanted.get(device_id) or swap is None:
            continue
        length = min(last.get(device_id, swap) - swap, MAX_BASELINE)
        at = as_utc(at)
        # the interval that holds the swap reports the old model's last requests after it
        if at is not None and swap - length <= at:
            base[device_id].add(counts, requests, errors)
