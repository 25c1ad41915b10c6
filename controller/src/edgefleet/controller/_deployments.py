"""Deployments as the operator sees them: recording one, and reading the fleet's status and events.

``deploy`` only writes rows (state ``pending``); the daemon (``edgefleet serve``)
signs and sends them.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, SQLModel, col, select

from edgefleet.shared.errors import ConfigError, NotFound

from ._catalog import ORIGINAL_VARIANT, find_version, parse_model_ref
from ._home import Home
from ._models import (
    Deployment,
    DeploymentState,
    Device,
    Event,
    Model,
    ModelVersion,
    Telemetry,
    Variant,
    as_utc,
)


class DeploymentPublic(SQLModel):
    deployment_id: str
    device: str
    profile: str
    model: str  # name:version/variant
    state: str
    error_code: str | None = None
    error_message: str | None = None


class DeviceStatus(SQLModel):
    device: str
    online: bool
    profile: str
    model: str | None  # name:version of the last committed deployment
    state: str | None  # of the device's latest deployment
    p95_ms: float | None  # last reported by the device
    last_seen: datetime | None


class EventPublic(SQLModel):
    id: int
    at: datetime
    device: str
    deployment_id: str | None
    state: str
    ok: bool
    error_code: str | None
    message: str
    details: dict[str, Any] | None


FINISHED = frozenset(
    {
        DeploymentState.COMMITTED.value,
        DeploymentState.FAILED.value,
        DeploymentState.ROLLED_BACK.value,
        DeploymentState.SUPERSEDED.value,
    }
)


def deployment_progress(home: Home, deployment_id: str) -> list[DeploymentPublic]:
    """Where every device of one deployment is now."""
    with home.session() as session:
        rows = session.exec(
            select(Deployment, Device, Variant)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .join(Variant, Variant.id == Deployment.variant_id)  # type: ignore[arg-type]
            .where(Deployment.deployment_id == deployment_id)
            .order_by(col(Device.name))
        ).all()
        if not rows:
            raise NotFound(f"unknown deployment {deployment_id!r}")
        out = []
        for dep, device, variant in rows:
            version = session.get(ModelVersion, variant.model_version_id)
            model = session.get(Model, version.model_id) if version else None
            ref = f"{model.name}:{version.version}" if model and version else "?"
            out.append(
                DeploymentPublic(
                    deployment_id=dep.deployment_id,
                    device=device.name,
                    profile=device.profile,
                    model=f"{ref}/{variant.name}",
                    state=dep.state,
                    error_code=dep.error_code,
                    error_message=dep.error_message,
                )
            )
        return out


def new_deployment_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"dep-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def deploy(
    home: Home,
    ref: str,
    *,
    devices: list[str] | None = None,
    profile: str | None = None,
    labels: dict[str, str] | None = None,
) -> list[DeploymentPublic]:
    """Record one pending deployment row per target device of model version ``ref``.

    Exactly one way of choosing targets must be given. Unknown devices, an
    unknown profile, an unknown model or an empty selection raise before
    anything is written.
    """
    name, version = parse_model_ref(ref)
    chosen = sum(x is not None and x != [] and x != {} for x in (devices, profile, labels))
    if chosen != 1:
        raise ConfigError("choose the targets with exactly one of --device, --profile or --label")
    if profile is not None:
        home.profile(profile)  # raises NotFound for a profile that does not exist
    with home.session(write=True) as session:
        row = find_version(session, name, version)
        targets = _targets(session, devices=devices, profile=profile, labels=labels)
        deployment_id = new_deployment_id()
        out: list[DeploymentPublic] = []
        for device in targets:
            variant = _variant_for(session, row.id, device.profile)  # type: ignore[arg-type]
            _supersede_unfinished(session, device)
            session.add(
                Deployment(
                    deployment_id=deployment_id,
                    device_id=device.id,  # type: ignore[arg-type]
                    variant_id=variant.id,  # type: ignore[arg-type]
                )
            )
            out.append(
                DeploymentPublic(
                    deployment_id=deployment_id,
                    device=device.name,
                    profile=device.profile,
                    model=f"{name}:{version}/{variant.name}",
                    state=DeploymentState.PENDING.value,
                )
            )
        return out


def _targets(
    session: Session,
    *,
    devices: list[str] | None,
    profile: str | None,
    labels: dict[str, str] | None,
) -> list[Device]:
    if devices:
        found = session.exec(select(Device).where(col(Device.name).in_(devices))).all()
        missing = sorted(set(devices) - {d.name for d in found})
        if missing:
            raise NotFound(f"unknown device(s): {', '.join(missing)}")
        return sorted(found, key=lambda d: d.name)
    query = select(Device).order_by(Device.name)
    if profile is not None:
        query = query.where(Device.profile == profile)
    wanted = (labels or {}).items()
    found = [d for d in session.exec(query).all() if wanted <= (d.labels or {}).items()]
    if not found:
        what = (
            f"profile {profile!r}"
            if profile
            else "labels " + " ".join(f"{k}={v}" for k, v in sorted(wanted))
        )
        raise NotFound(f"no device matches {what}")
    return found


def _variant_for(session: Session, model_version_id: int, profile: str) -> Variant:
    """The variant made for the device's profile if there is one, else the original."""
    variants = session.exec(
        select(Variant)
        .where(Variant.model_version_id == model_version_id)
        .order_by(col(Variant.id))
    ).all()
    for wanted in (lambda v: v.profile == profile, lambda v: v.name == ORIGINAL_VARIANT):
        for v in variants:
            if wanted(v):
                return v
    if not variants:
        raise NotFound("the model version has no deployable variant")
    return variants[0]


def _supersede_unfinished(session: Session, device: Device) -> None:
    """A device gets one deployment at a time: older pending ones will never be sent."""
    for old in session.exec(
        select(Deployment).where(
            Deployment.device_id == device.id,
            Deployment.state == DeploymentState.PENDING.value,
        )
    ).all():
        old.state = DeploymentState.SUPERSEDED.value
        old.updated_at = datetime.now(UTC)
        session.add(old)


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
