"""Table tests of the pure lifecycle: outcomes fed in, states and reports out."""

from __future__ import annotations

import pytest

from edgefleet.agent._lifecycle import (
    MAX_SAVES,
    TERMINAL,
    TRANSITIONS,
    DeploymentRecord,
    Interrupted,
    LifecycleError,
    Outcome,
    State,
    drive,
    next_state,
)
from edgefleet.shared import SignedBlob

S, O = State, Outcome  # noqa: E741 - short names keep the tables readable
BLOB = SignedBlob(key_id="k", payload="", signature="")


def run(start: State, outcomes: list[Outcome], resumed: bool = False):
    """Drive a record with actions that return the scripted outcomes in order."""
    script = iter(outcomes)
    ran: list[State] = []
    saved: list[State] = []
    reports: list[tuple[State, str | None]] = []

    def action(record: DeploymentRecord) -> Outcome:
        ran.append(record.state)
        outcome = next(script)
        if outcome is O.FAILURE:
            return record.fail("boom", f"failed in {record.state}")
        if outcome is O.RETRY:
            record.error_code = "download_failed"
        return outcome

    record = DeploymentRecord(
        deployment_id="d1", kind="deploy", signed=BLOB, state=start, resumed=resumed
    )
    actions = dict.fromkeys(State, action)
    drive(
        record,
        actions,
        save=lambda r: saved.append(r.state),
        report=lambda r: reports.append((r.state, r.error_code)),
    )
    return record, ran, saved, reports


CASES = [
    # name, start, outcomes, states the actions ran in, final state, reports
    (
        "happy path",
        S.DOWNLOADING,
        [O.SUCCESS] * 5,
        [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING],
        S.COMMITTED,
        [
            (S.VERIFYING, None),
            (S.LOADING, None),
            (S.TESTING, None),
            (S.SWITCHING, None),
            (S.COMMITTED, None),
        ],
    ),
    (
        "download retried then succeeds",
        S.DOWNLOADING,
        [O.RETRY, O.RETRY, O.SUCCESS, O.SUCCESS, O.SUCCESS, O.SUCCESS, O.SUCCESS],
        [S.DOWNLOADING] * 3 + [S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING],
        S.COMMITTED,
        [
            (S.DOWNLOADING, "download_failed"),
            (S.DOWNLOADING, "download_failed"),
            (S.VERIFYING, None),
            (S.LOADING, None),
            (S.TESTING, None),
            (S.SWITCHING, None),
            (S.COMMITTED, None),
        ],
    ),
    ("download fails", S.DOWNLOADING, [O.FAILURE], [S.DOWNLOADING], S.FAILED, [(S.FAILED, "boom")]),
    (
        "checksum fails",
        S.DOWNLOADING,
        [O.SUCCESS, O.FAILURE],
        [S.DOWNLOADING, S.VERIFYING],
        S.FAILED,
        [(S.VERIFYING, None), (S.FAILED, "boom")],
    ),
    (
        "load fails",
        S.DOWNLOADING,
        [O.SUCCESS, O.SUCCESS, O.FAILURE],
        [S.DOWNLOADING, S.VERIFYING, S.LOADING],
        S.FAILED,
        [(S.VERIFYING, None), (S.LOADING, None), (S.FAILED, "boom")],
    ),
    (
        "smoke test fails",
        S.DOWNLOADING,
        [O.SUCCESS, O.SUCCESS, O.SUCCESS, O.FAILURE],
        [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING],
        S.FAILED,
        [(S.VERIFYING, None), (S.LOADING, None), (S.TESTING, None), (S.FAILED, "boom")],
    ),
    (
        "switch fails",
        S.SWITCHING,
        [O.FAILURE],
        [S.SWITCHING],
        S.FAILED,
        [(S.FAILED, "boom")],
    ),
    (
        "rollback",
        S.ROLLING_BACK,
        [O.SUCCESS],
        [S.ROLLING_BACK],
        S.ROLLED_BACK,
        [(S.ROLLED_BACK, None)],
    ),
    (
        "rollback fails",
        S.ROLLING_BACK,
        [O.FAILURE],
        [S.ROLLING_BACK],
        S.FAILED,
        [(S.FAILED, "boom")],
    ),
]


@pytest.mark.parametrize(
    ("name", "start", "outcomes", "ran", "final", "reports"), CASES, ids=[c[0] for c in CASES]
)
def test_lifecycle_table(name, start, outcomes, ran, final, reports):
    record, got_ran, saved, got_reports = run(start, outcomes)
    assert got_ran == ran
    assert record.state is final
    assert got_reports == reports
    # saved before every action ran, and once more at the end
    assert saved == [*ran, final]


RESUME_CASES = [
    # a state unsafe to repeat is not run again after a crash; the others are
    ("died while loading", S.LOADING, [], [], S.FAILED, "crashed_while_loading"),
    ("died while testing", S.TESTING, [], [], S.FAILED, "crashed_while_loading"),
    (
        "died while downloading",
        S.DOWNLOADING,
        [O.SUCCESS] * 5,
        [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING],
        S.COMMITTED,
        None,
    ),
    ("died while switching", S.SWITCHING, [O.SUCCESS], [S.SWITCHING], S.COMMITTED, None),
    ("died while rolling back", S.ROLLING_BACK, [O.SUCCESS], [S.ROLLING_BACK], S.ROLLED_BACK, None),
]


@pytest.mark.parametrize(
    ("name", "start", "outcomes", "ran", "final", "code"),
    RESUME_CASES,
    ids=[c[0] for c in RESUME_CASES],
)
def test_resume_after_crash(name, start, outcomes, ran, final, code):
    record, got_ran, _, reports = run(start, outcomes, resumed=True)
    assert got_ran == ran
    assert record.state is final
    assert record.error_code == code
    assert reports[-1] == (final, code)


def test_retries_in_place_are_bounded_by_their_action_not_counted_as_a_loop():
    # a download waits out an outage until its manifest expires: however many attempts
    # that takes, the state was entered once
    outcomes = [O.RETRY] * (MAX_SAVES + 5) + [O.SUCCESS] * 5
    record, ran, saved, reports = run(S.DOWNLOADING, outcomes)
    assert record.state is S.COMMITTED
    assert ran.count(S.DOWNLOADING) == MAX_SAVES + 6
    assert saved.count(S.DOWNLOADING) == MAX_SAVES + 6  # still saved before every attempt
    assert record.saves == 5
    assert reports.count((S.DOWNLOADING, "download_failed")) == MAX_SAVES + 5


def test_a_state_entered_over_and_over_is_a_loop():
    """Resumed after one restart too many (a crash loop): failed without running again."""
    record = DeploymentRecord(
        deployment_id="d1",
        kind="deploy",
        signed=BLOB,
        state=S.DOWNLOADING,
        saves=MAX_SAVES,
        resumed=True,
    )
    ran: list[State] = []
    reports: list[tuple[State, str | None]] = []

    def action(r: DeploymentRecord) -> Outcome:
        ran.append(r.state)
        return O.RETRY

    drive(
        record,
        dict.fromkeys(State, action),
        lambda r: None,
        lambda r: reports.append((r.state, r.error_code)),
    )
    assert ran == []
    assert reports == [(S.FAILED, "loop_detected")]


def test_an_interrupted_action_leaves_the_record_where_it_was():
    record = DeploymentRecord(deployment_id="d1", kind="deploy", signed=BLOB, state=S.DOWNLOADING)
    saved: list[State] = []

    def stopped(r: DeploymentRecord) -> Outcome:
        raise Interrupted("stopping")

    with pytest.raises(Interrupted):
        drive(
            record, dict.fromkeys(State, stopped), lambda r: saved.append(r.state), lambda r: None
        )
    assert record.state is S.DOWNLOADING
    assert saved == [S.DOWNLOADING]


def test_table_is_closed():
    """Every route leads to a state that has routes out, or to a terminal state."""
    for (state, _), target in TRANSITIONS.items():
        assert state not in TERMINAL
        assert target in TERMINAL or any(s is target for s, _ in TRANSITIONS)


def test_unknown_route_is_a_bug():
    with pytest.raises(LifecycleError):
        next_state(S.VERIFYING, O.RETRY)
    assert next_state(S.TESTING, O.LOOP_DETECTED) is S.FAILED
