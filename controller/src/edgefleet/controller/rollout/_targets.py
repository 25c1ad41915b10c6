"""Choosing a rollout's target devices by name, or by profile and labels, and the variant
each one gets (its profile's own, else the original), within its profile's size budget."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared.errors import ConfigError, Conflict, NotFound

from ..catalog import ORIGINAL_VARIANT
from ..fleet import parse_labels
from ..home import Home
from ..registry import (
    Artifact,
    Deployment,
    DeploymentState,
    Device,
    ModelVersion,
    Rollout,
    RolloutState,
    Variant,
)

log = logging.getLogger(__name__)


def new_deployment_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"dep-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


LabelSelector = Mapping[str, str | Sequence[str]]


def parse_label_selector(items: Iterable[str]) -> dict[str, list[str]]:
    """``["site=lab", "site=home", "room=2"]`` → ``{"site": ["home", "lab"], "room": ["2"]}``.

    A device matches when each key's label is one of that key's values: a key given twice
    means either value, different keys must all match."""
    wanted: dict[str, set[str]] = {}
    for item in items:
        for key, value in parse_labels([item]).items():  # the same syntax as `device add`
            wanted.setdefault(key, set()).add(value)
    return {key: sorted(values) for key, values in wanted.items()}


def _values(labels: LabelSelector | None) -> dict[str, set[str]]:
    return {
        key: {value} if isinstance(value, str) else set(value)
        for key, value in (labels or {}).items()
    }


def check_selector(
    devices: list[str] | None, profile: str | None, labels: LabelSelector | None
) -> dict[str, object]:
    """The selector as stored on a rollout: devices by name, or by profile and/or labels
    (both given: a device must match both). A label with one value is stored as a string,
    with several as a sorted list."""
    by_name = bool(devices)
    by_kind = profile is not None or bool(labels)
    if by_name == by_kind:
        raise ConfigError(
            "choose the targets with exactly one of --device or --profile/--label "
            "(--profile and --label combine)"
        )
    if devices:
        return {"devices": sorted(devices)}
    selector: dict[str, object] = {}
    if profile is not None:
        selector["profile"] = profile
    if labels:
        selector["labels"] = {
            key: next(iter(values)) if len(values) == 1 else sorted(values)
            for key, values in sorted(_values(labels).items())
        }
    return selector


def select_targets(
    session: Session,
    *,
    devices: list[str] | None,
    profile: str | None,
    labels: LabelSelector | None,
) -> list[Device]:
    """The devices named, or those of ``profile`` whose labels match ``labels`` (see
    ``parse_label_selector``); NotFound when a name is unknown or nothing matches."""
    if devices:
        found = session.exec(select(Device).where(col(Device.name).in_(devices))).all()
        missing = sorted(set(devices) - {d.name for d in found})
        if missing:
            raise NotFound(f"unknown device(s): {', '.join(missing)}")
        return sorted(found, key=lambda d: d.name)
    query = select(Device).order_by(Device.name)
    if profile is not None:
        query = query.where(Device.profile == profile)
    wanted = _values(labels)
    # labels are JSON; matching in Python keeps one code path for SQLite and PostgreSQL
    found = [
        d
        for d in session.exec(query).all()
        if all((d.labels or {}).get(key) in values for key, values in wanted.items())
    ]
    if not found:
        what = [f"profile {profile!r}"] if profile is not None else []
        if wanted:
            what.append(
                "labels "
                + " ".join(f"{k}={'|'.join(sorted(v))}" for k, v in sorted(wanted.items()))
            )
        raise NotFound(f"no device matches {' and '.join(what)}")
    return found


def check_budgets(
    home: Home,
    session: Session,
    targets: list[Device],
    version: ModelVersion,
    *,
    ref: str,
    force: bool = False,
) -> None:
    """Refuse to send a device a variant larger than its profile's ``max_size_bytes``
    (ConfigError naming the variant, the profiles and the devices), unless ``force``.
    A device whose profile file is gone has no budget to break."""
    over: dict[tuple[str, str], list[Device]] = {}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    profiles = home.profiles()
    for device in targets:
        profile = profiles.get(device.profile)
        if profile is None:
            continue
        variant = variant_for(session, version.id, device.profile)  # type: ignore[arg-type]
        artifact = session.get(Artifact, variant.artifact_sha256)
        size, budget = (artifact.size if artifact else 0), profile.budgets.max_size_bytes
        if size > budget:
            key = (variant.name, profile.name)
            over.setdefault(key, []).append(device)
            sizes[key] = (size, budget)
    if not over:
        return
    parts = []
    for (variant_name, profile_name), devices in sorted(over.items()):
        size, budget = sizes[(variant_name, profile_name)]
        names = ", ".join(d.name for d in devices[:5]) + (" ..." if len(devices) > 5 else "")
        parts.append(
            f"variant {variant_name} is {_size(size)}, over profile {profile_name}'s size "
            f"budget of {_size(budget)} ({len(devices)} device(s): {names})"
        )
    message = f"{ref}: " + "; ".join(parts)
    if force:
        log.warning("%s; sent anyway (forced)", message)
        return
    first_profile = sorted(over)[0][1]
    raise ConfigError(
        f"{message}. Compress it for the profile (`edgefleet compress {ref} --profile "
        f"{first_profile} --data ...`), or send it anyway with --force"
    )


def _size(n: float) -> str:
    """Bytes as `edgefleet model list` shows them (1 KB = 1024 bytes)."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


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


def supersede_unfinished(session: Session, devices: Sequence[Device]) -> None:
    """A device gets one deployment at a time: older pending or waiting ones will never be
    sent. One statement per few thousand devices, on the index on ``deployment.state``."""
    ids = [d.id for d in devices]
    now = datetime.now(UTC)
    for start in range(0, len(ids), _CHUNK):
        session.execute(
            sa.update(Deployment)
            .where(
                col(Deployment.device_id).in_(ids[start : start + _CHUNK]),
                col(Deployment.state).in_(
                    [DeploymentState.PENDING.value, DeploymentState.WAITING.value]
                ),
            )
            .values(state=DeploymentState.SUPERSEDED.value, updated_at=now)
        )


# Devices per statement: well under every database's limit on bound parameters.
_CHUNK = 5000


# a device's row still part of its rollout: anything but superseded or cancelled
_TAKING_PART = [
    s.value
    for s in DeploymentState
    if s not in (DeploymentState.SUPERSEDED, DeploymentState.CANCELLED)
]
_GATED_ACTIVE = [RolloutState.RUNNING.value, RolloutState.PAUSED.value]


def refuse_overlap(session: Session, targets: Sequence[Device]) -> None:
    """A device takes part in one gated rollout at a time (its gates compare it with
    itself), and nothing else changes what it should serve meanwhile: ``Conflict`` naming
    the rollout to abort or finish first."""
    ids = [d.id for d in targets]
    for start in range(0, len(ids), _CHUNK):
        busy = session.exec(
            select(Rollout.rollout_id, Rollout.plan, Device.name)
            .join(Deployment, col(Deployment.rollout_id) == Rollout.id)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .where(
                col(Rollout.state).in_(_GATED_ACTIVE),
                col(Deployment.device_id).in_(ids[start : start + _CHUNK]),
                col(Deployment.state).in_(_TAKING_PART),
            )
        ).all()
        for rollout_id, plan, device in busy:
            if (plan or {}).get("gates") is not None:
                raise Conflict(
                    f"{device} is in rollout {rollout_id}, which is still running; "
                    f"abort or finish it first (`edgefleet rollout abort {rollout_id}`)"
                )
