"""The daemon's rollout tick: every active rollout moved on from what is in the registry.

Level-triggered: each tick reads the rollout, its current wave and the rows and telemetry
its devices reported, decides what follows, and writes it in one transaction closed by a
compare-and-set on the rollout's revision. After a restart the daemon carries on from the
registry alone (deadlines are stored timestamps: a wave's start, its bake's start, the
time a row was sent); if two daemons race, one transaction wins and the other rolls back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from edgefleet.shared.errors import Conflict, EdgefleetError

from ..home import Home
from ..registry import (
    FINISHED_STATES,
    Deployment,
    DeploymentKind,
    GateEvaluation,
    Profile,
    Rollout,
    RolloutState,
    RolloutWave,
    WaveState,
    as_utc,
)
from ._effects import (
    all_sent_back,
    apply_outcome,
    compare_and_set,
    send_back,
    time_out_silent,
    waiting_left,
    wave_of,
)
from ._engine import Outcome
from ._evidence import wave_evidence
from ._gates import Decision, GateResult, evaluate_gates, install_gate, overall
from ._plan import Bake, RolloutPlan

log = logging.getLogger("edgefleet.controller.rollout")

_ACTIVE = [RolloutState.RUNNING.value, RolloutState.ROLLING_BACK.value, RolloutState.PAUSED.value]


@dataclass(frozen=True)
class Transition:
    rollout_id: str
    before: str
    after: str
    reason: str


def advance_rollouts(home: Home, *, now: datetime | None = None) -> list[Transition]:
    """One tick over every active rollout; returns the state changes it made."""
    now = now or datetime.now(UTC)
    with home.session() as session:
        ids = session.exec(
            select(Rollout.id).where(col(Rollout.state).in_(_ACTIVE)).order_by(col(Rollout.id))
        ).all()
    limits = _Limits(home)
    out = []
    for rollout_id in ids:
        try:
            with home.session(write=True) as session:
                moved = _advance(session, rollout_id, limits, now)  # type: ignore[arg-type]
        except Conflict as exc:
            log.info("%s; it is read again next tick", exc)
            continue
        if moved is not None:
            log.info(
                "rollout %s: %s -> %s (%s)", moved.rollout_id, moved.before, moved.after,
                moved.reason,
            )  # fmt: skip
            out.append(moved)
    return out


class _Limits:
    """Each profile's latency limit (``max_latency_ms``), read once per tick."""

    def __init__(self, home: Home) -> None:
        self._home = home
        self._cache: dict[str, float | None] = {}

    def __call__(self, profile: str) -> float | None:
        if profile not in self._cache:
            self._cache[profile] = self._read(profile)
        return self._cache[profile]

    def _read(self, profile: str) -> float | None:
        try:
            return self._home.profile(profile).budgets.max_latency_ms
        except EdgefleetError:
            with self._home.session() as session:
                row = session.get(Profile, profile)
                budgets = (row.spec or {}).get("budgets") if row else None
                value = budgets.get("max_latency_ms") if isinstance(budgets, dict) else None
            return float(value) if isinstance(value, int | float) else None


def _advance(session: Session, row_id: int, limits: _Limits, now: datetime) -> Transition | None:
    rollout = session.get(Rollout, row_id)
    if rollout is None or rollout.state not in _ACTIVE:
        return None
    revision, before = rollout.revision, rollout.state
    plan = RolloutPlan.model_validate(rollout.plan)
    wrote = bool(time_out_silent(session, rollout, plan.in_progress_timeout_s, now))
    outcome: Outcome | None = None
    reason = ""
    if rollout.state == RolloutState.RUNNING:
        wrote_wave, outcome, reason = _judge_wave(session, rollout, plan, limits, now)
        wrote = wrote or wrote_wave
    if outcome is not None:
        apply_outcome(session, rollout, outcome, reason, now)
        wrote = True
    if rollout.state == RolloutState.ROLLING_BACK:
        sent, stranded = send_back(session, rollout, now)
        wrote = wrote or sent
        if not sent and all_sent_back(session, rollout, stranded):
            apply_outcome(session, rollout, Outcome.ROLLED_BACK, _aborted(rollout, stranded), now)
            wrote = True
    if not wrote:
        return None
    compare_and_set(session, rollout, revision)
    if rollout.state == before:
        return None
    return Transition(rollout.rollout_id, before, rollout.state, rollout.reason)


def _aborted(rollout: Rollout, stranded: list[str]) -> str:
    why = rollout.reason or "aborted"
    if stranded:
        why += f"; {len(stranded)} device(s) had no previous model and keep the new one: "
        why += ", ".join(stranded[:10]) + (" …" if len(stranded) > 10 else "")
    return why


def _judge_wave(
    session: Session, rollout: Rollout, plan: RolloutPlan, limits: _Limits, now: datetime
) -> tuple[bool, Outcome | None, str]:
    """Whether the current wave's rows and gates move the rollout: (wrote, outcome, reason)."""
    wave = wave_of(session, rollout)
    if wave is None:
        return False, None, ""
    label = f"wave {wave.number + 1}"
    wrote = False
    if wave.state == WaveState.INSTALLING:
        due = _due(wave, plan, now)
        if plan.gates is not None and "install" in plan.gates.enabled and due:
            evidence = wave_evidence(session, rollout, wave, limits, with_telemetry=False)
            result = install_gate(evidence, plan.gates, counted=len(wave.devices or []))
            wave.analysed_at = now
            session.add(wave)
            wrote = True
            if result.decision is Decision.FAIL:
                _store(session, rollout, wave, [result], now)
                return True, _failed(plan), f"{label}: {result.detail}"
        # Without gates nothing is judged, and the one wave is done when every row is:
        # the devices offline at its start are waited for too.
        if not _installed(session, rollout, wave, with_queued=plan.gates is None):
            return wrote, None, ""
        wave.state, wave.bake_started_at, wave.analysed_at = WaveState.BAKING.value, now, None
        session.add(wave)
        wrote = True
    if wave.state != WaveState.BAKING:
        return wrote, None, ""
    bake = plan.bake or Bake(min_requests=0, min_s=0.0, max_s=0.0)
    started = as_utc(wave.bake_started_at) or now
    elapsed = (now - started).total_seconds()
    last = waiting_left(session, rollout) == 0
    passed = Outcome.LAST_WAVE_PASSED if last else Outcome.WAVE_PASSED
    if plan.gates is None:
        if elapsed < bake.min_s:
            return wrote, None, ""
        return True, passed, f"{label} installed" + ("; done" if last else "")
    # Looked at from the bake's start, so that a version that is plainly worse stops early;
    # only a failure acts before the bake's minimum (a pass waits for it).
    if not _due(wave, plan, now):
        return wrote, None, ""
    evidence = wave_evidence(session, rollout, wave, limits, settle_s=bake.settle_s)
    results = evaluate_gates(
        evidence, plan.gates, counted=len(wave.devices or []), min_requests=bake.min_requests
    )
    _store(session, rollout, wave, results, now)
    wave.analysed_at = now
    session.add(wave)
    decision = overall(results)
    if decision is Decision.FAIL:
        failing = "; ".join(r.detail for r in results if r.decision is Decision.FAIL)
        return True, _failed(plan), f"{label}: {failing}"
    enough = all(e.new_requests >= bake.min_requests for e in evidence if e.outcome == "committed")
    if decision is Decision.PASS and elapsed >= bake.min_s and enough:
        return True, passed, f"{label} passed its gates" + ("; done" if last else "")
    if elapsed >= bake.max_s:
        unsure = "; ".join(r.detail for r in results if r.decision is not Decision.PASS)
        short = [
            e.device
            for e in evidence
            if e.outcome == "committed" and e.new_requests < bake.min_requests
        ]
        named = ", ".join(short[:5]) + (" …" if len(short) > 5 else "")
        why = unsure or f"fewer than {bake.min_requests} requests on {named}"
        return (
            True,
            Outcome.INCONCLUSIVE,
            f"{label}: not enough evidence after {elapsed:.0f} s: {why}",
        )
    return True, None, ""


def _failed(plan: RolloutPlan) -> Outcome:
    return Outcome.GATE_FAILED if plan.on_fail == "rollback" else Outcome.GATE_FAILED_HOLD


def _due(wave: RolloutWave, plan: RolloutPlan, now: datetime) -> bool:
    last = as_utc(wave.analysed_at)
    return last is None or (now - last).total_seconds() >= plan.analysis_interval_s


def _installed(
    session: Session, rollout: Rollout, wave: RolloutWave, *, with_queued: bool = False
) -> bool:
    """Every counted device of the wave (with ``with_queued``, every one) has finished its
    part (committed, failed, lost)."""
    counted = list(wave.devices or []) + list(wave.queued or [] if with_queued else [])
    if not counted:
        return True
    states = session.exec(
        select(Deployment.state).where(
            Deployment.rollout_id == rollout.id,
            Deployment.kind == DeploymentKind.DEPLOY.value,
            col(Deployment.device_id).in_(counted),
        )
    ).all()
    return all(state in FINISHED_STATES for state in states)


def _store(
    session: Session,
    rollout: Rollout,
    wave: RolloutWave,
    results: list[GateResult],
    now: datetime,
) -> None:
    for result in results:
        session.add(
            GateEvaluation(
                rollout_id=rollout.id,  # type: ignore[arg-type]
                wave=wave.number,
                gate=result.gate,
                decision=result.decision.value,
                statistic=result.statistic,
                threshold=result.threshold,
                inputs=dict(result.inputs),
                detail=result.detail,
                at=now,
            )
        )
