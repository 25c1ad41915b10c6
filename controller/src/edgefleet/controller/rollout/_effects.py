"""What a rollout's transitions do to its waves and deployment rows, in the caller's
transaction, and the compare-and-set that saves the rollout with them.

Every function here only writes rows; nothing is published. The daemon's dispatch sends
what became ``pending`` (deploy and rollback orders alike) once the transaction commits,
so the state is always saved before its side effect.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.shared.errors import Conflict

from ..registry import (
    FINISHED_STATES,
    Deployment,
    DeploymentKind,
    DeploymentState,
    Device,
    Rollout,
    RolloutState,
    RolloutWave,
    WaveState,
    as_utc,
)
from ._engine import Outcome, next_state
from ._plan import spread_order

# The error of a row failed by the in-progress timeout: the device said nothing.
LOST = "device_lost"
# Rows that have not reached the device yet: an abort cancels them.
_NOT_SENT = (DeploymentState.WAITING.value, DeploymentState.PENDING.value)
_UNFINISHED = [s.value for s in DeploymentState if s not in FINISHED_STATES]


def rollback_id(rollout: Rollout) -> str:
    """The deployment id of the rollback orders that undo ``rollout`` (one per device)."""
    return f"{rollout.rollout_id}.rollback"


def wave_of(session: Session, rollout: Rollout, number: int | None = None) -> RolloutWave | None:
    wanted = rollout.current_wave if number is None else number
    return session.exec(
        select(RolloutWave).where(
            RolloutWave.rollout_id == rollout.id, RolloutWave.number == wanted
        )
    ).first()


def waiting_left(session: Session, rollout: Rollout) -> int:
    """How many of the rollout's devices are still waiting for a wave."""
    return len(
        session.exec(
            select(Deployment.id).where(
                Deployment.rollout_id == rollout.id,
                Deployment.state == DeploymentState.WAITING.value,
            )
        ).all()
    )


def start_wave(
    session: Session, rollout: Rollout, number: int, now: datetime, *, everything: bool = False
) -> RolloutWave:
    """Freeze wave ``number``'s devices (the next ones in the profile-spreading order) and
    make their rows pending. Devices offline now are sent too (the broker queues their
    orders) but are not counted by the wave's gates."""
    wave = wave_of(session, rollout, number)
    if wave is None:  # past the planned waves (rows came back to waiting): take them all
        wave = RolloutWave(rollout_id=rollout.id, number=number, planned=0, devices=[], queued=[])  # type: ignore[arg-type]
        everything = True
    waiting = session.exec(
        select(Deployment, Device)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .where(
            Deployment.rollout_id == rollout.id,
            Deployment.state == DeploymentState.WAITING.value,
        )
    ).all()
    order = spread_order([(device.name, device.profile) for _, device in waiting])
    take = len(order) if everything else wave.planned
    chosen = {name: i for i, name in enumerate(order[:take])}
    counted: list[tuple[int, int]] = []
    queued: list[tuple[int, int]] = []
    for row, device in waiting:
        if device.name not in chosen:
            continue
        row.state = DeploymentState.PENDING.value
        row.wave = number
        row.updated_at = now
        session.add(row)
        (counted if device.online else queued).append((chosen[device.name], device.id))  # type: ignore[arg-type]
    wave.devices = [device_id for _, device_id in sorted(counted)]
    wave.queued = [device_id for _, device_id in sorted(queued)]
    wave.planned = len(chosen)
    wave.state = WaveState.INSTALLING.value
    wave.started_at = now
    session.add(wave)
    rollout.current_wave = number
    return wave


def apply_outcome(
    session: Session,
    rollout: Rollout,
    outcome: Outcome,
    reason: str,
    now: datetime,
    *,
    decision: str | None = None,
) -> RolloutState:
    """Move ``rollout`` by ``outcome`` and do what that means to its waves and rows.
    ``decision`` names how the current wave ended when it is not the gates' word (an
    operator's "promoted", "aborted")."""
    state = next_state(RolloutState(rollout.state), outcome)
    wave = wave_of(session, rollout)
    if wave is not None:
        _end_wave(wave, outcome, now, decision)
        session.add(wave)
    if outcome is Outcome.WAVE_PASSED:
        start_wave(session, rollout, rollout.current_wave + 1, now)
    elif outcome is Outcome.PROMOTED_FULL:
        number = rollout.current_wave + 1
        for later in session.exec(
            select(RolloutWave).where(
                RolloutWave.rollout_id == rollout.id, RolloutWave.number > number
            )
        ).all():
            later.state, later.decision = WaveState.CANCELLED.value, "merged"
            session.add(later)
        start_wave(session, rollout, number, now, everything=True)
    elif state is RolloutState.ROLLING_BACK:
        _cancel_the_rest(session, rollout, now)
    rollout.state = state.value
    rollout.reason = reason
    rollout.updated_at = now
    session.add(rollout)
    return state


def _end_wave(wave: RolloutWave, outcome: Outcome, now: datetime, decision: str | None) -> None:
    ends = {
        Outcome.WAVE_PASSED: WaveState.PASSED,
        Outcome.LAST_WAVE_PASSED: WaveState.PASSED,
        Outcome.PROMOTED_FULL: WaveState.PASSED,
        Outcome.GATE_FAILED: WaveState.FAILED,
        Outcome.GATE_FAILED_HOLD: WaveState.FAILED,
        Outcome.INCONCLUSIVE: WaveState.INCONCLUSIVE,
        Outcome.ABORT: WaveState.FAILED,
    }
    if outcome is Outcome.RESUME and wave.state != WaveState.INSTALLING.value:
        # a fresh bake: the evidence that paused it is not enough to go on
        wave.state, wave.decision, wave.decided_at = WaveState.BAKING.value, None, None
        wave.bake_started_at, wave.analysed_at = now, None
        return
    end = ends.get(outcome)
    if end is None or wave.state in (WaveState.PASSED.value, WaveState.CANCELLED.value):
        return
    wave.state = end.value
    wave.decision = decision or end.value
    wave.decided_at = now


def _cancel_the_rest(session: Session, rollout: Rollout, now: datetime) -> None:
    """An aborted rollout sends nothing more: unsent rows are cancelled, unstarted waves too."""
    for row in session.exec(
        select(Deployment).where(
            Deployment.rollout_id == rollout.id,
            Deployment.kind == DeploymentKind.DEPLOY.value,
            col(Deployment.state).in_(_NOT_SENT),
        )
    ).all():
        row.state = DeploymentState.CANCELLED.value
        row.payload = None
        row.updated_at = now
        session.add(row)
    for wave in session.exec(
        select(RolloutWave).where(
            RolloutWave.rollout_id == rollout.id,
            RolloutWave.state == WaveState.WAITING.value,
        )
    ).all():
        wave.state, wave.decision = WaveState.CANCELLED.value, "cancelled"
        session.add(wave)


def previous_variant(session: Session, device: Device, undoing: str) -> int | None:
    """The variant a device goes back to when ``undoing`` is taken back: the deployment it
    reported as its previous model, else its newest other committed one; None if the
    registry knows of none (the device had no model before). A deployment the device
    rolled back from is nowhere to go back to."""
    previous = device.previous_deployment_id
    if device.serving_deployment_id != undoing:
        previous = device.serving_deployment_id  # its status predates the new model
    query = select(Deployment).where(
        Deployment.device_id == device.id,
        Deployment.kind == DeploymentKind.DEPLOY.value,
        Deployment.deployment_id != undoing,
        Deployment.state == DeploymentState.COMMITTED.value,
        col(Deployment.committed_at).is_not(None),
    )
    if previous:
        row = session.exec(query.where(Deployment.deployment_id == previous)).first()
        if row is not None:
            return row.variant_id
    row = session.exec(query.order_by(col(Deployment.committed_at).desc())).first()
    return row.variant_id if row is not None else None


_MAY_TAKE_IT = (DeploymentState.SENT, DeploymentState.IN_PROGRESS)


def _touched(row: Deployment) -> bool:
    """A deploy row whose device took the version, or may still: committed, on its way
    (a device waiting to retry its download sets it aside for the rollback, one busy with
    it goes back after it) or lost (the order may be at the broker or half done, and the
    device still install it)."""
    return row.kind == DeploymentKind.DEPLOY.value and (
        row.state == DeploymentState.COMMITTED
        or row.state in _MAY_TAKE_IT
        or (row.state == DeploymentState.FAILED and row.error_code == LOST)
    )


def send_back(session: Session, rollout: Rollout, now: datetime) -> tuple[bool, list[str]]:
    """Record a rollback order for every device of ``rollout`` that committed, is still at
    it, or went silent (its rollback follows the order it may yet carry out: the device
    refuses it if it never took the version), and has none yet (level-triggered: a device
    that commits late gets one on a later tick). Returns whether anything was written and
    the devices with no previous model to go back to."""
    undo = rollback_id(rollout)
    rows = session.exec(
        select(Deployment, Device)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .where(Deployment.rollout_id == rollout.id)
    ).all()
    ordered = {row.device_id for row, _ in rows if row.kind == DeploymentKind.ROLLBACK.value}
    wrote, stranded = False, []
    for row, device in rows:
        if not _touched(row):
            continue
        if row.device_id in ordered:
            continue
        variant = previous_variant(session, device, rollout.rollout_id)
        if variant is None:
            stranded.append(device.name)
            continue
        session.add(
            Deployment(
                deployment_id=undo,
                device_id=device.id,  # type: ignore[arg-type]
                variant_id=variant,
                kind=DeploymentKind.ROLLBACK.value,
                undoes=rollout.rollout_id,
                rollout_id=rollout.id,
                wave=row.wave,
                created_at=now,
                updated_at=now,
            )
        )
        wrote = True
    return wrote, sorted(stranded)


def all_sent_back(session: Session, rollout: Rollout, stranded: list[str]) -> bool:
    """Every row of an aborted rollout has settled: nothing still on its way to a device,
    and every committed or silent device either was sent back (whatever it answered) or
    has no previous model to go back to."""
    rows = session.exec(select(Deployment).where(Deployment.rollout_id == rollout.id)).all()
    if any(row.state in _UNFINISHED for row in rows):
        return False
    back = {row.device_id for row in rows if row.kind == DeploymentKind.ROLLBACK.value}
    touched = [row for row in rows if _touched(row)]
    return len([row for row in touched if row.device_id not in back]) == len(stranded)


def time_out_silent(
    session: Session, rollout: Rollout, timeout_s: float, now: datetime
) -> list[str]:
    """Rows sent to counted devices longer than ``timeout_s`` ago and not finished: the
    device went silent, the row fails as lost. A later report from the device still
    settles it (ingest)."""
    queued: set[int] = set()
    for wave in session.exec(select(RolloutWave).where(RolloutWave.rollout_id == rollout.id)):
        queued.update(wave.queued or [])
    lost = []
    for row, name in session.exec(
        select(Deployment, Device.name)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .where(
            Deployment.rollout_id == rollout.id,
            col(Deployment.state).in_(
                [DeploymentState.SENT.value, DeploymentState.IN_PROGRESS.value]
            ),
            col(Deployment.sent_at).is_not(None),
        )
    ).all():
        sent_at = as_utc(row.sent_at)
        if row.device_id in queued or sent_at is None:
            continue
        if (now - sent_at).total_seconds() < timeout_s:
            continue
        row.state = DeploymentState.FAILED.value
        row.error_code = LOST
        row.error_message = f"no word from the device {timeout_s:.0f} s after its order was sent"
        row.updated_at = now
        session.add(row)
        lost.append(name)
    return lost


def compare_and_set(session: Session, rollout: Rollout, revision: int) -> None:
    """Save the rollout only if nobody else wrote it since it was read at ``revision``;
    otherwise ``Conflict``, and the caller's transaction (with every effect) rolls back."""
    session.flush()
    result = session.execute(
        update(Rollout)
        .where(col(Rollout.id) == rollout.id, col(Rollout.revision) == revision)
        .values(revision=revision + 1)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"rollout {rollout.rollout_id} was changed by another writer")
