"""Choosing a rollout's target devices by name, profile or labels, and the variant each one
gets (its profile's own, else the original)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from edgefleet.shared.errors import ConfigError, NotFound

from ..catalog import ORIGINAL_VARIANT
from ..registry import Deployment, DeploymentState, Device, Variant


def new_deployment_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"dep-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def check_selector(
    devices: list[str] | None, profile: str | None, labels: dict[str, str] | None
) -> dict[str, object]:
    """The selector as stored on a rollout; exactly one way of choosing must be given."""
    chosen = sum(x is not None and x != [] and x != {} for x in (devices, profile, labels))
    if chosen != 1:
        raise ConfigError("choose the targets with exactly one of --device, --profile or --label")
    if devices:
        return {"devices": sorted(devices)}
    if profile is not None:
        return {"profile": profile}
    return {"labels": dict(sorted((labels or {}).items()))}


def select_targets(
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


def variant_for(session: Session, model_version_id: int, profile: str) -> Variant:
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


def supersede_unfinished(session: Session, device: Device) -> None:
    """A device gets one deployment at a time: older pending or waiting ones will never be
    sent."""
    for old in session.exec(
        select(Deployment).where(
            Deployment.device_id == device.id,
            col(Deployment.state).in_(
                [DeploymentState.PENDING.value, DeploymentState.WAITING.value]
            ),
        )
    ).all():
        old.state = DeploymentState.SUPERSEDED.value
        old.updated_at = datetime.now(UTC)
        session.add(old)
