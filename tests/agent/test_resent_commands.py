"""A command the controller sends again, re-signed with a new sequence because it never heard
how the first one ended: accepted (the sequence moves on), never run twice, and answered
with the deployment's final event and the status.

In-process: artifacts over httpx.MockTransport, a fake link that records, real ONNX
models and a real state folder. The same over a real broker is in test_outages.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.agent import Agent, DeploymentRecord
from edgefleet.agent._store import FINISHED_KEPT, AgentState
from edgefleet.harness import wait_until
from edgefleet.shared import (
    DeployCommand,
    DeviceState,
    Manifest,
    RollbackCommand,
    RollbackOrder,
    SignedBlob,
)
from edgefleet.shared.errors import ChecksumMismatch

from .inprocess import Fleet, inbound

S = DeviceState


def resend(fleet: Fleet, first: bytes, **changes: Any) -> tuple[int, bytes]:
    """``first`` again, as the controller re-sends it: same document, a new sequence, signed
    anew (``changes`` alter it further)."""
    command = shared.decode(first)
    doc = shared.parse_signed_document(command.signed.payload_bytes())
    fleet.sequence += 1
    fresh = doc.model_copy(update={"sequence": fleet.sequence, **changes})
    blob = shared.sign(shared.encode_document(fresh), fleet.key)
    again = (
        DeployCommand(signed=blob) if isinstance(doc, Manifest) else RollbackCommand(signed=blob)
    )
    assert isinstance(doc, Manifest | RollbackOrder)
    return fleet.sequence, shared.encode(again)


def last_sequence(fleet: Fleet) -> int:
    state = json.loads((fleet.config.state_dir / "state.json").read_text())
    return int(state["last_sequence"])


def test_a_committed_deployment_sent_again_is_answered_not_run(fleet: Fleet) -> None:
    agent = fleet.agent()
    deployment_id, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    first = fleet.link.events(deployment_id)[-1]
    downloads = len(fleet.artifacts.requests)
    published = len(fleet.link.published)

    sequence, again = resend(fleet, payload)
    agent.handle(inbound(again))

    answer = fleet.link.messages()[published:]
    assert [(m.kind, getattr(m, "state", None)) for m in answer] == [
        ("event", S.COMMITTED),
        ("status", S.COMMITTED),
    ]
    event = answer[0]
    assert (event.deployment_id, event.ok, event.error_code) == (deployment_id, True, None)
    assert event.timings_ms == first.timings_ms
    assert event.details == {**first.details, "repeated": 1}
    assert answer[1].last_sequence == sequence == last_sequence(fleet)
    assert len(fleet.artifacts.requests) == downloads  # nothing fetched, nothing swapped
    assert [e.state for e in fleet.link.events(deployment_id)].count(S.DOWNLOADING) == 1


def test_a_failed_deployment_sent_again_is_answered_with_its_failure(fleet: Fleet) -> None:
    agent = fleet.agent()
    deployment_id, payload = fleet.deploy("v1", body=bytes(fleet.models["v1"].stat().st_size))
    agent.handle(inbound(payload))
    failed = fleet.link.events(deployment_id)[-1]
    assert failed.error_code == ChecksumMismatch.code

    restarted = fleet.agent()  # a restart in between: the outcome is in the state file
    sequence, again = resend(fleet, payload)
    restarted.handle(inbound(again))

    (event,) = fleet.link.events(deployment_id)
    assert (event.state, event.ok, event.error_code, event.message) == (
        S.FAILED,
        False,
        ChecksumMismatch.code,
        failed.message,
    )
    assert event.details.get("repeated") == 1
    assert restarted.state.last_sequence == sequence
    assert restarted.slot.get() is None  # still nothing to serve: it did not run again


def test_a_rollback_sent_again_does_not_roll_back_twice(fleet: Fleet) -> None:
    agent = fleet.agent()
    agent.handle(inbound(fleet.deploy("v1")[1]))
    agent.handle(inbound(fleet.deploy("v2")[1]))
    rollback_id, payload = fleet.rollback()
    agent.handle(inbound(payload))
    assert agent.state.active is not None and agent.state.active.model.version == "1.0.1"
    serving = agent.state.active, agent.state.previous

    _, again = resend(fleet, payload)
    agent.handle(inbound(again))

    assert [e.state for e in fleet.link.events(rollback_id)] == [
        S.ROLLING_BACK,
        S.ROLLED_BACK,
        S.ROLLED_BACK,
    ]
    assert (agent.state.active, agent.state.previous) == serving


def test_a_plain_duplicate_or_an_expired_copy_changes_nothing(fleet: Fleet) -> None:
    agent = fleet.agent()
    _, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    before = len(fleet.link.published), last_sequence(fleet)

    agent.handle(inbound(payload))  # QoS 1 redelivery: the sequence is the accepted one
    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = resend(fleet, payload, expires_at=past)
    agent.handle(inbound(expired))  # re-signed, but too late to be taken

    assert (len(fleet.link.published), last_sequence(fleet)) == before


class _Killed(BaseException):
    """Leaves the agent mid-lifecycle, the way SIGKILL would."""


def _die_in_downloading(agent: Agent) -> None:
    real_save = agent.store.save

    def save(state: AgentState) -> None:
        real_save(state)
        if state.current is not None and state.current.state is S.DOWNLOADING:
            raise _Killed

    agent.store.save = save  # type: ignore[method-assign]


def test_a_deployment_still_running_sent_again_is_not_started_twice(fleet: Fleet) -> None:
    first = fleet.agent()
    deployment_id, payload = fleet.deploy("v1")
    _die_in_downloading(first)
    with pytest.raises(_Killed):
        first.handle(inbound(payload))

    second = fleet.agent()  # restarted; the saved deployment is not resumed yet
    sequence, again = resend(fleet, payload)
    second.handle(inbound(again))
    assert fleet.link.events(deployment_id) == []  # no second run, no outcome yet
    (status,) = fleet.link.statuses()
    assert (status.state, status.deployment_id, status.last_sequence) == (
        S.DOWNLOADING,
        deployment_id,
        sequence,
    )

    second.start()
    try:
        wait_until(
            lambda: S.COMMITTED in [e.state for e in fleet.link.events(deployment_id)],
            20,
            "the resumed deployment",
            every=0.01,
        )
    finally:
        second.stop()
    assert [e.state for e in fleet.link.events(deployment_id)].count(S.COMMITTED) == 1
    assert len(fleet.artifacts.requests) == 1


def test_the_outcomes_kept_are_bounded_and_the_newest() -> None:
    state = AgentState()
    blob = SignedBlob(key_id="k", payload="", signature="")
    for i in range(FINISHED_KEPT + 8):
        record = DeploymentRecord(
            deployment_id=f"d{i}", kind="deploy", signed=blob, state=S.FAILED, error="x" * 5000
        )
        state.finish(record)
        state.current = record
    assert len(state.finished) == FINISHED_KEPT
    assert state.outcome("d0") is None
    newest = state.outcome(f"d{FINISHED_KEPT + 7}")
    assert newest is not None and newest.error is not None
    assert len(newest.error) == shared.MAX_TEXT
    assert state.knows(f"d{FINISHED_KEPT + 7}")
