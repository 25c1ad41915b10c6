"""The deployment lifecycle as a pure state machine.

States are nouns, outcomes are what an action reports. Every route is in
:data:`TRANSITIONS`; actions do their work and return an outcome, they never
choose the next state. :func:`drive` runs a record to a terminal state,
saving it *before* each action so a restart resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from edgefleet.shared import DeviceState, SignedBlob
from edgefleet.shared.errors import CrashedWhileLoading, InternalError, LoopDetected

# The lifecycle's states are the device states both sides speak (``DeviceState``);
# the agent calls them ``State`` for short.
State = DeviceState


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    CRASHED = "crashed"  # the agent died while this state ran
    LOOP_DETECTED = "loop_detected"


TRANSITIONS: dict[tuple[State, Outcome], State] = {
    (State.DOWNLOADING, Outcome.SUCCESS): State.VERIFYING,
    (State.DOWNLOADING, Outcome.RETRY): State.DOWNLOADING,
    (State.DOWNLOADING, Outcome.FAILURE): State.FAILED,
    (State.VERIFYING, Outcome.SUCCESS): State.LOADING,
    (State.VERIFYING, Outcome.FAILURE): State.FAILED,
    (State.LOADING, Outcome.SUCCESS): State.TESTING,
    (State.LOADING, Outcome.FAILURE): State.FAILED,
    (State.LOADING, Outcome.CRASHED): State.FAILED,
    (State.TESTING, Outcome.SUCCESS): State.SWITCHING,
    (State.TESTING, Outcome.FAILURE): State.FAILED,
    (State.TESTING, Outcome.CRASHED): State.FAILED,
    (State.SWITCHING, Outcome.SUCCESS): State.COMMITTED,
    (State.SWITCHING, Outcome.FAILURE): State.FAILED,
    (State.ROLLING_BACK, Outcome.SUCCESS): State.ROLLED_BACK,
    (State.ROLLING_BACK, Outcome.FAILURE): State.FAILED,
}
TERMINAL = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK, State.FAILED})
START = {"deploy": State.DOWNLOADING, "rollback": State.ROLLING_BACK}

# States where dying means the candidate model may be what killed us: after a
# restart they are not run again (a model that crashes the runtime must not
# crash-loop the device); everything else is safe to run twice.
UNSAFE_TO_RESUME = frozenset({State.LOADING, State.TESTING})

# States entered per deployment before we call it a loop: a state retried in place
# (RETRY) counts once, since its action bounds its own retries (a download gives up
# when the manifest expires); a state entered again, or resumed after a restart, counts
# each time, which catches a crash loop and anything else that keeps coming back.
MAX_SAVES = 40


class LifecycleError(InternalError):
    """A route missing from the table: a bug, never a user error."""


class Interrupted(Exception):
    """Raised by an action when the agent stops while it waits (between download attempts).

    The record stays as saved, in a state that is safe to run twice, and the next start
    resumes it; ``drive`` lets this through."""


def next_state(state: State, outcome: Outcome) -> State:
    if outcome is Outcome.LOOP_DETECTED and state not in TERMINAL:
        return State.FAILED
    try:
        return TRANSITIONS[(state, outcome)]
    except KeyError:
        raise LifecycleError(f"no transition from {state} on {outcome}") from None


class DeploymentRecord(BaseModel):
    """One deployment or rollback as persisted: enough to resume after a crash."""

    deployment_id: str
    kind: str  # "deploy" | "rollback"
    signed: SignedBlob
    state: State
    saves: int = 0
    attempts: int = 0
    # when the device took the command on: a download's deadline counts from here
    accepted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    retry_at: datetime | None = None  # when a state retried in place may run again
    error_code: str | None = None
    error: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    details: dict[str, float | int | str | None] = Field(default_factory=dict)
    # set in memory when a record is picked up again after a restart; never persisted
    resumed: bool = Field(default=False, exclude=True)

    def fail(self, code: str, message: str) -> Outcome:
        self.error_code, self.error = code, message
        return Outcome.FAILURE


Action = Callable[[DeploymentRecord], Outcome]


def drive(
    record: DeploymentRecord,
    actions: Mapping[State, Action],
    save: Callable[[DeploymentRecord], None],
    report: Callable[[DeploymentRecord], None],
) -> DeploymentRecord:
    """Run ``record`` to a terminal state.

    ``save`` persists the record (it runs before every action), ``report``
    announces each state entered. When ``record.resumed`` is set and the
    state is unsafe to run twice, the action is skipped as CRASHED. An action raising
    :class:`Interrupted` ends the drive with the record as last saved.
    """
    outcome: Outcome | None = None
    while record.state not in TERMINAL:
        if outcome is not Outcome.RETRY:
            record.saves += 1
        if record.saves > MAX_SAVES:
            outcome = Outcome.LOOP_DETECTED
            record.error_code = LoopDetected.code
            record.error = f"{record.saves} states entered without finishing"
        elif record.resumed and record.state in UNSAFE_TO_RESUME:
            outcome = Outcome.CRASHED
            record.error_code = CrashedWhileLoading.code
            record.error = f"the agent stopped during {record.state}; the candidate is not retried"
        else:
            save(record)
            outcome = actions[record.state](record)
        record.resumed = False
        record.state = next_state(record.state, outcome)
        report(record)
        if record.state is not State.FAILED:
            record.error_code = record.error = None
    save(record)
    return record
