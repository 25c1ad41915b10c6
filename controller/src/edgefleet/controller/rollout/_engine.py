"""The rollout as a pure state machine, in the agent's style.

The states are ``RolloutState`` (stored on the rollout row); what happens to a rollout is
an :class:`Outcome`, decided by the daemon's tick (gates, finished installs) or by an
operator (pause, resume, promote, abort). Every route is in :data:`TRANSITIONS`; what a
transition does to waves and deployment rows is in ``_advance``, done in the same
transaction as the state change, which is saved with a compare-and-set on the rollout's
revision so a transition happens once even when two daemons race.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.shared.errors import Conflict

from ..registry import RolloutState

State = RolloutState


class Outcome(StrEnum):
    WAVE_PASSED = "wave_passed"  # the current wave's gates passed (or it was promoted)
    LAST_WAVE_PASSED = "last_wave_passed"  # ... and it was the last wave
    PROMOTED_FULL = "promoted_full"  # every remaining device goes in one last wave
    GATE_FAILED = "gate_failed"  # a gate failed and the policy is to roll back
    GATE_FAILED_HOLD = "gate_failed_hold"  # a gate failed and the policy is to hold
    INCONCLUSIVE = "inconclusive"  # the bake ran out of time without enough evidence
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"  # by an operator
    ROLLED_BACK = "rolled_back"  # every touched device was sent back, or said why not


TRANSITIONS: dict[tuple[State, Outcome], State] = {
    (State.RUNNING, Outcome.WAVE_PASSED): State.RUNNING,
    (State.RUNNING, Outcome.LAST_WAVE_PASSED): State.COMPLETED,
    (State.RUNNING, Outcome.PROMOTED_FULL): State.RUNNING,
    (State.RUNNING, Outcome.GATE_FAILED): State.ROLLING_BACK,
    (State.RUNNING, Outcome.GATE_FAILED_HOLD): State.PAUSED,
    (State.RUNNING, Outcome.INCONCLUSIVE): State.PAUSED,
    (State.RUNNING, Outcome.PAUSE): State.PAUSED,
    (State.RUNNING, Outcome.ABORT): State.ROLLING_BACK,
    # an operator's promote moves a paused rollout on, as it does a running one
    (State.PAUSED, Outcome.WAVE_PASSED): State.RUNNING,
    (State.PAUSED, Outcome.LAST_WAVE_PASSED): State.COMPLETED,
    (State.PAUSED, Outcome.PROMOTED_FULL): State.RUNNING,
    (State.PAUSED, Outcome.RESUME): State.RUNNING,
    (State.PAUSED, Outcome.ABORT): State.ROLLING_BACK,
    (State.ROLLING_BACK, Outcome.ROLLED_BACK): State.ABORTED,
}
TERMINAL = frozenset({State.COMPLETED, State.ABORTED})


def next_state(state: State, outcome: Outcome) -> State:
    """Where ``outcome`` takes a rollout in ``state``; ``Conflict`` if it cannot happen there
    (an operator asking to pause a completed rollout, a promote racing an abort)."""
    try:
        return TRANSITIONS[(state, outcome)]
    except KeyError:
        raise Conflict(f"a rollout that is {state.value} cannot take {outcome.value}") from None
