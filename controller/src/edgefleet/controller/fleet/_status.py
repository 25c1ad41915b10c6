"""The fleet's read side: what every device runs and how fast, and the events they reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sqlmodel import col, select

from edgefleet.shared.errors import NotFound

from ..home import Home
from ..registry import (
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Event,
    EventPublic,
    Model,
    ModelVersion,
    Telemetry,
    Variant,
    as_utc,
)


def fleet_status(home: Home) -> list[DeviceStatus]:
    with home.session() as session:
        out = []
        for device in session.exec(select(Device).order_by(Device.name)).all():
            latest = session.exec(
                select(Deployment)
                .where(Deployment.device_id == device.id)
                .order_by(col(Deployment.id).desc())
            ).first()
            committed = session.exec(
                select(Deployment, Variant, ModelVersion, Model)
                .join(Variant, Variant.id == Deployment.variant_id)  # type: ignore[arg-type]
                .join(ModelVersion, ModelVersion.id == Variant.model_version_id)  # type: ignore[arg-type]
                .join(Model, Model.id == ModelVersion.model_id)  # type: ignore[arg-type]
                .where(
                    Deployment.device_id == device.id,
                    Deployment.state == DeploymentState.COMMITTED.value,
                )
                .order_by(col(Deployment.updated_at).desc(), col(Deployment.id).desc())
            ).first()
            p95 = session.exec(
                select(Telemetry.p95_ms)
                .where(Telemetry.device_id == device.id, col(Telemetry.p95_ms).is_not(None))
                .order_by(col(Telemetry.at).desc(), col(Telemetry.id).desc())
            ).first()
            out.append(
                DeviceStatus(
                    device=device.name,
                    online=device.online,
                    profile=device.profile,
                    model=f"{committed[3].name}:{committed[2].version}" if committed else None,
                    state=latest.state if latest else None,
                    p95_ms=p95,
                    last_seen=as_utc(device.last_seen),
                )
            )
        return out


def list_events(
    home: Home, *, device: str | None = None, limit: int = 200, after: int = 0
) -> list[EventPublic]:
    """The newest ``limit`` events with an id above ``after``, oldest first."""
    with home.session() as session:
        query = select(Event, Device.name).join(Device, Device.id == Event.device_id)  # type: ignore[arg-type]
        if device is not None:
            if session.exec(select(Device.id).where(Device.name == device)).first() is None:
                raise NotFound(f"unknown device {device!r}")
            query = query.where(Device.name == device)
        rows = session.exec(
            query.where(col(Event.id) > after).order_by(col(Event.id).desc()).limit(limit)
        ).all()
        return [
            EventPublic(
                id=e.id,  # type: ignore[arg-type]
                at=as_utc(e.at),  # type: ignore[arg-type]
                device=name,
                deployment_id=e.deployment_id,
                state=e.state,
                ok=e.ok,
                error_code=e.error_code,
                message=e.message,
                details=e.details,
            )
            for e, name in reversed(rows)
        ]


def follow_events(
    home: Home,
    *,
    device: str | None = None,
    limit: int = 200,
    poll_s: float = 0.5,
    stopped: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[EventPublic]:
    """The newest ``limit`` events, then every new one as the daemon stores it, until
    ``stopped()`` is true (checked between polls) or the caller stops iterating."""
    import time

    pause = sleep or time.sleep
    rows = list_events(home, device=device, limit=limit)
    last = 0
    while True:
        for event in rows:
            last = max(last, event.id)
            yield event
        if stopped():
            return
        pause(poll_s)
        rows = list_events(home, device=device, limit=1000, after=last)
