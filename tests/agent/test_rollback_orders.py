"""Rollback orders name the deployment they undo, in-process.

The agent applies one only while it serves that deployment; anything else (a late order
after another model replaced it, a second order for the same deployment, a device serving
nothing) is refused as ``rollback_mismatch`` before it is accepted, so the sequence number
is not used up. A device serving the right deployment with nothing before it accepts the
order and fails it as ``nothing_to_roll_back``. Client requests keep being answered while
a rollback swaps the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from edgefleet.agent import Agent
from edgefleet.agent._store import AgentState
from edgefleet.harness import ClientTraffic, wait_until
from edgefleet.shared import DeviceState, SmokeTest, TensorData
from edgefleet.shared.errors import NothingToRollBack, RollbackMismatch

from .inprocess import Fleet, inbound

S = DeviceState
ROLLED_BACK = [(S.ROLLING_BACK, None), (S.ROLLED_BACK, None)]
REFUSED = [(S.REJECTED, RollbackMismatch.code)]


def _wrong_smoke(fleet: Fleet) -> SmokeTest:
    right = fleet.manifest("v2").smoke_test
    (name, tensor), *_ = right.outputs.items()
    return SmokeTest(
        inputs=right.inputs, outputs={name: TensorData.from_numpy(tensor.to_numpy() + 1)}
    )


def _deploy(model: str, **changes: object) -> Callable[[Fleet], tuple[str, bytes]]:
    return lambda f: f.deploy(model, **changes)


def _undo(nth: int) -> Callable[[Fleet], tuple[str, bytes]]:
    """A rollback of the ``nth`` deployment sent (0-based)."""
    return lambda f: f.rollback(undoes=f.deployed[nth])


Feed = Callable[[Fleet], tuple[str, bytes]]

CASES: list[tuple[str, list[Feed], list[tuple[DeviceState, str | None]], str | None]] = [
    # name, commands fed in order (the last one is watched), its events, what serves after
    (
        "undoes what serves: back to the previous model",
        [_deploy("v1"), _deploy("v2"), _undo(1)],
        ROLLED_BACK,
        "v1",
    ),
    (
        "undoes a deployment replaced since: refused",
        [_deploy("v1"), _deploy("v2"), _undo(0)],
        REFUSED,
        "v2",
    ),
    (
        "undoes a deployment that never committed: refused",
        [_deploy("v1"), lambda f: f.deploy("v2", smoke_test=_wrong_smoke(f)), _undo(1)],
        REFUSED,
        "v1",
    ),
    (
        "a second order for a deployment already undone: refused",
        [_deploy("v1"), _deploy("v2"), _undo(1), _undo(1)],
        REFUSED,
        "v1",
    ),
    (
        "undoes what serves, with nothing before it",
        [_deploy("v1"), _undo(0)],
        [(S.ROLLING_BACK, None), (S.FAILED, NothingToRollBack.code)],
        "v1",
    ),
    (
        "a device serving nothing refuses any rollback",
        [lambda f: f.rollback(undoes="dep-never-sent")],
        REFUSED,
        None,
    ),
]


@pytest.mark.parametrize(("name", "feed", "events", "serves"), CASES, ids=[c[0] for c in CASES])
def test_rollback_table(fleet: Fleet, name, feed, events, serves) -> None:
    agent = fleet.agent()
    watched = ""
    for step in feed:
        watched, payload = step(fleet)
        agent.handle(inbound(payload))
    assert [(e.state, e.error_code) for e in fleet.link.events(watched)] == events
    serving = agent.slot.get()
    if serves is None:
        assert serving is None and agent.state.active is None
    else:
        assert serving is not None and serving.ref.version == f"1.0.{serves[-1]}"
        assert agent.state.active is not None
        assert agent.state.active.sha256 == serving.sha256


def test_a_refused_rollback_leaves_its_sequence_number_to_the_right_one(fleet: Fleet) -> None:
    agent = fleet.agent()
    for model in ("v1", "v2"):
        agent.handle(inbound(fleet.deploy(model)[1]))
    first, second = fleet.deployed
    before = agent.state.last_sequence

    late_id, late = fleet.rollback(undoes=first)
    sequence = fleet.sequence  # the late order's number
    agent.handle(inbound(late))
    (refusal,) = fleet.link.events(late_id)
    assert (refusal.state, refusal.error_code) == (S.REJECTED, RollbackMismatch.code)
    assert first in refusal.message and second in refusal.message
    assert agent.state.last_sequence == before
    saved = json.loads((fleet.config.state_dir / "state.json").read_text())
    assert saved["last_sequence"] == before
    assert saved["active"]["deployment_id"] == second

    right_id, right = fleet.rollback(undoes=second, sequence=sequence)
    agent.handle(inbound(right))
    assert [(e.state, e.error_code) for e in fleet.link.events(right_id)] == ROLLED_BACK
    assert agent.state.last_sequence == sequence
    assert agent.state.active is not None and agent.state.active.deployment_id == first
    assert agent.state.previous is not None and agent.state.previous.deployment_id == second


class _Killed(BaseException):
    """Leaves the agent mid-lifecycle, the way SIGKILL would (nothing catches it)."""


def _kill_when_saved_in(agent: Agent, state: DeviceState) -> None:
    real_save = agent.store.save

    def save(agent_state: AgentState) -> None:
        real_save(agent_state)
        if agent_state.current is not None and agent_state.current.state is state:
            raise _Killed

    agent.store.save = save  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("active_damaged", "events"),
    [(False, [(S.ROLLED_BACK, None)]), (True, [(S.FAILED, RollbackMismatch.code)])],
    ids=["the order still matches", "the restart fell back to the previous model"],
)
def test_a_rollback_resumed_after_a_restart_is_checked_again(
    fleet: Fleet, active_damaged: bool, events
) -> None:
    first = fleet.agent()
    for model in ("v1", "v2"):
        first.handle(inbound(fleet.deploy(model)[1]))
    rollback_id, payload = fleet.rollback()
    _kill_when_saved_in(first, S.ROLLING_BACK)
    with pytest.raises(_Killed):
        first.handle(inbound(payload))
    if active_damaged:  # the SD card lost v2: the restart serves v1, which the order undoes not
        active = first.state.active
        assert active is not None
        stored = first.store.model_path(active.sha256)
        stored.write_bytes(bytes(stored.stat().st_size))

    second = fleet.agent()
    second.start()
    try:
        wait_until(
            lambda: len(fleet.link.events(rollback_id)) >= len(events), 20, "resumed", every=0.01
        )
        assert [(e.state, e.error_code) for e in fleet.link.events(rollback_id)] == events
        serving = second.slot.get()
        assert serving is not None and serving.ref.version == "1.0.1"
    finally:
        second.stop()


def test_client_requests_do_not_fail_during_a_rollback(fleet: Fleet) -> None:
    agent = fleet.agent()
    for model in ("v1", "v2"):
        agent.handle(inbound(fleet.deploy(model)[1]))
    first, second = fleet.deployed
    agent.start()
    try:
        url = agent.server.url
        clients = {f"client-{i}": url for i in range(3)}  # three concurrent clients
        with ClientTraffic(clients, rate_per_s=150.0) as traffic:
            traffic.wait_answered(30)
            rollback_id, payload = fleet.rollback(undoes=second)
            assert fleet.link.on_message is not None
            fleet.link.on_message(inbound(payload))  # through the worker, as from the broker
            wait_until(
                lambda: S.ROLLED_BACK in [e.state for e in fleet.link.events(rollback_id)],
                20,
                "the rollback",
                every=0.01,
            )
            answered = {n: t.ok for n, t in traffic.tallies().items()}
            wait_until(
                lambda: all(t.ok >= answered[n] + 30 for n, t in traffic.tallies().items()),
                20,
                "answers after the rollback",
                every=0.01,
            )
        tallies = traffic.tallies()
        assert traffic.failures() == []
        assert all(t.failed == 0 and t.unreachable == 0 for t in tallies.values()), tallies
        for tally in tallies.values():  # each client saw both models answer
            assert set(tally.deployments) == {first, second}, tally
    finally:
        agent.stop()
