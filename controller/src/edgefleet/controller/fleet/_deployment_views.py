"""Deployments as the web page and the HTTP API show them: every rollout (a plain deploy is
a one-wave rollout without gates) with its waves, each device's progress, and for each wave
the newest evaluation of each gate (decision, figure beside threshold)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from ..home import Home
from ..registry import (
    FINISHED_STATES,
    Deployment,
    Device,
    GateEvaluation,
    Model,
    ModelVersion,
    Rollout,
    RolloutWave,
    Variant,
    as_utc,
)


class DeviceProgress(BaseModel):
    device: str
    profile: str
    state: str
    error_code: str | None
    error_message: str | None
    updated_at: datetime | None


class Wave(BaseModel):
    index: int  # from 1
    state: str | None = None  # the wave's (waiting, installing, baking, passed, ...)
    devices: list[DeviceProgress]
    gates: list[dict[str, Any]]  # the newest evaluation of each gate: decision, figure, threshold


class DeploymentView(BaseModel):
    deployment_id: str
    kind: str  # "deployment" (one wave, no gates) or "rollout" (waves and gates)
    model: str
    created_at: datetime | None
    state: str  # the rollout's: running, paused, rolling_back, completed, aborted
    reason: str = ""  # why it is in that state
    started_by: str = ""
    total: int
    finished: int
    states: dict[str, int]
    waves: list[Wave]


def variant_models(session: Session) -> dict[int, str]:
    """variant id -> name:version, for every variant (the fleet page and the deployments)."""
    rows = session.exec(
        select(Variant.id, Model.name, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(Variant.model_version_id))
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
    ).all()
    return {vid: f"{name}:{version}" for vid, name, version in rows if vid is not None}


def deployment_views(
    home: Home, *, limit: int = 20, deployment_id: str | None = None
) -> list[DeploymentView]:
    """The newest ``limit`` deployments (or the one named), each with every device's state."""
    with home.session() as session:
        if deployment_id is None:
            newest = session.exec(
                select(Deployment.deployment_id)
                .group_by(col(Deployment.deployment_id))
                .order_by(func.max(Deployment.id).desc())
                .limit(limit)
            ).all()
        else:
            newest = [deployment_id]
        rows = session.exec(
            select(Deployment, Device.name, Device.profile)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(col(Deployment.deployment_id).in_(newest))
            .order_by(col(Device.name))
        ).all()
        models = variant_models(session)
        rollouts = {
            r.rollout_id: r
            for r in session.exec(select(Rollout).where(col(Rollout.rollout_id).in_(newest))).all()
        }
        waves = _waves(session, [r.id for r in rollouts.values() if r.id is not None])
        gates = _latest_gates(session, [r.id for r in rollouts.values() if r.id is not None])
    grouped: dict[str, list[tuple[Deployment, str, str]]] = defaultdict(list)
    for row, name, profile in rows:
        grouped[row.deployment_id].append((row, name, profile))
    views = []
    for dep_id in newest:
        members = grouped.get(dep_id)
        if not members:
            continue
        states = dict(sorted(Counter(r.state for r, _, _ in members).items()))
        finished = sum(n for s, n in states.items() if s in FINISHED_STATES)
        bad = sum(n for s, n in states.items() if s in ("failed", "rolled_back"))
        rollout = rollouts.get(dep_id)
        by_wave: dict[int, list[DeviceProgress]] = defaultdict(list)
        for r, name, profile in members:
            by_wave[r.wave if r.wave is not None else -1].append(
                DeviceProgress(
                    device=name,
                    profile=profile,
                    state=r.state,
                    error_code=r.error_code,
                    error_message=r.error_message,
                    updated_at=as_utc(r.updated_at),
                )
            )
        rid = rollout.id if rollout is not None else None
        views.append(
            DeploymentView(
                deployment_id=dep_id,
                kind="rollout" if rollout and (rollout.plan or {}).get("gates") else "deployment",
                model=models.get(members[0][0].variant_id, "?"),
                created_at=as_utc(min(r.created_at for r, _, _ in members)),
                state=rollout.state
                if rollout is not None
                else "active"
                if finished < len(members)
                else "failed"
                if bad
                else "completed",
                reason=rollout.reason if rollout is not None else "",
                started_by=rollout.started_by if rollout is not None else "",
                total=len(members),
                finished=finished,
                states=states,
                waves=[
                    Wave(
                        index=number + 1,
                        state=waves.get((rid, number)),
                        devices=devices,
                        gates=gates.get((rid, number), []),
                    )
                    for number, devices in sorted(by_wave.items())
                ],
            )
        )
    return views


def _waves(session: Session, rollout_ids: list[int]) -> dict[tuple[int | None, int], str]:
    rows = session.exec(
        select(RolloutWave.rollout_id, RolloutWave.number, RolloutWave.state).where(
            col(RolloutWave.rollout_id).in_(rollout_ids)
        )
    ).all()
    return {(rid, number): state for rid, number, state in rows}


def _latest_gates(
    session: Session, rollout_ids: list[int]
) -> dict[tuple[int | None, int], list[dict[str, Any]]]:
    """The newest evaluation of each gate of each wave."""
    newest = (
        select(func.max(GateEvaluation.id))
        .where(col(GateEvaluation.rollout_id).in_(rollout_ids))
        .group_by(
            col(GateEvaluation.rollout_id), col(GateEvaluation.wave), col(GateEvaluation.gate)
        )
    )
    out: dict[tuple[int | None, int], list[dict[str, Any]]] = defaultdict(list)
    for e in session.exec(
        select(GateEvaluation)
        .where(col(GateEvaluation.id).in_(newest.scalar_subquery()))
        .order_by(col(GateEvaluation.id))
    ).all():
        out[(e.rollout_id, e.wave)].append(
            {
                "gate": e.gate,
                "decision": e.decision,
                "statistic": e.statistic,
                "threshold": e.threshold,
                "detail": e.detail,
                "at": as_utc(e.at),
            }
        )
    return out
