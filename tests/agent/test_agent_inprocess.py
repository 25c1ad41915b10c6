"""Table tests of the agent in-process: commands fed in, states and reported events out.

Artifacts come over httpx.MockTransport, the MQTT link is a fake that records,
models are real ONNX files run by ONNX Runtime, and state lives in tmp_path.
The same paths with a real broker and subprocess agents are in tests/e2e.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable

import pytest

from edgefleet import shared
from edgefleet.agent import Agent, Outbound
from edgefleet.agent._store import AgentState
from edgefleet.harness import wait_until
from edgefleet.shared import (
    DeviceState,
    ModelRef,
    PingCommand,
    SmokeTest,
    TelemetryMessage,
    TensorData,
)
from edgefleet.shared.errors import (
    ArtifactError,
    ChecksumMismatch,
    CrashedWhileLoading,
    DownloadError,
    MessageError,
    NothingToRollBack,
    ReplayedSequence,
    SignatureMismatch,
    SizeExceeded,
    SmokeTestFailed,
    WrongDevice,
)

from .inprocess import DEVICE, Fleet, inbound

S = DeviceState
DEPLOYED = [
    (S.DOWNLOADING, None),
    (S.VERIFYING, None),
    (S.LOADING, None),
    (S.TESTING, None),
    (S.SWITCHING, None),
    (S.COMMITTED, None),
]


def _wrong_smoke(fleet: Fleet) -> SmokeTest:
    right = fleet.manifest("v2").smoke_test
    (name, tensor), *_ = right.outputs.items()
    wrong = TensorData.from_numpy(tensor.to_numpy() + 1.0)
    return SmokeTest(inputs=right.inputs, outputs={name: wrong})


def _wrong_io(fleet: Fleet):
    io = fleet.manifest("v2").io
    return io.model_copy(update={"inputs": [io.inputs[0].model_copy(update={"name": "x"})]})


def _down(fleet: Fleet, model: str) -> tuple[str, bytes]:
    fleet.artifacts.down = True
    return fleet.deploy(model)


def _gone(fleet: Fleet) -> tuple[str, bytes]:
    deployment_id, payload = fleet.deploy("v2")
    fleet.artifacts.bodies.clear()
    return deployment_id, payload


Feed = Callable[[Fleet], tuple[str, bytes]]

CASES: list[tuple[str, list[Feed], list[tuple[DeviceState, str | None]], str | None]] = [
    # name, commands fed in order (the last one is watched), its events, what serves after
    ("first deploy commits", [lambda f: f.deploy("v1")], DEPLOYED, "v1"),
    (
        "second deploy commits",
        [lambda f: f.deploy("v1"), lambda f: f.deploy("v2")],
        DEPLOYED,
        "v2",
    ),
    (
        "artifact not found",
        [lambda f: f.deploy("v1"), _gone],
        [(S.DOWNLOADING, None), (S.FAILED, ArtifactError.code)],
        "v1",
    ),
    (
        "network down: retried, then given up",
        [lambda f: _down(f, "v1")],
        [
            (S.DOWNLOADING, None),
            (S.DOWNLOADING, DownloadError.code),
            (S.FAILED, DownloadError.code),
        ],
        None,
    ),
    (
        "more bytes than declared",
        [lambda f: f.deploy("v1", body=f.models["v1"].read_bytes() + b"extra")],
        [(S.DOWNLOADING, None), (S.FAILED, SizeExceeded.code)],
        None,
    ),
    (
        "right size, wrong bytes",
        [lambda f: f.deploy("v1", body=bytes(f.models["v1"].stat().st_size))],
        [(S.DOWNLOADING, None), (S.VERIFYING, None), (S.FAILED, ChecksumMismatch.code)],
        None,
    ),
    (
        "inputs differ from the manifest",
        [lambda f: f.deploy("v1"), lambda f: f.deploy("v2", io=_wrong_io(f))],
        [*DEPLOYED[:3], (S.FAILED, SignatureMismatch.code)],
        "v1",
    ),
    (
        "smoke test fails",
        [lambda f: f.deploy("v1"), lambda f: f.deploy("v2", smoke_test=_wrong_smoke(f))],
        [*DEPLOYED[:4], (S.FAILED, SmokeTestFailed.code)],
        "v1",
    ),
    (
        "rollback to the previous model",
        [lambda f: f.deploy("v1"), lambda f: f.deploy("v2"), lambda f: f.rollback()],
        [(S.ROLLING_BACK, None), (S.ROLLED_BACK, None)],
        "v1",
    ),
    (
        "rollback with nothing to go back to",
        [lambda f: f.deploy("v1"), lambda f: f.rollback()],
        [(S.ROLLING_BACK, None), (S.FAILED, NothingToRollBack.code)],
        "v1",
    ),
    (
        "replayed sequence",
        [lambda f: f.deploy("v1"), lambda f: f.deploy("v2", sequence=1)],
        [(S.REJECTED, ReplayedSequence.code)],
        "v1",
    ),
    (
        "manifest for another device",
        [lambda f: f.deploy("v1", device_id="someone-else")],
        [(S.REJECTED, WrongDevice.code)],
        None,
    ),
    (
        "benchmark measures without serving",
        [lambda f: f.deploy("v1"), lambda f: f.benchmark("v2")],
        [(S.BENCHMARKING, None), (S.BENCHMARKED, None)],
        "v1",
    ),
    (
        "benchmark of a damaged artifact",
        [lambda f: f.benchmark("v2", body=bytes(f.models["v2"].stat().st_size))],
        [(S.BENCHMARKING, None), (S.BENCHMARK_FAILED, ChecksumMismatch.code)],
        None,
    ),
]


@pytest.mark.parametrize(("name", "feed", "events", "serves"), CASES, ids=[c[0] for c in CASES])
def test_agent_table(fleet: Fleet, name, feed, events, serves) -> None:
    agent = fleet.agent()
    deployment_ids = []
    for step in feed:
        deployment_id, payload = step(fleet)
        deployment_ids.append(deployment_id)
        agent.handle(inbound(payload))
    watched = deployment_ids[-1]
    got = [(e.state, e.error_code) for e in fleet.link.events(watched)]
    assert got == events
    serving = agent.slot.get()
    if serves is None:
        assert serving is None
    else:
        assert serving is not None
        assert serving.ref.version == f"1.0.{serves[-1]}"
        # what serves is what the state file says serves, so a restart serves it too
        state = json.loads((fleet.config.state_dir / "state.json").read_text())
        assert state["active"]["sha256"] == serving.sha256


def test_every_save_announces_the_state_in_the_status(fleet: Fleet) -> None:
    agent = fleet.agent()
    agent.handle(inbound(fleet.deploy("v1")[1]))
    states = [s.state for s in fleet.link.statuses()]
    chain = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert chain == [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING, S.COMMITTED]


def test_garbage_is_rejected_with_the_message_code(fleet: Fleet) -> None:
    agent = fleet.agent()
    agent.handle(inbound(b"not json"))
    (event,) = fleet.link.events()
    assert (event.deployment_id, event.state, event.error_code) == (
        "",
        S.REJECTED,
        MessageError.code,
    )


def test_a_redelivered_command_runs_once(fleet: Fleet) -> None:
    agent = fleet.agent()
    deployment_id, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    agent.handle(inbound(payload))
    assert [e.state for e in fleet.link.events(deployment_id)].count(S.COMMITTED) == 1


RESUME_CASES = [
    # killed in (as the state file says), events after the restart, what serves
    (S.DOWNLOADING, DEPLOYED[1:], "v2"),
    (S.VERIFYING, DEPLOYED[2:], "v2"),
    (S.LOADING, [(S.FAILED, CrashedWhileLoading.code)], "v1"),
    (S.TESTING, [(S.FAILED, CrashedWhileLoading.code)], "v1"),
    (S.SWITCHING, DEPLOYED[5:], "v2"),
]


class _Killed(BaseException):
    """Leaves the agent mid-lifecycle, the way SIGKILL would (nothing catches it)."""


def _kill_after_saving(agent: Agent, state: DeviceState) -> None:
    """Make ``agent`` die right after it saved a deployment in ``state``."""
    real_save = agent.store.save

    def save(agent_state: AgentState) -> None:
        real_save(agent_state)
        if agent_state.current is not None and agent_state.current.state is state:
            raise _Killed

    agent.store.save = save  # type: ignore[method-assign]


@pytest.mark.parametrize(("killed_in", "events", "serves"), RESUME_CASES, ids=str)
def test_resume_after_restart(fleet: Fleet, killed_in, events, serves) -> None:
    first = fleet.agent()
    first.handle(inbound(fleet.deploy("v1")[1]))
    deployment_id, payload = fleet.deploy("v2")
    _kill_after_saving(first, killed_in)
    with pytest.raises(_Killed):
        first.handle(inbound(payload))

    second = fleet.agent()  # a restart on the same state folder
    second.start()
    try:
        wait_until(
            lambda: len(fleet.link.events(deployment_id)) >= len(events), 20, "resumed", every=0.01
        )
        assert [(e.state, e.error_code) for e in fleet.link.events(deployment_id)] == events
        serving = second.slot.get()
        assert serving is not None
        assert serving.ref == ModelRef(name="digits", version=f"1.0.{serves[-1]}")
    finally:
        second.stop()


def test_a_full_disk_while_resuming_is_logged_and_the_agent_goes_on(fleet: Fleet, caplog) -> None:
    first = fleet.agent()
    _, payload = fleet.deploy("v1")
    _kill_after_saving(first, S.DOWNLOADING)
    with pytest.raises(_Killed):
        first.handle(inbound(payload))

    second = fleet.agent()
    real_save = second.store.save

    def disk_full(state: AgentState) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    second.store.save = disk_full  # type: ignore[method-assign]
    second.start()
    try:
        wait_until(
            lambda: "resuming after a restart failed" in caplog.text,
            20,
            "the logged failure",
            every=0.01,
        )
        # the worker still takes commands, and once there is room, deploys again
        second.store.save = real_save  # type: ignore[method-assign]
        assert fleet.link.on_message is not None
        fleet.link.on_message(inbound(shared.encode(PingCommand(nonce="after"))))
        later, payload = fleet.deploy("v2")
        fleet.link.on_message(inbound(payload))
        wait_until(
            lambda: (
                (S.COMMITTED, None) in [(e.state, e.error_code) for e in fleet.link.events(later)]
            ),
            20,
            "a later deployment",
            every=0.01,
        )
    finally:
        second.stop()


def test_a_failing_telemetry_round_is_logged_and_the_next_one_goes_out(
    fleet: Fleet, caplog
) -> None:
    agent = fleet.agent()
    real_drain = agent.stats.drain
    calls = []

    def drain():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_drain()

    agent.stats.drain = drain  # type: ignore[method-assign]
    agent.start()
    try:
        wait_until(
            lambda: any(isinstance(m, TelemetryMessage) for m in fleet.link.messages()),
            20,
            "telemetry after a failed round",
            every=0.01,
        )
        assert "telemetry failed" in caplog.text
    finally:
        agent.stop()


def test_outbound_messages_keep_their_topics(fleet: Fleet) -> None:
    agent = fleet.agent()
    agent.handle(inbound(fleet.deploy("v1")[1]))
    topics = {(m.topic, m.qos, m.retain) for m in fleet.link.published}
    assert topics == {
        (f"edgefleet/v1/devices/{DEVICE}/events", 1, False),
        (f"edgefleet/v1/devices/{DEVICE}/status", 1, True),
    }
    assert all(isinstance(m, Outbound) for m in fleet.link.published)
