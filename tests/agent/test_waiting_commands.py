"""Commands that arrive while a deployment waits to retry its download, in-process.

Each is handled as it would be on an idle device and the wait goes on, except a newer
deploy or rollback order the device would accept: that one supersedes the waiting
deployment, which is saved as failed (``superseded``) before the order is accepted and run.
A fake link that records, artifacts over httpx.MockTransport, real models, a real state
folder; every backoff lasts 30 s, so nothing here happens by the clock. The same over a
real broker, with the artifact server really down: test_superseded_waits.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.agent import Agent
from edgefleet.agent._store import AgentState
from edgefleet.harness import wait_until
from edgefleet.shared import DeviceState, EventMessage, PingCommand, StatusMessage
from edgefleet.shared.errors import (
    MessageError,
    ReplayedSequence,
    RollbackMismatch,
    Superseded,
)

from .inprocess import Fleet, fixed_waits, inbound
from .test_resent_commands import resend

S = DeviceState
WAIT_S = 30.0


@dataclasses.dataclass
class Waiting:
    """An agent whose deployment ``deployment_id`` (sent as ``first``) failed its first
    download attempt and waits to try again; ``acks`` lists the commands acknowledged."""

    fleet: Fleet
    agent: Agent
    deployment_id: str
    first: bytes
    sequence: int
    acks: list[bytes]

    def feed(self, payload: bytes) -> None:
        assert self.fleet.link.on_message is not None
        self.fleet.link.on_message(inbound(payload, self.acks))

    def still_waiting(self) -> None:
        current = self.agent.state.current
        assert current is not None and current.deployment_id == self.deployment_id
        assert (current.state, current.attempts) == (S.DOWNLOADING, 1)  # no attempt since
        downloading = [(e.state, e.ok) for e in self.fleet.link.events(self.deployment_id)]
        assert downloading == [(S.DOWNLOADING, True), (S.DOWNLOADING, True)]


@pytest.fixture
def waiting(fleet: Fleet) -> Iterator[Waiting]:
    fleet.config = dataclasses.replace(fleet.config, download_attempts=None)
    agent = fleet.agent(retry=fixed_waits(WAIT_S))
    agent.start()
    deployment_id, payload = fleet.deploy("v1")
    fleet.artifacts.unreachable.add(fleet.artifact("v1").url)
    w = Waiting(fleet, agent, deployment_id, payload, fleet.sequence, [])
    w.feed(payload)
    wait_until(
        lambda: any(e.error_code for e in fleet.link.events(deployment_id)),
        20,
        "the first failed attempt",
        every=0.01,
    )
    yield w
    agent.stop()


def _statuses(fleet: Fleet) -> int:
    return len(fleet.link.statuses())


def _answer(fleet: Fleet, command_id: str) -> Callable[[], list[EventMessage]]:
    return lambda: fleet.link.events(command_id)


# name, the command (its id and bytes), what it is answered with, and then checked
Make = Callable[[Waiting], tuple[str, bytes]]
CASES: list[tuple[str, Make, Callable[[Waiting, str, int], None]]] = []


def _case(name: str, make: Make) -> Callable[[Callable[[Waiting, str, int], None]], None]:
    def register(check: Callable[[Waiting, str, int], None]) -> None:
        CASES.append((name, make, check))

    return register


def _ping(w: Waiting) -> tuple[str, bytes]:
    return "", shared.encode(PingCommand(nonce="reconcile"))


@_case("a ping: the status, at once", _ping)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(lambda: _statuses(w.fleet) > statuses, 10, "the answer to the ping", every=0.01)
    status = w.fleet.link.statuses()[-1]
    assert (status.state, status.deployment_id) == (S.DOWNLOADING, w.deployment_id)


def _sent_again(w: Waiting) -> tuple[str, bytes]:
    w.sequence, again = resend(w.fleet, w.first)
    return w.deployment_id, again


@_case("the waiting deployment sent again: answered, not run twice", _sent_again)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(lambda: _statuses(w.fleet) > statuses, 10, "the answer", every=0.01)
    assert w.agent.state.last_sequence == w.sequence  # accepted: the sequence moved on


def _trust(w: Waiting) -> tuple[str, bytes]:
    return w.fleet.trust([w.fleet.key])


@_case("a trust update: applied", _trust)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(_answer(w.fleet, command_id), 10, "the answer", every=0.01)
    (applied,) = w.fleet.link.events(command_id)
    assert (applied.state, applied.ok) == (S.TRUST_UPDATED, True)
    assert w.agent.state.trust.update_id == command_id


def _benchmark(w: Waiting) -> tuple[str, bytes]:
    return w.fleet.benchmark("v2")


@_case("a benchmark: measured", _benchmark)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(
        lambda: S.BENCHMARKED in [e.state for e in w.fleet.link.events(command_id)],
        20,
        "the benchmark",
        every=0.01,
    )


def _stale_rollback(w: Waiting) -> tuple[str, bytes]:
    return w.fleet.rollback(undoes="dep-served-long-ago")


@_case("a rollback of another deployment: refused", _stale_rollback)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(_answer(w.fleet, command_id), 10, "the refusal", every=0.01)
    (refused,) = w.fleet.link.events(command_id)
    assert (refused.state, refused.error_code) == (S.REJECTED, RollbackMismatch.code)


def _replayed(w: Waiting) -> tuple[str, bytes]:
    return w.fleet.deploy("v2", sequence=w.sequence)


@_case("a deploy with a used sequence number: refused", _replayed)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    wait_until(_answer(w.fleet, command_id), 10, "the refusal", every=0.01)
    (refused,) = w.fleet.link.events(command_id)
    assert (refused.state, refused.error_code) == (S.REJECTED, ReplayedSequence.code)


def _garbage(w: Waiting) -> tuple[str, bytes]:
    return "", b"not json"


@_case("bytes that are no command: refused", _garbage)
def _(w: Waiting, command_id: str, statuses: int) -> None:
    def refused() -> list[EventMessage]:
        return [e for e in w.fleet.link.events("") if e.error_code == MessageError.code]

    wait_until(refused, 10, "the refusal", every=0.01)


@pytest.mark.parametrize(("name", "make", "check"), CASES, ids=[c[0] for c in CASES])
def test_a_command_during_the_wait_is_handled_and_the_wait_goes_on(
    waiting: Waiting, name: str, make: Make, check: Callable[[Waiting, str, int], None]
) -> None:
    command_id, payload = make(waiting)
    statuses = _statuses(waiting.fleet)
    waiting.feed(payload)
    check(waiting, command_id, statuses)
    wait_until(lambda: payload in waiting.acks, 10, "the acknowledgement", every=0.01)
    waiting.still_waiting()


def _saves(agent: Agent) -> list[tuple[str, DeviceState, str | None, int]]:
    """Record each state saved: (current id, its state, its error code, last sequence)."""
    saved: list[tuple[str, DeviceState, str | None, int]] = []
    real = agent.store.save

    def recording(state: AgentState) -> None:
        real(state)
        current = state.current
        if current is not None:
            saved.append(
                (current.deployment_id, current.state, current.error_code, state.last_sequence)
            )

    agent.store.save = recording  # type: ignore[method-assign]
    return saved


ORDERS: list[tuple[str, Callable[[Fleet, str], tuple[str, bytes]], list[Any], str]] = [
    # name, the newer order, its events, the model serving after it
    (
        "a rollback of it: the device keeps its model",
        lambda f, waiting: f.rollback(undoes=waiting),
        [S.ROLLING_BACK, S.ROLLED_BACK],
        "v3",
    ),
    (
        "a newer deploy: it runs instead",
        lambda f, waiting: f.deploy("v2"),
        [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING, S.COMMITTED],
        "v2",
    ),
]


@pytest.mark.parametrize(("name", "order", "states", "serves"), ORDERS, ids=[o[0] for o in ORDERS])
def test_a_newer_order_supersedes_the_waiting_deployment_saved_as_failed_first(
    fleet: Fleet, name: str, order: Callable[[Fleet, str], tuple[str, bytes]],
    states: list[Any], serves: str,
) -> None:  # fmt: skip
    fleet.config = dataclasses.replace(fleet.config, download_attempts=None)
    agent = fleet.agent(retry=fixed_waits(WAIT_S))
    agent.handle(inbound(fleet.deploy("v3")[1]))  # what the device serves before
    previous = agent.state.active
    assert previous is not None
    saves = _saves(agent)
    agent.start()
    try:
        waiting_id, payload = fleet.deploy("v1")
        waiting_sequence = fleet.sequence
        fleet.artifacts.unreachable.add(fleet.artifact("v1").url)
        acks: list[bytes] = []
        assert fleet.link.on_message is not None
        fleet.link.on_message(inbound(payload, acks))
        wait_until(
            lambda: any(e.error_code for e in fleet.link.events(waiting_id)),
            20,
            "the first failed attempt",
            every=0.01,
        )
        newer_id, newer = order(fleet, waiting_id)
        fleet.link.on_message(inbound(newer, acks))
        wait_until(
            lambda: states[-1] in [e.state for e in fleet.link.events(newer_id)],
            20,
            "the newer order",
            every=0.01,
        )
    finally:
        agent.stop()

    *_, superseded = fleet.link.events(waiting_id)
    assert (superseded.state, superseded.ok) == (S.FAILED, False)
    assert superseded.error_code == Superseded.code
    assert superseded.details["superseded_by"] == newer_id
    assert f"superseded by {shared.decode(newer).kind} {newer_id}" in superseded.message
    assert [e.state for e in fleet.link.events(newer_id)] == states
    assert list(dict.fromkeys(acks)) == [payload, newer]  # in this order (a fake ack repeats)

    # the waiting deployment's end is saved before the newer order is accepted
    failed = saves.index((waiting_id, S.FAILED, Superseded.code, waiting_sequence))
    accepted = next(i for i, s in enumerate(saves) if s[0] == newer_id)
    assert failed < accepted and saves[accepted][3] == fleet.sequence

    serving = agent.slot.get()
    assert serving is not None and serving.ref.version == f"1.0.{serves[-1]}"
    finished = {f.deployment_id: f for f in agent.state.finished}
    assert finished[waiting_id].error_code == Superseded.code
    # tried once, and never again once superseded
    assert fleet.artifacts.requests.count(f"/{fleet.artifact('v1').url}") == 1


def test_a_rollback_of_a_superseded_deployment_undoes_it_only_once(fleet: Fleet) -> None:
    """The order that superseded a deployment rolls it back (nothing to swap: the device
    keeps its model); a second order for the same deployment is refused."""
    fleet.config = dataclasses.replace(fleet.config, download_attempts=None)
    agent = fleet.agent(retry=fixed_waits(WAIT_S))
    agent.handle(inbound(fleet.deploy("v3")[1]))
    served = agent.state.active
    assert served is not None
    agent.start()
    try:
        fleet.artifacts.unreachable.add(fleet.artifact("v1").url)
        waiting_id, payload = fleet.deploy("v1")
        assert fleet.link.on_message is not None
        fleet.link.on_message(inbound(payload))
        wait_until(
            lambda: any(e.error_code for e in fleet.link.events(waiting_id)),
            20,
            "the first failed attempt",
            every=0.01,
        )
        first_id, first = fleet.rollback(undoes=waiting_id)
        fleet.link.on_message(inbound(first))
        second_id, second = fleet.rollback(undoes=waiting_id)
        fleet.link.on_message(inbound(second))
        wait_until(lambda: fleet.link.events(second_id), 20, "the second order", every=0.01)
    finally:
        agent.stop()
    *_, rolled_back = fleet.link.events(first_id)
    assert (rolled_back.state, rolled_back.error_code) == (S.ROLLED_BACK, None)
    assert rolled_back.details == {"never_served": waiting_id, "model": str(served.model)}
    (refused,) = fleet.link.events(second_id)
    assert (refused.state, refused.error_code) == (S.REJECTED, RollbackMismatch.code)
    assert agent.state.active == served and agent.state.previous is None

    status = agent.reporter.status(online=True)
    decoded = shared.decode(status.payload)
    assert isinstance(decoded, StatusMessage)
    assert (decoded.state, decoded.deployment_id) == (S.ROLLED_BACK, first_id)
