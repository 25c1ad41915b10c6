"""Starting a rollout: its rows (one per target device, waiting for a wave), its planned
waves, and its first wave started at once. ``deploy`` is the one-wave rollout without
gates, so ``edgefleet deploy`` and ``edgefleet rollout start`` share one engine."""

from __future__ import annotations

from datetime import UTC, datetime

from ..catalog import find_version, parse_model_ref
from ..home import Home
from ..registry import (
    Deployment,
    DeploymentPublic,
    DeploymentState,
    Rollout,
    RolloutDetail,
    RolloutWave,
    Variant,
)
from ._effects import start_wave
from ._plan import RolloutPlan, deploy_plan
from ._targets import (
    LabelSelector,
    check_budgets,
    check_selector,
    new_deployment_id,
    refuse_overlap,
    select_targets,
    supersede_unfinished,
    variant_for,
)
from ._views import describe


def start_rollout(
    home: Home,
    ref: str,
    *,
    devices: list[str] | None = None,
    profile: str | None = None,
    labels: LabelSelector | None = None,
    plan: RolloutPlan,
    started_by: str = "",
    note: str = "",
    now: datetime | None = None,
    force: bool = False,
) -> RolloutDetail:
    """Record a rollout of model version ``ref`` to the chosen devices and start its first
    wave (its rows become pending; `edgefleet serve` sends them).

    Unknown devices, profile or model, an empty selection, a variant over its profile's
    size budget (unless ``force``), or a target that is part of another rollout with gates
    still running raise before anything is written."""
    now = now or datetime.now(UTC)
    name, version = parse_model_ref(ref)
    selector = check_selector(devices, profile, labels)
    if profile is not None:
        home.profile(profile)  # raises NotFound for a profile that does not exist
    with home.session(write=True) as session:
        row = find_version(session, name, version)
        targets = select_targets(session, devices=devices, profile=profile, labels=labels)
        check_budgets(home, session, targets, row, ref=ref, force=force)
        refuse_overlap(session, targets)
        rollout = Rollout(
            rollout_id=new_deployment_id(now),
            model_version_id=row.id,  # type: ignore[arg-type]
            selector=selector,
            plan=plan.model_dump(mode="json"),
            started_by=started_by[:64],
            note=note,
            created_at=now,
            updated_at=now,
        )
        session.add(rollout)
        session.flush()
        sizes = plan.wave_sizes(len(targets))
        for number, size in enumerate(sizes):
            session.add(
                RolloutWave(
                    rollout_id=rollout.id,  # type: ignore[arg-type]
                    number=number,
                    planned=size,
                    devices=[],
                    queued=[],
                )
            )
        supersede_unfinished(session, targets)
        variants: dict[str, Variant] = {}
        for device in targets:
            if device.profile not in variants:
                version_id: int = row.id  # type: ignore[assignment]
                variants[device.profile] = variant_for(session, version_id, device.profile)
            variant = variants[device.profile]
            session.add(
                Deployment(
                    deployment_id=rollout.rollout_id,
                    device_id=device.id,  # type: ignore[arg-type]
                    variant_id=variant.id,  # type: ignore[arg-type]
                    state=DeploymentState.WAITING.value,
                    rollout_id=rollout.id,
                    created_at=now,
                    updated_at=now,
                )
            )
        session.flush()
        wave = start_wave(session, rollout, 0, now)
        rollout.reason = f"wave 1 of {len(sizes)} started ({wave.planned} device(s))"
        session.add(rollout)
        session.flush()
        return describe(session, rollout)


def deploy(
    home: Home,
    ref: str,
    *,
    devices: list[str] | None = None,
    profile: str | None = None,
    labels: LabelSelector | None = None,
    started_by: str = "",
    note: str = "",
    now: datetime | None = None,
    force: bool = False,
) -> list[DeploymentPublic]:
    """Record a deployment of ``ref`` to every target at once: a rollout of one wave without
    gates. Returns one pending row per device; the rollout id is their deployment id."""
    detail = start_rollout(
        home,
        ref,
        devices=devices,
        profile=profile,
        labels=labels,
        plan=deploy_plan(),
        started_by=started_by,
        note=note,
        now=now,
        force=force,
    )
    return detail.devices
