"""Removing a model version from the catalog, with the history that points at it, and its
files from the artifact store.

Deployment rows point at variants and rollouts at versions, and a device's way back (a
rollback order) is computed from its committed rows. So a version is refused while any of
that is live: a device serves it, it is the model a device would roll back to, an
unfinished deployment row needs it, or a rollout of it is active. Once nothing needs it,
the finished history goes with it, in one transaction: the deployment rows of its variants
and its rollouts (their waves and gate evaluations with them). Rollback rows of those
rollouts that returned devices to *another* version stay, detached from the rollout like
a hand-made rollback, because devices may be serving through them. Events and telemetry
name deployments and models by string and stay as they were; ``status`` and ``events``
read the same afterwards except that the removed rollouts are gone from ``rollout list``.

Keeping the rows and marking the version removed would keep ``rollout list`` whole too,
but needs a column the schema does not have (a future migration could add one).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared.errors import Conflict

from ..home import Home
from ..registry import (
    ACTIVE_ROLLOUT_STATES,
    FINISHED_STATES,
    Artifact,
    Deployment,
    Device,
    Model,
    ModelVersion,
    Rollout,
    Variant,
)
from ._gc import delete_files
from ._versions import find_version, parse_model_ref

_FINISHED = [s.value for s in FINISHED_STATES]
_ACTIVE = [s.value for s in ACTIVE_ROLLOUT_STATES]


@dataclass(frozen=True)
class ModelRemoval:
    """What ``remove_model_version`` deleted."""

    ref: str
    variants: list[str]
    deployment_rows: int  # finished rows of its variants
    rollouts: list[str]  # the rollout ids of the version
    detached_rollback_rows: int  # rows of those rollouts that went back to another version
    model_removed: bool  # it was the model's last version
    artifacts: list[str]  # sha256 of the artifact rows no other variant used
    files_deleted: int
    bytes_freed: int


def remove_model_version(home: Home, ref: str) -> ModelRemoval:
    """Remove model version ``ref`` (NAME:VERSION): refused with Conflict, naming the
    devices and rollouts, while anything needs it (see the module); otherwise its variants,
    finished deployment rows and rollouts go, the model too when this was its last version,
    and then the files of artifacts no other variant uses (unless a benchmark grant still
    lets a device read one)."""
    name, version = parse_model_ref(ref)
    with home.session(write=True) as session:
        row = find_version(session, name, version)
        variants = session.exec(select(Variant).where(Variant.model_version_id == row.id)).all()
        variant_ids = [v.id for v in variants]
        _refuse_if_needed(session, f"{name}:{version}", row, variant_ids)
        rollouts = session.exec(select(Rollout).where(Rollout.model_version_id == row.id)).all()
        rollout_ids = [r.id for r in rollouts]
        detached = 0
        if rollout_ids:
            detached = _rowcount(
                session.execute(
                    sa.update(Deployment)
                    .where(
                        col(Deployment.rollout_id).in_(rollout_ids),
                        col(Deployment.variant_id).not_in(variant_ids),
                    )
                    .values(rollout_id=None, wave=None)
                )
            )
        deleted_rows = _rowcount(
            session.execute(
                sa.delete(Deployment).where(col(Deployment.variant_id).in_(variant_ids))
            )
        )
        if rollout_ids:  # waves and gate evaluations go by ON DELETE CASCADE
            session.execute(sa.delete(Rollout).where(col(Rollout.id).in_(rollout_ids)))
        shas = {v.artifact_sha256 for v in variants}
        session.execute(sa.delete(Variant).where(col(Variant.id).in_(variant_ids)))
        session.execute(sa.delete(ModelVersion).where(col(ModelVersion.id) == row.id))
        model_removed = (
            session.exec(
                select(ModelVersion.id).where(ModelVersion.model_id == row.model_id)
            ).first()
            is None
        )
        if model_removed:
            session.execute(sa.delete(Model).where(col(Model.id) == row.model_id))
        still_used = set(
            session.exec(
                select(Variant.artifact_sha256).where(col(Variant.artifact_sha256).in_(shas))
            ).all()
        )
        orphans = sorted(shas - still_used)
        if orphans:
            session.execute(sa.delete(Artifact).where(col(Artifact.sha256).in_(orphans)))
    # after the commit: a failure here leaves files that `artifacts gc` collects
    files, freed = delete_files(home, orphans)
    return ModelRemoval(
        ref=f"{name}:{version}",
        variants=sorted(v.name for v in variants),
        deployment_rows=deleted_rows,
        rollouts=sorted(r.rollout_id for r in rollouts),
        detached_rollback_rows=detached,
        model_removed=model_removed,
        artifacts=orphans,
        files_deleted=files,
        bytes_freed=freed,
    )


def _refuse_if_needed(
    session: Session, ref: str, row: ModelVersion, variant_ids: list[int | None]
) -> None:
    reasons: list[str] = []
    serving = set(_devices_on(session, Device.serving_deployment_id, variant_ids))
    serving |= set(
        session.exec(
            select(Device.name).where(
                col(Device.serving_model).startswith(f"{ref}/", autoescape=True)
            )
        ).all()
    )
    if serving:
        reasons.append(f"{_names(sorted(serving))} serve(s) it")
    previous = set(_devices_on(session, Device.previous_deployment_id, variant_ids)) - serving
    if previous:
        reasons.append(f"it is the model {_names(sorted(previous))} would roll back to")
    unfinished = session.exec(
        select(Deployment.deployment_id, Device.name)
        .join(Device, col(Device.id) == col(Deployment.device_id))
        .where(
            col(Deployment.variant_id).in_(variant_ids),
            col(Deployment.state).not_in(_FINISHED),
        )
        .order_by(col(Deployment.deployment_id), col(Device.name))
    ).all()
    if unfinished:
        ids = sorted({d for d, _ in unfinished})
        reasons.append(
            f"unfinished deployment(s) {', '.join(ids)} need it "
            f"({_names([n for _, n in unfinished])})"
        )
    active = session.exec(
        select(Rollout.rollout_id).where(
            Rollout.model_version_id == row.id, col(Rollout.state).in_(_ACTIVE)
        )
    ).all()
    if active:
        reasons.append(
            f"rollout(s) {', '.join(sorted(active))} still active "
            "(`edgefleet rollout abort ID` first)"
        )
    if reasons:
        raise Conflict(f"cannot remove {ref}: " + "; ".join(reasons))


def _devices_on(session: Session, pointer: object, variant_ids: list[int | None]) -> list[str]:
    """Devices whose ``pointer`` (serving or previous deployment id) names one of their own
    deployment rows of these variants."""
    return list(
        session.exec(
            select(Device.name)
            .join(
                Deployment,
                sa.and_(
                    col(Deployment.device_id) == col(Device.id),
                    col(Deployment.deployment_id) == pointer,
                ),
            )
            .where(col(Deployment.variant_id).in_(variant_ids))
            .distinct()
        ).all()
    )


def _names(names: list[str], limit: int = 5) -> str:
    unique = list(dict.fromkeys(names))
    shown = ", ".join(unique[:limit])
    return shown + (f" and {len(unique) - limit} more" if len(unique) > limit else "")


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
