"""What an operator does to a rollout (pause, resume, promote, abort) and by hand to
devices (roll back), each recorded with who and why."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from sqlmodel import Session

from edgefleet.shared.errors import NotFound

from ..home import Home
from ..registry import (
    Deployment,
    DeploymentKind,
    DeploymentPublic,
    DeploymentState,
    Rollout,
    RolloutPublic,
    RolloutState,
)
from ._effects import apply_outcome, compare_and_set, previous_variant, send_back, waiting_left
from ._engine import Outcome
from ._targets import (
    LabelSelector,
    check_selector,
    new_deployment_id,
    refuse_overlap,
    select_targets,
    supersede_unfinished,
)
from ._views import find_rollout, rollout_public, variant_ref

log = logging.getLogger("edgefleet.controller.rollout")


def operator_name() -> str:
    """Who is running this command: $EDGEFLEET_USER, else the login name."""
    name = os.environ.get("EDGEFLEET_USER", "").strip()
    if name:
        return name[:64]
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        return "unknown"


def pause_rollout(
    home: Home, rollout_id: str, *, by: str, reason: str = "", now: datetime | None = None
) -> RolloutPublic:
    """No further orders are sent and no wave is judged until it is resumed."""
    return _act(home, rollout_id, lambda s, r: Outcome.PAUSE, "paused", by, reason, now)


def resume_rollout(
    home: Home, rollout_id: str, *, by: str, reason: str = "", now: datetime | None = None
) -> RolloutPublic:
    """Carry on; a wave that was baking bakes afresh (the evidence that paused it stands)."""
    return _act(home, rollout_id, lambda s, r: Outcome.RESUME, "resumed", by, reason, now)


def abort_rollout(
    home: Home, rollout_id: str, *, by: str, reason: str = "", now: datetime | None = None
) -> RolloutPublic:
    """Stop: nothing more is sent, and every device that took the version goes back to its
    own previous model by a signed rollback order."""
    return _act(home, rollout_id, lambda s, r: Outcome.ABORT, "aborted", by, reason, now)


def promote_rollout(
    home: Home,
    rollout_id: str,
    *,
    full: bool = False,
    by: str,
    reason: str = "",
    now: datetime | None = None,
) -> RolloutPublic:
    """Pass the current wave without waiting for its bake and gates; with ``full``, every
    remaining device goes in one last wave."""

    def outcome(session: Session, rollout: Rollout) -> Outcome:
        if waiting_left(session, rollout) == 0:
            return Outcome.LAST_WAVE_PASSED
        return Outcome.PROMOTED_FULL if full else Outcome.WAVE_PASSED

    return _act(home, rollout_id, outcome, "promoted", by, reason, now)


def _act(
    home: Home,
    rollout_id: str,
    outcome_of: Callable[[Session, Rollout], Outcome],
    verb: str,
    by: str,
    reason: str,
    now: datetime | None,
) -> RolloutPublic:
    now = now or datetime.now(UTC)
    with home.session(write=True) as session:
        rollout = find_rollout(session, rollout_id)
        revision = rollout.revision
        why = f"{verb} by {by or 'someone'}" + (f": {reason}" if reason else "")
        state = apply_outcome(
            session, rollout, outcome_of(session, rollout), why, now, decision=verb
        )
        if state is RolloutState.ROLLING_BACK:
            send_back(session, rollout, now)
        compare_and_set(session, rollout, revision)
        return rollout_public(session, rollout)


def roll_back(
    home: Home,
    *,
    devices: list[str] | None = None,
    profile: str | None = None,
    labels: LabelSelector | None = None,
    by: str,
    reason: str = "",
    now: datetime | None = None,
) -> list[DeploymentPublic]:
    """Send each chosen device back to its own previous model by a signed rollback order
    that names the deployment it undoes (what the device serves now). A device whose
    serving or previous model the registry does not know is refused before anything is
    written."""
    check_selector(devices, profile, labels)
    now = now or datetime.now(UTC)
    order_id = new_deployment_id(now).replace("dep-", "rb-", 1)
    with home.session(write=True) as session:
        targets = select_targets(session, devices=devices, profile=profile, labels=labels)
        refuse_overlap(session, targets)
        planned = []
        for device in targets:
            serving = device.serving_deployment_id
            variant = previous_variant(session, device, serving) if serving else None
            if serving is None or variant is None:
                raise NotFound(
                    f"{device.name} has no previous model the registry knows of"
                    + ("" if serving else " (it has not reported serving any)")
                )
            planned.append((device, serving, variant))
        log.info(
            "rollback %s of %d device(s) by %s%s",
            order_id, len(planned), by, f": {reason}" if reason else "",
        )  # fmt: skip
        out = []
        supersede_unfinished(session, [device for device, _, _ in planned])
        for device, serving, variant in planned:
            session.add(
                Deployment(
                    deployment_id=order_id,
                    device_id=device.id,  # type: ignore[arg-type]
                    variant_id=variant,
                    kind=DeploymentKind.ROLLBACK.value,
                    undoes=serving,
                    created_at=now,
                    updated_at=now,
                )
            )
            out.append(
                DeploymentPublic(
                    deployment_id=order_id,
                    device=device.name,
                    profile=device.profile,
                    model=variant_ref(session, variant),
                    state=DeploymentState.PENDING.value,
                    kind=DeploymentKind.ROLLBACK.value,
                )
            )
        return out
