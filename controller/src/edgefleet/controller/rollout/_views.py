"""Reading rollouts: the list, one rollout with its waves and rows, and the gate evidence."""

from __future__ import annotations

from collections import Counter

from sqlmodel import Session, col, select

from edgefleet.shared.errors import NotFound

from ..home import Home
from ..registry import (
    ACTIVE_ROLLOUT_STATES,
    Deployment,
    DeploymentKind,
    DeploymentPublic,
    Device,
    GateEvaluation,
    GateEvaluationPublic,
    Model,
    ModelVersion,
    Rollout,
    RolloutDetail,
    RolloutPublic,
    RolloutWave,
    Variant,
    WavePublic,
    as_utc,
)


def find_rollout(session: Session, rollout_id: str) -> Rollout:
    rollout = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).first()
    if rollout is None:
        raise NotFound(f"unknown rollout {rollout_id!r}")
    return rollout


def list_rollouts(home: Home, *, active_only: bool = False, limit: int = 50) -> list[RolloutPublic]:
    """Rollouts, newest first."""
    with home.session() as session:
        query = select(Rollout).order_by(col(Rollout.id).desc()).limit(limit)
        if active_only:
            query = query.where(col(Rollout.state).in_([s.value for s in ACTIVE_ROLLOUT_STATES]))
        return [rollout_public(session, r) for r in session.exec(query).all()]


def rollout_detail(home: Home, rollout_id: str) -> RolloutDetail:
    with home.session() as session:
        return describe(session, find_rollout(session, rollout_id))


def gate_analysis(
    home: Home, rollout_id: str, *, wave: int | None = None
) -> list[GateEvaluationPublic]:
    """Every stored gate evaluation of a rollout (or of one wave, numbered from 0), oldest
    first."""
    with home.session() as session:
        rollout = find_rollout(session, rollout_id)
        query = select(GateEvaluation).where(GateEvaluation.rollout_id == rollout.id)
        if wave is not None:
            query = query.where(GateEvaluation.wave == wave)
        return [
            GateEvaluationPublic(
                wave=e.wave,
                gate=e.gate,
                decision=e.decision,
                statistic=e.statistic,
                threshold=e.threshold,
                detail=e.detail,
                inputs=dict(e.inputs or {}),
                at=as_utc(e.at),  # type: ignore[arg-type]
            )
            for e in session.exec(query.order_by(col(GateEvaluation.id))).all()
        ]


def _model_ref(session: Session, model_version_id: int) -> str:
    version = session.get(ModelVersion, model_version_id)
    model = session.get(Model, version.model_id) if version else None
    return f"{model.name}:{version.version}" if model and version else "?"


def variant_ref(session: Session, variant_id: int) -> str:
    """``name:version/variant`` of a variant row."""
    variant = session.get(Variant, variant_id)
    if variant is None:
        return "?"
    return f"{_model_ref(session, variant.model_version_id)}/{variant.name}"


def rollout_public(session: Session, rollout: Rollout) -> RolloutPublic:
    rows = session.exec(
        select(Deployment.kind, Deployment.state).where(Deployment.rollout_id == rollout.id)
    ).all()
    states = [state for kind, state in rows if kind == DeploymentKind.DEPLOY.value]
    backs = [state for kind, state in rows if kind == DeploymentKind.ROLLBACK.value]
    waves = session.exec(select(RolloutWave.id).where(RolloutWave.rollout_id == rollout.id)).all()
    return RolloutPublic(
        rollout_id=rollout.rollout_id,
        model=_model_ref(session, rollout.model_version_id),
        selector=dict(rollout.selector or {}),
        state=rollout.state,
        current_wave=rollout.current_wave,
        waves=len(waves),
        reason=rollout.reason,
        started_by=rollout.started_by,
        note=rollout.note,
        created_at=as_utc(rollout.created_at),  # type: ignore[arg-type]
        updated_at=as_utc(rollout.updated_at),  # type: ignore[arg-type]
        counts=dict(sorted(Counter(states).items())),
        rollback_counts=dict(sorted(Counter(backs).items())),
    )


def describe(session: Session, rollout: Rollout) -> RolloutDetail:
    names = {}
    rows = []
    for dep, device, variant in session.exec(
        select(Deployment, Device, Variant)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .join(Variant, Variant.id == Deployment.variant_id)  # type: ignore[arg-type]
        .where(Deployment.rollout_id == rollout.id)
        .order_by(col(Deployment.kind), col(Device.name))
    ).all():
        names[device.id] = device.name
        rows.append(
            DeploymentPublic(
                deployment_id=dep.deployment_id,
                device=device.name,
                profile=device.profile,
                model=f"{_model_ref(session, variant.model_version_id)}/{variant.name}",
                state=dep.state,
                error_code=dep.error_code,
                error_message=dep.error_message,
                wave=dep.wave,
                kind=dep.kind,
            )
        )
    waves = [
        WavePublic(
            number=w.number,
            planned=w.planned,
            state=w.state,
            devices=[names.get(d, str(d)) for d in w.devices or []],
            queued=[names.get(d, str(d)) for d in w.queued or []],
            started_at=as_utc(w.started_at),
            bake_started_at=as_utc(w.bake_started_at),
            decided_at=as_utc(w.decided_at),
            decision=w.decision,
        )
        for w in session.exec(
            select(RolloutWave)
            .where(RolloutWave.rollout_id == rollout.id)
            .order_by(col(RolloutWave.number))
        ).all()
    ]
    return RolloutDetail(
        rollout=rollout_public(session, rollout),
        plan=dict(rollout.plan or {}),
        waves=waves,
        devices=rows,
    )
